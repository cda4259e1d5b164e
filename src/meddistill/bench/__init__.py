"""Bench stage: grids of cells, executors (local / Ray) and reports."""

from meddistill.bench.executors import run_grid
from meddistill.bench.grid import Grid, expand, load_grid
from meddistill.bench.report import write_report

__all__ = ["Grid", "expand", "load_grid", "run_grid", "write_report"]

"""Benchmark grids: datasets × ipc × methods × seeds, one idempotent cell each.

A cell is keyed by the hash of everything that determines its row (the distillation identity
plus the evaluation identity), so a grid can be killed and re-run: finished cells are read
back from the results store and skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meddistill.config import RunConfig, build_config, read_yaml
from meddistill.errors import ConfigError
from meddistill.pipeline import distill_identity, eval_identity
from meddistill.utils import config_hash, read_jsonl

FULL = "full"  # pseudo-method: the same evaluation on the whole real train split


@dataclass
class Grid:
    name: str
    profile: str = "cpu"
    datasets: list[str] = field(default_factory=lambda: ["breastmnist"])
    ipc: list[int] = field(default_factory=lambda: [1])
    methods: list[str] = field(default_factory=lambda: ["ptm"])
    seeds: list[int] = field(default_factory=lambda: [0])
    eval_nets: list[str] = field(default_factory=lambda: ["convnet"])
    full: bool = True
    overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    ipc_overrides: dict[int, list[str]] = field(default_factory=dict)
    dataset_overrides: dict[str, list[str]] = field(default_factory=dict)
    store: str = "results/bench.jsonl"
    out_dir: str = "runs"
    experts_dir: str = "experts"


GRID_KEYS = set(Grid.__dataclass_fields__)


def load_grid(path: str | Path) -> Grid:
    data: dict[str, Any] = read_yaml(path)
    unknown = set(data) - GRID_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown grid keys {sorted(unknown)}; valid: {sorted(GRID_KEYS - {'name'})}")
    data.setdefault("name", Path(path).stem)
    for key in ("datasets", "ipc", "methods", "seeds", "eval_nets", "overrides"):
        if key in data and not isinstance(data[key], list):
            data[key] = [data[key]]
    data["ipc_overrides"] = {int(k): v for k, v in (data.get("ipc_overrides") or {}).items()}
    return Grid(**data)


@dataclass
class Cell:
    dataset: str
    ipc: int
    method: str
    seed: int
    cfg: RunConfig
    key: str

    @property
    def label(self) -> str:
        return f"{self.dataset} ipc={self.ipc} {self.method} seed={self.seed}"


def cell_config(grid: Grid, dataset: str, ipc: int, method: str, seed: int, **extra: Any) -> RunConfig:
    overrides = list(grid.overrides)
    overrides += grid.dataset_overrides.get(dataset, [])
    overrides += grid.ipc_overrides.get(ipc, [])
    overrides += grid.method_overrides.get(method, [])
    flags = {
        "dataset": dataset,
        "seed": seed,
        "out_dir": grid.out_dir,
        "experts_dir": grid.experts_dir,
        "distill.ipc": ipc,
        "distill.method": method,
        "eval.nets": grid.eval_nets,
        **extra,
    }
    return build_config(grid.profile, None, overrides, **flags)


def cell_key(cfg: RunConfig) -> str:
    ident = {"eval": eval_identity(cfg), "dataset": cfg.dataset, "size": cfg.size}
    if cfg.distill.method != FULL:
        ident["distill"] = distill_identity(cfg)
    else:
        ident["method"] = FULL
    return config_hash(ident, 16)


def expand(grid: Grid, **extra: Any) -> list[Cell]:
    """All distinct cells of a grid, in a deterministic order (full-data rows have ipc 0); a cell
    listed twice (``seeds: [0, 0]``, or overrides that make two cells equal) is kept once."""
    cells = _all_cells(grid, **extra)
    unique = {c.key: c for c in reversed(cells)}  # the first occurrence of each key wins
    return [c for c in cells if unique[c.key] is c]


def _all_cells(grid: Grid, **extra: Any) -> list[Cell]:
    cells: list[Cell] = []
    for dataset in grid.datasets:
        for seed in grid.seeds:
            if grid.full:
                cfg = cell_config(grid, dataset, 1, FULL, seed, **extra)
                cfg.distill.ipc = 0
                cells.append(Cell(dataset, 0, FULL, seed, cfg, cell_key(cfg)))
            for ipc in grid.ipc:
                for method in grid.methods:
                    cfg = cell_config(grid, dataset, ipc, method, seed, **extra)
                    cells.append(Cell(dataset, ipc, method, seed, cfg, cell_key(cfg)))
    return cells


def done_keys(store: str | Path) -> set[str]:
    return {r["cell_key"] for r in read_jsonl(store) if "cell_key" in r}

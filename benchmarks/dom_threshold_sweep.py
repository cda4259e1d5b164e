"""Choose DOM's overlap thresholds on VALIDATION accuracy (session 3).

The same cells as ``benchmarks/lr_img_sweep.py`` (3 CPU datasets, ipc 2 and 10, seeds 0–1, 2
ConvNet-D3 evaluations per set, fp32 experts, image lr 100) for PTM only, one grid per
(pixel, feature) cosine threshold pair; the current pair (0.9, 0.95) is read from the image-lr
sweep's store, whose PTM cells are the same runs. Prints mean validation ACC and the number of
images DOM replaced per run. Test accuracy is stored in the rows but not used here.

    MEDDISTILL_DATA=../shared/data/medmnist python benchmarks/dom_threshold_sweep.py [--experts-dir experts]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

from lr_img_sweep import grid as lr_img_grid  # the sibling script: same cells, same store
from lr_img_sweep import val_acc

from meddistill.bench import run_grid
from meddistill.bench.grid import Grid
from meddistill.cli import CELLS_KEPT, comma_list, one_line_errors
from meddistill.utils import read_jsonl

CURRENT = (0.9, 0.95)


def grid(pixel: float, feature: float, args: argparse.Namespace) -> Grid:
    """PTM's cells of the image-lr sweep at lr 100, with other DOM thresholds in their own store."""
    base = replace(lr_img_grid(100.0, args), methods=["ptm"])
    if (pixel, feature) == CURRENT:
        return base
    dom = [f"method.dom.pixel_threshold={pixel:g}", f"method.dom.feature_threshold={feature:g}"]
    return replace(
        base,
        name=f"dom_{pixel:g}_{feature:g}",
        overrides=[*base.overrides, *dom],
        store=f"{args.results}/dom_val_{pixel:g}_{feature:g}.jsonl",
    )


def replaced(run_dir: str) -> int:
    """How many images DOM re-initialised over the run (the last metrics row's running total)."""
    rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
    return int(rows[-1].get("replaced_total", 0)) if rows else 0


def _pair(text: str) -> tuple[float, float]:
    pixel, feature = text.split(":")  # a ValueError for anything but two fields
    return float(pixel), float(feature)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    pairs = comma_list(_pair, lambda p: all(0 < v <= 1 for v in p), "pixel:feature thresholds in (0, 1]")
    ap.add_argument("--pairs", type=pairs, default="0.9:0.95,0.8:0.9,0.7:0.85", help="pixel:feature thresholds")
    ap.add_argument("--results", default="results")
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--experts-dir", default="experts")
    args = ap.parse_args()
    args.ipc, args.methods = [2, 10], ["ptm"]  # the image-lr sweep's cells this builds on
    with one_line_errors(ap, CELLS_KEPT):
        run(args, args.pairs)


def run(args: argparse.Namespace, pairs: list[tuple[float, float]]) -> None:
    cols = ["pixel / feature threshold", "cells", "mean val ACC", "BreastMNIST", "PneumoniaMNIST", "RetinaMNIST"]
    cols.append("replaced per run")
    print("| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|")
    for pixel, feature in pairs:
        g = grid(pixel, feature, args)
        run_grid(g, progress=True)
        rows = [r for r in read_jsonl(g.store) if r["method"] == "ptm"]
        val = {(r["dataset"], r["ipc"], r["seed"]): val_acc(r) for r in rows}
        per = [
            f"{100 * statistics.mean(v for k, v in val.items() if k[0] == ds):.2f}"
            for ds in ("breastmnist", "pneumoniamnist", "retinamnist")
        ]
        reps = statistics.mean(replaced(r["run_dir"]) for r in rows)
        mean = 100 * statistics.mean(val.values())
        print(f"| {pixel:g} / {feature:g} | {len(val)} | {mean:.2f} | {' | '.join(per)} | {reps:.1f} |", flush=True)


if __name__ == "__main__":
    main()

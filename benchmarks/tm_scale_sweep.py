"""Choose a trajectory-matching scaling rule on VALIDATION accuracy (issue 18).

For every candidate of ``meddistill.distill.scaling.RULES`` (``--rules``), runs (or resumes)
MTT and PTM with that rule applied unchanged to both, at ipc 10 (``--ipc``), seeds 0–1, on
BloodMNIST, PneumoniaMNIST, BreastMNIST (and RetinaMNIST with ``--datasets``), ``cpu``
profile, 2 ConvNet-D3 evaluations per set, every iteration logged — the cells of
``benchmarks/tm_diagnose.py``, so the ``base`` rule's seed-0 cells are the diagnosis runs.
One store per rule: ``results/tm_scale_val_<rule>.jsonl``. Prints the mean validation ACC
per rule (all cells, per method, per dataset) and the mean last-10 matching loss. Test
accuracy is stored in the rows but not used here.

    MEDDISTILL_DATA=/work/shared/data/medmnist python benchmarks/tm_scale_sweep.py --workers 2
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from tm_diagnose import grids, run_stats, val_acc

from meddistill.bench import run_grid
from meddistill.bench.grid import expand
from meddistill.cli import CELLS_KEPT, IPCS, SEEDS, names, one_line_errors, positive_int
from meddistill.distill.scaling import RULES
from meddistill.utils import read_jsonl


def rule_args(rule: str, args: argparse.Namespace) -> argparse.Namespace:
    ns = argparse.Namespace(**vars(args))
    ns.rule = rule
    ns.store = f"{args.results}/tm_scale_val_{rule}.jsonl"
    return ns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", type=names("a rule", RULES), default="base,sqrt,linear,learn")
    ap.add_argument("--datasets", type=names("a dataset"), default="bloodmnist,pneumoniamnist,breastmnist")
    ap.add_argument("--methods", type=names("a method"), default="mtt,ptm")
    ap.add_argument("--seeds", type=SEEDS, default="0,1")
    ap.add_argument("--ipc", type=IPCS, default="10")
    ap.add_argument("--set", action="append", default=[], help="extra key=value override for every cell")
    ap.add_argument("--results", default="results")
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--experts-dir", default="experts")
    ap.add_argument("--workers", type=positive_int, default=1, help="cells at once, 1 torch thread each when > 1")
    ap.add_argument("--no-run", action="store_true", help="only report what the stores hold")
    ap.add_argument("--cells", action="store_true", help="also list every finished cell")
    args = ap.parse_args()
    with one_line_errors(ap, CELLS_KEPT):
        run(args)


def run(args: argparse.Namespace) -> None:
    rules = args.rules
    # val[(rule, method, dataset, ipc, seed)] = (val ACC, last-10 loss, learned lr)
    val: dict[tuple, tuple[float, float, float]] = {}
    rand: dict[tuple, float] = {}
    for rule in rules:
        ra = rule_args(rule, args)
        gs = grids(ra)
        if not args.no_run:
            # the TM grids first (the random grid only gives a reference row)
            for g in [*gs[1:], gs[0]]:
                run_grid(g, progress=True, workers=args.workers, threads=1 if args.workers > 1 else None)
        keys = {c.key for g in gs for c in expand(g)}
        rows = [r for r in read_jsonl(ra.store) if r.get("cell_key") in keys]
        for r in rows:
            k = (r["dataset"], r["ipc"], r["seed"])
            if r["method"] == "random":
                rand[k] = val_acc(r)
            else:
                s = run_stats(r, None)
                val[(rule, r["method"], *k)] = (val_acc(r), s["loss_last10"], s["lr_end"])
    cols = ["rule", "cells", "mean val ACC"] + [f"{m}" for m in args.methods]
    cols += [f"{m}, {d}" for d in args.datasets for m in args.methods]
    cols += [f"{m} last-10 loss" for m in args.methods] + [f"{m} learned lr (range)" for m in args.methods]
    print("| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|")
    for rule in rules:
        mine = {k[1:]: v for k, v in val.items() if k[0] == rule}
        if not mine:
            continue

        def mean(sel, i=0, m=mine):
            xs = [v[i] for k, v in m.items() if sel(k) and v[i] == v[i]]  # NaN: run folder gone
            return (statistics.mean(xs), len(xs)) if xs else (float("nan"), 0)

        allv, n = mean(lambda k: True)
        cells = [f"{100 * allv:.2f}"]
        cells += [f"{100 * mean(lambda k, m=m: k[0] == m)[0]:.2f}" for m in args.methods]
        cells += [
            f"{100 * mean(lambda k, m=m, d=d: k[0] == m and k[1] == d)[0]:.2f}"
            for d in args.datasets
            for m in args.methods
        ]
        cells += [f"{mean(lambda k, m=m: k[0] == m, 1)[0]:.3f}" for m in args.methods]
        for m in args.methods:
            lrs = [v[2] for k, v in mine.items() if k[0] == m]
            cells.append(f"{min(lrs):.3g}–{max(lrs):.3g}" if lrs else "–")
        print(f"| {rule} | {n} | " + " | ".join(cells) + " |")
    if args.cells:
        print("\n| dataset | method | seed | " + " | ".join(f"{r} val ACC (learned lr)" for r in rules) + " |")
        print("|---|---|---|" + "---|" * len(rules))
        for d in args.datasets:
            for m in args.methods:
                for sd in args.seeds:
                    cells = []
                    for rule in rules:
                        v = val.get((rule, m, d, args.ipc[0], sd))
                        cells.append(f"{100 * v[0]:.2f} ({v[2]:.3g})" if v else "–")
                    if any(c != "–" for c in cells):
                        print(f"| {d} | {m} | {sd} | " + " | ".join(cells) + " |")
    by_ds = defaultdict(list)
    for k, v in rand.items():
        by_ds[k[0]].append(v)
    ref = ", ".join(f"{d} {100 * statistics.mean(v):.2f}" for d, v in by_ds.items() if d in args.datasets)
    print(f"\nrandom real (the start), mean val ACC: {ref}")


if __name__ == "__main__":
    main()

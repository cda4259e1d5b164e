"""Explore DOM variants on VALIDATION accuracy (issue 16).

For every variant of :data:`VARIANTS` (``--variants``), runs (or resumes) PTM with that DOM
setting — and ``ptm_nodom`` (variant ``nodom``) as the reference — on PneumoniaMNIST and
BloodMNIST (its runs use 4 of the 8 experts, ``experts.num_experts=4``, as in
``benchmarks/tm_diagnose.py``), ipc 10 and 50, seeds 0–1, ``cpu`` profile, 2 ConvNet-D3
evaluations per set, every iteration logged. One store per variant:
``results/dom_val_<variant>.jsonl``. Prints, per variant, the mean validation ACC (all cells,
its paired difference to ``nodom`` on the cells both have, per dataset and ipc), how many images
DOM replaced per run, and the means of the rows' ``stats`` diversity block when present. Test
accuracy is stored in the rows but never read here.

    MEDDISTILL_DATA=/work/shared/data/medmnist python benchmarks/dom_sweep.py [--workers 2]
    python benchmarks/dom_sweep.py --smoke          # tiny profile, BreastMNIST, ipc 2 and 4, seed 0

The variants (see ``meddistill.distill.dom.DOMConfig``): ``default`` is the original DOM; the
``rate*`` ones replace the 10 % most redundant images of every class at each of PTM's stage
boundaries and change one thing at a time — overlap space, k-center re-initialisation,
boosted retraining — and ``rate10_all`` combines them. ``stop05`` is the original DOM with its
window closed at half of the run, for the question whether a late replacement costs more than
it gives (at ipc 2, against ``nodom``: ``--variants nodom,default,stop05 --ipc 2``).
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from tm_diagnose import DATASET_OVERRIDES, val_acc

from meddistill.bench import run_grid
from meddistill.bench.grid import Grid, expand
from meddistill.cli import CELLS_KEPT, IPCS, SEEDS, names, one_line_errors, positive_int
from meddistill.utils import read_jsonl

DOM = "distill.ptm.dom."
RATE = [f"{DOM}rule=rate", f"{DOM}rate=0.1", f"{DOM}when=stages"]
# name → (method, overrides of its section)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "nodom": ("ptm_nodom", []),  # the reference: PTM's schedule alone
    "default": ("ptm", []),  # the original DOM: fixed thresholds, rarely crossed
    "rate10": ("ptm", RATE),  # pixel + reference-expert features, random unused real images
    "rate10_feature": ("ptm", [*RATE, f"{DOM}space=feature"]),
    "rate10_gradient": ("ptm", [*RATE, f"{DOM}space=gradient"]),
    "rate10_kcenter": ("ptm", [*RATE, f"{DOM}reinit=kcenter"]),
    "rate10_boost": ("ptm", [*RATE, f"{DOM}retrain=boost"]),  # ×10 image lr for 20 iterations
    "rate10_all": ("ptm", [*RATE, f"{DOM}space=gradient", f"{DOM}reinit=kcenter", f"{DOM}retrain=boost"]),
    # not in the default list
    "rate20": ("ptm", [f"{DOM}rule=rate", f"{DOM}rate=0.2", f"{DOM}when=stages"]),
    "rate10_exclusive": ("ptm", [*RATE, f"{DOM}retrain=exclusive", f"{DOM}retrain_boost=1"]),
    "feature_thr": ("ptm", [f"{DOM}space=feature"]),  # threshold rule, feature space at the current point
    "gradient_thr": ("ptm", [f"{DOM}space=gradient"]),  # threshold rule on gradient cosine (0.9)
    "stop05": ("ptm", [f"{DOM}stop=0.5"]),  # the original DOM, no event after half of the run
}
DEFAULT_VARIANTS = "nodom,default,rate10,rate10_feature,rate10_gradient,rate10_kcenter,rate10_boost,rate10_all"
BASE_OVERRIDES = ["eval.num_nets=2", "distill.log_every=1"]
STATS_KEYS = ("intra_dist_feat", "vendi_norm", "class_coverage", "recall")


def grid(variant: str, args: argparse.Namespace) -> Grid:
    method, overrides = VARIANTS[variant]
    return Grid(
        name=f"dom_val_{variant}",
        profile=args.profile,
        datasets=args.datasets,
        ipc=args.ipc,
        methods=[method],
        seeds=args.seeds,
        eval_nets=["convnet"],
        full=False,
        overrides=[*BASE_OVERRIDES, *args.set, *overrides],
        dataset_overrides={ds: DATASET_OVERRIDES.get(ds, []) for ds in args.datasets},
        store=f"{args.results}/dom_val_{variant}.jsonl",
        out_dir=args.out_dir,
        experts_dir=args.experts_dir,
    )


def replaced(run_dir: str) -> float:
    """Images DOM re-initialised over the run (the last metrics row's total; NaN if the run
    folder is gone)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return math.nan
    rows = read_jsonl(path)
    return float(rows[-1].get("replaced_total", 0)) if rows else math.nan


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.mean(xs) if xs else math.nan


def collect(args: argparse.Namespace, variants: list[str]) -> dict[str, dict[tuple, dict]]:
    """variant → (dataset, ipc, seed) → {val, replaced, stats}: the rows of this grid's cells."""
    out: dict[str, dict[tuple, dict]] = {}
    for v in variants:
        g = grid(v, args)
        if not args.no_run:
            run_grid(g, progress=True, workers=args.workers, threads=1 if args.workers > 1 else None)
        keys = {c.key for c in expand(g)}
        rows = [r for r in read_jsonl(g.store) if r.get("cell_key") in keys] if Path(g.store).exists() else []
        out[v] = {
            (r["dataset"], r["ipc"], r["seed"]): {
                "val": val_acc(r),
                "replaced": replaced(r["run_dir"]),
                "stats": r.get("stats") or {},
            }
            for r in rows
        }
    return out


def table(res: dict[str, dict[tuple, dict]], args: argparse.Namespace) -> str:
    combos = [(d, i) for d in args.datasets for i in args.ipc]
    has_stats = any(c["stats"] for cells in res.values() for c in cells.values())
    cols = ["variant", "cells", "mean val ACC", "Δ vs nodom (paired)"]
    cols += [f"{d} ipc {i}" for d, i in combos] + ["replaced per run"]
    cols += list(STATS_KEYS) if has_stats else []
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    ref = res.get("nodom", {})
    for v, cells in res.items():
        if not cells:
            lines.append(f"| {v} | 0 |" + " – |" * (len(cols) - 2))
            continue
        both = [k for k in cells if k in ref]
        delta = _mean([cells[k]["val"] - ref[k]["val"] for k in both]) if both and v != "nodom" else math.nan
        row = [v, str(len(cells)), f"{100 * _mean([c['val'] for c in cells.values()]):.2f}"]
        row.append(f"{100 * delta:+.2f} (n={len(both)})" if delta == delta else "–")
        for d, i in combos:
            xs = [c["val"] for k, c in cells.items() if k[:2] == (d, i)]
            row.append(f"{100 * _mean(xs):.2f} (n={len(xs)})" if xs else "–")
        row.append(f"{_mean([c['replaced'] for c in cells.values()]):.1f}")
        if has_stats:
            for key in STATS_KEYS:
                xs = [c["stats"][key] for c in cells.values() if isinstance(c["stats"].get(key), (int, float))]
                row.append(f"{_mean(xs):.3f}" if xs else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", type=names("a variant", VARIANTS), default=DEFAULT_VARIANTS)
    ap.add_argument("--datasets", type=names("a dataset"), default="pneumoniamnist,bloodmnist")
    ap.add_argument("--ipc", type=IPCS, default="10,50")
    ap.add_argument("--seeds", type=SEEDS, default="0,1")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--set", action="append", default=[], help="extra key=value override for every cell")
    ap.add_argument("--results", default=None, help="folder of the stores (default: results; --smoke: runs/dom_smoke)")
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--experts-dir", default="experts")
    ap.add_argument("--workers", type=positive_int, default=1, help="cells at once, 1 torch thread each when > 1")
    ap.add_argument("--no-run", action="store_true", help="only report what the stores hold")
    ap.add_argument("--smoke", action="store_true", help="tiny profile, BreastMNIST, ipc 2 and 4, seed 0")
    args = ap.parse_args()
    if args.smoke:
        args.profile, args.datasets, args.ipc, args.seeds = "tiny", ["breastmnist"], [2, 4], [0]
    args.results = args.results or ("runs/dom_smoke" if args.smoke else "results")
    with one_line_errors(ap, CELLS_KEPT):
        run(args)


def run(args: argparse.Namespace) -> None:
    variants = args.variants
    res = collect(args, variants)
    print(table(res, args))
    n = len(variants) * len(args.datasets) * len(args.ipc) * len(args.seeds)
    print(f"\n{n} cells in this grid; validation ACC (mean of a cell's evaluation nets), never test ACC")


if __name__ == "__main__":
    main()

"""Choose the trajectory-matching image lr on VALIDATION accuracy (session 3).

Runs (or resumes) one grid per image lr — MTT, DATM-style and PTM on the three CPU datasets,
ipc 2 and 10 (``--ipc``), seeds 0–1, 2 ConvNet-D3 evaluations per set, fp32 experts as in
``configs/bench/cpu.yaml`` — and prints each method's mean validation ACC per lr, over all
cells and per dataset. Test accuracy is stored in the rows but not used here.

    MEDDISTILL_DATA=../shared/data/medmnist python benchmarks/lr_img_sweep.py [--experts-dir experts]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from meddistill.bench import run_grid
from meddistill.bench.grid import Grid
from meddistill.cli import CELLS_KEPT, IMAGE_LRS, IPCS, names, one_line_errors, positive_int
from meddistill.utils import read_jsonl

METHODS = ["mtt", "datm", "ptm"]


V1_PINS = [
    *(f"distill.{m}.{k}" for m in ("mtt", "ptm", "ptm_nodom", "datm") for k in ("syn_steps=10", "expert_epochs=2")),
    "distill.ptm.dom.feature_epoch=last",
]


def val_acc(row: dict) -> float:
    """A row's mean validation ACC over its evaluation nets."""
    return statistics.mean(x["val_acc"] for x in row["runs"])


def grid(lr: float, args: argparse.Namespace) -> Grid:
    return Grid(
        name=f"lr_img_{lr:g}",
        profile="cpu",
        datasets=["breastmnist", "pneumoniamnist", "retinamnist"],
        ipc=args.ipc,
        methods=args.methods,
        seeds=[0, 1],
        eval_nets=["convnet"],
        full=False,
        # the settings its stored rows were measured with (now `auto` / `read` by default)
        overrides=["experts.bf16=false", "eval.num_nets=2", f"method.lr_img={lr:g}", *V1_PINS],
        method_overrides={"datm": ["method.lr_label=0"]},
        store=f"{args.results}/lr_img_val_{lr:g}.jsonl",
        out_dir=args.out_dir,
        experts_dir=args.experts_dir,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lrs", type=IMAGE_LRS, default="100,300,1000")
    ap.add_argument("--results", default="results")
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--experts-dir", default="experts")
    ap.add_argument("--ipc", type=IPCS, default="2,10")
    ap.add_argument("--methods", type=names("a method"), default=",".join(METHODS))
    ap.add_argument("--workers", type=positive_int, default=1, help="cells at once, 1 torch thread each when > 1")
    args = ap.parse_args()
    with one_line_errors(ap, CELLS_KEPT):
        run(args)


def run(args: argparse.Namespace) -> None:
    lrs = args.lrs
    val: dict[tuple, float] = {}
    for lr in lrs:
        g = grid(lr, args)
        run_grid(g, progress=True, workers=args.workers, threads=1 if args.workers > 1 else None)
        for r in read_jsonl(g.store):
            if r["ipc"] not in args.ipc or r["method"] not in args.methods:
                continue
            val[(r["method"], lr, r["dataset"], r["ipc"], r["seed"])] = val_acc(r)
    head = "| method | cells | " + " | ".join(f"lr_img {lr:g}" for lr in lrs) + " |"
    print(head + "\n" + "|---" * (len(lrs) + 2) + "|")
    for m in args.methods:
        by_ds: dict[str, list[tuple]] = defaultdict(list)
        for key in val:
            if key[0] == m and key[1] == lrs[0]:
                by_ds[key[2]].append(key[2:])
        for ds in [None, *sorted(by_ds)]:
            cells = [c for d, cs in by_ds.items() if ds in (None, d) for c in cs]
            means = [100 * statistics.mean(val[(m, lr, *c)] for c in cells) for lr in lrs]
            best = max(means)
            txt = " | ".join(f"**{v:.2f}**" if v == best else f"{v:.2f}" for v in means)
            print(f"| {m if ds is None else f'{m}, {ds}'} | {len(cells)} | {txt} |")


if __name__ == "__main__":
    main()

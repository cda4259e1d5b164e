"""Which student lr can match the expert at all? A probe of the matching loss (issue 18).

For each dataset, takes the run's real starting images (ipc 10, seed 0: what MTT/PTM start
from), and for a grid of fixed student lrs unrolls ``syn_steps`` student steps from expert
epoch t towards epoch t + M on the same ``--segments`` (expert, start epoch, DSA seeds) segments, with
no image update. Prints the median normalised matching loss per lr over all segments and over those starting at
epoch 0–1 (PTM's first stage) (1 = "no move"), the best lr
of the grid, and S / N. It needs no training and no evaluation, so it chooses nothing by
accuracy; it shows whether the lr the ``cpu`` profile starts from (0.01) is anywhere near the
lr at which N student steps can cover S expert steps.

    MEDDISTILL_DATA=/work/shared/data/medmnist python benchmarks/tm_lr_probe.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from meddistill.cli import names, nonneg_int, one_line_errors, positive_int
from meddistill.config import build_config
from meddistill.data import get_info
from meddistill.distill import DistillContext
from meddistill.distill.scaling import expert_steps_per_span
from meddistill.distill.schedule import mtt_schedule
from meddistill.distill.tm import TrajectoryMatching
from meddistill.pipeline import load_data
from meddistill.utils import resolve_device

LRS = [0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32]


def probe(dataset: str, args: argparse.Namespace) -> dict:
    cfg = build_config(
        "cpu",
        None,
        args.set,
        dataset=dataset,
        seed=args.seed,
        experts_dir=args.experts_dir,
        **{"distill.ipc": args.ipc, "distill.method": "mtt"},
    )
    ds = load_data(cfg)
    dev = resolve_device(cfg.device)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = DistillContext(ds, cfg, dev, Path(tmp), progress=False)
        tm = TrajectoryMatching(ctx, mtt_schedule(cfg.distill), use_dom=False, soft_labels=False)
        st = tm.init_state()
        d = cfg.distill
        g = torch.Generator().manual_seed(1234)
        segs = []
        for _ in range(args.segments):
            k = int(torch.randint(len(tm.buffer), (1,), generator=g))
            t = int(torch.randint(d.min_start_epoch, d.max_start_epoch, (1,), generator=g))
            seeds = torch.randint(2**62, (d.syn_steps,), generator=g).tolist()
            segs.append((k, t, seeds))
        out = {}
        for lr in LRS:
            with torch.no_grad():
                st.lr.fill_(lr)
            vals = [tm._unroll_detached(st, k, t, d.expert_epochs, seeds, None)[0] for k, t, seeds in segs]
            early = [v for v, (_, t, _) in zip(vals, segs, strict=True) if t < 2]
            out[lr] = (statistics.median(vals), statistics.median(early) if early else float("nan"))
    n = get_info(dataset).n_samples[0]
    s = expert_steps_per_span(n, cfg.experts.batch_size, d.expert_epochs)
    return {"n": n, "S": s, "N": d.syn_steps, "loss": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", type=names("a dataset"), default="breastmnist,retinamnist,pneumoniamnist,bloodmnist")
    ap.add_argument("--ipc", type=positive_int, default=10)
    ap.add_argument("--seed", type=nonneg_int, default=0)
    ap.add_argument("--segments", type=positive_int, default=16)
    ap.add_argument("--experts-dir", default="experts")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    with one_line_errors(ap):
        run(args)


def run(args: argparse.Namespace) -> None:
    head = " | ".join(f"lr {lr:g}" for lr in LRS)
    print(f"| dataset | train images | S | N | S/N | {head} | best lr (all / t<2) | median loss at best lr, t<2 |")
    print("|---" * (7 + len(LRS)) + "|")
    for ds in args.datasets:
        r = probe(ds, args)
        loss = r["loss"]
        best = min(loss, key=lambda lr: loss[lr][0])
        best_early = min(loss, key=lambda lr: loss[lr][1])
        cells = " | ".join(f"**{loss[lr][0]:.3f}**" if lr == best else f"{loss[lr][0]:.3f}" for lr in LRS)
        row = f"| {ds} | {r['n']} | {r['S']} | {r['N']} | {r['S'] / r['N']:.1f} | {cells} "
        print(row + f"| {best:g} / {best_early:g} | {loss[best_early][1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()

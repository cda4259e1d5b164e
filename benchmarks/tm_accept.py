"""Issue 18 acceptance check (reported, never tuned on): the chosen scaling rule on BloodMNIST.

Runs (or resumes) PTM and MTT with ``--rule`` and the baselines random real, DM and herding
(which do not read the rule's keys) at ipc 10, seeds 0–2, ``cpu`` profile, 3 ConvNet-D3
evaluations per set, every iteration logged; then prints

- per TM run: the matching loss at iteration 0, the mean of the last 10 iterations, the min,
  and the learned lr (``benchmarks/tm_diagnose.py``'s table);
- test ACC per method (mean ± std over seeds), PTM − random and PTM − best of (DM, herding),
  paired by seed, against the targets (+5 and +1 points).

    MEDDISTILL_DATA=/work/shared/data/medmnist python benchmarks/tm_accept.py --rule sqrt --workers 2
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from tm_diagnose import grids, run_stats

from meddistill.bench import run_grid
from meddistill.bench.grid import expand
from meddistill.cli import CELLS_KEPT, SEEDS, names, one_line_errors, positive_int
from meddistill.distill.scaling import RULES
from meddistill.utils import read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rule", required=True, choices=sorted(RULES))
    ap.add_argument("--dataset", default="bloodmnist")
    ap.add_argument("--methods", type=names("a method"), default="random,herding,dm,mtt,ptm")
    ap.add_argument("--seeds", type=SEEDS, default="0,1,2")
    ap.add_argument("--ipc", type=positive_int, default=10)
    ap.add_argument("--nets", type=positive_int, default=3, help="ConvNet-D3 evaluations per set")
    ap.add_argument("--store", default="", help="default: results/tm_accept_<rule>.jsonl")
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--experts-dir", default="experts")
    ap.add_argument("--workers", type=positive_int, default=1)
    ap.add_argument("--no-run", action="store_true")
    args = ap.parse_args()
    with one_line_errors(ap, CELLS_KEPT):
        run(args)


def run(args: argparse.Namespace) -> None:
    ns = argparse.Namespace(
        datasets=[args.dataset],
        methods=args.methods,
        seeds=args.seeds,
        ipc=[args.ipc],
        rule=args.rule,
        set=[f"eval.num_nets={args.nets}"],
        store=args.store or f"results/tm_accept_{args.rule}.jsonl",
        out_dir=args.out_dir,
        experts_dir=args.experts_dir,
    )
    gs = grids(ns)
    if not args.no_run:
        for g in gs:
            run_grid(g, progress=True, workers=args.workers, threads=1 if args.workers > 1 else None)
    keys = {c.key for g in gs for c in expand(g)}
    rows = [r for r in read_jsonl(ns.store) if r.get("cell_key") in keys]
    acc: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        acc[r["method"]][r["seed"]] = 100 * r["acc_mean"]
    print(f"## {args.dataset} ipc {args.ipc}, rule {args.rule}, {args.nets} ConvNet-D3 per set\n")
    start = {r["seed"]: r for r in rows if r["method"] == "random"}
    print(
        "| method | seed | loss it 0 | loss last-10 mean | loss min | loss, start epoch 0–1: first 50 → last 50 its "
        "| images moved | lr start → end | test ACC |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["method"], r["seed"])):
        if r["method"] in ("mtt", "ptm", "ptm_nodom", "datm"):
            s = run_stats(r, start.get(r["seed"]))
            print(
                f"| {r['method']} | {r['seed']} | {s['loss_first']:.3f} | {s['loss_last10']:.3f} | "
                f"{s['loss_min']:.3f} | {s['early_first']:.3f} → {s['early_last']:.3f} | {100 * s['moved']:.1f} % "
                f"| {s['lr_init']:.4g} → {s['lr_end']:.4g} | {100 * r['acc_mean']:.2f} |"
            )
    print("\n| method | seeds | test ACC mean ± std | per seed |\n|---|---|---|---|")
    for m in ns.methods:
        v = acc.get(m, {})
        if v:
            xs = [v[s] for s in sorted(v)]
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            per = ", ".join(f"{x:.2f}" for x in xs)
            print(f"| {m} | {len(xs)} | {statistics.mean(xs):.2f} ± {sd:.2f} | {per} |")
    seeds = sorted(set(acc.get("ptm", {})) & set(acc.get("random", {})))
    if seeds:
        d_rand = [acc["ptm"][s] - acc["random"][s] for s in seeds]
        print(f"\nPTM − random (paired, n={len(seeds)}): {statistics.mean(d_rand):+.2f} (target ≥ +5)")
    base = [m for m in ("dm", "herding") if acc.get(m)]
    if base and acc.get("ptm"):
        best = max(base, key=lambda m: statistics.mean(acc[m].values()))
        s2 = sorted(set(acc["ptm"]) & set(acc[best]))
        gap = statistics.mean(acc["ptm"][s] - acc[best][s] for s in s2)
        print(f"PTM − best of (DM, herding) = {best} (paired, n={len(s2)}): {gap:+.2f} (target ≥ +1)")


if __name__ == "__main__":
    main()

"""Why trajectory matching stays at its start on larger datasets (issue 18): a diagnosis.

Runs (or resumes) MTT and PTM — and ``random``, whose set *is* their real starting images at
the same seed — on the four shared MedMNIST subsets (ipc 10, seed 0, ``cpu`` profile,
2 ConvNet-D3 evaluations per set, every iteration logged), then reports per dataset and method:

- train size; S = expert SGD steps per matched span (expert_epochs × ceil(n_train / batch))
  against N = student steps (``syn_steps``);
- the learned student lr (``lr`` in ``metrics.jsonl``): start, iteration 100, end, min–max;
- the matching loss: first iteration, mean of the last 10, min; plus a plot per dataset;
- how far the images moved: ‖X_end − X_start‖ / ‖X_start‖ over the whole set (X_start =
  the ``random`` run's set at the same seed);
- skipped iterations, DOM replacements, and the mean validation ACC (never test ACC).

``--rule NAME`` applies a scaling rule of ``meddistill.distill.scaling.RULES`` to the TM
cells (the acceptance check uses it with ``--seeds 0,1,2``).

    MEDDISTILL_DATA=/work/shared/data/medmnist python benchmarks/tm_diagnose.py --workers 2
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from meddistill.bench import run_grid
from meddistill.bench.grid import Grid
from meddistill.cli import CELLS_KEPT, IPCS, SEEDS, names, one_line_errors, positive_int
from meddistill.data import get_info
from meddistill.distill.methods_tm import ENGINES
from meddistill.distill.scaling import RULES, expert_steps_per_span, rule_overrides
from meddistill.utils import read_jsonl

DATASETS = ["breastmnist", "retinamnist", "pneumoniamnist", "bloodmnist"]
# PTM's DOM measures at expert 0's final epoch in every row of these stores (measured before
# the `read` default; the buffers are fully trained here, so nothing else changes)
# MTT's image lr: the 100 its stored rows were measured with (the method's default is now 10)
BASE_OVERRIDES = [
    "eval.num_nets=2",
    "distill.log_every=1",
    "distill.ptm.dom.feature_epoch=last",
    "distill.mtt.lr_img=100",
]
# BloodMNIST's 8 x 20-epoch expert buffer took ~10 min per expert on the shared 2-core CPU
# (session of issue 18); its runs use the first 4 experts of the same buffer (the buffer's
# identity does not depend on the count). Every BloodMNIST row here, of every method, has it.
DATASET_OVERRIDES = {"bloodmnist": ["experts.num_experts=4"]}


def val_acc(row: dict) -> float:
    """A row's mean validation ACC over its evaluation nets."""
    return statistics.mean(x["val_acc"] for x in row["runs"])


def grids(args: argparse.Namespace) -> list[Grid]:
    """One grid for ``random`` and any other non-TM method (no rule: they do not read its
    keys), and one per ipc for the TM methods with the rule applied."""
    common = dict(
        profile="cpu",
        datasets=args.datasets,
        seeds=args.seeds,
        eval_nets=["convnet"],
        full=False,
        store=args.store,
        out_dir=args.out_dir,
        experts_dir=args.experts_dir,
    )
    ov = BASE_OVERRIDES + args.set
    tm = [m for m in args.methods if m in ENGINES]
    plain = ["random"] + [m for m in args.methods if m not in tm and m != "random"]
    plain_ds = {ds: DATASET_OVERRIDES.get(ds, []) for ds in args.datasets}
    out = [Grid(name="tm_diag_random", ipc=args.ipc, methods=plain, overrides=ov, dataset_overrides=plain_ds, **common)]
    rule = RULES[args.rule]
    for ipc in args.ipc:
        by_ds = {ds: plain_ds[ds] + rule_overrides(ds, ipc, rule, "cpu", ov) for ds in args.datasets}
        out.append(
            Grid(
                name=f"tm_diag_{args.rule}_ipc{ipc}",
                ipc=[ipc],
                methods=tm,
                overrides=ov,
                dataset_overrides=by_ds,
                **common,
            )
        )
    return out


def moved(run_dir: Path, start_dir: Path) -> float:
    """Relative L2 distance of the final images from the run's real starting images."""
    x = np.load(run_dir / "synset.npz")["images"].astype(np.float64)
    x0 = np.load(start_dir / "synset.npz")["images"].astype(np.float64)
    return float(np.linalg.norm(x - x0) / np.linalg.norm(x0))


def _mean(xs: list[float]) -> float:
    return statistics.mean(xs) if xs else float("nan")


def method_settings(row: dict) -> dict:
    """The row's trajectory-matching settings: its method's own section (older rows: flat)."""
    d = row["config"]["distill"]
    return d.get(d["method"], d)


def run_stats(row: dict, start: dict | None) -> dict:
    rd = Path(row["run_dir"])
    if not (rd / "metrics.jsonl").exists():  # run folder gone (runs/ is not committed): the row's numbers only
        nan = float("nan")
        d = method_settings(row)
        keys = ("lr100", "lr_min", "lr_max", "loss_first", "loss_last10", "loss_min", "early_first", "early_last")
        out = dict.fromkeys(keys, nan)
        out.update(lr_init=d["lr_init"], lr_lr=d["lr_lr"], lr_end=row["eval_lr"], moved=nan, skipped=-1)
        out.update(replaced=-1, val=val_acc(row), curve=[])
        return out
    m = [r for r in read_jsonl(rd / "metrics.jsonl") if "loss" in r]
    ok = [r for r in m if r.get("status") != "skipped"]
    loss = [r["loss"] for r in ok]
    lr = [r["lr"] for r in m]
    d = method_settings(row)
    at100 = next((r["lr"] for r in m if r["it"] == 100), float("nan"))
    syn = np.load(rd / "synset.npz", allow_pickle=True)
    return {
        "lr_init": d["lr_init"],
        "lr_lr": d["lr_lr"],
        "lr100": at100,
        "lr_end": float(syn["lr"]) if "lr" in syn.files else lr[-1],
        "lr_min": min(lr),
        "lr_max": max(lr),
        "loss_first": m[0]["loss"],
        "loss_last10": statistics.mean(loss[-10:]),
        "loss_min": min(loss),
        # start epochs 0-1 only (PTM's first stage; ~1/4 of MTT's draws), first vs last 50 iterations:
        # a single iteration's loss depends mostly on the drawn start epoch
        "early_first": _mean([r["loss"] for r in ok if r["it"] < 50 and r["start"] < 2]),
        "early_last": _mean([r["loss"] for r in ok if r["it"] >= m[-1]["it"] - 49 and r["start"] < 2]),
        "moved": moved(rd, Path(start["run_dir"])) if start else float("nan"),
        "skipped": sum(r.get("status") == "skipped" for r in m),
        "replaced": int(m[-1].get("replaced_total", 0)),
        "val": val_acc(row),
        "curve": [(r["it"], r["loss"]) for r in m],
    }


def plot(curves: dict[str, dict[str, list]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(3.4 * len(curves), 2.8), dpi=120, squeeze=False)
    for ax, (ds, by_m) in zip(axes[0], curves.items(), strict=True):
        for m, pts in sorted(by_m.items()):
            xs, ys = zip(*pts, strict=True)
            # running mean over 10 iterations: single-iteration losses depend on the drawn start epoch
            k = 10
            sm = np.convolve(ys, np.ones(k) / k, mode="valid")
            ax.plot(xs, ys, lw=0.4, alpha=0.35)
            ax.plot(xs[k - 1 :], sm, lw=1.2, label=m, color=ax.lines[-1].get_color())
        ax.axhline(1.0, color="k", lw=0.6, ls=":")
        ax.set_title(ds, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylim(0, max(1.6, min(4.0, ax.get_ylim()[1])))
    axes[0][0].set_ylabel("matching loss (1 = no move)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", type=names("a dataset"), default=",".join(DATASETS))
    ap.add_argument("--methods", type=names("a method"), default="mtt,ptm")
    ap.add_argument("--seeds", type=SEEDS, default="0")
    ap.add_argument("--ipc", type=IPCS, default="10")
    ap.add_argument("--rule", default="base", choices=sorted(RULES))
    ap.add_argument("--set", action="append", default=[], help="extra key=value override for every cell")
    ap.add_argument("--store", default="", help="default: results/tm_diagnose_<rule>.jsonl")
    ap.add_argument("--plot", default="", help="default: docs/results/tm_diagnose_<rule>.png")
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--experts-dir", default="experts")
    ap.add_argument("--workers", type=positive_int, default=1, help="cells at once, 1 torch thread each when > 1")
    ap.add_argument("--no-run", action="store_true", help="only report what the store holds")
    args = ap.parse_args()
    with one_line_errors(ap, CELLS_KEPT):
        run(args)


def run(args: argparse.Namespace) -> None:
    args.store = args.store or f"results/tm_diagnose_{args.rule}.jsonl"
    args.plot = Path(args.plot or f"docs/results/tm_diagnose_{args.rule}.png")
    gs = grids(args)
    if not args.no_run:
        for g in gs:
            run_grid(g, progress=True, workers=args.workers, threads=1 if args.workers > 1 else None)
    keys = {c for g in gs for c in _keys(g)}
    rows = [r for r in read_jsonl(args.store) if r.get("cell_key") in keys]
    start = {(r["dataset"], r["ipc"], r["seed"]): r for r in rows if r["method"] == "random"}
    cols = "| dataset | train images | S expert steps / span | N student steps | S/N | method | seed "
    cols += "| lr: start → it 100 → end (min–max) | loss: it 0 / last-10 mean / min "
    cols += (
        "| loss, start epoch 0–1: first 50 → last 50 its | images moved (rel. L2) | skipped | DOM replaced | val ACC |"
    )
    print(cols + "\n" + "|---" * 14 + "|")
    curves: dict[str, dict[str, list]] = defaultdict(dict)
    order = {d: i for i, d in enumerate(args.datasets)}
    tm = sorted(
        (r for r in rows if r["method"] in ENGINES),
        key=lambda r: (order.get(r["dataset"], 99), r["ipc"], r["method"], r["seed"]),
    )
    for r in tm:
        s = run_stats(r, start.get((r["dataset"], r["ipc"], r["seed"])))
        cfg = r["config"]
        n = get_info(r["dataset"]).n_samples[0]
        big_s = expert_steps_per_span(n, cfg["experts"]["batch_size"], cfg["distill"]["expert_epochs"])
        steps = cfg["distill"]["syn_steps"]
        lr = f"{s['lr_init']:.4g} → {s['lr100']:.4g} → {s['lr_end']:.4g} ({s['lr_min']:.4g}–{s['lr_max']:.4g})"
        loss = f"{s['loss_first']:.3f} / {s['loss_last10']:.3f} / {s['loss_min']:.3f}"
        early = f"{s['early_first']:.3f} → {s['early_last']:.3f}"
        print(
            f"| {r['dataset']} | {n} | {big_s} | {steps} | {big_s / steps:.1f} | {r['method']} | {r['seed']} | {lr} "
            f"| {loss} | {early} | {100 * s['moved']:.1f} % | {s['skipped']} | {s['replaced']} | {100 * s['val']:.2f} |"
        )
        if r["seed"] == args.seeds[0] and r["ipc"] == args.ipc[0] and s["curve"]:
            curves[r["dataset"]][r["method"]] = s["curve"]
    for r in sorted(start.values(), key=lambda r: (order.get(r["dataset"], 99), r["ipc"], r["seed"])):
        print(f"| {r['dataset']} | random (the start) | seed {r['seed']} | val ACC {100 * val_acc(r):.2f} |")
    if curves:
        title = f"matching loss per iteration, ipc {args.ipc[0]}, seed {args.seeds[0]}, rule {args.rule}"
        plot(dict(sorted(curves.items(), key=lambda kv: order.get(kv[0], 99))), args.plot, title)
        print(f"plot: {args.plot}")


def _keys(g: Grid) -> set[str]:
    from meddistill.bench.grid import expand

    return {c.key for c in expand(g)}


if __name__ == "__main__":
    main()

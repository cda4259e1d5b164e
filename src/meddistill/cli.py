"""The ``meddistill`` command: one sub-command per pipeline stage, plus ``run``.

Parsing (:func:`build_parser`) is separate from work (:func:`main` → ``cmd_*``), as in
torchvision's reference scripts.  User errors print one line and exit with status 2;
Ctrl-C leaves the checkpoint in place and says how to resume.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meddistill import __version__
from meddistill.config import PROFILES, RunConfig, build_config, config_from_dict, read_yaml
from meddistill.errors import MeddistillError


def _common(p: argparse.ArgumentParser, dataset: bool = True) -> None:
    if dataset:
        p.add_argument("dataset", help="MedMNIST subset, e.g. pneumoniamnist")
    p.add_argument("--profile", choices=PROFILES, help="size profile (default: cpu; for a run folder, its own)")
    p.add_argument("--config", help="YAML file merged over the profile")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set distill.iterations=500 (repeatable)",
    )
    p.add_argument("--size", type=int, choices=(28, 64, 128, 224), help="image size (default 28)")
    p.add_argument("--seed", type=int, help="seed (default 0); everything is derived from it")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--data-root", help="folder with MedMNIST npz files (then $MEDDISTILL_DATA, ~/.medmnist)")
    p.add_argument("--out", dest="out_dir", help="runs folder (default: runs)")
    p.add_argument("--experts-dir", help="expert buffer folder (default: experts)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _distill_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ipc", type=int, help="synthetic images per class")
    p.add_argument("--method", help="ptm (default), ptm_nodom, mtt, datm, random, herding, kcenter, dm, dc")
    p.add_argument("--iterations", type=int, help="distillation iterations")
    p.add_argument("--restart", action="store_true", help="discard this cell's checkpoint and start over")
    p.add_argument(
        "--resume",
        action="store_true",
        help="require a checkpoint of this exact config and continue it (resuming is also automatic)",
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="meddistill", description="Medical image dataset distillation.")
    ap.add_argument("--version", action="version", version=f"meddistill {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list MedMNIST subsets and whether their files are found")
    p.add_argument("--data-root")
    p.add_argument("--size", type=int, default=28, choices=(28, 64, 128, 224))

    p = sub.add_parser("experts", help="train expert trajectories (resumable)")
    _common(p)
    p.add_argument("--num-experts", type=int)
    p.add_argument("--epochs", type=int)

    p = sub.add_parser("distill", help="distill a synthetic set (resumable)")
    _common(p)
    _distill_opts(p)

    p = sub.add_parser("eval", help="evaluate a run folder / synset.npz, or the full train split")
    p.add_argument("target", help="run folder, synset.npz, or a dataset name with --full")
    p.add_argument("--full", action="store_true", help="evaluate training on the full real train split")
    p.add_argument("--results", help="JSON-lines file to append the result row to")
    p.add_argument("--num-nets", type=int, help="fresh nets (seeds) per evaluation net")
    p.add_argument("--nets", help="comma-separated evaluation nets, e.g. convnet,resnet18,vgg11")
    _common(p, dataset=False)

    p = sub.add_parser("run", help="experts → distill → evaluate one dataset and print its accuracy")
    _common(p)
    _distill_opts(p)
    p.add_argument("--num-nets", type=int, help="fresh nets (seeds) per evaluation net")
    p = sub.add_parser("bench", help="run a benchmark grid (cells already in the store are skipped)")
    p.add_argument("grid", help="grid YAML, e.g. configs/bench/cpu.yaml")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    p.add_argument("--workers", type=int, default=1, help="local executor: cells run at once in worker processes")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: this process's count / workers)")
    p.add_argument("--store", help="results JSON-lines file (default: the grid's store)")
    p.add_argument("--out", dest="out_dir", help="runs folder (default: the grid's out_dir)")
    p.add_argument("--experts-dir", help="expert buffer folder (default: the grid's experts_dir)")
    p.add_argument("--limit", type=int, help="run at most this many missing cells")
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--report", help="write tables and plots to this folder afterwards")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("audit", help="privacy audit of a run: nearest real images, membership inference")
    p.add_argument("run", help="run folder")
    p.add_argument("--ssim-threshold", type=float, default=0.9, help="flag images above this SSIM (default 0.9)")
    p.add_argument(
        "--reference",
        action="store_true",
        help="also audit a random-real-subset coreset of the same size (leaks by construction)",
    )
    _common(p, dataset=False)

    p = sub.add_parser("stats", help="diversity and coverage of a run's set in an independent feature space")
    p.add_argument("run", help="run folder")
    p.add_argument("--json", action="store_true", help="print the stats as one JSON line")
    p.add_argument("--experts-dir", help="where the feature net is cached (default: the run's experts_dir)")
    p.add_argument("--data-root", help="folder with MedMNIST npz files")
    p.add_argument("--device", help="auto, cpu, cuda ... (default: the run's)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("export", help="a self-contained folder another lab can use without meddistill")
    p.add_argument("run", help="run folder")
    p.add_argument("out", help="output folder (new or empty)")

    p = sub.add_parser("report", help="tables (md/csv/tex), accuracy-vs-ipc plots, image grids")
    p.add_argument("store", help="results JSON-lines file written by bench")
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--net", help="evaluation net to report; 'all': one sub-folder per net (default: the row's mean)")
    p.add_argument("--order", help="comma-separated method order for the tables")
    return ap


def config_from_args(args: argparse.Namespace, dataset: str | None = None) -> RunConfig:
    flags = {
        "dataset": dataset if dataset is not None else getattr(args, "dataset", None),
        "size": getattr(args, "size", None),
        "seed": getattr(args, "seed", None),
        "device": getattr(args, "device", None),
        "data_root": getattr(args, "data_root", None),
        "out_dir": getattr(args, "out_dir", None),
        "experts_dir": getattr(args, "experts_dir", None),
        "distill.ipc": getattr(args, "ipc", None),
        "distill.method": getattr(args, "method", None),
        "method.iterations": getattr(args, "iterations", None),
        "experts.num_experts": getattr(args, "num_experts", None),
        "experts.epochs": getattr(args, "epochs", None),
        "eval.num_nets": getattr(args, "num_nets", None),
        "eval.nets": args.nets.split(",") if getattr(args, "nets", None) else None,
    }
    return build_config(args.profile or "cpu", args.config, args.overrides, **flags)


def cmd_datasets(args: argparse.Namespace) -> int:
    from meddistill.data import DATASETS
    from meddistill.data.loader import candidate_roots

    roots = candidate_roots(args.data_root)
    print(f"{'name':16} {'modality':26} {'task':26} {'cls':>3} {'ch':>2} {'train':>7}  {'license':13} local file")
    for d in DATASETS.values():
        found = next((str(r / d.filename(args.size)) for r in roots if (r / d.filename(args.size)).is_file()), "-")
        print(
            f"{d.name:16} {d.modality:26} {d.task:26} {d.num_classes:>3} {d.channels:>2} "
            f"{d.n_samples[0]:>7}  {d.license:13} {found}"
        )
    return 0


def cmd_experts(args: argparse.Namespace) -> int:
    from meddistill.experts import train_experts
    from meddistill.pipeline import load_data
    from meddistill.utils import resolve_device

    cfg = config_from_args(args)
    folder = train_experts(load_data(cfg), cfg, resolve_device(cfg.device), not args.no_progress)
    print(f"experts: {folder}")
    return 0


def _check_resume(args: argparse.Namespace, cfg: RunConfig) -> None:
    from meddistill.distill.tm import CKPT_META
    from meddistill.pipeline import run_dir_for

    run_dir = run_dir_for(cfg)
    if args.resume and not ((run_dir / CKPT_META).exists() or (run_dir / "synset.npz").exists()):
        raise MeddistillError(f"nothing to resume: no checkpoint in {run_dir} for this config")
    if args.resume and args.restart:
        raise MeddistillError("--resume and --restart contradict each other")


def cmd_distill(args: argparse.Namespace) -> int:
    from meddistill.pipeline import distill

    cfg = config_from_args(args)
    _check_resume(args, cfg)
    run_dir, syn = distill(cfg, progress=not args.no_progress, restart=args.restart)
    print(f"synthetic set: {run_dir / 'synset.npz'} ({len(syn.labels)} images)")
    return 0


def _print_summary(prefix: str, row: dict) -> None:
    for net, s in row["per_net"].items():
        print(
            f"{prefix} [{net}] test ACC {100 * s['acc_mean']:.2f} ± {100 * s['acc_std']:.2f} %  "
            f"AUC {100 * s['auc_mean']:.2f} ± {100 * s['auc_std']:.2f} %  over {s['n']} seeds"
        )


def cmd_eval(args: argparse.Namespace) -> int:
    from meddistill.distill import FULL
    from meddistill.pipeline import evaluate_run, full_row, load_data
    from meddistill.synset import SynSet
    from meddistill.utils import append_jsonl

    if args.full:
        cfg = config_from_args(args, dataset=args.target)
        cfg.distill.method, cfg.distill.ipc = FULL, 0
        row = full_row(cfg, not args.no_progress)
        append_jsonl(args.results or Path(cfg.out_dir) / "results.jsonl", row)
        _print_summary(f"{cfg.dataset} full train split ({row['train_images']} images)", row)
        return 0
    target = Path(args.target)
    run_dir = target if target.is_dir() else target.parent
    base = _saved_config(run_dir)
    syn = SynSet.load(target)
    if base is not None and args.profile is None:
        args.profile = base.profile  # evaluate with the run's own profile unless told otherwise
    if base is None:
        cfg = config_from_args(args, dataset=syn.meta.get("dataset"))
    else:
        cfg = config_from_args(args, dataset=base.dataset)
        cfg.net, cfg.distill, cfg.size = base.net, base.distill, base.size
    _, row = evaluate_run(cfg, run_dir, syn, load_data(cfg), progress=not args.no_progress)
    if args.results:
        append_jsonl(args.results, row)
    _print_summary(f"{cfg.dataset} {syn.meta.get('method')} ipc={syn.meta.get('ipc')}", row)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from meddistill.pipeline import run_cell

    cfg = config_from_args(args)
    _check_resume(args, cfg)
    res = run_cell(cfg, progress=not args.no_progress, restart=args.restart)
    print(f"run folder: {res.run_dir}")
    _print_summary(f"{cfg.dataset} {cfg.distill.method} ipc={cfg.distill.ipc} ({cfg.profile} profile)", res.row)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from meddistill.bench import load_grid, run_grid, write_report

    grid = load_grid(args.grid)
    for key in ("store", "out_dir", "experts_dir"):
        if getattr(args, key):
            setattr(grid, key, getattr(args, key))
    extra = {"device": args.device} if args.device else {}
    ran, done = run_grid(
        grid, args.executor, args.address, not args.no_progress, args.limit, args.workers, args.threads, **extra
    )
    print(f"bench {grid.name}: {ran} cells run now, {done} already in {grid.store}")
    if args.report:
        write_report(grid.store, args.report, grid.methods)
        print(f"report: {args.report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from meddistill.bench import write_report

    order = args.order.split(",") if args.order else None
    written = write_report(args.store, args.out, order, args.net)
    for key, path in written.items():  # one ACC table, or one per net with --net all
        if key.endswith("acc.md"):
            print(f"{path}:\n{path.read_text()}")
    print(f"{len(written)} files in {args.out}")
    return 0


def _saved_config(run_dir: Path) -> RunConfig | None:
    """The resolved config a run folder was made with, or None if it has none."""
    path = run_dir / "config.yaml"
    return config_from_dict(read_yaml(path)) if path.exists() else None


def _run_config(run_dir: Path, args: argparse.Namespace) -> RunConfig:
    base = _saved_config(run_dir)
    if base is None:
        raise MeddistillError(f"{run_dir} is not a run folder (no config.yaml)")
    for key in ("device", "data_root"):
        if getattr(args, key, None):
            setattr(base, key, getattr(args, key))
    return base


def cmd_audit(args: argparse.Namespace) -> int:
    from meddistill.audit import run_audit
    from meddistill.distill import DistillContext, get_method
    from meddistill.distill.coreset import expert_features
    from meddistill.pipeline import load_data
    from meddistill.synset import SynSet
    from meddistill.utils import resolve_device

    run_dir = Path(args.run)
    cfg = _run_config(run_dir, args)
    syn = SynSet.load(run_dir)
    ds = load_data(cfg)
    device = resolve_device(cfg.device)
    ctx = DistillContext(ds, cfg, device, run_dir, not args.no_progress)

    def audit_and_print(folder: Path, synset: SynSet, label: str) -> None:
        rep = run_audit(folder, synset, ds, cfg, device, args.ssim_threshold, lambda x: expert_features(ctx, x))
        s = rep.summary
        print(
            f"{label}: mean max-SSIM to real {s['mean_max_ssim']:.3f}; flagged {len(rep.flagged)}/"
            f"{rep.n_synthetic}; membership-inference AUC {s['mia_auc']:.3f}  ({folder / 'audit.json'})"
        )

    audit_and_print(run_dir, syn, str(run_dir))
    if args.reference:
        ref_dir = run_dir / "audit_reference_random"
        ref_dir.mkdir(exist_ok=True)
        ref = get_method("random")(DistillContext(ds, cfg, device, ref_dir, False))
        audit_and_print(ref_dir, ref, "reference (random real images)")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    import json

    from meddistill.pipeline import load_data
    from meddistill.stats import STATS_FILE, run_stats, summary_line
    from meddistill.synset import SynSet

    run_dir = Path(args.run)
    cfg = _run_config(run_dir, args)
    cfg.experts_dir = args.experts_dir or cfg.experts_dir
    stats = run_stats(cfg, run_dir, SynSet.load(run_dir), load_data(cfg), not args.no_progress)
    if args.json:
        print(json.dumps(stats, sort_keys=True))
    else:
        print(f"{run_dir}: {summary_line(stats)}  ({run_dir / STATS_FILE})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from meddistill.export import export_run

    out = export_run(args.run, args.out)
    print(f"exported to {out}: synset.npz, card.md, train_example.py")
    return 0


COMMANDS = {
    "audit": cmd_audit,
    "stats": cmd_stats,
    "export": cmd_export,
    "datasets": cmd_datasets,
    "experts": cmd_experts,
    "distill": cmd_distill,
    "eval": cmd_eval,
    "run": cmd_run,
    "bench": cmd_bench,
    "report": cmd_report,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MeddistillError as exc:
        print(f"meddistill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "meddistill: interrupted; finished work and the last checkpoint are kept — run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())

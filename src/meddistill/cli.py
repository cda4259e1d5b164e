"""The ``meddistill`` command: one sub-command per pipeline stage, plus ``run``.

Parsing (:func:`build_parser`) is separate from work (:func:`main` → ``cmd_*``), as in
torchvision's reference scripts. Each sub-command accepts only the flags it reads (README's
table is generated from this parser, :func:`usage_table`). Inputs are checked before any work
starts (:mod:`meddistill.checks`); user errors print one line and exit with status 2; anything
else prints one ``internal error`` line and exits with 1 (``MEDDISTILL_DEBUG=1``: the
traceback). Ctrl-C leaves the checkpoint in place and says how to resume, in one line at any
moment: the heavy imports (torch) happen inside :func:`main`'s handlers, and :func:`script`
ignores a further Ctrl-C once the command has ended (while Python runs its exit handlers).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from meddistill import __version__
from meddistill.errors import ArtifactError, ConfigError, MeddistillError
from meddistill.process import prepare_process, sigint_deferred
from meddistill.profiles import PROFILES

if TYPE_CHECKING:  # the CLI imports torch only inside main(), where a Ctrl-C is handled
    from meddistill.config import RunConfig

T = TypeVar("T")


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {least} or more, got {value}")
    return value


def nonneg_int(text: str) -> int:
    return _int_at_least(text, 0)


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def percent_float(text: str) -> float:
    """An argparse type: a number strictly between 0 and 100 (NaN is not one)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 100.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100 (exclusive), got {text}")
    return value


def comma_list(cast: Callable[[str], T], ok: Callable[[T], bool], what: str) -> Callable[[str], list[T]]:
    """An argparse type: a comma-separated list of ``cast`` values, each passing ``ok``
    (``what`` names one, e.g. "a seed of 0 or more"). An empty item is an error."""

    def parse(text: str) -> list[T]:
        items = text.split(",")
        if not all(item.strip() for item in items):
            raise argparse.ArgumentTypeError(f"{text!r} has an empty item; give a comma-separated list, each {what}")
        try:
            values = [cast(item.strip()) for item in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list, each {what}") from None
        bad = [v for v in values if not ok(v)]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad[0]!r} is not {what}")
        return values

    return parse


def names(what: str = "a name", known: Iterable[str] | None = None) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of non-empty names, each one of ``known`` if given."""
    if known is None:
        return comma_list(str, bool, what)
    allowed = sorted(known)
    return comma_list(str, lambda v: v in allowed, f"{what} ({', '.join(allowed)})")


CELLS_KEPT = "interrupted; finished cells are in the store, the same command resumes"
SEEDS = comma_list(int, lambda v: v >= 0, "a seed of 0 or more")
IPCS = comma_list(int, lambda v: v >= 1, "an ipc of 1 or more")
IMAGE_LRS = comma_list(float, lambda v: 0 < v < math.inf, "a positive image lr")


@contextlib.contextmanager
def one_line_errors(ap: argparse.ArgumentParser, interrupted: str = "interrupted") -> Iterator[None]:
    """For a script's ``main``: a :class:`MeddistillError` ends it with one line and exit 2,
    Ctrl-C with ``interrupted`` and exit 130. Other exceptions keep their traceback (a script
    is a developer's tool; ``meddistill`` itself also turns those into one line)."""
    try:
        prepare_process()
        yield
    except MeddistillError as exc:
        ap.exit(2, f"{ap.prog}: error: {' '.join(str(exc).split())}\n")
    except KeyboardInterrupt:
        ap.exit(130, f"{ap.prog}: {interrupted}\n")


# ------------------------------------------------------------------ flag groups
def _config_flags(p: argparse.ArgumentParser, profile_help: str = "size profile (default: cpu)") -> None:
    p.add_argument("--profile", choices=PROFILES, help=profile_help)
    p.add_argument("--config", help="YAML file merged over the profile")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set distill.iterations=500 (repeatable)",
    )


def _size(p: argparse.ArgumentParser, default: int | None = None) -> None:
    p.add_argument("--size", type=int, default=default, help="image size (default 28; MedMNIST: 28, 64, 128, 224)")


def _seed(p: argparse.ArgumentParser, help: str = "seed (default 0); everything is derived from it") -> None:
    p.add_argument("--seed", type=int, help=help)


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")


def _workers(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=nonneg_int,
        help="CPU processes that train experts; 0 = one per core (default), 1 = this process only",
    )


def _data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="folder with MedMNIST npz files (then $MEDDISTILL_DATA, ~/.medmnist)")


def _out(p: argparse.ArgumentParser, help: str = "runs folder (default: runs)") -> None:
    p.add_argument("--out", dest="out_dir", help=help)


def _experts(p: argparse.ArgumentParser, help: str = "expert buffer folder (default: experts)") -> None:
    p.add_argument("--experts-dir", help=help)


def _progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _own_images(p: argparse.ArgumentParser) -> None:
    """Settings of a lab's own image folder or CSV (data/sources.py); MedMNIST names reject them."""
    p.add_argument("--channels", type=int, choices=(1, 3), help="own images: 1 or 3 channels (default: auto)")
    p.add_argument("--licence", help="own images: licence of the data, shown on the exported dataset card")
    p.add_argument("--on-bad-image", choices=("fail", "skip"), help="own images: unreadable files (default: fail)")


DATASET_HELP = "MedMNIST subset (pneumoniamnist), image folder PATH/<class>/* or CSV manifest"


METHOD_HELP = "a registered method (default: ptm); `--help` lists them"


def method_help() -> str:
    """The ``--method`` help, generated from the method registry (imports every method, hence
    torch: built only when help is asked for, so parsing stays light)."""
    from meddistill.distill import METHODS

    listed = "; ".join(f"{name}: {spec.summary.rstrip('.')}" for name, spec in sorted(METHODS.items()))
    return f"default ptm. {listed}".replace("%", "%%")


def _distill_opts(p: argparse.ArgumentParser, methods: str) -> None:
    p.add_argument("--ipc", type=int, help="synthetic images per class")
    p.add_argument("--method", help=methods)
    p.add_argument("--iterations", type=int, help="distillation iterations")
    p.add_argument("--restart", action="store_true", help="discard this cell's checkpoint and start over")
    p.add_argument(
        "--resume",
        action="store_true",
        help="require a checkpoint of this exact config and continue it (resuming is also automatic)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check config, data, method, nets and folders, print the run folder, compute nothing",
    )


def _cell_flags(p: argparse.ArgumentParser, methods: str) -> None:
    """What ``distill`` and ``run`` share: one dataset, the whole config, every folder."""
    p.add_argument("dataset", help=DATASET_HELP)
    _own_images(p)
    _config_flags(p)
    _size(p)
    _seed(p)
    _device(p)
    _workers(p)
    _data_root(p)
    _out(p)
    _experts(p)
    _progress(p)
    _distill_opts(p, methods)
    _dp(p)


# ------------------------------------------------------------------ parser
def _datasets_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="list MedMNIST subsets and whether their files are found")
    _data_root(p)
    _size(p, default=28)


def _positive(name: str, hint: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (0 < value < math.inf):
            raise argparse.ArgumentTypeError(f"{name} must be a positive finite number, got {text!r} ({hint})")
        return value

    return parse


def _dp(p: argparse.ArgumentParser) -> None:
    """Formal differential privacy (``dp:`` section, docs/privacy.md)."""
    p.add_argument(
        "--dp-epsilon", type=_positive("--dp-epsilon", "leave it out for no DP"),
        help="train experts with DP-SGD and distill without reading a real image: an (ε, δ) guarantee for the set",
    )  # fmt: skip
    p.add_argument(
        "--dp-delta", type=_positive("--dp-delta", "default: below 1/N"),
        help="δ of the guarantee (default: 1/(10 N) rounded down, N train images)",
    )  # fmt: skip


def _experts_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experts", help="train expert trajectories (resumable)")
    p.add_argument("dataset", help=DATASET_HELP)
    _own_images(p)
    _config_flags(p)
    _size(p)
    _device(p)
    _workers(p)
    _data_root(p)
    _experts(p)
    _progress(p)
    p.add_argument("--num-experts", type=int)
    p.add_argument("--epochs", type=int)
    _dp(p)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a run folder / synset.npz, or the full train split")
    p.add_argument("target", help="run folder, synset.npz, or a dataset name with --full")
    p.add_argument("--full", action="store_true", help="evaluate training on the full real train split")
    p.add_argument("--results", help="JSON-lines file to append the result row to")
    p.add_argument("--num-nets", type=int, help="fresh nets (seeds) per evaluation net")
    p.add_argument("--nets", type=names("a net"), help="comma-separated evaluation nets, e.g. convnet,resnet18,vgg11")
    _config_flags(p, "size profile (default: cpu; for a run folder, its own)")
    _size(p)
    _seed(p, "evaluation seed (default 0; for a run folder, the run's seed)")
    _device(p)
    _data_root(p)
    _out(p, "folder of results.jsonl (default: runs; for a run folder, the runs folder holding it)")
    _progress(p)
    _own_images(p)


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark grid (cells already in the store are skipped)")
    p.add_argument("grid", help="grid YAML, e.g. configs/bench/cpu.yaml")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--address", help="Ray cluster address (--executor ray; default: a local Ray)")
    p.add_argument("--workers", type=positive_int, default=1, help="local executor: cells run at once in processes")
    p.add_argument("--threads", type=positive_int, help="torch threads per worker (default: this process's / workers)")
    p.add_argument("--store", help="results JSON-lines file (default: the grid's store)")
    _out(p, "runs folder (default: the grid's out_dir)")
    _experts(p, "expert buffer folder (default: the grid's experts_dir)")
    _data_root(p)
    p.add_argument("--limit", type=nonneg_int, help="run at most this many missing cells")
    _device(p)
    p.add_argument("--report", help="write tables and plots to this folder afterwards")
    p.add_argument(
        "--status", action="store_true", help="only print where the grid stands and the time left; run nothing"
    )
    _progress(p)


def _stats_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="diversity and coverage of a run's set in an independent feature space")
    p.add_argument("run", help="run folder (its config.yaml says what to measure)")
    p.add_argument("--json", action="store_true", help="print the stats as one JSON line")
    _experts(p, "where the feature net is cached (default: the run's experts_dir)")
    _data_root(p)
    _device(p)
    _progress(p)


def _audit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="privacy audit of a run: traceability, closeness calibrated on the test split, attacks"
    )
    p.add_argument("run", help="run folder (its config.yaml says what to audit)")
    p.add_argument(
        "--percentile",
        type=percent_float,
        default=99.0,
        help="flag images closer to a train image than this percentile of real test images (default 99)",
    )
    p.add_argument(
        "--shadows",
        type=positive_int,
        help="also run LiRA membership inference with this many shadow runs of the whole pipeline, each on a "
        "random half of the train split (16 or more for a reportable figure; costs that many runs; resumable)",
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="also audit a random-real-subset coreset of the same size (leaks by construction)",
    )
    _experts(p, "expert buffer folder (default: the run's, relative to the folder its out_dir was in)")
    _data_root(p)
    _device(p)
    _progress(p)


def build_parser(methods: str = METHOD_HELP) -> argparse.ArgumentParser:
    """The CLI; ``methods``: the ``--method`` help (:func:`method_help` when help is shown)."""
    ap = argparse.ArgumentParser(prog="meddistill", description="Medical image dataset distillation.")
    ap.add_argument("--version", action="version", version=f"meddistill {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    _datasets_parser(sub)
    _experts_parser(sub)
    _cell_flags(sub.add_parser("distill", help="distill a synthetic set (resumable)"), methods)
    _eval_parser(sub)
    p = sub.add_parser("run", help="experts → distill → evaluate one dataset and print its accuracy")
    _cell_flags(p, methods)
    p.add_argument("--num-nets", type=int, help="fresh nets (seeds) per evaluation net")
    _bench_parser(sub)
    _audit_parser(sub)
    _stats_parser(sub)
    p = sub.add_parser("export", help="a self-contained folder another lab can use without meddistill")
    p.add_argument("run", help="run folder")
    p.add_argument("out", help="output folder (new or empty)")
    p.add_argument("--licence", help="own images: licence of the source data for the card (default: the run's)")
    p.add_argument(
        "--allow-traceable",
        action="store_true",
        help="export a set its audit did not show shareable (or that was not audited); the card says so first",
    )
    p = sub.add_parser("report", help="tables (md/csv/tex), accuracy-vs-ipc plots, image grids, paired differences")
    p.add_argument("store", nargs="+", help="results JSON-lines file(s) written by bench (several: one report)")
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--net", help="evaluation net to report; 'all': one sub-folder per net (default: the row's mean)")
    p.add_argument("--order", type=names("a method"), help="comma-separated method order for the tables")
    p.add_argument("--metric", choices=("test", "val"), default="test", help="test ACC/AUC, or validation ACC")
    p.add_argument("--pairs", type=_PAIRS, help="a:b,…: seed-paired differences a − b per net, e.g. ptm:mtt")
    p.add_argument("--by-seed", action="store_true", help="with --pairs: also each cell's differences per seed")
    p.add_argument("--docs", help="a Markdown page whose marked block (--marker) gets the report's tables")
    p.add_argument("--marker", help="with --docs: the block between <!-- MARKER:begin --> and <!-- MARKER:end -->")
    p.add_argument(
        "--force", action="store_true", help="write into a folder that holds other files (same names are replaced)"
    )
    return ap


def subcommands(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    parser = parser or build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def usage_table() -> str:
    """README's table of sub-commands and the arguments each accepts, made from the parser."""
    rows = ["| command | arguments and flags |", "|---|---|"]
    for name, p in subcommands().items():
        items = [
            f"`{a.option_strings[-1]}`" if a.option_strings else f"`<{a.dest}>`"
            for a in p._actions
            if not isinstance(a, argparse._HelpAction)
        ]
        rows.append(f"| `{name}` | {' '.join(items)} |")
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------ configs
#: the flag that sets each config key (``dataset``: the command's argument)
FLAG_NAMES = {
    "size": "--size",
    "seed": "--seed",
    "device": "--device",
    "workers": "--workers",
    "data_root": "--data-root",
    "out_dir": "--out",
    "experts_dir": "--experts-dir",
    "distill.ipc": "--ipc",
    "distill.method": "--method",
    "method.iterations": "--iterations",
    "experts.num_experts": "--num-experts",
    "experts.epochs": "--epochs",
    "eval.num_nets": "--num-nets",
    "eval.nets": "--nets",
    "data.channels": "--channels",
    "data.licence": "--licence",
    "data.on_bad_image": "--on-bad-image",
    "dp.epsilon": "--dp-epsilon",
    "dp.delta": "--dp-delta",
}


def config_from_args(args: argparse.Namespace, dataset: str | None = None) -> RunConfig:
    flags = {
        "dataset": dataset if dataset is not None else getattr(args, "dataset", None),
        "size": getattr(args, "size", None),
        "seed": getattr(args, "seed", None),
        "device": getattr(args, "device", None),
        "workers": getattr(args, "workers", None),
        "data_root": getattr(args, "data_root", None),
        "out_dir": getattr(args, "out_dir", None),
        "experts_dir": getattr(args, "experts_dir", None),
        "distill.ipc": getattr(args, "ipc", None),
        "distill.method": getattr(args, "method", None),
        "method.iterations": getattr(args, "iterations", None),
        "experts.num_experts": getattr(args, "num_experts", None),
        "experts.epochs": getattr(args, "epochs", None),
        "eval.num_nets": getattr(args, "num_nets", None),
        "eval.nets": getattr(args, "nets", None),
        "data.channels": getattr(args, "channels", None),  # own images
        "data.licence": getattr(args, "licence", None),
        "data.on_bad_image": getattr(args, "on_bad_image", None),
        "dp.epsilon": getattr(args, "dp_epsilon", None),
        "dp.delta": getattr(args, "dp_delta", None),
    }
    from meddistill.build import build_config

    cfg = build_config(args.profile or "cpu", args.config, args.overrides, **flags)
    _check_overrides(args, cfg, flags)
    _check_own_image_flags(args, cfg)
    return cfg


OWN_IMAGE_FLAGS = {"channels": "--channels", "licence": "--licence", "on_bad_image": "--on-bad-image"}

#: config keys (a dotted prefix ending in ".", or a whole key) that a command never reads
UNREAD_BY = {
    "experts": ("distill.", "method.", "eval.", "seed", "out_dir"),
    "distill": ("eval.",),
    "eval": ("experts_dir", "workers"),  # a run folder's own distill/experts: _check_fixed
    "eval --full": ("experts.", "experts_dir", "workers", "distill.", "method."),
}


def _is_medmnist(cfg: RunConfig) -> bool:
    from meddistill.data.sources import pick_source

    return pick_source(cfg.dataset).name == "medmnist"


def _check_own_image_flags(args: argparse.Namespace, cfg: RunConfig) -> None:
    """``--channels``, ``--licence`` and ``--on-bad-image`` describe a lab's own images; a
    MedMNIST file fixes all three, so on a MedMNIST name they would be ignored: an error."""
    given = [flag for key, flag in OWN_IMAGE_FLAGS.items() if getattr(args, key, None) is not None]
    if given and _is_medmnist(cfg):
        raise ConfigError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to own images (an image folder or "
            f"CSV manifest); {cfg.dataset} is a MedMNIST subset, whose file fixes it: drop {', '.join(given)}"
        )


def _override_key(key: str, cfg: RunConfig) -> str:
    """A ``--set`` or flag key as :func:`build_config` applies it (``method.x`` → the active
    method's ``distill.<method>.x``)."""
    return f"distill.{cfg.distill.method}.{key[len('method.'):]}" if key.startswith("method.") else key


def _unread(key: str, cfg: RunConfig, command: str) -> bool:
    """Whether a ``--set`` key (as applied) changes nothing for ``command`` with ``cfg``."""
    from meddistill.distill import get_spec

    unread = list(UNREAD_BY.get(command, ()))
    if command in ("distill", "run"):
        unread += [f"distill.{m}." for m in cfg.distill.sections if m != cfg.distill.method]
        if not get_spec(cfg.distill.method).needs_experts:
            unread += ["experts.", "experts_dir", "workers"]
    if _is_medmnist(cfg):
        unread.append("data.")
    return any(key.startswith(p) if p.endswith(".") else key == p for p in unread)


def _check_overrides(args: argparse.Namespace, cfg: RunConfig, flags: dict) -> None:
    """Every ``--set`` is honoured: one that a flag or the dataset argument replaces, or that
    sets a key the command does not read with this config, would be silently ignored: an error."""
    from meddistill.config import split_override

    given = {_override_key(k, cfg): k for k, v in flags.items() if v is not None and k != "dataset"}
    command = "eval --full" if getattr(args, "full", False) else args.command
    for text in args.overrides:
        key = split_override(text)[0]
        if key == "dataset":
            raise ConfigError(
                f"--set {text}: the dataset is the command's argument (or its run folder's); give it there"
            )
        full = _override_key(key, cfg)
        if full in given:
            raise ConfigError(f"--set {text} and {FLAG_NAMES[given[full]]} set the same key; give one of them")
        if _unread(full, cfg, command):
            raise ConfigError(
                f"--set {text}: `meddistill {command}` does not read {key} "
                f"({cfg.dataset}, method {cfg.distill.method}); drop it"
            )


# ------------------------------------------------------------------ commands
def cmd_datasets(args: argparse.Namespace) -> int:
    from meddistill.data import DATASETS
    from meddistill.data.loader import candidate_roots, is_data_file
    from meddistill.data.medmnist import check_size

    check_size(args.size)
    roots = candidate_roots(args.data_root)
    print(f"{'name':16} {'modality':26} {'task':26} {'cls':>3} {'ch':>2} {'train':>7}  {'license':13} local file")
    for d in DATASETS.values():
        found = next((str(r / d.filename(args.size)) for r in roots if is_data_file(r / d.filename(args.size))), "-")
        print(
            f"{d.name:16} {d.modality:26} {d.task:26} {d.num_classes:>3} {d.channels:>2} "
            f"{d.n_samples[0]:>7}  {d.license:13} {found}"
        )
    return 0


def cmd_experts(args: argparse.Namespace) -> int:
    import torch

    from meddistill.checks import check_nets, check_out_dir
    from meddistill.experts import final_accuracies, train_experts
    from meddistill.pipeline import load_data
    from meddistill.utils import resolve_device

    cfg = config_from_args(args)
    check_out_dir(cfg.experts_dir, "--experts-dir")
    ds = load_data(cfg)
    check_nets(cfg, ds.shape, ds.num_classes, evaluation=False)
    device = resolve_device(cfg.device)
    folder = train_experts(ds, cfg, device, not args.no_progress)
    print(f"experts: {folder}")
    acc = final_accuracies(folder, ds, cfg, device)
    if acc["test"]:
        val, test = (torch.tensor(acc[k]) * 100 for k in ("val", "test"))
        sd = (lambda x: float(x.std()) if len(x) > 1 else 0.0)  # noqa: E731
        print(
            f"last epoch of {len(test)} experts: val ACC {float(val.mean()):.2f} ± {sd(val):.2f} %, "
            f"test ACC {float(test.mean()):.2f} ± {sd(test):.2f} %"
        )
    return 0


def _check_resume(args: argparse.Namespace, cfg: RunConfig) -> None:
    from meddistill.pipeline import holds_earlier_work, run_dir_for

    run_dir = run_dir_for(cfg)
    if args.resume and not holds_earlier_work(run_dir):
        raise MeddistillError(f"nothing to resume: no checkpoint in {run_dir} for this config")
    if args.resume and args.restart:
        raise MeddistillError("--resume and --restart contradict each other")


def _prepare_cell(args: argparse.Namespace, evaluation: bool):
    """The config and the data of a ``distill``/``run`` cell, everything checked before any
    folder is made (a failed check leaves nothing behind)."""
    from meddistill.checks import check_cell
    from meddistill.pipeline import load_data

    cfg = config_from_args(args)
    _check_resume(args, cfg)
    cached = not args.restart and _nothing_to_compute(cfg, evaluation)
    _check_writable([(cfg.out_dir, "--out"), (cfg.experts_dir, "--experts-dir")], cached)
    ds = load_data(cfg)
    check_cell(cfg, ds, evaluation)
    return cfg, ds


def _nothing_to_compute(cfg: RunConfig, evaluation: bool) -> bool:
    """Whether the cell's set (and with ``evaluation`` its evaluation) is already in its run folder."""
    from meddistill.pipeline import eval_cache_path, run_dir_for
    from meddistill.synset import SynSet

    path = run_dir_for(cfg) / "synset.npz"
    if not path.is_file():
        return False
    if not evaluation:
        return True
    try:
        return eval_cache_path(cfg, path.parent, SynSet.load(path)).is_file()
    except MeddistillError:  # a damaged set: the command says so where it reads it
        return False


def _check_writable(folders: list[tuple[str | os.PathLike, str]], cached: bool) -> None:
    """:func:`~meddistill.checks.check_out_dir` of each (folder, what); where nothing needs
    computing, a folder that cannot be written (read-only) is only a warning, one line for all:
    the cached result is served and nothing is written."""
    from meddistill.checks import check_out_dir

    for path, what in folders:
        try:
            check_out_dir(path, what)
        except ArtifactError as exc:
            if not cached:
                raise
            _say(f"warning: {exc}; serving the cached result, nothing is written")
            return


def _print_dry_run(cfg: RunConfig) -> int:
    from meddistill.experts import expert_dir
    from meddistill.pipeline import run_dir_for

    run_dir = run_dir_for(cfg)
    state = "finished" if (run_dir / "synset.npz").exists() else "exists" if run_dir.exists() else "new"
    print(
        f"dry run: {cfg.dataset} {cfg.distill.method} ipc={cfg.distill.ipc} ({cfg.profile} profile) is valid; "
        f"run folder {run_dir} ({state}), experts {expert_dir(cfg)}"
    )
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from meddistill.pipeline import distill_set

    cfg, ds = _prepare_cell(args, evaluation=False)
    if args.dry_run:
        return _print_dry_run(cfg)
    run_dir, syn = distill_set(cfg, ds, progress=not args.no_progress, restart=args.restart)
    print(f"synthetic set: {run_dir / 'synset.npz'} ({len(syn.labels)} images)")
    return 0


def _print_summary(prefix: str, row: dict) -> None:
    for net, s in row["per_net"].items():
        print(
            f"{prefix} [{net}] test ACC {100 * s['acc_mean']:.2f} ± {100 * s['acc_std']:.2f} %  "
            f"AUC {100 * s['auc_mean']:.2f} ± {100 * s['auc_std']:.2f} %  over {s['n']} seeds"
        )


def _check_fixed(cfg: RunConfig, plain: RunConfig, base: RunConfig, run_dir: Path) -> None:
    """Evaluating a run folder uses the run's own size, net, distill and experts settings: a
    flag, ``--set`` or ``--config`` that changes them (to neither the profile's nor the run's
    value) would be ignored, so it is an error."""
    for key in ("size", "net", "distill", "experts", "data"):
        mine = getattr(cfg, key)
        if mine != getattr(plain, key) and mine != getattr(base, key):
            raise ConfigError(
                f"evaluating {run_dir} uses the run's own {key} (its config.yaml); "
                f"drop the flag, --set or --config that changes {key}"
            )


def _eval_run_config(args: argparse.Namespace, run_dir: Path, meta: dict) -> RunConfig:
    from meddistill.build import build_config
    from meddistill.runfolder import load_run_config, runs_root, saved_path

    base = load_run_config(run_dir)
    if base is None:  # a bare synset.npz: its meta says which dataset and size
        if not meta.get("dataset"):
            raise ArtifactError(f"{run_dir} has no config.yaml and its synset.npz does not name its dataset")
        if args.size is None and meta.get("size"):
            args.size = int(meta["size"])
        if args.seed is None and isinstance(meta.get("seed"), int):
            args.seed = meta["seed"]
        return config_from_args(args, dataset=meta["dataset"])
    args.profile = args.profile or base.profile  # evaluate with the run's own profile unless told otherwise
    args.seed = base.seed if args.seed is None else args.seed
    root = runs_root(run_dir, base)
    args.out_dir = args.out_dir or (str(root) if root else None)
    args.data_root = args.data_root or saved_path(run_dir, base, "data_root", "--data-root") or None
    cfg = config_from_args(args, dataset=base.dataset)
    _check_fixed(cfg, build_config(args.profile, dataset=base.dataset), base, run_dir)
    cfg.net, cfg.distill, cfg.size, cfg.experts = base.net, base.distill, base.size, base.experts
    cfg.data = base.data  # own images: decode the data as the run did
    return cfg


def _eval_full(args: argparse.Namespace) -> int:
    from meddistill.checks import check_nets, check_store
    from meddistill.distill import FULL
    from meddistill.pipeline import full_row, load_data
    from meddistill.utils import append_jsonl

    cfg = config_from_args(args, dataset=args.target)
    cfg.distill.method, cfg.distill.ipc = FULL, 0
    results = args.results or Path(cfg.out_dir) / "results.jsonl"
    check_store(results, "--results")
    ds = load_data(cfg)
    check_nets(cfg, ds.shape, ds.num_classes)
    row = full_row(cfg, not args.no_progress, ds)
    append_jsonl(results, row)
    _print_summary(f"{cfg.dataset} full train split ({row['train_images']} images)", row)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from meddistill.checks import check_nets, check_store
    from meddistill.export import is_export
    from meddistill.pipeline import eval_cache_path, evaluate_run, load_data
    from meddistill.synset import SynSet
    from meddistill.synset_check import check_synset
    from meddistill.utils import append_jsonl

    if args.full:
        return _eval_full(args)
    target = Path(args.target)
    run_dir = target if target.is_dir() else target.parent
    syn = SynSet.load(target)
    cfg = _eval_run_config(args, run_dir, syn.meta)
    if is_export(run_dir):  # another lab's folder: nothing is written into it
        run_dir = _export_eval_dir(cfg, syn, run_dir)
    cached = eval_cache_path(cfg, run_dir, syn).is_file()
    # served from the run folder's cache, a read-only run or --out folder is only a warning; else a
    # read-only run folder costs only the cache (pipeline warns), and --out must take the result
    _check_writable([(run_dir, "run folder"), (cfg.out_dir, "--out")] if cached else [(cfg.out_dir, "--out")], cached)
    if args.results:
        check_store(args.results, "--results")
    ds = load_data(cfg)
    check_synset(syn, ds.shape, ds.num_classes, str(target))  # before nets are built for its shape
    check_nets(cfg, ds.shape, ds.num_classes)
    run_dir.mkdir(parents=True, exist_ok=True)  # the folder of an export's evaluation, under --out
    _, row = evaluate_run(cfg, run_dir, syn, ds, progress=not args.no_progress)
    if args.results:
        append_jsonl(args.results, row)
    _print_summary(f"{cfg.dataset} {syn.meta.get('method')} ipc={syn.meta.get('ipc')}", row)
    return 0


def _export_eval_dir(cfg: RunConfig, syn, export: Path) -> Path:
    """Where the evaluation of an exported set is cached and locked: a folder of ``--out``
    (default ``runs``) named by the set's content, never the export folder itself."""
    from meddistill.data.sources import dataset_dir

    folder = Path(cfg.out_dir) / dataset_dir(cfg) / f"export-{syn.content_hash(10)}"
    print(f"meddistill: note: {export} is an exported set: nothing is written there; its evaluation goes to {folder}")
    return folder


def cmd_run(args: argparse.Namespace) -> int:
    from meddistill.pipeline import distill_set, evaluate_run

    cfg, ds = _prepare_cell(args, evaluation=True)
    if args.dry_run:
        return _print_dry_run(cfg)
    progress = not args.no_progress
    run_dir, syn = distill_set(cfg, ds, progress=progress, restart=args.restart)
    _, row = evaluate_run(cfg, run_dir, syn, ds, progress=progress)
    print(f"run folder: {run_dir}")
    _print_summary(f"{cfg.dataset} {cfg.distill.method} ipc={cfg.distill.ipc} ({cfg.profile} profile)", row)
    return 0


def _check_bench_flags(args: argparse.Namespace) -> None:
    if args.address and args.executor != "ray":
        raise ConfigError("--address is the Ray cluster's address: it needs --executor ray")
    if args.executor == "ray" and (args.workers != 1 or args.threads):
        raise ConfigError("--workers and --threads are for the local executor (Ray workers use this process's threads)")
    if args.threads and args.workers < 2:
        raise ConfigError("--threads sets the torch threads of each worker process: it needs --workers 2 or more")
    if args.status:
        unused = {"--executor ray": args.executor == "ray", "--limit": args.limit is not None, "--report": args.report}
        given = [flag for flag, on in unused.items() if on]  # --workers/--threads: kept, to paste a run command
        if given:
            raise ConfigError(f"--status runs nothing: {', '.join(given)} would have no effect")


def cmd_bench(args: argparse.Namespace) -> int:
    from meddistill.bench import load_grid, run_grid, write_report
    from meddistill.checks import check_out_dir, check_store

    _check_bench_flags(args)
    grid = load_grid(args.grid)
    for key in ("store", "out_dir", "experts_dir"):
        if getattr(args, key):
            setattr(grid, key, getattr(args, key))
    extra = {k: getattr(args, k) for k in ("device", "data_root") if getattr(args, k)}
    if args.status:
        from meddistill.bench.status import format_status, grid_status

        check_store(grid.store, "store", write=False)
        print(format_status(grid, grid_status(grid, **extra), args.workers))
        return 0
    check_store(grid.store, "store")
    check_out_dir(grid.out_dir, "--out")
    check_out_dir(grid.experts_dir, "--experts-dir")
    if args.report:
        from meddistill.bench.report import check_report_folder

        check_out_dir(args.report, "--report")
        check_report_folder(args.report, "--report")
    ran, done = run_grid(
        grid, args.executor, args.address, not args.no_progress, args.limit, args.workers, args.threads, **extra
    )
    print(f"bench {grid.name}: {ran} cells run now, {done} already in {grid.store}")
    if args.report:
        write_report(grid.store, args.report, grid.methods)
        print(f"report: {args.report}")
    return 0


def _pair(text: str) -> tuple[str, str]:
    a, b = text.split(":")  # a ValueError unless exactly one ':'
    return a.strip(), b.strip()


_PAIRS = comma_list(_pair, lambda p: all(p) and p[0] != p[1], "a pair a:b of two method names")


def cmd_report(args: argparse.Namespace) -> int:
    from meddistill.bench import report
    from meddistill.checks import check_out_dir

    unused = {"--by-seed": args.by_seed and not args.pairs, "--marker": bool(args.marker) and not args.docs}
    if any(unused.values()):
        flag = next(k for k, v in unused.items() if v)
        raise ConfigError(f"{flag} is read only with {'--pairs' if flag == '--by-seed' else '--docs'}")
    if args.docs and not args.marker:
        raise ConfigError("--docs needs --marker NAME: the page's block <!-- NAME:begin --> … <!-- NAME:end -->")
    check_out_dir(args.out, "--out")
    report.check_report_folder(args.out, "--out", args.force)
    if args.docs:
        report.check_block(args.docs, args.marker)
    where = " + ".join(args.store)
    rows = report.read_stores(args.store)
    present = sorted({r["method"] for r in rows})
    stray = [m for m in args.order or [] if m not in present]
    if stray:
        raise ConfigError(f"--order names {', '.join(stray)}, not a method of {where}; its: {', '.join(present)}")
    split = sorted({r["method"] for r in rows} - {r["method"] for r in report.split_settings(rows)[0]})
    if split:
        print(
            f"note: {where} holds {', '.join(split)} at several settings in one cell; each setting is a row"
            " of its own, named by the stored config values that differ"
        )
    picks = (args.order, args.net, rows, args.metric, args.pairs, args.by_seed)
    written = report.write_report(args.store, args.out, *picks)
    for key, path in written.items():  # one ACC table, or one per net with --net all; the paired table
        if key.split("/")[-1] in ("acc.md", "val_acc.md", "pairs_acc.md", "pairs_val_acc.md"):
            print(f"{path}:\n{path.read_text()}")
    if args.docs:
        split_rows, order = report.split_settings(rows, args.order)
        block = report.markdown_block(split_rows, where, order, args.net, args.metric, args.pairs, args.by_seed)
        report.write_block(args.docs, args.marker, block)
        print(f"{args.docs}: block {args.marker} rewritten")
    print(f"{len(written)} files in {args.out}")
    return 0


def _audit_config(args: argparse.Namespace, run_dir: Path) -> tuple[RunConfig, str]:
    """The run's saved config with the flags audit honours; its relative paths resolved from
    where the run folder is (never the working directory). Also says where experts_dir came from."""
    from meddistill.runfolder import require_run_config, saved_path

    cfg = require_run_config(run_dir)
    saved_experts = cfg.experts_dir
    cfg.device = args.device or cfg.device
    cfg.data_root = args.data_root or saved_path(run_dir, cfg, "data_root", "--data-root")
    cfg.experts_dir = args.experts_dir or saved_path(run_dir, cfg, "experts_dir", "--experts-dir")
    how = "" if args.experts_dir else f" (experts_dir {saved_experts!r} of {run_dir / 'config.yaml'})"
    return cfg, how


def cmd_audit(args: argparse.Namespace) -> int:
    from meddistill.audit import AUDIT_FILE, run_audit, run_lira_audit, summary_line
    from meddistill.checks import check_out_dir
    from meddistill.distill import DistillContext, get_method
    from meddistill.pipeline import load_data
    from meddistill.synset import SynSet
    from meddistill.utils import resolve_device

    run_dir = Path(args.run)
    cfg, _ = _audit_config(args, run_dir)
    syn = SynSet.load(run_dir)
    check_out_dir(run_dir, "run folder")  # audit.json and audit.png are written there
    ds = load_data(cfg)
    device = resolve_device(cfg.device)

    def audit_and_print(out: Path, synset: SynSet, label: str, lira: dict | None = None) -> None:
        rep = run_audit(out, synset, ds, cfg, device, args.percentile, progress=not args.no_progress, lira=lira)
        print(f"{label}: {summary_line(rep)}  ({out / AUDIT_FILE})")

    lira = run_lira_audit(cfg, ds, device, args.shadows, run_dir, not args.no_progress) if args.shadows else None
    audit_and_print(run_dir, syn, str(run_dir), lira)
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
    cfg, _ = _audit_config(args, run_dir)  # the run's config, its paths resolved from the run folder
    stats = run_stats(cfg, run_dir, SynSet.load(run_dir), load_data(cfg), not args.no_progress)
    if args.json:
        print(json.dumps(stats, sort_keys=True))
    else:
        print(f"{run_dir}: {summary_line(stats)}  ({run_dir / STATS_FILE})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from meddistill.checks import check_out_dir
    from meddistill.export import export_run

    check_out_dir(args.out, "export folder")
    out = export_run(args.run, args.out, licence=args.licence, allow_traceable=args.allow_traceable)
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


def _say(message: str) -> None:
    """One line on stderr, whatever the message holds."""
    print("meddistill: " + "; ".join(s.strip() for s in message.splitlines() if s.strip()), file=sys.stderr)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """A further Ctrl-C is ignored inside the block (the previous handler is restored after)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: list[str] | None = None) -> int:
    try:
        words = sys.argv[1:] if argv is None else argv
        wants_help = any(w in ("-h", "--help") for w in words)
        args = build_parser(method_help() if wants_help else METHOD_HELP).parse_args(argv)
        prepare_process()
        with sigint_deferred():  # a Ctrl-C inside torch's C import turns into an ImportError: deliver it after
            import torch  # noqa: F401
        return COMMANDS[args.command](args)
    except MeddistillError as exc:
        _say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        with _sigint_ignored():  # a second Ctrl-C while this is printed
            _say("interrupted; finished work and the last checkpoint are kept — run the same command again to resume")
        return 130
    except BrokenPipeError:  # the reader went away (`meddistill ... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except Exception as exc:  # a net under the checks above, not a substitute for them
        if os.environ.get("MEDDISTILL_DEBUG"):
            raise
        from meddistill.utils import write_problem

        reason = write_problem(exc)  # a full disk or a read-only folder where no check foresaw it
        if reason is not None:
            where = getattr(exc, "filename", None)
            _say(f"error: cannot write {where or 'a file'}: {reason}; free space or choose a writable folder")
            return 2
        _say(f"internal error: {type(exc).__name__}: {exc} (set MEDDISTILL_DEBUG=1 for the traceback)")
        return 1


def script() -> int:
    """The ``meddistill`` command: :func:`main`, then Ctrl-C ignored while Python exits (a
    Ctrl-C in an exit handler would print "Exception ignored in atexit callback")."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(script())

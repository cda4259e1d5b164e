"""One benchmark cell end to end: data → experts (cached) → distill (resumable) → evaluate.

A run folder is keyed by the hash of everything that changes the synthetic set, so the
same cell is never computed twice and an interrupted one resumes from its checkpoint. A lock
per run folder (:mod:`meddistill.locks`) makes a second identical command wait for the first
and reuse its set and evaluation. An evaluation is cached per evaluation config *and* content
of the set (:meth:`SynSet.content_hash`), and only a valid set is evaluated
(:func:`meddistill.checks.check_synset`).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from meddistill import dp
from meddistill.config import RunConfig, dump_yaml
from meddistill.data.loader import MedDataset
from meddistill.data.local import check_same_data
from meddistill.data.sources import create_dataset, dataset_dir, dataset_tag, write_run_records
from meddistill.distill import DistillContext, get_method, get_spec
from meddistill.errors import ConfigError, WriteError
from meddistill.evaluate import EvalSummary, evaluate_images
from meddistill.experts import read_meta, train_experts
from meddistill.health import LOG
from meddistill.identity import data_identity, distill_identity, eval_identity, run_hash
from meddistill.locks import LOCK_NAME, run_lock
from meddistill.plots import save_curves, save_grid
from meddistill.synset import SynSet
from meddistill.synset_check import check_synset
from meddistill.utils import append_jsonl, config_hash, read_json_object, read_jsonl, resolve_device, write_text_atomic


def run_dir_for(cfg: RunConfig) -> Path:
    d = cfg.distill
    h = run_hash(cfg)
    return Path(cfg.out_dir) / dataset_dir(cfg) / f"{d.method}-ipc{d.ipc}-s{cfg.seed}-{h}"


@dataclass
class CellResult:
    run_dir: Path
    synset: SynSet
    summary: EvalSummary | None
    row: dict | None


def holds_earlier_work(run_dir: Path) -> bool:
    """A finished set or a distillation checkpoint (its tensor file, which a resume reads): what a
    new process continues instead of redoing."""
    from meddistill.distill.tm import CKPT

    return (run_dir / CKPT).exists() or (run_dir / "synset.npz").exists()


def load_data(cfg: RunConfig, progress: bool | None = None) -> MedDataset:
    """A MedMNIST subset, an image folder or a CSV manifest (``data/sources.py`` picks); under
    ``--dp-epsilon`` normalised with fixed values, not the train split's statistics."""
    ds = create_dataset(cfg, progress)
    return dp.public_normalisation(ds) if cfg.dp.on else ds


def _clear_run_dir(run_dir: Path) -> None:
    """Empty a run folder for ``--restart``, keeping its lock file (held by this process)."""
    for p in run_dir.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def distill_set(
    cfg: RunConfig,
    ds: MedDataset | None = None,
    progress: bool = True,
    restart: bool = False,
    stop_at: int | None = None,
) -> tuple[Path, SynSet]:
    """Produce (or reuse) the synthetic set of one config; returns (run_dir, synset)."""
    method = get_method(cfg.distill.method)
    ds = ds or load_data(cfg)
    device = resolve_device(cfg.device)
    run_dir = run_dir_for(cfg)
    ctx = DistillContext(ds, cfg, device, run_dir, progress, config_hash(distill_identity(cfg), 10), stop_at)
    ctx.check_ipc()  # before the folder exists: an impossible ipc leaves no empty run folder behind
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):  # a second identical command waits here, then reuses the set
        if restart:
            _clear_run_dir(run_dir)
        syn_path = run_dir / "synset.npz"
        try:
            write_run_records(ds, run_dir)  # own images: split.csv, data.json
        except WriteError as exc:  # a read-only run folder can still serve its finished set
            if not syn_path.exists():
                raise
            _warn(f"could not write {exc.path} ({exc.reason}); the finished set is served as it is")
        if syn_path.exists():
            return run_dir, SynSet.load(syn_path)
        return run_dir, _distill_into(ctx, method, syn_path)


def private_context(ctx: DistillContext) -> DistillContext:
    """Under ``--dp-epsilon``: everything the method may know of the real train images is computed
    first by a DP mechanism (the DP-SGD experts, or the method's own release), then the train
    split is sealed: the distillation itself raises on any read of it."""
    spec = get_spec(ctx.cfg.distill.method)
    why = dp.refusal(ctx.cfg, spec)
    if why:
        raise ConfigError(why)
    dp.check_public(ctx.ds)
    if spec.private == "experts":
        folder = train_experts(ctx.ds, ctx.cfg, ctx.device, ctx.progress, spec.experts_read(ctx.cfg))
        record = read_meta(folder / "meta.json")["dp"]
        ctx = replace(ctx, _experts=folder)
    else:
        release, record = spec.release(ctx)
        ctx = replace(ctx, release=release)
    return replace(ctx, ds=dp.seal_train(ctx.ds), dp_record=record)


def _distill_into(ctx: DistillContext, method, syn_path: Path) -> SynSet:
    cfg, ds, run_dir = ctx.cfg, ctx.ds, ctx.run_dir
    write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
    t0 = time.monotonic()
    if cfg.dp.on:
        ctx = private_context(ctx)
    syn = method(ctx)
    syn.meta["distill_seconds"] = round(time.monotonic() - t0, 2)
    syn.save(syn_path)
    save_grid(
        syn.pixels(),
        syn.labels,
        run_dir / "grid.png",
        list(ds.info.labels),
        title=f"{ds.info.name} {cfg.distill.method} ipc={cfg.distill.ipc}",
    )
    rows = read_jsonl(run_dir / LOG)
    if rows:
        save_curves(rows, ["loss", "lr", "diversity", "max_overlap"], run_dir / "loss.png")
    return syn


def _warn(msg: str) -> None:
    print(f"meddistill: warning: {msg}", file=sys.stderr, flush=True)


def _write_cache(cache: Path, row: dict) -> None:
    """Write an evaluation cache; a folder that cannot be written to (read-only) only costs the
    cache: the result is still returned (and printed, and appended to the results file)."""
    try:
        write_text_atomic(cache, json.dumps(row, indent=2, sort_keys=True))
    except (OSError, WriteError) as exc:
        reason = exc.reason if isinstance(exc, WriteError) else exc.strerror or exc
        _warn(f"could not write the evaluation cache {cache} ({reason}); the result is not cached")


def eval_cache_path(cfg: RunConfig, run_dir: Path, syn: SynSet) -> Path:
    """``eval_<evaluation hash>_<content hash>.json``: a changed set is never served an old result."""
    return run_dir / f"eval_{config_hash(eval_identity(cfg), 10)}_{syn.content_hash(10)}.json"


def evaluate_run(
    cfg: RunConfig, run_dir: Path, syn: SynSet, ds: MedDataset, progress: bool = True
) -> tuple[EvalSummary | None, dict]:
    """Evaluate a (validated) synthetic set with the shared protocol; cached in
    :func:`eval_cache_path`; a new result is appended to ``<out>/results.jsonl``."""
    check_synset(syn, ds.shape, ds.num_classes, f"the set in {run_dir}")
    check_same_data(ds, run_dir)  # own images changed since the run: refused, not scored or served from cache
    cache = eval_cache_path(cfg, run_dir, syn)
    with run_lock(run_dir):  # a second identical evaluation waits, then reads the cache
        if cache.exists():
            return None, read_json_object(cache, "delete it to evaluate the set again")
        device = resolve_device(cfg.device)
        summary = evaluate_images(syn.images, syn.targets(), ds, cfg, device, lr=syn.lr, progress=progress)
        ehash = config_hash(eval_identity(cfg), 10)
        row = result_row(cfg, summary, syn.meta.get("config_hash", ""), ehash, run_dir, syn.lr)
        row["synset_hash"] = syn.content_hash()
        if "dp" in syn.meta:  # the set's (ε, δ) guarantee and its mechanism
            row["dp"] = syn.meta["dp"]
        # the row first: a full disk that stops the append leaves no cache, so the next run appends it
        append_jsonl(Path(cfg.out_dir) / "results.jsonl", row)
        _write_cache(cache, row)
    return summary, row


def result_row(
    cfg: RunConfig, summary: EvalSummary, dhash: str, ehash: str, run_dir: Path | None, lr: float | None
) -> dict:
    row = {
        "dataset": dataset_tag(cfg.dataset),
        "size": cfg.size,
        "method": cfg.distill.method,
        "ipc": cfg.distill.ipc,
        "seed": cfg.seed,
        "profile": cfg.profile,
        "distill_hash": dhash,
        "eval_hash": ehash,
        "run_dir": str(run_dir) if run_dir else None,
        "eval_lr": cfg.eval.lr if cfg.eval.lr > 0 else (lr or cfg.eval.lr_default),
        "per_net": summary.by_net(),
        "runs": [asdict(r) for r in summary.results],
        "config": {
            "net": cfg.net.to_dict(),
            "distill": cfg.distill.to_dict(active_only=True),
            "eval": asdict(cfg.eval),
            "experts": asdict(cfg.experts),
            "dsa": asdict(cfg.dsa),
        },
    }
    own = data_identity(cfg).get("data")  # own images: their fingerprint and decoding options
    if own is not None:
        row["config"]["data"] = own
    if cfg.dp.on:  # a DP row is another setting than the same method without DP
        row["config"]["dp"] = asdict(cfg.dp)
    main = summary.stats(cfg.eval.nets[0])
    row.update(acc_mean=main["acc_mean"], acc_std=main["acc_std"], auc_mean=main["auc_mean"], auc_std=main["auc_std"])
    return row


def run_cell(
    cfg: RunConfig,
    progress: bool = True,
    restart: bool = False,
    evaluate: bool = True,
    ds: MedDataset | None = None,
) -> CellResult:
    ds = ds or load_data(cfg, progress)
    run_dir, syn = distill_set(cfg, ds, progress=progress, restart=restart)
    if not evaluate:
        return CellResult(run_dir, syn, None, None)
    summary, row = evaluate_run(cfg, run_dir, syn, ds, progress=progress)
    return CellResult(run_dir, syn, summary, row)


def full_row(cfg: RunConfig, progress: bool = True, ds: MedDataset | None = None) -> dict:
    """The upper-bound row: the shared evaluation protocol trained on the whole real train split."""
    from meddistill.evaluate import evaluate_full

    ds = ds or load_data(cfg, progress)
    summary = evaluate_full(ds, cfg, resolve_device(cfg.device), progress)
    row = result_row(cfg, summary, "", config_hash(eval_identity(cfg), 10), None, cfg.eval.lr_default)
    row["train_images"] = len(ds.train)
    return row

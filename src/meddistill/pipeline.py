"""One benchmark cell end to end: data → experts (cached) → distill (resumable) → evaluate.

A run folder is keyed by the hash of everything that changes the synthetic set, so the
same cell is never computed twice and an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from meddistill.config import RunConfig, dump_yaml
from meddistill.data import get_info
from meddistill.data.loader import MedDataset, load_dataset
from meddistill.distill import DistillContext, get_method, get_spec
from meddistill.errors import ConfigError
from meddistill.evaluate import EvalSummary, evaluate_images
from meddistill.experts import expert_identity
from meddistill.plots import save_curves, save_grid
from meddistill.stats import run_stats
from meddistill.synset import SynSet
from meddistill.utils import append_jsonl, config_hash, read_jsonl, resolve_device, write_text_atomic


def distill_identity(cfg: RunConfig) -> dict:
    """What determines the synthetic set: the dataset, seed, method and ipc, the method's own
    config section, and the shared parts its :class:`~meddistill.distill.MethodSpec` says it
    reads (expert trajectories, the net, DSA). Nothing else enters, so a setting of another
    method, or of evaluation, never invalidates a run folder or a benchmark cell."""
    spec = get_spec(cfg.distill.method)
    ident: dict = {
        "dataset": cfg.dataset,
        "size": cfg.size,
        "seed": cfg.seed,
        "method": spec.name,
        "ipc": cfg.distill.ipc,
    }
    section = cfg.distill.section()
    if section is not None:
        ident["settings"] = asdict(section)
    if spec.needs_experts:
        ident["experts"] = {**expert_identity(cfg), "num_experts": cfg.experts.num_experts}
    if "net" in spec.reads:
        ident["net"] = cfg.net.to_dict()
    if "dsa" in spec.reads:
        ident["dsa"] = asdict(cfg.dsa)
    return ident


def eval_identity(cfg: RunConfig) -> dict:
    return {"eval": asdict(cfg.eval), "dsa": asdict(cfg.dsa), "net": cfg.net.to_dict(), "seed": cfg.seed}


def run_dir_for(cfg: RunConfig) -> Path:
    d = cfg.distill
    h = config_hash(distill_identity(cfg), 10)
    return Path(cfg.out_dir) / f"{cfg.dataset}_{cfg.size}" / f"{d.method}-ipc{d.ipc}-s{cfg.seed}-{h}"


@dataclass
class CellResult:
    run_dir: Path
    synset: SynSet
    summary: EvalSummary | None
    row: dict | None


def load_data(cfg: RunConfig) -> MedDataset:
    info = get_info(cfg.dataset)
    if info.multi_label:
        raise ConfigError(f"{info.name} is multi-label; class-wise distillation supports single-label tasks")
    return load_dataset(info.name, cfg.size, cfg.data_root or None)


def distill(
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
    if restart and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    syn_path = run_dir / "synset.npz"
    if syn_path.exists():
        return run_dir, SynSet.load(syn_path)
    write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
    ctx = DistillContext(ds, cfg, device, run_dir, progress, config_hash(distill_identity(cfg), 10), stop_at)
    t0 = time.monotonic()
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
    rows = read_jsonl(run_dir / "metrics.jsonl")
    if rows:
        save_curves(rows, ["loss", "lr", "diversity", "max_overlap"], run_dir / "loss.png")
    return run_dir, syn


def evaluate_run(
    cfg: RunConfig, run_dir: Path, syn: SynSet, ds: MedDataset, progress: bool = True
) -> tuple[EvalSummary | None, dict]:
    """Evaluate a synthetic set with the shared protocol; cached in ``eval_<hash>.json``."""
    device = resolve_device(cfg.device)
    ehash = config_hash(eval_identity(cfg), 10)
    cache = run_dir / f"eval_{ehash}.json"
    if cache.exists():
        row = json.loads(cache.read_text())
        return None, row
    summary = evaluate_images(syn.images, syn.targets(), ds, cfg, device, lr=syn.lr, progress=progress)
    row = result_row(cfg, summary, syn.meta.get("config_hash", ""), ehash, run_dir, syn.lr)
    write_text_atomic(cache, json.dumps(row, indent=2, sort_keys=True))
    append_jsonl(Path(cfg.out_dir) / "results.jsonl", row)
    return summary, row


def result_row(
    cfg: RunConfig, summary: EvalSummary, dhash: str, ehash: str, run_dir: Path | None, lr: float | None
) -> dict:
    row = {
        "dataset": cfg.dataset,
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
        },
    }
    main = summary.stats(cfg.eval.nets[0])
    row.update(acc_mean=main["acc_mean"], acc_std=main["acc_std"], auc_mean=main["auc_mean"], auc_std=main["auc_std"])
    return row


def run_cell(cfg: RunConfig, progress: bool = True, restart: bool = False, evaluate: bool = True) -> CellResult:
    ds = load_data(cfg)
    run_dir, syn = distill(cfg, ds, progress=progress, restart=restart)
    if not evaluate:
        return CellResult(run_dir, syn, None, None)
    summary, row = evaluate_run(cfg, run_dir, syn, ds, progress=progress)
    row["stats"] = run_stats(cfg, run_dir, syn, ds, progress)  # diversity/coverage block (stats.py); cached
    return CellResult(run_dir, syn, summary, row)


def full_row(cfg: RunConfig, progress: bool = True) -> dict:
    """The upper-bound row: the shared evaluation protocol trained on the whole real train split."""
    from meddistill.evaluate import evaluate_full

    ds = load_data(cfg)
    summary = evaluate_full(ds, cfg, resolve_device(cfg.device), progress)
    row = result_row(cfg, summary, "", config_hash(eval_identity(cfg), 10), None, cfg.eval.lr_default)
    row["train_images"] = len(ds.train)
    return row

"""Re-key stored results and run folders for per-method config sections (no recomputation).

Until this change every method's settings sat in one flat ``distill`` section and a run's
identity was the whole config minus hand-kept exclusion lists. Now each method owns a section
(``distill.<method>``) and the identity is the shared keys plus that section plus what the
method's spec reads (see ``meddistill.pipeline.distill_identity``). This script maps

- every row of the given JSON-lines stores: ``cell_key``, ``distill_hash``, ``run_dir`` and
  ``config.distill`` (to the new layout), and
- every run folder under ``--runs``: renamed to its new hash; ``config.yaml``, the synset's
  ``meta.config_hash``, ``checkpoint.json`` and the ``eval_*.json`` rows updated,

after checking, row by row, that the frozen copy of the old identity code below reproduces the
stored old keys (a row whose old keys do not reproduce is left unchanged and reported). The
numbers in the rows are never touched. Idempotent: rows already in the new layout are skipped.

    python benchmarks/rekey_sections.py results/*.jsonl [--runs runs] [--dry-run]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from meddistill.augment import DSAConfig
from meddistill.bench.grid import cell_key
from meddistill.config import config_from_dict, dump_yaml
from meddistill.distill import FULL
from meddistill.pipeline import distill_identity, run_dir_for
from meddistill.utils import config_hash, read_jsonl, write_jsonl_atomic, write_text_atomic

# ---------------------------------------------------------------- the old identity (frozen)
OLD_TRAJECTORY = {"mtt", "ptm", "ptm_nodom", "datm"}
OLD_SOFT_KEYS = ("soft_filter", "soft_temperature")


def old_distill_identity(cfg: dict, soft_keys_always: bool = False) -> dict:
    """``soft_keys_always``: the identity before soft-label keys were left out of hard-label runs
    (the rows of results/bf16_experts.jsonl were keyed by it)."""
    d = {k: copy.deepcopy(cfg[k]) for k in ("dataset", "size", "seed", "net", "dsa", "experts")}
    dist = copy.deepcopy(cfg["distill"])
    for k in ("checkpoint_every_s", "log_every"):
        dist.pop(k, None)
    if not (soft_keys_always or dist.get("soft_labels") or dist["method"] == "datm"):
        for k in OLD_SOFT_KEYS:
            dist.pop(k, None)
    if dist["method"] not in OLD_TRAJECTORY:
        dist.pop("lr_img", None)
    d["distill"] = dist
    return d


def old_eval_identity(cfg: dict) -> dict:
    ev = {k: v for k, v in cfg["eval"].items() if k != "batched"}
    return {"eval": ev, "dsa": cfg["dsa"], "net": cfg["net"], "seed": cfg["seed"]}


def old_cell_key(cfg: dict, soft_keys_always: bool = False) -> str:
    ident: dict[str, Any] = {"eval": old_eval_identity(cfg), "dataset": cfg["dataset"], "size": cfg["size"]}
    if cfg["distill"]["method"] != FULL:
        ident["distill"] = old_distill_identity(cfg, soft_keys_always)
    else:
        ident["method"] = FULL
    return config_hash(ident, 16)


# ---------------------------------------------------------------- old layout → new layout
TM_KEYS = (
    "iterations syn_steps expert_epochs min_start_epoch max_start_epoch lr_img lr_lr lr_init momentum "
    "batch_syn init memory_saving max_grad_norm explode_factor"
).split()
STAGED_KEYS = [*TM_KEYS, "stages", "window", "span_growth", "anchored"]
SECTION_KEYS: dict[str, dict[str, str]] = {  # new key → old key, per method
    "mtt": {k: k for k in TM_KEYS},
    "ptm_nodom": {k: k for k in STAGED_KEYS},
    "ptm": {**{k: k for k in STAGED_KEYS}, "dom": "dom"},
    "datm": {
        **{k: k for k in TM_KEYS},
        **{k: k for k in ("stages", "lr_label", "soft_filter", "soft_temperature")},
    },
    "dm": {"iterations": "iterations", "batch_real": "dm_batch_real", "lr_img": "dm_lr_img"},
    "dc": {
        "iterations": "iterations",
        "batch_real": "dm_batch_real",
        "lr_img": "dc_lr_img",
        "lr_net": "dc_lr_net",
        "outer": "dc_outer",
        "inner": "dc_inner",
    },
}


def is_new_layout(distill: dict) -> bool:
    return "syn_steps" not in distill and "dm_batch_real" not in distill


def migrate_distill(old: dict) -> dict:
    """The old flat ``distill`` dict → the new one (shared keys + the active method's section)."""
    method = old["method"]
    if old.get("soft_labels") and method != "datm":
        raise ValueError(f"{method} with soft labels has no equivalent in the new layout")
    new = {k: old[k] for k in ("method", "ipc", "checkpoint_every_s", "log_every") if k in old}
    mapping = SECTION_KEYS.get(method)
    if mapping:
        new[method] = {k: copy.deepcopy(old[o]) for k, o in mapping.items() if o in old}
    if method == "ptm":  # these rows' DOM measured at expert 0's final epoch (now `read` by default)
        new[method].setdefault("dom", {})["feature_epoch"] = "last"
    return new


def old_config(row: dict) -> dict:
    """The full old-layout config a row was computed with (DSA settings are never stored in
    rows; every grid ran at the defaults, which the key check below confirms)."""
    c = row["config"]
    return {
        "dataset": row["dataset"],
        "size": row["size"],
        "seed": row["seed"],
        "net": c["net"],
        "dsa": dataclasses.asdict(DSAConfig()),
        "experts": c["experts"],
        "distill": c["distill"],
        "eval": c["eval"],
    }


def new_config(old: dict, profile: str):
    data = {k: v for k, v in old.items() if k != "eval"}
    data["distill"] = migrate_distill(old["distill"])
    data["eval"] = {k: v for k, v in old["eval"].items() if k != "batched"}
    data["profile"] = profile
    cfg = config_from_dict(data)
    if cfg.distill.method == FULL:
        return cfg
    return cfg


# ---------------------------------------------------------------- rows
def _old_keys_reproduce(row: dict, old: dict) -> bool:
    """The stored cell key (or, for rows without one, the distill hash) is what one of the old
    identity functions computes from the reconstructed config: the reconstruction is exact."""
    for soft_keys_always in (False, True):
        if row.get("cell_key"):
            if old_cell_key(old, soft_keys_always) == row["cell_key"]:
                return True
        elif row["method"] == FULL or config_hash(old_distill_identity(old, soft_keys_always), 10) == row.get(
            "distill_hash"
        ):
            return True
    return False


def rekey_row(row: dict) -> tuple[dict, str]:
    """(new row, status): status is "rekeyed", "already" or a reason the row was kept as is."""
    if "config" not in row or is_new_layout(row["config"]["distill"]):
        return row, "already"
    old = old_config(row)
    is_full = row["method"] == FULL
    if not _old_keys_reproduce(row, old):
        return row, "old keys do not reproduce"
    cfg = new_config(old, row.get("profile", "cpu"))
    new = copy.deepcopy(row)
    new["config"]["distill"] = cfg.distill.to_dict(active_only=True)
    new["config"]["eval"] = dataclasses.asdict(cfg.eval)
    if "cell_key" in row:
        new["cell_key"] = cell_key(cfg)
    if not is_full:
        new["distill_hash"] = config_hash(distill_identity(cfg), 10)
        if row.get("run_dir"):
            old_dir = Path(row["run_dir"])
            new["run_dir"] = str(old_dir.parent / f"{old_dir.name.rsplit('-', 1)[0]}-{new['distill_hash']}")
    return new, "rekeyed"


def rekey_store(path: Path, dry_run: bool) -> dict[str, int]:
    counts: dict[str, int] = {}
    out = []
    for row in read_jsonl(path):
        new, status = rekey_row(row)
        counts[status] = counts.get(status, 0) + 1
        out.append(new)
    if not dry_run and counts.get("rekeyed"):
        write_jsonl_atomic(path, out)
    return counts


# ---------------------------------------------------------------- run folders
def rekey_checkpoint(folder: Path, new_hash: str) -> None:
    """Give a checkpoint the new config hash where a resume reads it — the tensor file's header —
    and in its readable copy, checkpoint.json (a resume refuses a checkpoint of another hash)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from meddistill.distill.tm import CKPT, CKPT_META
    from meddistill.utils import atomic_path

    tensors_path = folder / CKPT
    if tensors_path.is_file():
        with safe_open(str(tensors_path), framework="pt") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if "meta" in header:
            meta = json.loads(header["meta"])
            meta["config_hash"] = new_hash
            header["meta"] = json.dumps(meta)
            with atomic_path(tensors_path) as tmp:
                save_file(tensors, str(tmp), metadata=header)
    ck = folder / CKPT_META
    if ck.is_file():
        meta = json.loads(ck.read_text())
        meta["config_hash"] = new_hash
        write_text_atomic(ck, json.dumps(meta, indent=2))


def rekey_run_folder(folder: Path, dry_run: bool) -> str:
    from meddistill.synset import SynSet

    cfg_path = folder / "config.yaml"
    if not cfg_path.is_file():
        return "no config.yaml"
    data = yaml.safe_load(cfg_path.read_text())
    if is_new_layout(data["distill"]):
        return "already"
    old = {k: data[k] for k in ("dataset", "size", "seed", "net", "dsa", "experts", "distill", "eval")}
    old_hash = config_hash(old_distill_identity(old), 10)
    if not folder.name.endswith(old_hash):
        return f"old hash {old_hash} does not reproduce"
    new_data = {k: v for k, v in data.items() if k not in ("distill", "eval")}
    new_data["distill"] = migrate_distill(data["distill"])
    new_data["eval"] = {k: v for k, v in data["eval"].items() if k != "batched"}
    cfg = config_from_dict(new_data)
    new_hash = config_hash(distill_identity(cfg), 10)
    target = folder.parent / f"{folder.name.rsplit('-', 1)[0]}-{new_hash}"
    if dry_run:
        return "rekeyed"
    write_text_atomic(cfg_path, dump_yaml(cfg))
    if (folder / "synset.npz").is_file():
        syn = SynSet.load(folder)
        syn.meta["config_hash"] = new_hash
        syn.save(folder / "synset.npz")
    rekey_checkpoint(folder, new_hash)
    for ev in folder.glob("eval_*.json"):
        row = json.loads(ev.read_text())
        new_row, _ = rekey_row(row)
        new_row["run_dir"] = str(Path(row.get("run_dir") or folder).parent / target.name)
        write_text_atomic(ev, json.dumps(new_row, indent=2, sort_keys=True))
    shutil.move(str(folder), str(target))
    assert run_dir_for(cfg).name == target.name
    return "rekeyed"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stores", nargs="*", help="results JSON-lines files")
    ap.add_argument("--runs", help="runs folder (its <dataset>_<size>/<run> folders are re-keyed)")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    bad = 0
    for store in args.stores:
        counts = rekey_store(Path(store), args.dry_run)
        bad += sum(v for k, v in counts.items() if k not in ("rekeyed", "already"))
        print(f"{store}: {counts}")
    if args.runs:
        counts = {}
        for folder in sorted(Path(args.runs).glob("*/*")):
            if folder.is_dir():
                status = rekey_run_folder(folder, args.dry_run)
                counts[status] = counts.get(status, 0) + 1
        bad += sum(v for k, v in counts.items() if k not in ("rekeyed", "already"))
        print(f"{args.runs}: {counts}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Every identity: what makes two expert buffers, runs, evaluations or benchmark cells the same.

An identity is a plain dict hashed with :func:`meddistill.utils.config_hash`; the hash names a
folder (experts, run) or keys a stored row (a benchmark cell). Only what changes the result
enters it, so a setting of another method, of logging or of evaluation never invalidates work.

**The rule for stored keys.** A config field declared with ``setting(..., keyless_at=v)`` is
left out of every identity while it holds ``v``: ``v`` is the value every run stored before the
field existed had (an option that is off), so adding an option keeps every stored key valid.
The data identity (own images: their short name and content fingerprint; nothing for MedMNIST)
enters each key once.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import MISSING, asdict
from typing import Any

from meddistill.config import RunConfig
from meddistill.data.sources import pick_source
from meddistill.methods import FULL, get_spec
from meddistill.utils import config_hash

# Config keys that never change a result, or that only one kind of row reads: two rows that
# differ only in them are the same setting (the report compares settings without them).
DISTILL_RUN_ONLY = ("checkpoint_every_s", "log_every")  # how a run is checkpointed and logged
EVAL_FULL_ONLY = ("full_epochs", "full_batch_size", "full_val_every")  # read only on the full train split
EVAL_SET_ONLY = ("epochs", "batch_size", "val_every")  # read only on a synthetic set (full replaces them)


def keyless_values(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of config dataclass ``obj`` (recursively, a ``sections`` dict's entries by
    their names, as :func:`meddistill.config.validate` names them) whose field is declared
    ``keyless_at`` → that value."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "sections":
            for name, sec in value.items():
                out.update(keyless_values(sec, f"{prefix}{name}."))
        elif dataclasses.is_dataclass(value):
            out.update(keyless_values(value, f"{prefix}{f.name}."))
        elif f.metadata.get("keyless_at", MISSING) is not MISSING:
            out[f"{prefix}{f.name}"] = f.metadata["keyless_at"]
    return out


def identity_dict(obj: Any) -> dict:
    """``asdict(obj)`` without the fields at their ``keyless_at`` value (recursively)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        keyless = f.metadata.get("keyless_at", MISSING)
        if keyless is not MISSING and value == keyless:
            continue
        out[f.name] = identity_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def data_identity(cfg: RunConfig) -> dict[str, Any]:
    """Entries to add to an identity dict: ``{}`` for MedMNIST (keys unchanged), else the
    dataset's short name (replacing its path) and ``data`` (fingerprint and array-changing keys)."""
    return pick_source(cfg.dataset).identity(cfg)


def dp_identity(cfg: RunConfig) -> dict[str, Any]:
    """``{}`` without DP (keys unchanged); under DP the settings that set its noise, and the
    number of experts: the budget is spent over all of them, so the noise depends on it."""
    if not cfg.dp.on:
        return {}
    return {"dp": {**identity_dict(cfg.dp), "num_experts": cfg.experts.num_experts}}


def expert_identity(cfg: RunConfig) -> dict:
    """Everything that determines an expert trajectory (its buffer folder is keyed on the hash);
    the number of experts is not part of it (a buffer grows), nor is the run seed."""
    return {
        "dataset": cfg.dataset,
        "size": cfg.size,
        "net": cfg.net.to_dict(),
        "experts": {k: v for k, v in asdict(cfg.experts).items() if k not in ("num_experts", "seed")},
        "dsa": asdict(cfg.dsa),
        "seed": cfg.experts.seed,
        **data_identity(cfg),
        **dp_identity(cfg),
    }


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
        ident["settings"] = identity_dict(section)
    if spec.needs_experts:
        ident["experts"] = {**expert_identity(cfg), "num_experts": cfg.experts.num_experts}
    if "net" in spec.reads:
        ident["net"] = cfg.net.to_dict()
    if "dsa" in spec.reads:
        ident["dsa"] = asdict(cfg.dsa)
    ident.update(data_identity(cfg))
    if cfg.dp.on:  # the experts' part (with their number) is in ident["experts"] for a method that reads them
        ident["dp"] = identity_dict(cfg.dp)
    return ident


def eval_identity(cfg: RunConfig) -> dict:
    """What determines an evaluation of a given set: the protocol, DSA, the net spec, the seed."""
    return {"eval": asdict(cfg.eval), "dsa": asdict(cfg.dsa), "net": cfg.net.to_dict(), "seed": cfg.seed}


def run_hash(cfg: RunConfig) -> str:
    """The run folder's hash (``<method>-ipc<k>-s<seed>-<hash>``)."""
    return config_hash(distill_identity(cfg), 10)


def cell_key(cfg: RunConfig) -> str:
    """A benchmark cell's key: its evaluation and its set (the distill identity, which holds the
    data identity) or, for the full-train-split row, the data itself."""
    data = data_identity(cfg)
    ident: dict[str, Any] = {"eval": eval_identity(cfg), "dataset": cfg.dataset, "size": cfg.size}
    if cfg.distill.method != FULL:
        ident["dataset"] = data.get("dataset", cfg.dataset)  # own images: the short name, not the path
        ident["distill"] = distill_identity(cfg)
    else:
        ident.update(data)
        ident["method"] = FULL
    return config_hash(ident, 16)


def stats_net_identity(cfg: RunConfig, tag: str) -> dict:
    """The audit's feature net: the expert identity plus its own seed tag."""
    return {**expert_identity(cfg), "tag": tag}


def lira_identity(cfg: RunConfig, shadows: int, n_train: int, fmt: int) -> str:
    """What a LiRA work folder's shadows were computed for: the pipeline (its distillation and
    evaluation identities), K, the train split's size and the folder format."""
    ident = {"distill": distill_identity(cfg), "eval": eval_identity(cfg), "shadows": shadows, "n_train": n_train}
    return config_hash({"format": fmt, **ident}, 16)

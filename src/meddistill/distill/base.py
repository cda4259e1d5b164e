"""The context every distillation method receives, and the start every method draws from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from meddistill.config import RunConfig
from meddistill.data.loader import MedDataset, class_indices
from meddistill.errors import ConfigError
from meddistill.methods import (  # noqa: F401  (re-exported: methods register through base)
    FULL,
    METHODS,
    SHARED_PARTS,
    MethodFn,
    MethodSpec,
    get_method,
    get_spec,
    list_methods,
    register_method,
)
from meddistill.synset import SynSet
from meddistill.utils import code_version, derive_seed


@dataclass
class DistillContext:
    ds: MedDataset
    cfg: RunConfig
    device: torch.device
    run_dir: Path
    progress: bool = True
    config_hash: str = ""
    stop_at: int | None = None  # testing aid: stop (after checkpointing) at this iteration
    _experts: Path | None = field(default=None, repr=False)  # a given expert folder: never trained here
    _folder: Path | None = field(default=None, repr=False)  # the folder this context trained experts in
    _trained_to: int = field(default=-1, repr=False)  # ... up to this epoch
    dp_record: dict | None = None  # under --dp-epsilon: the mechanism and budget (recorded in the set's meta)
    release: Any = None  # under --dp-epsilon: a method's own DP release (MethodSpec.release)

    def experts_folder(self, epochs: int | None = None) -> Path:
        """Train (or reuse cached) expert trajectories for this dataset and net, up to epoch
        ``epochs`` (default: all of ``cfg.experts.epochs``)."""
        if self._experts is not None:
            return self._experts
        want = self.cfg.experts.epochs if epochs is None else epochs
        if self._trained_to < want:
            from meddistill.experts import train_experts

            self._folder = train_experts(self.ds, self.cfg, self.device, self.progress, epochs)
            self._trained_to = want
        return self._folder

    def class_indices(self) -> list[torch.Tensor]:
        return class_indices(self.ds.train.labels, self.ds.num_classes)

    def check_ipc(self) -> None:
        ipc = self.cfg.distill.ipc
        if ipc < 1:
            raise ConfigError(f"ipc must be at least 1, got {ipc}")
        for c, idx in enumerate(self.class_indices()):
            if len(idx) < ipc:
                raise ConfigError(
                    f"ipc {ipc} is larger than class {c} ({self.ds.info.labels[c]!r}) of "
                    f"{self.ds.info.name}, which has {len(idx)} train images"
                )

    def make_synset(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        lr: float | None = None,
        soft_labels: torch.Tensor | None = None,
        **extra,
    ) -> SynSet:
        cfg = self.cfg
        meta = {
            "dataset": self.ds.info.name,
            "size": self.ds.size,
            "ipc": cfg.distill.ipc,
            "method": cfg.distill.method,
            "seed": cfg.seed,
            "config_hash": self.config_hash,
            "code_version": code_version(),
            "net": cfg.net.to_dict(),
            "num_classes": self.ds.num_classes,
            "class_names": list(self.ds.info.labels),
            "license": self.ds.info.license,
            **extra,
        }
        if self.dp_record is not None:
            meta["dp"] = self.dp_record
        return SynSet(
            images.detach().cpu().float(),
            labels.detach().cpu().long(),
            self.ds.mean.clone(),
            self.ds.std.clone(),
            lr=lr,
            soft_labels=None if soft_labels is None else soft_labels.detach().cpu().float(),
            meta=meta,
        )


REFERENCE_EXPERT = 0  # the expert whose features coresets, DOM and soft labels use


def distill_generator(ctx: DistillContext) -> torch.Generator:
    """The run's random stream. Every method draws its real initial images first from this same
    stream, so at a given seed all methods start from the same images ("random" *is* that start)."""
    return torch.Generator().manual_seed(derive_seed(ctx.cfg.seed, "distill"))


def real_init(
    ctx: DistillContext, gen: torch.Generator, eligible: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ipc`` random real images per class: (images, labels, train indices).

    ``eligible`` (a bool mask over the train split) makes the draw prefer, per class, the
    eligible images, topped up at random from the others when a class has fewer than ``ipc``
    of them (DATM's filter: images the expert classifies correctly)."""
    ctx.check_ipc()
    ipc = ctx.cfg.distill.ipc
    idx = []
    for cls_idx in ctx.class_indices():
        if eligible is None:
            idx.append(cls_idx[torch.randperm(len(cls_idx), generator=gen)[:ipc]])
            continue
        parts = []
        for mask in (eligible[cls_idx], ~eligible[cls_idx]):
            sub = cls_idx[mask]
            parts.append(sub[torch.randperm(len(sub), generator=gen)])
        idx.append(torch.cat(parts)[:ipc])
    idx_t = torch.cat(idx)
    return ctx.ds.train.images[idx_t].clone(), ctx.ds.train.labels[idx_t].clone(), idx_t

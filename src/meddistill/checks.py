"""Checks run before any work starts, so a command that cannot finish fails at once with one
clear line and leaves nothing behind: output folders (exist as folders or can be created, and
are writable), the nets a config builds (on the ``meta`` device: no memory, no compute), the
method, the device and the ipc. None of them creates a file or a folder.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from meddistill.config import RunConfig
from meddistill.data.loader import MedDataset
from meddistill.errors import ArtifactError, ConfigError
from meddistill.nets.registry import NetSpec, create_model, spec_for
from meddistill.process import sigint_deferred


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_out_dir(path: str | os.PathLike, what: str) -> None:
    """``path`` is a folder, or one that can be created, and is writable (nothing is created)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{what} {path} is a file, not a folder")
    anchor = _nearest_existing(path)
    if not anchor.is_dir():
        raise ArtifactError(f"{what} {path} cannot be created: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        where = "" if anchor == path.absolute() else f" ({anchor} is not writable)"
        raise ArtifactError(f"{what} {path} is not writable{where}")


def check_out_file(path: str | os.PathLike, what: str) -> None:
    """``path`` is a file (or can be created) that can be written or appended to."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ArtifactError(f"{what} {path} is a folder, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise ArtifactError(f"{what} {path} is not writable")
    check_out_dir(path.parent, f"the folder of {what}")


def check_store(path: str | os.PathLike, what: str, write: bool = True) -> None:
    """``path`` is a results store (JSON lines, one object per line) or none yet, and, if
    ``write``, can be appended to: rows are never appended to a file of another kind."""
    path = Path(path).expanduser()
    if write:
        check_out_file(path, what)
    elif path.is_dir():
        raise ArtifactError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        return
    try:
        with open(path, "rb") as f:
            first = f.readline(4096).lstrip()
    except OSError as exc:
        raise ArtifactError(f"{what} {path} cannot be read ({exc.strerror})") from None
    if first and not first.startswith(b"{"):
        raise ArtifactError(f"{what} {path} is not a results file (JSON lines); give a new or a .jsonl path")


def check_net(spec: NetSpec, shape: tuple[int, int, int], num_classes: int) -> None:
    """Build ``spec`` for images of ``shape`` and run a forward pass, on the meta device."""
    try:  # registry errors (unknown net, an option the net ignores) are ConfigErrors already
        with sigint_deferred(), torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "zero-element tensors": the error says it in one line
            net = create_model(spec, shape, num_classes)
            net(torch.empty(2, *shape))
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        size = "x".join(str(n) for n in shape)
        raise ConfigError(f"net {spec.tag()} cannot be built for {size} images: {' '.join(str(exc).split())}") from None


def check_nets(cfg: RunConfig, shape: tuple[int, int, int], num_classes: int, evaluation: bool = True) -> None:
    """The distillation / expert net and (with ``evaluation``) every evaluation net."""
    check_net(cfg.net, shape, num_classes)
    for name in cfg.eval.nets if evaluation else []:
        check_net(spec_for(cfg.net, name), shape, num_classes)


def check_method(cfg: RunConfig) -> None:
    """The active method's settings that fail only together, without the data: for trajectory
    matching, a schedule that reads an expert epoch past ``experts.epochs`` (a config that only
    trains experts never runs the method, so :func:`meddistill.build.check_config` leaves this);
    under ``--dp-epsilon``, a method or start that cannot be private (:func:`meddistill.dp.refusal`)."""
    from meddistill.distill import get_spec
    from meddistill.dp import refusal

    spec = get_spec(cfg.distill.method)
    spec.experts_read(cfg)
    why = refusal(cfg, spec) if cfg.dp.on else None
    if why:
        raise ConfigError(why)


def check_cell(cfg: RunConfig, ds: MedDataset, evaluation: bool = True) -> None:
    """Everything a distillation cell needs, checked before its folder is made."""
    from meddistill.distill import DistillContext, get_method
    from meddistill.utils import resolve_device

    get_method(cfg.distill.method)
    check_method(cfg)
    device = resolve_device(cfg.device)
    check_nets(cfg, ds.shape, ds.num_classes, evaluation)
    DistillContext(ds, cfg, device, Path(cfg.out_dir)).check_ipc()

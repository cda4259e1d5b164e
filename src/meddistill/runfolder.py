"""Reading a run folder's saved ``config.yaml`` from anywhere.

A run folder is ``<out_dir>/<dataset>_<size>/<run>/``. Its config stores ``out_dir``,
``experts_dir`` and ``data_root`` as given when it was made, often relative to the working
directory of that command. Such a path is resolved against the folder that ``out_dir`` was
relative to, found from where the run folder is now (``runs/x_28/r`` with ``out_dir: runs``:
the folder holding ``runs``), never against the current working directory. When the run
folder does not say (an absolute ``out_dir``, ``..`` in it, or a moved folder), the command
asks for the path as a flag instead of guessing.
"""

from __future__ import annotations

import os
from pathlib import Path

from meddistill.build import config_from_dict
from meddistill.config import RunConfig, read_yaml
from meddistill.data.sources import dataset_dir
from meddistill.errors import ArtifactError, ConfigError, MeddistillError


def load_run_config(run_dir: Path) -> RunConfig | None:
    """The resolved config a run folder was made with, or None if it has none."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    data = read_yaml(path)
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def require_run_config(run_dir: Path) -> RunConfig:
    if not run_dir.is_dir():
        raise ArtifactError(f"{run_dir} is not a run folder (no such folder)")
    cfg = load_run_config(run_dir)
    if cfg is None:
        raise ArtifactError(f"{run_dir} is not a run folder (no config.yaml)")
    return cfg


def origin_dir(run_dir: Path, cfg: RunConfig) -> Path | None:
    """The folder the run's relative ``out_dir`` was relative to, from where the run folder is
    now; None if that cannot be told (absolute or ``..`` out_dir, or not the usual layout)."""
    out = Path(os.path.normpath(cfg.out_dir or "."))
    if out.is_absolute() or ".." in out.parts:
        return None
    here = run_dir.resolve()
    if not _in_dataset_folder(here, cfg):
        return None
    runs = here.parent.parent
    parts = () if out == Path(".") else out.parts
    if parts and runs.parts[-len(parts) :] != parts:
        return None
    return Path(*runs.parts[: len(runs.parts) - len(parts)])


def runs_root(run_dir: Path, cfg: RunConfig) -> Path | None:
    """The ``out_dir`` folder that holds this run folder, if it has the usual layout."""
    here = run_dir.resolve()
    return here.parent.parent if _in_dataset_folder(here, cfg) else None


def _in_dataset_folder(here: Path, cfg: RunConfig) -> bool:
    """Is the run folder ``here`` in its ``<dataset tag>_<size>`` folder? For own images the tag
    is the images' folder or CSV name; if they are gone, the size alone is checked."""
    try:
        return here.parent.name == dataset_dir(cfg)
    except MeddistillError:
        return here.parent.name.endswith(f"_{cfg.size}")


def saved_path(run_dir: Path, cfg: RunConfig, key: str, flag: str) -> str:
    """``cfg.<key>`` (``experts_dir``, ``data_root``) resolved for use from any directory: an
    absolute path as is, a relative one against :func:`origin_dir`; "" stays "" (the default)."""
    value = getattr(cfg, key)
    if not value or Path(value).expanduser().is_absolute():
        return str(Path(value).expanduser()) if value else ""
    origin = origin_dir(run_dir, cfg)
    if origin is None:
        raise ArtifactError(
            f"{run_dir / 'config.yaml'} has a relative {key} {value!r} and its out_dir {cfg.out_dir!r} does "
            f"not tell what it was relative to; pass {flag}"
        )
    return str(origin / value)

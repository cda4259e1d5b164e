"""Data sources behind one entry point, in the spirit of timm's ``create_dataset``.

``create_dataset(cfg)`` picks the source from ``cfg.dataset`` and callers never see which:

- ``medmnist``: a MedMNIST 2D subset name (``breastmnist``, ``blood``, ...): the verified npz
  loader, unchanged; its identities stay exactly as before (the official MD5 fixes the data).
- ``csv``: a ``*.csv`` manifest ``path,label[,split]``.
- ``folder``: an image folder ``PATH/<class>/*`` or ``PATH/{train,val,test}/<class>/*``.

A name that is both a MedMNIST subset and a folder in the working directory is the subset;
write ``./name`` for the folder.  For the local sources, ``data_identity`` adds the dataset's
short name and its content fingerprint (plus the ``data:`` keys that change the arrays) to the
expert, run and cell identities, so different or changed data never share experts or runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meddistill.data.cache import DECODER_VERSION
from meddistill.data.listing import Listing, read_manifest, scan_folder
from meddistill.data.loader import MedDataset, load_dataset
from meddistill.data.local import LocalDataset, dataset_name, load_local, local_fingerprint, read_listing, write_records
from meddistill.data.medmnist import DATASETS, SIZES, UnknownDatasetError, get_info
from meddistill.data.splits import assign
from meddistill.errors import ConfigError, DataError
from meddistill.registry import Registry

if TYPE_CHECKING:
    from meddistill.config import RunConfig


@dataclass(frozen=True)
class Source:
    name: str
    claims: Callable[[str], bool]  # does this source take the ``dataset`` argument?
    load: Callable[[RunConfig, bool | None], MedDataset]
    identity: Callable[[RunConfig], dict[str, Any]]  # entries added to expert/run/cell identities
    tag: Callable[[str], str]  # short, file-system-safe name (folders, result rows)
    canonical: Callable[[str], str]  # the argument as stored in the config
    train_size: Callable[[RunConfig], int]  # images in the train split, without decoding them


SOURCES: Registry[Source] = Registry("data source")


def register_source(source: Source) -> Source:
    """Sources are asked in registration order; the first that claims an argument takes it."""
    return SOURCES.add(source.name, source)


def _unknown(dataset: str) -> Exception:
    if os.sep in dataset or "/" in dataset or Path(dataset).suffix:
        return DataError(
            f"{dataset} does not exist; give an image folder PATH/<class>/*, a CSV manifest "
            "(path,label[,split]) or a MedMNIST name"
        )
    return UnknownDatasetError(
        f"unknown dataset {dataset!r}; known MedMNIST 2D subsets: {', '.join(sorted(DATASETS))}; "
        "or give the path of an image folder or a CSV manifest"
    )


def pick_source(dataset: str) -> Source:
    for _, source in SOURCES.items():
        if source.claims(dataset):
            return source
    raise _unknown(dataset)


def create_dataset(cfg: RunConfig, progress: bool | None = None) -> MedDataset:
    """The dataset ``cfg.dataset`` names: a MedMNIST subset, an image folder or a CSV manifest."""
    return pick_source(cfg.dataset).load(cfg, progress)


def train_size(cfg: RunConfig) -> int:
    """How many images the train split of ``cfg.dataset`` holds (own images: listed ones)."""
    return pick_source(cfg.dataset).train_size(cfg)


def dataset_tag(dataset: str) -> str:
    """The name used for run/expert folders and result rows (a MedMNIST name is kept as given)."""
    return pick_source(dataset).tag(dataset)


def dataset_dir(cfg: RunConfig) -> str:
    """The ``<tag>_<size>`` folder name that groups a dataset's runs and experts."""
    return f"{dataset_tag(cfg.dataset)}_{cfg.size}"


def canonical_dataset(dataset: str) -> str:
    """A local source as an absolute path (so later commands find it from any folder)."""
    for _, source in SOURCES.items():
        if source.claims(dataset):
            return source.canonical(dataset)
    return dataset  # unknown: reported when it is loaded


def write_run_records(ds: MedDataset, run_dir: Path) -> None:
    """What a run folder records about its data: split.csv, data.json (own images only)."""
    if isinstance(ds, LocalDataset):
        write_records(ds, run_dir)


# ---- medmnist -----------------------------------------------------------------------------


def _is_medmnist(dataset: str) -> bool:
    if "/" in dataset or os.sep in dataset or dataset.lower().endswith(".csv"):
        return False
    try:
        get_info(dataset)
    except UnknownDatasetError:
        return False
    return True


def _load_medmnist(cfg: RunConfig, progress: bool | None = None) -> MedDataset:
    info = get_info(cfg.dataset)
    if info.multi_label:
        raise ConfigError(f"{info.name} is multi-label; class-wise distillation supports single-label tasks")
    if cfg.size not in SIZES:
        raise ConfigError(f"image size {cfg.size} is not a MedMNIST size; choose one of {', '.join(map(str, SIZES))}")
    return load_dataset(info.name, cfg.size, cfg.data_root or None)


register_source(  # canonical: "BREAST" or "breast" → "breastmnist" (one name, one folder, one row label)
    Source(
        "medmnist",
        _is_medmnist,
        _load_medmnist,
        lambda cfg: {},
        lambda d: d,
        lambda d: get_info(d).name,
        lambda cfg: get_info(cfg.dataset).n_samples[0],
    )
)


# ---- own images: CSV manifest and image folder --------------------------------------------


def _local_identity(reader: Callable[[Path], Listing]) -> Callable[[RunConfig], dict[str, Any]]:
    def identity(cfg: RunConfig) -> dict[str, Any]:
        listing = read_listing(cfg, reader)
        d = cfg.data
        data = {
            "fingerprint": local_fingerprint(listing).content,
            "channels": d.channels,
            "split": list(d.split),
            "split_seed": d.split_seed,
            "flip": d.flip,
            "rotate": d.rotate,
            "duplicates": d.duplicates,
            "decoder": DECODER_VERSION,
        }
        return {"dataset": dataset_name(listing.source), "data": data}

    return identity


def _local_loader(reader: Callable[[Path], Listing]) -> Callable[[RunConfig, bool | None], MedDataset]:
    def load(cfg: RunConfig, progress: bool | None = None) -> MedDataset:
        return load_local(cfg, reader, progress)

    return load


def _local_train_size(reader: Callable[[Path], Listing]) -> Callable[[RunConfig], int]:
    def size(cfg: RunConfig) -> int:
        listing = read_listing(cfg, reader)
        labels = [e.label for e in listing.entries]
        given = [e.split for e in listing.entries]
        splits, _ = assign(labels, given, cfg.data.split, cfg.data.split_seed, str(listing.source))
        return sum(s == "train" for s in splits)

    return size


def _absolute(dataset: str) -> str:
    return str(Path(dataset).expanduser().resolve())


def _local_tag(dataset: str) -> str:
    return dataset_name(Path(dataset).expanduser().resolve())


register_source(
    Source(
        "csv",
        lambda d: d.lower().endswith(".csv") and Path(d).expanduser().is_file(),
        _local_loader(read_manifest),
        _local_identity(read_manifest),
        _local_tag,
        _absolute,
        _local_train_size(read_manifest),
    )
)
register_source(
    Source(
        "folder",
        lambda d: bool(d.strip()) and Path(d).expanduser().is_dir(),  # "" is no folder, not the working one
        _local_loader(scan_folder),
        _local_identity(scan_folder),
        _local_tag,
        _absolute,
        _local_train_size(scan_folder),
    )
)

"""A lab's own images (image folder or CSV manifest) as a :class:`MedDataset`.

listing (``listing.py``) → content fingerprint and decoded arrays (``cache.py``, decoded once)
→ split (``splits.py``) → the same normalisation as the MedMNIST loader (train mean/std per
channel), so an image folder holding a MedMNIST split gives bit-identical tensors.
The run folder gets ``split.csv`` (every image, its class, split and content hash; usable as
a CSV manifest to reproduce the run), ``data.json`` (the dataset's description) and, when
unreadable images were skipped, ``bad_images.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from meddistill.data.cache import (
    DECODER_VERSION,
    Decoded,
    Fingerprint,
    cache_root,
    decode_listing,
    decoded_path,
    fingerprint,
    read_decoded,
    write_decoded,
)
from meddistill.data.listing import SPLITS, Entry, Listing, natural_key
from meddistill.data.loader import MedDataset, Split
from meddistill.data.options import DataConfig, check_data_config
from meddistill.data.registry import DatasetInfo
from meddistill.data.splits import assign
from meddistill.errors import ConfigError, DataError
from meddistill.utils import write_text_atomic

if TYPE_CHECKING:
    from meddistill.config import RunConfig

MIN_SIZE, MAX_SIZE = 8, 1024
UNSPECIFIED_LICENCE = "not specified"


@dataclass
class LocalDataset(MedDataset):
    """A :class:`MedDataset` from a folder or CSV, with what the run folder records about it."""

    listing: Listing | None = None
    fingerprint: str = ""
    records: list[dict] = field(default_factory=list)  # one per image: path, label, split, sha
    bad: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def description(self) -> dict:
        labels = list(self.info.labels)
        class_id = {c: i for i, c in enumerate(labels)}
        counts = {s: [0] * len(labels) for s in SPLITS}
        for r in self.records:
            counts[r["split"]][class_id[r["label"]]] += 1
        lst = self.listing
        return {
            "source": lst.kind if lst else "",
            "path": str(lst.source) if lst else "",
            "name": self.info.name,
            "fingerprint": self.fingerprint,
            "decoder_version": DECODER_VERSION,
            "size": self.size,
            "channels": self.info.channels,
            "classes": labels,
            "counts": counts,
            "licence": self.info.license,
            "modality": self.info.modality,
            "task": self.info.task,
            "ignored_files": len(lst.ignored) if lst else 0,
            "skipped_images": len(self.bad),
            "notes": self.notes,
        }


def dataset_name(source: Path) -> str:
    """A file-system-safe short name: the folder's name, or the CSV's stem."""
    base = source.stem if source.suffix.lower() == ".csv" else source.name
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in base).strip("._")
    return safe or "dataset"


def check_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"image size {size} is out of range; use {MIN_SIZE}..{MAX_SIZE} (e.g. 28, 32, 64, 128)")


def local_fingerprint(listing: Listing, cfg: RunConfig, progress: bool | None = None) -> Fingerprint:
    return fingerprint(listing, cache_root(cfg.data.cache_dir), progress)


def _decoded(listing: Listing, fp: Fingerprint, cfg: RunConfig, progress: bool | None) -> Decoded:
    path = decoded_path(cache_root(cfg.data.cache_dir), dataset_name(listing.source), fp, cfg.size, cfg.data.channels)
    dec = read_decoded(path)
    if dec is None:
        dec = decode_listing(listing, cfg.size, cfg.data.channels, progress)
        if dec.bad and cfg.data.on_bad_image == "fail":
            _raise_bad(listing, dec.bad)  # nothing cached: the fixed files decode next time
        write_decoded(path, dec)
    elif dec.bad and cfg.data.on_bad_image == "fail":
        _raise_bad(listing, dec.bad)
    return dec


def _raise_bad(listing: Listing, bad: list[tuple[str, str]]) -> None:
    rel, reason = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise DataError(
        f"cannot read image {listing.root / rel}: {reason}{more}; fix or remove it, "
        "or pass --on-bad-image skip to leave unreadable images out"
    )


def _normalised(raw: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Exactly the MedMNIST loader's normalisation: train-split mean/std per channel."""
    mean = raw["train"].mean(dim=(0, 2, 3))
    std = raw["train"].std(dim=(0, 2, 3)).clamp_min(1e-6)
    return {s: (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1) for s, x in raw.items()}, mean, std


def _info(name: str, classes: list[str], channels: int, counts: tuple[int, int, int], d: DataConfig) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        modality="user",
        task="binary-class" if len(classes) == 2 else "multi-class",
        channels=channels,
        labels=tuple(classes),
        n_samples=counts,
        md5={},
        license=d.licence or UNSPECIFIED_LICENCE,
        flip=d.flip,  # off by default: anatomy may be handed, text or markers mirrored
        rotate=d.rotate,
    )


@dataclass
class _Labelled:
    """The readable images of a listing with their class and split, and notes for the user."""

    entries: list[Entry]
    classes: list[str]
    splits: list[str]
    notes: list[str]

    def indices(self, split: str) -> list[int]:
        return [i for i, s in enumerate(self.splits) if s == split]


def _labelled(listing: Listing, dec: Decoded, cfg: RunConfig) -> _Labelled:
    entries = [listing.entries[i] for i in dec.keep]
    where = str(listing.source)
    classes = sorted({e.label for e in entries}, key=natural_key)
    if len(classes) < 2:
        found = f"one class ({classes[0]!r})" if classes else "no readable images"
        raise DataError(f"{where} has {found}; distillation needs at least two classes")
    labels = [e.label for e in entries]
    splits, notes = assign(labels, [e.split for e in entries], cfg.data.split, cfg.data.split_seed, where)
    return _Labelled(entries, classes, splits, notes)


def _splits(dec: Decoded, lab: _Labelled) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Pixels in [0, 1] and class ids per split, images in canonical order."""
    class_id = {c: i for i, c in enumerate(lab.classes)}
    raw, ys = {}, {}
    for s in SPLITS:
        idx = lab.indices(s)
        raw[s] = torch.from_numpy(np.ascontiguousarray(dec.floats(idx)))
        ys[s] = torch.tensor([class_id[lab.entries[i].label] for i in idx], dtype=torch.int64)
    return raw, ys


def _records(listing: Listing, fp: Fingerprint, dec: Decoded, lab: _Labelled) -> list[dict]:
    root = listing.root.resolve()
    hashes = [fp.files[i] for i in dec.keep]
    return [
        {"path": str(root / e.rel), "label": e.label, "split": s, "sha": h}
        for e, s, h in zip(lab.entries, lab.splits, hashes, strict=True)
    ]


def load_local(cfg: RunConfig, reader: Callable[[Path], Listing], progress: bool | None = None) -> LocalDataset:
    """Build a normalised dataset from ``cfg.dataset`` (a folder or a CSV, read by ``reader``)."""
    check_data_config(cfg.data)
    check_size(cfg.size)
    listing = reader(Path(cfg.dataset).expanduser())
    fp = local_fingerprint(listing, cfg, progress)
    dec = _decoded(listing, fp, cfg, progress)
    lab = _labelled(listing, dec, cfg)
    raw, ys = _splits(dec, lab)
    check_ipc(cfg.distill.ipc, lab.classes, ys["train"], str(listing.source))
    norm, mean, std = _normalised(raw)
    counts = (len(ys["train"]), len(ys["val"]), len(ys["test"]))
    info = _info(dataset_name(listing.source), lab.classes, int(dec.images.shape[1]), counts, cfg.data)
    splits = [Split(norm[s], ys[s]) for s in SPLITS]
    notes = _load_notes(listing, dec) + lab.notes
    records = _records(listing, fp, dec, lab)
    extra = {"listing": listing, "fingerprint": fp.content, "records": records, "bad": dec.bad, "notes": notes}
    ds = LocalDataset(info, cfg.size, *splits, mean, std, listing.source, **extra)
    for note in notes:
        print(f"meddistill: note: {listing.source.name}: {note}", file=sys.stderr)
    return ds


def check_ipc(ipc: int, classes: list[str], train_labels: torch.Tensor, where: str) -> None:
    """Fail at load time, before experts are trained, when a class has fewer than ``ipc`` train images."""
    counts = torch.bincount(train_labels, minlength=len(classes)).tolist()
    for c, n in enumerate(counts):
        if n < ipc:
            raise ConfigError(
                f"ipc {ipc} is larger than class {c} ({classes[c]!r}) of {where}, which has {n} train images; "
                f"lower --ipc to at most {min(counts)} or add train images of {classes[c]!r}"
            )


def _load_notes(listing: Listing, dec: Decoded) -> list[str]:
    notes = []
    if listing.ignored:
        shown = ", ".join(listing.ignored[:3]) + (", ..." if len(listing.ignored) > 3 else "")
        notes.append(f"ignored {len(listing.ignored)} non-image file(s) by extension ({shown})")
    if dec.bad:
        notes.append(f"skipped {len(dec.bad)} unreadable image(s) (bad_images.csv in the run folder): {dec.bad[0][0]}")
    return notes


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_records(ds: LocalDataset, run_dir: Path) -> None:
    """``split.csv``, ``data.json`` and (if any were skipped) ``bad_images.csv`` in a run folder."""
    write_text_atomic(run_dir / "split.csv", _csv_text(ds.records, ["path", "label", "split", "sha"]))
    write_text_atomic(run_dir / "data.json", json.dumps(ds.description(), indent=2, sort_keys=True))
    if ds.bad:
        rows = [{"path": str(ds.listing.root / rel) if ds.listing else rel, "reason": r} for rel, r in ds.bad]
        write_text_atomic(run_dir / "bad_images.csv", _csv_text(rows, ["path", "reason"]))

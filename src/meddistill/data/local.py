"""A lab's own images (image folder or CSV manifest) as a :class:`MedDataset`.

listing (``listing.py``) → content fingerprint and decoded arrays (``cache.py``, decoded once)
→ split (``splits.py``) → the same normalisation as the MedMNIST loader (train mean/std per
channel), so an image folder holding a MedMNIST split gives bit-identical tensors.
Checks at load, each a one-line error (exit 2) or a note with counts: ``--out``,
``--experts-dir`` or the decode cache inside the image folder is refused (their files would be
read as images next time); files with the same content (a copy, a link) in two classes or two
splits are refused (a label clash, or a train/test leak), and within one class and split only
the first in canonical order is kept (a note says how many were dropped) — unless
``data.duplicates`` is ``keep`` (every file used as listed); the classes found are
printed.  ``eval`` refuses a run whose ``data.json`` fingerprint is not the data's now.
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

from meddistill.config import DataConfig, check_data_config
from meddistill.data.cache import (
    DECODER_VERSION,
    Decoded,
    Fingerprint,
    cache_root,
    check_cache_dir,
    decode_listing,
    decoded_path,
    fingerprint,
    read_decoded,
    write_decoded,
)
from meddistill.data.listing import SPLITS, Entry, Listing, natural_key
from meddistill.data.loader import MedDataset, Split
from meddistill.data.medmnist import DatasetInfo
from meddistill.data.splits import assign
from meddistill.errors import ConfigError, DataError
from meddistill.utils import write_text_atomic

if TYPE_CHECKING:
    from meddistill.config import RunConfig

MIN_SIZE, MAX_SIZE = 8, 1024
UNSPECIFIED_LICENCE = "not specified"
MAX_CLASSES_SHOWN = 20  # the classes note names at most this many


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


def local_fingerprint(listing: Listing, progress: bool | None = False) -> Fingerprint:
    return fingerprint(listing, progress)


def read_listing(cfg: RunConfig, reader: Callable[[Path], Listing]) -> Listing:
    """The listing of ``cfg.dataset``, refused when the run's outputs would be read as its images."""
    listing = reader(Path(cfg.dataset).expanduser())
    check_outputs_outside(listing, cfg)
    return listing


def check_outputs_outside(listing: Listing, cfg: RunConfig) -> None:
    """``--out``, ``--experts-dir`` and the decode cache must not lie in an image folder: the next
    scan would take their plots and files for images (a class made of the tool's own grid.png)."""
    if listing.kind != "folder":
        return  # a CSV lists its files: nothing else in its folder is read
    root = listing.root.resolve()
    cache = str(cache_root(cfg.data.cache_dir))
    outputs = {"--out": cfg.out_dir, "--experts-dir": cfg.experts_dir, "the decode cache (data.cache_dir)": cache}
    for flag, given in outputs.items():
        path = Path(given).expanduser().resolve()
        if path == root or root in path.parents:
            raise ConfigError(
                f"{flag} {given} is inside the image folder {root}: its files would be read as images next time; "
                f"put it outside {root}"
            )


def check_same_data(ds: MedDataset, run_dir: Path) -> None:
    """Refuse to evaluate a run on other images than it was distilled on (own images: the
    fingerprint its ``data.json`` recorded); a MedMNIST run, or one without ``data.json``, passes."""
    if not isinstance(ds, LocalDataset):
        return
    try:
        saved = json.loads((run_dir / "data.json").read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return
    if saved and saved != ds.fingerprint:
        source = ds.listing.source if ds.listing else "the data"
        raise DataError(
            f"the data's fingerprint differs from the run's ({ds.fingerprint[:12]} now, {str(saved)[:12]} in "
            f"{run_dir / 'data.json'}): {source} changed since the run; run it again on the data as it is, "
            "or restore the data it was distilled on"
        )


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


def _raise_unreadable(listing: Listing) -> None:
    rel, reason = listing.unreadable[0]
    more = f" (and {len(listing.unreadable) - 1} more)" if len(listing.unreadable) > 1 else ""
    raise DataError(
        f"cannot read folder {listing.root / rel} ({reason}){more}: its images would be left out; fix its "
        "permissions, or pass --on-bad-image skip to leave them out"
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
    listing = read_listing(cfg, reader)
    if listing.unreadable and cfg.data.on_bad_image == "fail":
        _raise_unreadable(listing)
    check_cache_dir(cache_root(cfg.data.cache_dir))
    fp = local_fingerprint(listing, progress)
    dec = _decoded(listing, fp, cfg, progress)
    dec, dup_notes = _unique(listing, fp, dec) if cfg.data.duplicates == "check" else (dec, [])
    lab = _labelled(listing, dec, cfg)
    raw, ys = _splits(dec, lab)
    check_ipc(cfg.distill.ipc, lab.classes, ys["train"], str(listing.source))
    norm, mean, std = _normalised(raw)
    counts = (len(ys["train"]), len(ys["val"]), len(ys["test"]))
    info = _info(dataset_name(listing.source), lab.classes, int(dec.images.shape[1]), counts, cfg.data)
    splits = [Split(norm[s], ys[s]) for s in SPLITS]
    notes = [*listing.notes, *_load_notes(listing, dec), *dup_notes, *lab.notes, _classes_note(lab)]
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


def _unique(listing: Listing, fp: Fingerprint, dec: Decoded) -> tuple[Decoded, list[str]]:
    """The readable images with distinct contents. The same bytes in two classes or two splits
    (a copy or a link) is an error; within one class and split the first in canonical order is
    kept and a note counts the others."""
    first: dict[str, int] = {}
    keep = np.ones(len(dec.keep), dtype=bool)
    clashes: list[tuple[Entry, Entry]] = []
    for j, i in enumerate(dec.keep.tolist()):
        e = listing.entries[i]
        k = first.setdefault(fp.files[i], i)
        if k == i:
            continue
        if (listing.entries[k].label, listing.entries[k].split) == (e.label, e.split):
            keep[j] = False
        else:
            clashes.append((listing.entries[k], e))
    if clashes:
        a, b = clashes[0]
        raise DataError(
            f"{listing.source}: {len(clashes)} image(s) have the same content as an image of another class or "
            f"split, e.g. {listing.path(a)} and {listing.path(b)} ({_apart(a, b)}); "
            "remove one copy of each (the same image under two labels, or in train and test, spoils the result), "
            "or pass --set data.duplicates=keep to use every file as listed"
        )
    if keep.all():
        return dec, []
    dropped = [listing.entries[i].rel for i in dec.keep[~keep].tolist()]
    note = (
        f"dropped {len(dropped)} duplicate image(s) (the same content as an earlier file of their class; "
        f"the first in name order is kept): {dropped[0]}"
    )
    return Decoded(dec.images[keep], dec.keep[keep], dec.bad), [note]


def _apart(a: Entry, b: Entry) -> str:
    if a.label != b.label:
        splits = f", splits {a.split} and {b.split}" if a.split != b.split else ""
        return f"classes {a.label!r} and {b.label!r}{splits}"
    return f"class {a.label!r}, splits {a.split} and {b.split}"


def _classes_note(lab: _Labelled) -> str:
    counts = {c: 0 for c in lab.classes}
    for e in lab.entries:
        counts[e.label] += 1
    shown = ", ".join(f"{c!r} ({n})" for c, n in list(counts.items())[:MAX_CLASSES_SHOWN])
    more = f", ... ({len(counts) - MAX_CLASSES_SHOWN} more)" if len(counts) > MAX_CLASSES_SHOWN else ""
    return f"{len(counts)} classes: {shown}{more}"


def _load_notes(listing: Listing, dec: Decoded) -> list[str]:
    notes = []
    if listing.ignored:
        shown = ", ".join(listing.ignored[:3]) + (", ..." if len(listing.ignored) > 3 else "")
        notes.append(f"ignored {len(listing.ignored)} non-image file(s) by extension ({shown})")
    if listing.unreadable:
        notes.append(f"skipped {len(listing.unreadable)} unreadable folder(s): {listing.unreadable[0][0]}")
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

"""What a lab's dataset consists of: (file, class, split) entries from an image folder or a CSV.

Folder layouts: ``PATH/<class>/...`` (any depth below the class folder), or
``PATH/{train,val,test}/<class>/...`` where the folders fix the split.  CSV manifest:
a header with ``path`` and ``label`` (and optionally ``split``); paths are relative to the
CSV's folder (absolute paths work too); extra columns are ignored.

Canonical order (the order images have in every split): by file name in natural order
(``img2`` before ``img10``), then by the whole relative path.  It does not depend on the
class folders or on the order of the CSV rows, so a folder and a manifest of the same files
give the same arrays.

Class names (folder names and CSV labels alike) name one class when they are equal after
dropping spaces around them and ignoring case (``casefold``), or, for numbers, by value
(``1``, ``1.0`` and `` 01`` are class ``1``). A class spelt several ways is named by its
spelling that sorts first (``MALIGNANT`` before ``Malignant`` before ``malignant``); the
listing keeps a note of every merge.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath

from meddistill.data.decode import image_kind
from meddistill.errors import DataError

SPLITS = ("train", "val", "test")
FORMATS = "PNG, JPEG, TIFF, BMP, DICOM"


@dataclass(frozen=True)
class Entry:
    rel: str  # POSIX path relative to the listing's root (or absolute, from a CSV)
    label: str  # class name
    split: str | None  # train / val / test, or None: the seeded split decides


@dataclass(frozen=True)
class Listing:
    kind: str  # "folder" or "csv"
    source: Path  # the folder or the CSV file the user gave
    root: Path  # entry paths are relative to this folder
    entries: tuple[Entry, ...]  # in canonical order
    ignored: tuple[str, ...] = ()  # non-image files left out by their extension
    notes: tuple[str, ...] = ()  # class names spelt several ways, merged
    unreadable: tuple[tuple[str, str], ...] = ()  # (folder below a class folder, reason) not listed

    def path(self, entry: Entry) -> Path:
        return self.root / entry.rel

    @property
    def has_split(self) -> bool:
        return any(e.split is not None for e in self.entries)


def natural_key(text: str) -> tuple:
    """``img10`` sorts after ``img2``: digit runs compare as numbers."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def canonical(entries: list[Entry]) -> tuple[Entry, ...]:
    def key(e: Entry) -> tuple:
        return natural_key(PurePosixPath(e.rel).name), natural_key(e.rel), e.rel

    return tuple(sorted(entries, key=key))


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def label_key(label: str) -> str:
    """What identifies a class: the name without spaces around it, case ignored; a number by value."""
    text = label.strip()
    if _NUMBER.fullmatch(text):
        try:
            value = Decimal(text)
        except InvalidOperation:
            return text.casefold()
        return str(int(value)) if value == value.to_integral_value() else str(value.normalize())
    return text.casefold()


def merge_labels(entries: list[Entry]) -> tuple[list[Entry], tuple[str, ...]]:
    """Entries with one name per class (see the module docstring), and a note per merged class."""
    spellings: dict[str, set[str]] = {}
    for e in entries:
        spellings.setdefault(label_key(e.label), set()).add(e.label.strip())
    names = {k: k if _NUMBER.fullmatch(k) else min(v) for k, v in spellings.items()}
    notes = tuple(
        f"labels {', '.join(repr(s) for s in sorted(v))} are one class {names[k]!r} "
        "(spaces around, case and number format ignored)"
        for k, v in sorted(spellings.items())
        if len(v) > 1 or names[k] not in v
    )
    return [Entry(e.rel, names[label_key(e.label)], e.split) for e in entries], notes


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _class_files(folder: Path, root: Path, ignored: list[str], unreadable: list[tuple[str, str]]) -> list[str]:
    """Image files anywhere below one class folder (relative to ``root``); others go to ``ignored``,
    folders that cannot be read to ``unreadable``."""
    found: list[str] = []

    def note(exc: OSError) -> None:
        unreadable.append((Path(exc.filename).relative_to(root).as_posix(), exc.strerror or str(exc)))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=note):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if _visible(p) and image_kind(p) is not None:
                found.append(rel)
            else:
                ignored.append(rel)
    return found


def _split_dirs(root: Path) -> tuple[list[tuple[str | None, Path]], list[Path]]:
    """The (split, folder holding class folders) pairs of a dataset folder, and loose top-level files."""
    subdirs = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p)), key=lambda p: natural_key(p.name))
    files = sorted(p for p in root.iterdir() if p.is_file())
    named = [p for p in subdirs if p.name.lower() in SPLITS]
    if not named:
        return [(None, root)], files
    others = [p.name for p in subdirs if p not in named]
    if others:
        raise DataError(
            f"{root} mixes split folders ({', '.join(p.name for p in named)}) with class folders "
            f"({', '.join(others)}); use either {root}/<class>/ or {root}/{{train,val,test}}/<class>/"
        )
    return [(p.name.lower(), p) for p in named], files


def _loose_files(files: list[Path], folder: Path, root: Path, ignored: list[str]) -> None:
    """Files beside the class folders: an image there is an error, anything else is ignored."""
    for f in files:
        if _visible(f) and image_kind(f) is not None:
            raise DataError(f"{f} is not in a class folder; move each image into {folder}/<class>/")
        ignored.append(f.relative_to(root).as_posix())


def scan_folder(root: Path) -> Listing:
    """List ``root/<class>/*`` or ``root/<split>/<class>/*`` (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give an image folder PATH/<class>/*, a CSV manifest or MedMNIST name")
    splits, loose = _split_dirs(root)
    ignored: list[str] = []
    unreadable: list[tuple[str, str]] = []
    _loose_files(loose, root, root, ignored)
    entries: list[Entry] = []
    for split, folder in splits:
        if split is not None:  # a flat layout's loose files are the root's, listed above
            _loose_files(sorted(p for p in folder.iterdir() if p.is_file()), folder, root, ignored)
        classes = sorted((p for p in folder.iterdir() if p.is_dir() and _visible(p)), key=lambda p: natural_key(p.name))
        if not classes:
            where = f"{folder}/<class>/" if split else f"{root}/<class>/ (or {root}/train/<class>/ ...)"
            raise DataError(f"{folder} has no class folders; put the images in {where}")
        for cls in classes:
            files = _class_files(cls, root, ignored, unreadable)
            if not files and unreadable and unreadable[-1][0] == cls.relative_to(root).as_posix():
                raise DataError(f"cannot read class folder {cls} ({unreadable[-1][1]}); fix its permissions")
            if not files:
                raise DataError(f"class folder {cls} has no images ({FORMATS}); add images or remove the folder")
            entries += [Entry(rel, cls.name, split) for rel in files]
    entries, notes = merge_labels(entries)
    return Listing("folder", root, root, canonical(entries), tuple(ignored), notes, tuple(unreadable))


def _columns(reader: csv.DictReader, path: Path) -> dict[str, str]:
    """Map the required/optional column names to the header's spelling (case and spaces ignored)."""
    header = reader.fieldnames or []
    cols = {h.strip().lower(): h for h in header if h is not None}
    missing = [c for c in ("path", "label") if c not in cols]
    if missing:
        found = ", ".join(repr(h) for h in header) or "nothing"
        raise DataError(
            f"{path} lacks the column(s) {', '.join(missing)}; its first line must be a header "
            f"path,label[,split] (found {found})"
        )
    return {k: cols[k] for k in ("path", "label", "split") if k in cols}


def _row_entry(row: dict, cols: dict[str, str], line: int, path: Path) -> Entry:
    rel = (row.get(cols["path"]) or "").strip().replace("\\", "/")
    label = (row.get(cols["label"]) or "").strip()
    split = (row.get(cols["split"]) or "").strip().lower() if "split" in cols else ""
    if not rel or not label:
        what = "path" if not rel else "label"
        raise DataError(f"{path} line {line}: empty {what}; every row needs a path and a label")
    if split and split not in SPLITS:
        raise DataError(f"{path} line {line}: split {split!r} is not one of {', '.join(SPLITS)} (or empty)")
    return Entry(os.path.normpath(rel).replace(os.sep, "/"), label, split or None)


def read_manifest(path: Path) -> Listing:
    """Read a ``path,label[,split]`` CSV (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV manifest {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = _columns(reader, path)
            rows = [(reader.line_num, _row_entry(r, cols, reader.line_num, path)) for r in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable CSV file ({exc}); save it as UTF-8 CSV") from None
    if not rows:
        raise DataError(f"{path} lists no images; add rows path,label[,split] below the header")
    _check_rows(rows, path)
    entries, notes = merge_labels([e for _, e in rows])
    return Listing("csv", path, path.parent, canonical(entries), (), notes)


def _check_rows(rows: list[tuple[int, Entry]], path: Path) -> None:
    seen: dict[str, int] = {}
    for line, e in rows:
        if e.rel in seen:
            raise DataError(f"{path} lines {seen[e.rel]} and {line} both list {e.rel}; list each image once")
        seen[e.rel] = line
    root = path.parent
    # a link that leads nowhere (dangling, a loop) is listed: a bad image, as in a folder
    missing = [(line, e.rel) for line, e in rows if not (root / e.rel).is_file() and not (root / e.rel).is_symlink()]
    if missing:
        line, rel = missing[0]
        raise DataError(
            f"{path} line {line}: {root / rel} does not exist ({len(missing)} listed files missing; "
            "paths are relative to the CSV's folder)"
        )
    unknown = [(line, e.rel) for line, e in rows if image_kind(root / e.rel) is None]
    if unknown:
        line, rel = unknown[0]
        raise DataError(f"{path} line {line}: {rel} is not a supported image file ({FORMATS}); remove the row")
    with_split = [e.split is not None for _, e in rows]
    if any(with_split) and not all(with_split):
        line = rows[with_split.index(False)][0]
        raise DataError(f"{path} line {line} has no split but other rows have one; give every row a split, or none")

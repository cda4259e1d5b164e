"""Data fingerprints and the decoded-array cache of a lab's own images.

The **content fingerprint** is a hash of every listed file's relative path, class, split and
bytes. It is computed from the bytes each time it is asked for, never from a remembered size
and mtime: a file replaced by another of the same size whose mtime was put back (``touch -r``)
changes it. Hashing is cheap next to decoding (5000 28x28 PNGs, 5 MB: 0.15 s; 5000 256x256
PNGs, 77 MB: 0.3 s; a ``run`` asks 5 times), see docs/reliability.md. A file that cannot be
read (permission, dangling link, symlink loop) hashes to a marker naming the error, so it
stays in the listing and is reported as a bad image when decoded.

The decoded arrays are cached under the cache folder (``data.cache_dir``, else
``$MEDDISTILL_CACHE``, else ``~/.cache/meddistill``), written atomically (temp file + rename):
``decoded/<name>-<size>-<key>.npz`` (no pickles), keyed by the content fingerprint, the size,
the channel setting and the decoder version, as uint8 when every value is an 8-bit level and
uint16 otherwise, plus the list of unreadable files.  A second run loads it instead of
decoding.  A cache folder that is a file or cannot be written is a one-line error.

The content fingerprint enters the expert/run/cell identities: a copy
of the same files elsewhere shares results, any change of a byte, class or split does not.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from meddistill.data.decode import decode_file, is_grey, to_channels
from meddistill.data.listing import Entry, Listing
from meddistill.errors import ConfigError, DataError, MeddistillError
from meddistill.utils import atomic_path, config_hash

DECODER_VERSION = 1  # bump when decoding or resizing changes the arrays
CACHE_ENV = "MEDDISTILL_CACHE"
LEVELS_8BIT = 257  # 65535 / 255: an 8-bit level v is 257 * v in 16-bit


def cache_root(cache_dir: str = "") -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path("~/.cache/meddistill").expanduser()


@dataclass(frozen=True)
class Fingerprint:
    content: str  # hash of paths, classes, splits and file bytes (enters the identities)
    files: tuple[str, ...]  # per-entry content hash, in listing order


def _entry_row(e: Entry) -> list:
    return [e.rel, e.label, e.split]


def read_file(path: Path) -> bytes:
    """The bytes of one listed file (the one place they are read: hashing and decoding); a FIFO
    or device under an image name is refused, not read (it could block forever)."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return path.read_bytes()


def _file_hash(path: Path) -> str:
    try:
        data = read_file(path)
    except OSError as exc:  # permission, dangling link, loop: a bad image, reported at decoding
        return f"unreadable:{type(exc).__name__}:{exc.errno}"
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def content_hash(listing: Listing, files: list[str]) -> str:
    rows = [[*_entry_row(e), h] for e, h in zip(listing.entries, files, strict=True)]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:32]


def fingerprint(listing: Listing, progress: bool | None = False) -> Fingerprint:
    """The content fingerprint of a listing: every file's bytes are hashed (see the module docstring).
    ``progress`` None shows a bar on a terminal (a load passes it; identities hash quietly)."""
    paths = [listing.path(e) for e in listing.entries]
    bar = tqdm(paths, desc="hashing images", unit="file", disable=_disable(progress))
    files = [_file_hash(p) for p in bar]
    return Fingerprint(content_hash(listing, files), tuple(files))


def check_cache_dir(root: Path) -> None:
    """A one-line error, before any decoding, when the cache folder is a file or cannot be written."""
    hint = "give a writable folder with --set data.cache_dir=DIR (or $MEDDISTILL_CACHE)"
    if root.exists() and not root.is_dir():
        raise ConfigError(f"the decode cache {root} is a file, not a folder; {hint}")
    try:
        (root / "decoded").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root / "decoded"):
            pass
    except OSError as exc:
        raise ConfigError(f"the decode cache {root} cannot be written ({exc.strerror or exc}); {hint}") from None


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress  # None: tqdm shows bars only on a terminal


@dataclass
class Decoded:
    images: np.ndarray  # (M, C, H, W) uint8 or uint16, readable files only
    keep: np.ndarray  # (M,) int64 positions of those files in the listing
    bad: list[tuple[str, str]]  # (relative path, reason) of unreadable files

    def floats(self, idx: list[int]) -> np.ndarray:
        """Images ``idx`` as float32 in [0, 1]: 8-bit levels /255 (as the MedMNIST loader), 16-bit /65535."""
        top = 255.0 if self.images.dtype == np.uint8 else 65535.0
        return self.images[idx].astype(np.float32) / np.float32(top)


def decoded_path(root: Path, name: str, fp: Fingerprint, size: int, channels: int) -> Path:
    key = config_hash({"content": fp.content, "size": size, "channels": channels, "decoder": DECODER_VERSION}, 16)
    return root / "decoded" / f"{name}-{size}-{key}.npz"


def read_decoded(path: Path) -> Decoded | None:
    """A cached decode, or None when there is none or it is unreadable (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("decoder") != DECODER_VERSION:
                return None
            return Decoded(z["images"], z["keep"], [tuple(b) for b in meta["bad"]])
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError, TypeError):
        return None


def write_decoded(path: Path, dec: Decoded) -> None:
    meta = json.dumps({"decoder": DECODER_VERSION, "bad": [list(b) for b in dec.bad]})
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, images=dec.images, keep=dec.keep, meta=np.array(meta))
    except OSError as exc:  # e.g. a full disk: nothing half-written stays (atomic_path)
        raise DataError(f"cannot write the decode cache {path} ({exc.strerror or exc}); free space or "
                        "give another folder with --set data.cache_dir=DIR") from None


def _levels(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats → uint16 levels (an 8-bit value v becomes exactly 257 v)."""
    return np.rint(x * 65535.0).astype(np.uint16)


def _compact(stack: np.ndarray) -> np.ndarray:
    """uint8 when every level is an 8-bit one (the cache is then half the size), else uint16."""
    if not (stack % LEVELS_8BIT).any():
        return (stack // LEVELS_8BIT).astype(np.uint8)
    return stack


def decode_listing(listing: Listing, size: int, channels: int, progress: bool | None = None) -> Decoded:
    """Decode every file of a listing (unreadable ones are reported, not raised)."""
    levels: list[np.ndarray] = []
    keep: list[int] = []
    bad: list[tuple[str, str]] = []
    bar = tqdm(listing.entries, desc=f"decoding {listing.source.name}", unit="img", disable=_disable(progress))
    for i, e in enumerate(bar):
        path = listing.path(e)
        try:
            levels.append(_levels(decode_file(path, read_file(path), size)))
            keep.append(i)
        except MeddistillError:
            raise  # e.g. pydicom missing: not a property of this file
        except Exception as exc:  # any decoder failure is a bad file, reported with its reason
            bad.append((e.rel, f"{type(exc).__name__}: {exc}".strip()))
    if not levels:
        return Decoded(np.zeros((0, max(channels, 1), size, size), np.uint8), np.zeros(0, np.int64), bad)
    target = channels or (1 if all(is_grey(q) for q in levels) else 3)
    stack = np.stack([to_channels(q, target) for q in levels])
    return Decoded(_compact(stack), np.asarray(keep, dtype=np.int64), bad)

"""Find, verify (MD5), download and load MedMNIST npz files into normalised tensors.

Search order for ``<name>[_<size>].npz``: ``data_root`` (``--data-root``), then
``$MEDDISTILL_DATA``, then ``~/.medmnist`` (the ``medmnist`` package's cache).  A file that
is not found anywhere is downloaded from the official Zenodo URL into the first of those
roots, checked against its MD5 and only then moved into place.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from meddistill.data.medmnist import DatasetInfo, get_info
from meddistill.errors import DataError

SPLITS = ("train", "val", "test")
ENV_VAR = "MEDDISTILL_DATA"


def candidate_roots(data_root: str | os.PathLike | None = None) -> list[Path]:
    """Roots searched for npz files, in priority order, without duplicates."""
    roots: list[Path] = []
    if data_root:
        roots.append(Path(data_root).expanduser())
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]).expanduser())
    roots.append(Path("~/.medmnist").expanduser())
    unique: list[Path] = []
    for r in roots:
        if r.resolve() not in [u.resolve() for u in unique]:
            unique.append(r)
    return unique


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied") from None
    return h.hexdigest()


def is_data_file(path: Path) -> bool:
    """Whether ``path`` is a file; a folder that cannot be searched is a :class:`DataError`."""
    try:
        return path.is_file()
    except PermissionError:
        raise DataError(f"cannot look into {path.parent}: permission denied") from None


def verify_file(path: Path, info: DatasetInfo, size: int) -> None:
    """Raise :class:`DataError` if ``path`` does not have the official MD5."""
    expected = info.md5[size]
    actual = file_md5(path)
    if actual != expected:
        raise DataError(
            f"{path} has MD5 {actual}, expected {expected} (corrupt, truncated or not the "
            f"official file); delete it and download {info.url(size)} to that path"
        )


def download(url: str, dest: Path, md5: str, timeout: float = 30.0) -> None:
    """Download ``url`` to ``dest`` atomically, keeping it only if its MD5 matches. The folder
    of ``dest`` is created only once the server answers: a failed lookup creates nothing."""
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                while block := resp.read(1 << 20):
                    f.write(block)
        got = file_md5(tmp)
        if got != md5:
            raise DataError(f"downloaded {url} has MD5 {got}, expected {md5}; not kept")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_file(
    name: str, size: int = 28, data_root: str | os.PathLike | None = None, download_ok: bool = True
) -> Path:
    """Return the verified path of a subset's npz file, downloading it if allowed."""
    info = get_info(name)
    fname = info.filename(size)
    roots = candidate_roots(data_root)
    for root in roots:
        path = root / fname
        if is_data_file(path):
            verify_file(path, info, size)
            return path
    dest = roots[0] / fname
    reason = "download disabled"
    if download_ok:
        try:
            download(info.url(size), dest, info.md5[size])
            return dest
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = f"download failed: {getattr(exc, 'reason', exc)}"
    searched = ", ".join(str(r) + ("" if r.is_dir() else " (no such folder)") for r in roots)
    raise DataError(
        f"{fname} not found in [{searched}] ({reason}); download {info.url(size)} "
        f"(MD5 {info.md5[size]}) and place it at {dest}"
    )


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) float32, normalised
    labels: torch.Tensor  # (N,) int64, or (N, L) float32 for multi-label

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class MedDataset:
    """One subset in memory: three normalised splits plus the train-split mean/std."""

    info: DatasetInfo
    size: int
    train: Split
    val: Split
    test: Split
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.info.channels, self.size, self.size)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised images back to [0, 1] pixel space."""
        return x * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)


def _read_npz(path: Path, info: DatasetInfo) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {f"{s}_{k}": z[f"{s}_{k}"] for s in SPLITS for k in ("images", "labels")}
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied") from None
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise DataError(f"{path} is not a readable npz file ({exc}); re-download {info.url()}") from None
    except KeyError as exc:
        raise DataError(f"{path} lacks the array {exc}; it is not a MedMNIST file") from None


def _to_nchw(images: np.ndarray, channels: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    else:
        x = x.permute(0, 3, 1, 2).contiguous()
    if x.shape[1] != channels:
        raise DataError(f"images have {x.shape[1]} channels, the registry says {channels}")
    return x


def load_dataset(
    name: str,
    size: int = 28,
    data_root: str | os.PathLike | None = None,
    download_ok: bool = True,
) -> MedDataset:
    """Load a MedMNIST subset as normalised float tensors (mean/std of the train split)."""
    info = get_info(name)
    path = resolve_file(info.name, size, data_root, download_ok)
    arrays = _read_npz(path, info)
    raw = {s: _to_nchw(arrays[f"{s}_images"], info.channels) for s in SPLITS}
    mean = raw["train"].mean(dim=(0, 2, 3))
    std = raw["train"].std(dim=(0, 2, 3)).clamp_min(1e-6)
    splits = {}
    for s in SPLITS:
        x = (raw[s] - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        y = torch.from_numpy(arrays[f"{s}_labels"].astype(np.int64))
        y = y.float() if info.multi_label else y.view(-1)
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{path}: {s} has {x.shape[0]} images but {y.shape[0]} labels")
        splits[s] = Split(x, y)
    return MedDataset(info, size, splits["train"], splits["val"], splits["test"], mean, std, path)


def class_indices(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """Indices of each class in a single-label label vector."""
    return [torch.nonzero(labels == c, as_tuple=False).view(-1) for c in range(num_classes)]

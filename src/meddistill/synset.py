"""The synthetic-set artifact: ``synset.npz`` that any lab can open with plain NumPy.

Arrays: ``images`` (N, C, H, W) float32 in the dataset's normalised space, ``labels`` (N,)
int64, ``mean``/``std`` (C,) to undo the normalisation (``pixels = images * std + mean`` in
[0, 1]), optional ``soft_labels`` (N, K) float32 target probabilities, ``lr`` (the learned
student step size, NaN if none) and ``meta``, a JSON string (dataset, ipc, method, config
hash, code version, seed).  Loaded with ``allow_pickle=False``: nothing is pickled.

:meth:`SynSet.load` also reads the ``synset.npz`` of an exported folder (``meddistill export``:
``train_images_float``, ``train_labels`` (N, 1), optional ``train_soft_labels``).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddistill.errors import ArtifactError
from meddistill.utils import atomic_path


@dataclass
class SynSet:
    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    lr: float | None = None
    soft_labels: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def targets(self) -> torch.Tensor:
        """What evaluation trains on: soft label distributions if present, else class ids."""
        return self.soft_labels if self.soft_labels is not None else self.labels

    def pixels(self) -> torch.Tensor:
        return (self.images * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)).clamp(0, 1)

    def content_hash(self, length: int = 16) -> str:
        """SHA-256 of what an evaluation trains on: images, labels, soft labels and lr (shapes
        and dtypes included), so a cached result is never reused for a changed set."""
        h = hashlib.sha256()
        parts = {"images": self.images, "labels": self.labels, "soft_labels": self.soft_labels}
        for name, t in parts.items():
            arr = None if t is None else np.ascontiguousarray(t.detach().cpu().numpy())
            h.update(f"{name}:{None if arr is None else (arr.dtype.str, arr.shape)};".encode())
            if arr is not None:
                h.update(arr.tobytes())
        h.update(f"lr:{self.lr!r}".encode())
        return h.hexdigest()[:length]

    def save(self, path: str | Path) -> Path:
        arrays = {
            "images": self.images.detach().cpu().float().numpy(),
            "labels": self.labels.detach().cpu().long().numpy(),
            "mean": self.mean.cpu().float().numpy(),
            "std": self.std.cpu().float().numpy(),
            "lr": np.array(float("nan") if self.lr is None else float(self.lr), dtype=np.float64),
            "meta": np.array(json.dumps(self.meta, sort_keys=True, default=str)),
        }
        if self.soft_labels is not None:
            arrays["soft_labels"] = self.soft_labels.detach().cpu().float().numpy()
        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SynSet:
        """A run's ``synset.npz`` or an exported one (a folder: its ``synset.npz``)."""
        path = Path(path)
        if path.is_dir():
            path = path / "synset.npz"
        if not path.is_file():
            raise ArtifactError(f"no synthetic set at {path}")
        if not zipfile.is_zipfile(path):  # np.load would try (and refuse) to unpickle it
            raise ArtifactError(f"{path} is not a synset.npz (not an .npz archive)")
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls._from_arrays(z, path)
        except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError) as exc:
            raise ArtifactError(f"{path} is not a readable synset.npz ({exc})") from None

    @classmethod
    def _from_arrays(cls, z, path: Path) -> SynSet:
        if "images" in z:  # a run's synset.npz
            images, labels, soft = z["images"], z["labels"], z["soft_labels"] if "soft_labels" in z else None
        elif "train_images_float" in z:  # an exported folder's (MedMNIST layout plus the float images)
            images, labels = z["train_images_float"], z["train_labels"].reshape(-1)
            soft = z["train_soft_labels"] if "train_soft_labels" in z else None
        else:
            raise ArtifactError(f"{path} holds no synthetic set (no 'images' or 'train_images_float' array)")
        lr = float(z["lr"])
        return cls(
            images=torch.from_numpy(images.copy()),
            labels=torch.from_numpy(labels.copy()),
            mean=torch.from_numpy(z["mean"].copy()),
            std=torch.from_numpy(z["std"].copy()),
            lr=None if np.isnan(lr) else lr,
            soft_labels=None if soft is None else torch.from_numpy(soft.copy()),
            meta=json.loads(str(z["meta"])) if "meta" in z else {},
        )

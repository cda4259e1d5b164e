"""The synthetic-set artifact: ``synset.npz`` that any lab can open with plain NumPy.

Arrays: ``images`` (N, C, H, W) float32 in the dataset's normalised space, ``labels`` (N,)
int64, ``mean``/``std`` (C,) to undo the normalisation (``pixels = images * std + mean`` in
[0, 1]), optional ``soft_labels`` (N, K) float32 target probabilities, ``lr`` (the learned
student step size, NaN if none) and ``meta``, a JSON string (dataset, ipc, method, config
hash, code version, seed).  Loaded with ``allow_pickle=False``: nothing is pickled.
"""

from __future__ import annotations

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
        path = Path(path)
        if path.is_dir():
            path = path / "synset.npz"
        if not path.is_file():
            raise ArtifactError(f"no synthetic set at {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                lr = float(z["lr"])
                return cls(
                    images=torch.from_numpy(z["images"].copy()),
                    labels=torch.from_numpy(z["labels"].copy()),
                    mean=torch.from_numpy(z["mean"].copy()),
                    std=torch.from_numpy(z["std"].copy()),
                    lr=None if np.isnan(lr) else lr,
                    soft_labels=torch.from_numpy(z["soft_labels"].copy()) if "soft_labels" in z else None,
                    meta=json.loads(str(z["meta"])),
                )
        except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError) as exc:
            raise ArtifactError(f"{path} is not a readable synset.npz ({exc})") from None

"""The ``data:`` config section: how a lab's own images are decoded, split, cached and licensed.

MedMNIST names ignore this section (their files fix everything), and it never enters their
identities; for an image folder or CSV manifest the keys that change the arrays or the
augmentation (``channels``, ``split``, ``split_seed``, ``flip``, ``rotate``) enter the
identities, next to the data fingerprint (and ``duplicates``, which decides which files are used).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from meddistill.errors import ConfigError

ON_BAD_IMAGE = ("fail", "skip")
CHANNELS = (0, 1, 3)  # 0: auto
DUPLICATES = ("check", "keep")


@dataclass
class DataConfig:
    channels: int = 0  # 0: auto (1 if every image is grey, else 3); 1 or 3 converts
    split: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])  # train/val/test when the data gives none
    split_seed: int = 0  # the stratified split (shared by every run seed)
    flip: bool = False  # DSA may mirror the images (off: anatomy or markers may be handed)
    rotate: bool = False  # DSA may rotate the images
    on_bad_image: str = "fail"  # fail | skip (skipped files are listed in the run folder)
    duplicates: str = "check"  # check: same content in two classes/splits refused, one copy per class kept; keep: all
    licence: str = ""  # licence of the user's own data, shown on the dataset card
    cache_dir: str = ""  # decoded-array cache; "" = $MEDDISTILL_CACHE, else ~/.cache/meddistill


def check_data_config(cfg: DataConfig) -> None:
    """Raise :class:`ConfigError` for values no source could use."""
    if cfg.channels not in CHANNELS:
        raise ConfigError(f"data.channels must be 1, 3 or 0 (auto), got {cfg.channels}")
    if cfg.on_bad_image not in ON_BAD_IMAGE:
        raise ConfigError(f"data.on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {cfg.on_bad_image!r}")
    if cfg.duplicates not in DUPLICATES:
        raise ConfigError(f"data.duplicates must be one of {', '.join(DUPLICATES)}, got {cfg.duplicates!r}")
    fr = cfg.split
    if len(fr) != 3 or any(not math.isfinite(f) or f <= 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"data.split must be three positive train/val/test fractions summing to 1, got {fr}")

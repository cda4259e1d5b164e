"""Train/val/test assignment of a lab's own images: given by the data, or seeded and stratified.

- No split given: every class is split on its own (stratified) by ``data.split`` fractions
  (default 70/10/20), from a permutation seeded by ``data.split_seed`` and the class name
  (so adding a class does not reshuffle the others).  Images keep their canonical order
  within each split.
- Split given (folders or a ``split`` column): kept as is; without a val split, the same
  seeded, stratified draw moves ``val / (train + val)`` of each class's train images to val.

Every class must have train images, and no class may appear in val or test only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meddistill.data.listing import SPLITS
from meddistill.errors import DataError
from meddistill.utils import derive_seed


def _count(n: int, frac: float) -> int:
    return int(np.floor(n * frac + 0.5))


def _by_class(labels: Sequence[str], members: Sequence[int]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i in members:
        out.setdefault(labels[i], []).append(i)
    return out


def _permuted(idx: list[int], seed: int, label: str) -> list[int]:
    rng = np.random.default_rng(derive_seed(seed, "data-split", label))
    return [idx[j] for j in rng.permutation(len(idx))]


def stratified(labels: Sequence[str], fractions: Sequence[float], seed: int, where: str) -> list[str]:
    """A split name per image: per class, ``test`` then ``val`` from a seeded permutation, the rest train."""
    out = ["train"] * len(labels)
    _, f_val, f_test = fractions
    for label, idx in _by_class(labels, range(len(labels))).items():
        n_test, n_val = _count(len(idx), f_test), _count(len(idx), f_val)
        if len(idx) - n_test - n_val < 1:
            raise DataError(f"{where}: class {label!r} has {len(idx)} image(s); too few to split off val/test")
        perm = _permuted(idx, seed, label)
        for i in perm[:n_test]:
            out[i] = "test"
        for i in perm[n_test : n_test + n_val]:
            out[i] = "val"
    return out


def carve_val(labels: Sequence[str], splits: list[str], fractions: Sequence[float], seed: int) -> list[str]:
    """Move ``val / (train + val)`` of every class's train images to val (seeded, stratified)."""
    f_train, f_val, _ = fractions
    out = list(splits)
    train = [i for i, s in enumerate(splits) if s == "train"]
    for label, idx in _by_class(labels, train).items():
        n_val = min(_count(len(idx), f_val / (f_train + f_val)), len(idx) - 1)
        for i in _permuted(idx, seed, label)[:n_val]:
            out[i] = "val"
    return out


def assign(
    labels: Sequence[str], given: Sequence[str | None], fractions: Sequence[float], seed: int, where: str
) -> tuple[list[str], list[str]]:
    """(split per image, notes for the user)."""
    notes: list[str] = []
    if all(s is None for s in given):
        splits = stratified(labels, fractions, seed, where)
        pct = "/".join(f"{round(100 * f)}" for f in fractions)
        notes.append(f"no split given: seeded stratified {pct} train/val/test split (data.split_seed {seed})")
    else:
        splits = [str(s) for s in given]
        for name in ("train", "test"):
            if name not in splits:
                raise DataError(
                    f"{where} has no {name} images; add a {name} split (folder or CSV column), "
                    "or give no split at all for a seeded 70/10/20 split"
                )
        if "val" not in splits:
            splits = carve_val(labels, splits, fractions, seed)
            notes.append(f"no val split given: part of each class's train images became val (seed {seed})")
    check_consistent(labels, splits, where)
    return splits, notes + missing_notes(labels, splits)


def check_consistent(labels: Sequence[str], splits: Sequence[str], where: str) -> None:
    train = {lab for lab, s in zip(labels, splits, strict=True) if s == "train"}
    for name in SPLITS[1:]:
        extra = sorted({lab for lab, s in zip(labels, splits, strict=True) if s == name} - train)
        if extra:
            raise DataError(
                f"{where}: class {extra[0]!r} has {name} images but no train images; add train images of "
                f"{extra[0]!r} or remove them from {name}"
            )
    for name in SPLITS:
        if name not in splits:
            raise DataError(f"{where}: the {name} split is empty; add images (each class needs a few per split)")


def missing_notes(labels: Sequence[str], splits: Sequence[str]) -> list[str]:
    classes = sorted(set(labels))
    notes = []
    for name in SPLITS[1:]:
        present = {lab for lab, s in zip(labels, splits, strict=True) if s == name}
        absent = [c for c in classes if c not in present]
        if absent:
            notes.append(f"class(es) {', '.join(map(repr, absent))} have no {name} images")
    return notes

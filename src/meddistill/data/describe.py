"""The source lines of a dataset card (``export.py``), from the dataset's own description.

A run on a lab's own images has ``data.json`` in its run folder (written by
``local.write_records``): its name, source, classes, counts per split and the licence the
user gave.  Only MedMNIST runs get the MedMNIST wording and citation.
"""

from __future__ import annotations

import json
from pathlib import Path

from meddistill.data.local import UNSPECIFIED_LICENCE
from meddistill.data.medmnist import get_info
from meddistill.errors import ConfigError

MEDMNIST_CITATION = "Cite Yang et al., MedMNIST v2, Sci. Data 10, 41 (2023)."


def read_description(run_dir: Path) -> dict | None:
    """``data.json`` of a run on own images, or None (a MedMNIST run)."""
    path = Path(run_dir) / "data.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _medmnist_lines(meta: dict, licence: str | None) -> tuple[list[str], str]:
    info = get_info(meta["dataset"])
    if licence:
        raise ConfigError(f"{info.name} is MedMNIST data under {info.license}; --licence is for your own images")
    return [
        f"- Source dataset: MedMNIST `{info.name}` ({info.modality}, {info.task}), image size {meta.get('size')}.",
        f"- Licence of the source data: **{info.license}** (this derived set carries the same terms); "
        f"not for clinical use. {MEDMNIST_CITATION}",
        f"- Classes: {', '.join(f'{i} = {n}' for i, n in enumerate(info.labels))}.",
    ], info.license


def _local_lines(desc: dict, licence: str | None) -> tuple[list[str], str]:
    counts = desc["counts"]
    total = {s: sum(c) for s, c in counts.items()}
    lic = licence or desc.get("licence") or UNSPECIFIED_LICENCE
    if lic == UNSPECIFIED_LICENCE:
        lic_text = f"**{lic}** (pass `--licence` to `meddistill run` or `meddistill export`)"
    else:
        lic_text = f"**{lic}** (as given by the data owner; this derived set carries the same terms)"
    per_split = [counts[s] for s in ("train", "val", "test")]
    classes = ", ".join(f"{i} = {n} ({'/'.join(str(c[i]) for c in per_split)})" for i, n in enumerate(desc["classes"]))
    kind = "CSV manifest" if desc["source"] == "csv" else "image folder"
    return [
        f"- Source dataset: own images `{desc['name']}` ({kind}, {desc['task']}, {desc['channels']} channel(s)), "
        f"image size {desc['size']}; {total['train']} train / {total['val']} val / {total['test']} test images; "
        f"data fingerprint `{desc['fingerprint']}`.",
        f"- Licence of the source data: {lic_text}; not for clinical use.",
        f"- Classes (train/val/test images): {classes}.",
    ], lic


def card_source(run_dir: Path, meta: dict, licence: str | None = None) -> tuple[list[str], str]:
    """The card's source-dataset, licence and class lines for a run folder, and the licence
    the export records (``licence`` overrides the one given when the run was made)."""
    desc = read_description(run_dir)
    return _medmnist_lines(meta, licence) if desc is None else _local_lines(desc, licence)

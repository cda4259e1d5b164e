"""Fuzz own-image datasets with hypothesis: generated image folders and CSV manifests (class
names spelt with spaces, case and number variants, duplicate files within and across classes,
non-image files, unreadable images), through ``meddistill run PATH --dry-run``, which lists,
hashes, decodes, checks and splits the data and computes nothing else.

The contract: exit 2 with exactly one ``meddistill: error:`` line and no traceback, or exit 0
with the result a data manager expects: one class per name up to spaces, case and number format,
one image per distinct content within a class, none where the same content is in two classes
(that is refused), unreadable images refused unless ``--on-bad-image skip``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from meddistill.cli import main
from meddistill.data.listing import label_key

SPELLINGS = {  # spellings of one class each (never a split name, never hidden)
    "tumour": ["tumour", "Tumour", " TUMOUR", "tumour "],
    "normal": ["normal", "Normal", "NORMAL "],
    "1": ["1", "1.0", " 01"],
    "2": ["2", "2.00"],
    "a b": ["a b", "A B", " a b "],
}
CONTENTS = 10  # distinct images; a file shows one of them
EXAMPLES = int(os.environ.get("MEDDISTILL_FUZZ_EXAMPLES", "30"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@dataclass(frozen=True)
class File:
    spelling: str  # the class as the folder or the CSV row spells it
    content: int  # which image (equal numbers: byte-identical files)
    kind: str  # png | bad (junk under .png) | text (a non-image file)


def _image(content: int) -> np.ndarray:
    return np.random.default_rng(content).integers(0, 256, (28, 28), dtype=np.uint8)


def _bytes(f: File) -> bytes:
    if f.kind == "bad":
        return b"\x89PNG\r\n\x1a\n" + bytes([f.content]) * 20
    if f.kind == "text":
        return f"notes {f.content}".encode()
    buf = io.BytesIO()
    Image.fromarray(_image(f.content)).save(buf, format="PNG")
    return buf.getvalue()


files = st.builds(
    File,
    st.sampled_from([s for v in SPELLINGS.values() for s in v]),
    st.integers(0, CONTENTS - 1),
    st.sampled_from(["png"] * 8 + ["bad", "text"]),
)


def _write(tmp: Path, layout: str, dataset: list[File]) -> Path:
    """An image folder ``data/<spelling>/<n>.<ext>``, or those files listed by a CSV."""
    rows = []
    for n, f in enumerate(dataset):
        if layout == "csv" and f.kind == "text":
            continue  # a CSV lists images; a listed text file is its own (tested) error
        rel = Path("data") / f.spelling / f"{n:03d}.{'txt' if f.kind == 'text' else 'png'}"
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(_bytes(f))
        rows.append(f'"{rel.as_posix()}","{f.spelling}"')
    if layout == "folder":
        return tmp / "data"
    (tmp / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return tmp / "m.csv"


def _expected(dataset: list[File], layout: str, skip: bool) -> tuple[str | None, dict[str, int]]:
    """(the error a data manager expects first, or None; {class name: images} when accepted)."""
    listed = [f for f in dataset if f.kind != "text"]
    if layout == "folder" and {f.spelling for f in dataset} != {f.spelling for f in listed}:
        return "has no images", {}  # a class folder of non-image files only: found while listing
    if any(f.kind == "bad" for f in listed) and not skip:
        return "cannot read image", {}
    spellings: dict[str, set[str]] = {}
    for f in listed:
        spellings.setdefault(label_key(f.spelling), set()).add(f.spelling.strip())
    owner: dict[int, str] = {}
    per_class: dict[str, set[int]] = {}
    for f in listed:
        if f.kind != "png":
            continue
        key = label_key(f.spelling)
        if owner.setdefault(f.content, key) != key:
            return "have the same content as an image of another class", {}
        per_class.setdefault(key, set()).add(f.content)
    name = {k: k if k[0].isdigit() else min(v) for k, v in spellings.items()}
    return None, {name[k]: len(v) for k, v in per_class.items()}


def _run(tmp: Path, dataset_path: Path, skip: bool) -> tuple[int, str]:
    argv = ["run", str(dataset_path), "--dry-run", "--profile", "tiny", "--ipc", "1", "--no-progress"]
    argv += ["--out", str(tmp / "runs"), "--experts-dir", str(tmp / "ex"), "--set", f"data.cache_dir={tmp / 'c'}"]
    argv += ["--on-bad-image", "skip" if skip else "fail"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@fuzz
@given(st.lists(files, min_size=2, max_size=24), st.sampled_from(["folder", "csv"]), st.booleans())
def test_generated_own_image_datasets_are_read_as_a_data_manager_would(dataset, layout, skip):
    tmp = Path(tempfile.mkdtemp(prefix="md-fuzz-own-"))
    try:
        code, err = _run(tmp, _write(tmp, layout, dataset), skip)
        written = [p for p in (tmp / "runs", tmp / "ex") if p.exists()]
    finally:
        shutil.rmtree(tmp)
    assert code in (0, 2) and "Traceback" not in err, err
    assert written == []
    errors = [ln for ln in err.splitlines() if not ln.startswith("meddistill: note: ")]
    expected, classes = _expected(dataset, layout, skip)
    if code == 2:
        assert len(errors) == 1 and errors[0].startswith("meddistill: error: "), err
        if expected is not None:
            assert expected in errors[0], (expected, err)
        return
    assert errors == [] and expected is None, (expected, err)
    shown = re.search(r"note: \S+: (\d+) classes: (.*)$", err, re.M)
    assert shown is not None, err
    found = dict((n, int(c)) for n, c in re.findall(r"'([^']*)' \((\d+)\)", shown.group(2)))
    assert found == classes and int(shown.group(1)) == len(classes)

"""Synthetic-set artifacts: evaluations cached by content, invalid sets refused before they are
evaluated or exported, atomic exports with ordinary permissions, exported sets readable by
``eval``, clear errors for non-npz files, and read-only run folders."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import meddistill.export as export_mod
import meddistill.pipeline as pipeline
from meddistill.cli import main
from meddistill.export import export_run
from meddistill.pipeline import evaluate_run, run_cell
from meddistill.synset import SynSet
from meddistill.utils import read_jsonl
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny evaluated run folder (random real images: no distillation needed) and its config."""
    root = tmp_path_factory.mktemp("art")
    cfg = tiny_config(out=root / "runs", experts=root / "ex", **{"distill.ipc": 2, "distill.method": "random"})
    res = run_cell(cfg, progress=False)
    return cfg, res.run_dir, res.row


@pytest.fixture
def run(made, tmp_path):
    """A private copy of the run folder (tests change it)."""
    cfg, run_dir, row = made
    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    return cfg, folder, row


def _eval(target: Path, tmp_path: Path, *extra: str) -> int:
    return main(["eval", str(target), "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress", *extra])


def _acc(out: str) -> str:
    m = re.search(r"test ACC (\d+\.\d+)", out)
    assert m, out
    return m.group(1)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("meddistill: error: ") and err.count("\n") == 1, err
    return err


def test_the_evaluation_cache_is_keyed_by_the_sets_content(run, breast, monkeypatch):
    cfg, folder, row = run
    calls = []
    real = pipeline.evaluate_images
    monkeypatch.setattr(pipeline, "evaluate_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    syn = SynSet.load(folder)
    _, cached = evaluate_run(cfg, folder, syn, breast, progress=False)
    assert calls == [] and cached == row and row["synset_hash"] == syn.content_hash()
    changed = replace(syn, images=syn.images.flip(-1))
    changed.save(folder / "synset.npz")
    _, fresh = evaluate_run(cfg, folder, SynSet.load(folder), breast, progress=False)
    assert calls == [1] and fresh["synset_hash"] == changed.content_hash() != row["synset_hash"]
    assert len(list(folder.glob("eval_*.json"))) == 2  # each content keeps its own result


def _soft(n: int, value: float) -> torch.Tensor:
    return torch.full((n, 2), value)


INVALID = {
    "nan images": (lambda s: replace(s, images=s.images * float("nan")), "4 of 4 images contain NaN"),
    "empty": (lambda s: replace(s, images=s.images[:0], labels=s.labels[:0]), "it is empty (0 images)"),
    "labels out of range": (lambda s: replace(s, labels=s.labels + 5), "labels range over 5..6"),
    "wrong channels": (lambda s: replace(s, images=s.images.repeat(1, 3, 1, 1)), "images are 3x28x28"),
    "wrong size": (lambda s: replace(s, images=s.images[..., :14, :14]), "images are 1x14x14"),
    "lr 0": (lambda s: replace(s, lr=0.0), "its learned lr is 0.0"),
    "soft nan": (lambda s: replace(s, soft_labels=_soft(4, float("nan"))), "soft labels contain NaN"),
    "soft sum": (lambda s: replace(s, soft_labels=_soft(4, 0.7)), "soft-label rows do not sum to 1"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_an_invalid_set_is_refused_by_eval_and_export(run, tmp_path, capsys, case):
    _, folder, _ = run
    change, msg = INVALID[case]
    change(SynSet.load(folder)).save(folder / "synset.npz")
    capsys.readouterr()
    assert _eval(folder, tmp_path) == 2
    err = _one_line_error(capsys)
    assert "is not a valid synthetic set" in err and msg in err
    assert not (tmp_path / "out" / "results.jsonl").exists()
    assert main(["export", str(folder), str(tmp_path / "exp")]) == 2
    assert msg in _one_line_error(capsys) and not (tmp_path / "exp").exists()


def test_a_valid_soft_label_set_passes(run, tmp_path, breast):
    from meddistill.synset_check import synset_problems

    _, folder, _ = run
    syn = replace(SynSet.load(folder), soft_labels=_soft(4, 0.5), lr=0.01)
    assert synset_problems(syn, breast.shape, breast.num_classes) == []


def test_a_failed_export_leaves_no_folder_and_the_next_one_succeeds(run, tmp_path, monkeypatch):
    _, folder, _ = run
    out = tmp_path / "exp"

    def broken(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_mod, "_card", broken)
    with pytest.raises(OSError, match="No space left"):
        export_run(folder, out, allow_traceable=True)
    assert not out.exists() and list(tmp_path.glob(".exp*")) == []
    monkeypatch.undo()
    assert export_run(folder, out, allow_traceable=True) == out and (out / "card.md").exists()


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_shared_artifacts_get_ordinary_permissions(run, tmp_path, umask, file_mode, dir_mode):
    _, folder, _ = run
    old = os.umask(umask)
    try:
        SynSet.load(folder).save(folder / "synset.npz")
        (folder / "grid.png").chmod(0o600)  # a private source file does not make a private copy
        out = export_run(folder, tmp_path / "exp", allow_traceable=True)
    finally:
        os.umask(old)
    assert _mode(folder / "synset.npz") == file_mode
    assert _mode(out) == dir_mode
    assert {p.name: _mode(p) for p in out.iterdir()} == {p.name: file_mode for p in out.iterdir()}


def test_eval_reads_an_exported_set(run, tmp_path, capsys):
    _, folder, row = run
    exp = export_run(folder, tmp_path / "exp", allow_traceable=True)
    assert SynSet.load(exp).content_hash() == SynSet.load(folder).content_hash()
    capsys.readouterr()
    assert _eval(exp, tmp_path) == 0
    assert _acc(capsys.readouterr().out) == f"{100 * row['acc_mean']:.2f}"  # the same set, the same result


def test_eval_of_a_file_that_is_not_an_npz_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "synset.npz"
    bad.write_text("not an archive\n")
    assert _eval(bad, tmp_path) == 2
    err = _one_line_error(capsys)
    assert "is not a synset.npz (not an .npz archive)" in err and "pickle" not in err
    np.save(tmp_path / "a.npy", np.zeros(3))  # a plain .npy file, no pickle either
    assert _eval(tmp_path / "a.npy", tmp_path) == 2
    assert "not an .npz archive" in _one_line_error(capsys)


def test_an_impossible_ipc_leaves_no_run_folder(tmp_path, capsys):
    args = ["--profile", "tiny", "--out", str(tmp_path / "runs"), "--device", "cpu", "--no-progress"]
    assert main(["distill", "breastmnist", "--ipc", "500", *args]) == 2
    assert "ipc 500 is larger than class 0" in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists()


def test_a_read_only_run_folder_still_gives_and_records_the_result(run, tmp_path, monkeypatch, capsys):
    _, folder, row = run
    for p in folder.glob("eval_*.json"):
        p.unlink()
    real = pipeline.write_text_atomic

    def read_only(path, text):
        if Path(path).parent == folder:
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        real(path, text)

    monkeypatch.setattr(pipeline, "write_text_atomic", read_only)
    capsys.readouterr()
    assert _eval(folder, tmp_path, "--results", str(tmp_path / "mine.jsonl")) == 0
    out, err = capsys.readouterr()
    assert _acc(out) == f"{100 * row['acc_mean']:.2f}"
    assert "warning: could not write the evaluation cache" in err and "Read-only file system" in err
    assert list(folder.glob("eval_*.json")) == []
    assert len(read_jsonl(tmp_path / "mine.jsonl")) == 1 and len(read_jsonl(tmp_path / "out" / "results.jsonl")) == 1


def _pickle_free(p: Path) -> bool:
    """No pickle stream, no torch.save archive, no npz array that needs allow_pickle."""
    head = p.read_bytes()[:9]
    if p.suffix == ".safetensors":  # an 8-byte header length, then a JSON header
        return head[8:9] == b"{"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle protocol 2-5
        return False
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            if any(n.endswith(".pkl") for n in z.namelist()):
                return False
        with np.load(p, allow_pickle=False) as z:
            [z[k] for k in z.files]  # an object array would raise here
    return True


def test_no_artifact_is_a_pickle(tiny, breast, tmp_path):
    from meddistill.experts import expert_dir
    from meddistill.pipeline import distill_set

    cfg = tiny(**{"distill.ipc": 2, "method.iterations": 2, "out_dir": str(tmp_path / "runs")})
    run_dir, _ = distill_set(cfg, breast, progress=False)
    out = export_run(run_dir, tmp_path / "exp", allow_traceable=True)
    files = [p for d in (run_dir, out, expert_dir(cfg)) for p in d.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".npz", ".safetensors", ".json", ".yaml", ".png", ".jsonl"}
    assert [p for p in files if not _pickle_free(p)] == []


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (lock files aside) with its size and mtime."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.name != ".lock"}


def _cell_args(runs: Path, made_root: Path) -> list[str]:
    return [
        "breastmnist", "--method", "random", "--ipc", "2", "--profile", "tiny", "--device", "cpu", "--no-progress",
        "--out", str(runs), "--experts-dir", str(made_root / "ex"),
    ]  # fmt: skip


def _served_read_only(runs: Path, made, capsys) -> None:
    """``eval``, ``run`` and ``distill`` of a finished, evaluated cell in ``runs``, which cannot be
    written: each serves its cached result with one warning line, and nothing is written."""
    _, run_dir, row = made
    folder = runs / run_dir.parent.name / run_dir.name
    before = _snapshot(runs)
    capsys.readouterr()
    cell = _cell_args(runs, run_dir.parents[2])
    for argv in (["eval", str(folder), "--device", "cpu", "--no-progress"], ["run", *cell]):
        assert main(argv) == 0, capsys.readouterr().err
        out, err = capsys.readouterr()
        assert _acc(out) == f"{100 * row['acc_mean']:.2f}"
        assert err.count("\n") == 1 and "is not writable; serving the cached result, nothing is written" in err, err
    assert main(["distill", *cell]) == 0
    assert _snapshot(runs) == before


def test_a_read_only_run_folder_serves_its_cached_result_with_a_warning(made, tmp_path, monkeypatch, capsys):
    import meddistill.checks as checks

    runs = tmp_path / "runs"
    shutil.copytree(made[1].parents[1], runs)
    real_access = checks.os.access
    monkeypatch.setattr(checks.os, "access", lambda p, mode: not Path(p).is_relative_to(runs) and real_access(p, mode))
    _served_read_only(runs, made, capsys)


def test_a_really_read_only_file_system_serves_the_cached_result(made, tmp_path, capsys):
    """The same on a read-only mount (root can write through chmod; a read-only mount stops it)."""
    import subprocess

    runs = tmp_path / "runs"
    runs.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(runs)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        shutil.copytree(made[1].parents[1], runs, dirs_exist_ok=True)
        subprocess.run(["mount", "-o", "remount,ro", str(runs)], check=True)
        with pytest.raises(OSError):
            (runs / "probe").write_text("x")
        _served_read_only(runs, made, capsys)
    finally:
        subprocess.run(["umount", str(runs)], check=False)


def test_eval_of_an_export_writes_nothing_into_it(run, tmp_path, capsys, monkeypatch):
    _, folder, row = run
    exp = export_run(folder, tmp_path / "exp", allow_traceable=True)
    before = {p.name: p.read_bytes() for p in exp.rglob("*")}
    capsys.readouterr()
    assert _eval(exp, tmp_path) == 0
    out = capsys.readouterr().out
    assert _acc(out) == f"{100 * row['acc_mean']:.2f}"
    assert {p.name: p.read_bytes() for p in exp.rglob("*")} == before  # no lock, cache, config or plot
    (cache,) = (tmp_path / "out").rglob("eval_*.json")
    assert f"its evaluation goes to {cache.parent}" in out and cache.parent.name.startswith("export-")
    monkeypatch.setattr(pipeline, "evaluate_images", lambda *a, **k: pytest.fail("evaluated again"))
    assert _eval(exp, tmp_path) == 0  # the second time, from the cache under --out

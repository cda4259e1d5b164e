"""Own images checked as a data manager would (issue 36): changed data is never served stale,
outputs inside the image folder, duplicate files, label spellings and unopenable files give one
line (exit 2) or a note with counts."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meddistill.cli import main
from meddistill.errors import ConfigError, DataError
from meddistill.identity import distill_identity, expert_identity
from meddistill.pipeline import load_data
from tests.conftest import tiny_config
from tests.own_images_data import npz_arrays


@pytest.fixture(scope="module")
def grey(data_dir) -> np.ndarray:
    return npz_arrays(data_dir / "breastmnist.npz", {"train": 40})["train"][0]  # (40, 28, 28) uint8, distinct


def save(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, compress_level=0)  # uncompressed: the file size depends on the shape only
    return path


def folder(root: Path, grey: np.ndarray, n: int = 10, names=("a", "b")) -> Path:
    for k, c in enumerate(names):
        for i in range(n):
            save(root / c / f"{i:03d}.png", grey[k * n + i])
    return root


def load(path, tmp_path, **flags):
    flags.setdefault("data.cache_dir", str(tmp_path / "cache"))
    return load_data(tiny_config(str(path), **flags), progress=False)


def cli(tmp_path, *argv: str) -> list[str]:
    return [
        *argv,
        *("--profile", "tiny", "--method", "random", "--ipc", "2", "--no-progress", "--device", "cpu"),
        *("--out", str(tmp_path / "runs"), "--experts-dir", str(tmp_path / "ex")),
        *("--set", f"data.cache_dir={tmp_path / 'cache'}"),
    ]


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if not ln.startswith("meddistill: note:")]
    assert len(lines) == 1 and lines[0].startswith("meddistill: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---- 1. content, not stat, decides reuse --------------------------------------------------


def test_a_same_size_replacement_with_its_mtime_restored_is_new_data(grey, tmp_path):
    root = folder(tmp_path / "d", grey)
    cfg = tiny_config(str(root), **{"data.cache_dir": str(tmp_path / "cache")})
    before = (distill_identity(cfg), expert_identity(cfg))
    ds = load_data(cfg, progress=False)
    f = root / "a" / "000.png"
    st = f.stat()
    save(f, grey[30])  # another image, same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert (distill_identity(cfg), expert_identity(cfg)) != before  # new run folder, new experts
    new = load_data(cfg, progress=False)
    assert new.fingerprint != ds.fingerprint
    sha = {Path(r["path"]).name + r["label"]: r["sha"] for r in new.records}
    old = {Path(r["path"]).name + r["label"]: r["sha"] for r in ds.records}
    assert sha["000.pnga"] != old["000.pnga"]  # split.csv records the new file's hash


def test_eval_of_a_run_refuses_data_changed_since_the_run(grey, tmp_path, capsys):
    root = folder(tmp_path / "d", grey)
    assert main(["run", str(root), *cli(tmp_path)[0:]]) == 0
    run_dir = Path(re.search(r"run folder: (\S+)", capsys.readouterr().out).group(1))
    assert list(run_dir.glob("eval_*.json"))  # the cached evaluation of the old data
    for p in root.rglob("*.png"):
        save(p, 255 - np.asarray(Image.open(p)))  # every image inverted
    for cached in (True, False):
        if not cached:
            for p in run_dir.glob("eval_*.json"):
                p.unlink()
        assert main(["eval", str(run_dir), "--no-progress", "--set", f"data.cache_dir={tmp_path / 'cache'}"]) == 2
        out, err = capsys.readouterr()
        assert "the data's fingerprint differs from the run's" in one_line(err) and "ACC" not in out
    assert not list(run_dir.glob("eval_*.json"))  # nothing scored


# ---- 3. checks at load --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["--out", "--experts-dir", "data.cache_dir"])
def test_outputs_inside_the_image_folder_are_refused(grey, tmp_path, capsys, where):
    root = folder(tmp_path / "d", grey)
    argv = cli(tmp_path, "run", str(root))
    inside = str(root / "outputs")
    if where == "data.cache_dir":
        argv[argv.index(f"data.cache_dir={tmp_path / 'cache'}")] = f"data.cache_dir={inside}"
    else:
        argv[argv.index(where) + 1] = inside
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert f"is inside the image folder {root}" in line and where.split(".")[0] in line
    assert sorted(p.name for p in root.iterdir()) == ["a", "b"]  # nothing written into the data


def test_duplicate_files_across_classes_or_splits_are_refused(grey, tmp_path):
    root = folder(tmp_path / "d", grey)
    (root / "b" / "copy.png").write_bytes((root / "a" / "003.png").read_bytes())
    with pytest.raises(DataError, match=r"1 image\(s\) have the same content .*a/003.png and .*b/copy.png \(cl") as e:
        load(root, tmp_path)
    assert "\n" not in str(e.value)
    split = tmp_path / "s"
    for s, lo in (("train", 0), ("test", 5)):
        for k, c in enumerate("ab"):
            for i in range(5):
                save(split / s / c / f"{s}{i}.png", grey[k * 10 + lo + i])
    (split / "train" / "a" / "leak.png").symlink_to(split / "test" / "a" / "test0.png")
    with pytest.raises(DataError, match=r"a/leak.png and .*test/a/test0.png \(class 'a', splits train and test\)"):
        load(split, tmp_path)
    ds = load(split, tmp_path, **{"data.duplicates": "keep"})  # the files as listed
    assert len(ds.train) + len(ds.val) == 11


def test_duplicates_within_a_class_keep_one_copy_with_a_note(grey, tmp_path, capsys):
    root = folder(tmp_path / "d", grey)
    for name in ("z1.png", "z2.png"):
        (root / "a" / name).write_bytes((root / "a" / "004.png").read_bytes())
    ds = load(root, tmp_path)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 20
    assert not any(r["path"].endswith(("z1.png", "z2.png")) for r in ds.records)
    err = capsys.readouterr().err
    assert "dropped 2 duplicate image(s)" in err and "a/z1.png" in err
    assert "2 classes: 'a' (10), 'b' (10)" in err


def test_csv_labels_are_one_class_whatever_their_spaces_case_or_number_format(grey, tmp_path, capsys):
    folder(tmp_path / "img", grey)
    spell = {"a": [" MALIGNANT", "malignant", "Malignant "], "b": ["1", "1.0", " 01"]}
    rows = [f"img/{c}/{i:03d}.png,{spell[c][i % 3]}" for c in "ab" for i in range(10)]
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    ds = load(tmp_path / "m.csv", tmp_path)
    assert ds.info.labels == ("1", "MALIGNANT")
    err = capsys.readouterr().err
    assert "labels '01', '1', '1.0' are one class '1'" in err
    assert "labels 'MALIGNANT', 'Malignant', 'malignant' are one class 'MALIGNANT'" in err
    assert "2 classes: '1' (10), 'MALIGNANT' (10)" in err


def test_label_key_ignores_spaces_case_and_number_format():
    from meddistill.data.listing import label_key

    assert label_key(" MALIGNANT ") == label_key("malignant") != label_key("benign")
    assert label_key("1") == label_key("1.0") == label_key(" 01") == label_key("+1.000") == "1"
    assert label_key("2.50") == "2.5" and label_key("1e3") == "1000"
    assert label_key("12345678901234567891") != label_key("12345678901234567890")  # no float rounding
    assert label_key("nan") == "nan" and label_key("1_000") == "1_000"  # not numbers


def test_the_ignored_files_note_counts_each_file_once(grey, tmp_path, capsys):
    root = folder(tmp_path / "d", grey)
    for rel in ("readme.txt", "notes.md", "a/x.txt", "b/y.txt", "b/z.json"):
        (root / rel).write_text("x")
    ds = load(root, tmp_path)
    assert "ignored 5 non-image file(s)" in capsys.readouterr().err
    assert ds.description()["ignored_files"] == 5


# ---- 4. files that cannot be opened -------------------------------------------------------


def _dangling(root: Path) -> str:
    (root / "a" / "gone.png").symlink_to(root / "nowhere.png")
    return "a/gone.png"


def _loop(root: Path) -> str:
    (root / "a" / "loop.png").symlink_to("loop.png")
    return "a/loop.png"


def _no_permission(root: Path) -> str:
    f = save(root / "a" / "locked.png", np.zeros((28, 28), np.uint8))
    f.chmod(0)
    return "a/locked.png"


@pytest.mark.parametrize("make", [_dangling, _loop, _no_permission])
def test_files_that_cannot_be_opened_are_bad_images(grey, tmp_path, monkeypatch, capsys, make):
    import meddistill.data.cache as cache

    root = folder(tmp_path / "d", grey)
    rel = make(root)
    real = cache.read_file

    def read(path: Path) -> bytes:  # root can read a 0000 file: be an ordinary user for it
        if path.name == "locked.png":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(cache, "read_file", read)
    with pytest.raises(DataError, match=rf"cannot read image {re.escape(str(root / rel))}: .*--on-bad-image skip"):
        load(root, tmp_path)
    ds = load(root, tmp_path, **{"data.on_bad_image": "skip"})
    assert len(ds.train) + len(ds.val) + len(ds.test) == 20
    assert f"skipped 1 unreadable image(s) (bad_images.csv in the run folder): {rel}" in capsys.readouterr().err
    assert main(cli(tmp_path, "run", str(root), "--dry-run")) == 2  # the CLI: one line, exit 2
    assert rel in one_line(capsys.readouterr().err)


def test_a_csv_listing_a_dangling_link_treats_it_as_a_bad_image(grey, tmp_path):
    folder(tmp_path / "img", grey)
    (tmp_path / "img" / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    rows = [f"img/{c}/{i:03d}.png,{c}" for c in "ab" for i in range(10)] + ["img/a/gone.png,a"]
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"cannot read image .*gone\.png"):
        load(tmp_path / "m.csv", tmp_path)
    assert len(load(tmp_path / "m.csv", tmp_path, **{"data.on_bad_image": "skip"}).records) == 20


def test_a_cache_folder_that_is_a_file_or_read_only_is_one_line(grey, tmp_path, monkeypatch, capsys):
    import meddistill.data.cache as cache

    root = folder(tmp_path / "d", grey)
    (tmp_path / "cachefile").write_text("x")
    with pytest.raises(ConfigError, match=r"the decode cache .*cachefile is a file, not a folder"):
        load(root, tmp_path, **{"data.cache_dir": str(tmp_path / "cachefile")})

    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache.tempfile, "TemporaryFile", read_only)
    argv = cli(tmp_path, "run", str(root))
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert f"the decode cache {tmp_path / 'cache'} cannot be written (Permission denied)" in line
    assert not (tmp_path / "runs").exists()


def test_a_full_disk_while_caching_is_one_line_and_leaves_nothing(grey, tmp_path, monkeypatch):
    import meddistill.data.cache as cache

    root = folder(tmp_path / "d", grey)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.np, "savez", full)
    from meddistill.errors import MeddistillError

    # one line naming the cache file (the atomic write names it: utils.WriteError)
    with pytest.raises(MeddistillError, match=r"cannot write .*cache/decoded/.*No space left on device"):
        load(root, tmp_path)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]



def test_a_fifo_under_an_image_name_is_a_bad_image_not_a_hang(grey, tmp_path):
    root = folder(tmp_path / "d", grey)
    os.mkfifo(root / "a" / "pipe.png")  # reading it would wait for a writer forever
    with pytest.raises(DataError, match=r"cannot read image .*a/pipe.png: .*not a regular file"):
        load(root, tmp_path)
    assert len(load(root, tmp_path, **{"data.on_bad_image": "skip"}).records) == 20


def test_a_folder_that_cannot_be_read_is_one_line_or_skipped_with_a_note(grey, tmp_path, monkeypatch, capsys):
    root = folder(tmp_path / "d", grey)
    save(root / "a" / "sub" / "x.png", grey[35])
    locked = {str(root / "a" / "sub"), str(root / "b")}
    real = os.scandir

    def scandir(path="."):  # root reads a 0000 folder: be an ordinary user for these two
        if str(path) in locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot read class folder .*/d/b \(Permission denied\)"):
        load(root, tmp_path)
    locked.remove(str(root / "b"))
    with pytest.raises(DataError, match=r"cannot read folder .*a/sub \(Permission denied\): .*--on-bad-image skip"):
        load(root, tmp_path)
    ds = load(root, tmp_path, **{"data.on_bad_image": "skip"})
    assert len(ds.records) == 20 and "skipped 1 unreadable folder(s): a/sub" in capsys.readouterr().err

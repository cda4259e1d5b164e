from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from meddistill.data import DATASETS, get_info, load_dataset, resolve_file
from meddistill.data.loader import candidate_roots, download, file_md5
from meddistill.errors import ConfigError, DataError


def test_registry_has_all_12_2d_subsets_with_four_sizes():
    assert len(DATASETS) == 12
    for d in DATASETS.values():
        assert set(d.md5) == {28, 64, 128, 224}
        assert all(len(m) == 32 for m in d.md5.values())
        assert d.url(64).endswith(f"{d.name}_64.npz?download=1")
    assert get_info("dermamnist").license == "CC BY-NC 4.0"
    assert get_info("pathmnist").license == "CC BY 4.0"
    assert get_info("chestmnist").multi_label
    assert get_info("retinamnist").channels == 3 and get_info("retinamnist").num_classes == 5
    # organ CT labels name a body side: never flipped
    assert not get_info("organamnist").flip and get_info("pathmnist").flip


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar10'.*pneumoniamnist"):
        get_info("cifar10")
    assert get_info("Pneumonia").name == "pneumoniamnist"


@pytest.mark.parametrize(
    "name,size,shape,counts",
    [
        ("pneumoniamnist", 28, (1, 28, 28), (4708, 524, 624)),
        ("breastmnist", 28, (1, 28, 28), (546, 78, 156)),
        ("retinamnist", 28, (3, 28, 28), (1080, 120, 400)),
        ("breastmnist", 64, (1, 64, 64), (546, 78, 156)),
    ],
)
def test_real_files_load_normalised(data_dir, name, size, shape, counts):
    ds = load_dataset(name, size, data_root=data_dir, download_ok=False)
    assert ds.shape == shape
    assert (len(ds.train), len(ds.val), len(ds.test)) == counts
    assert ds.train.images.dtype == torch.float32 and ds.train.labels.dtype == torch.int64
    # per-channel statistics come from the train split
    assert torch.allclose(ds.train.images.mean(dim=(0, 2, 3)), torch.zeros(shape[0]), atol=1e-4)
    assert torch.allclose(ds.train.images.std(dim=(0, 2, 3)), torch.ones(shape[0]), atol=1e-3)
    px = ds.denormalize(ds.test.images)
    assert px.min() >= -1e-5 and px.max() <= 1 + 1e-5


def test_label_counts_match_the_release(breast):
    assert torch.bincount(breast.train.labels).tolist() == [147, 399]
    assert torch.bincount(breast.test.labels).tolist() == [42, 114]


def test_search_order_data_root_then_env_then_home(tmp_path, monkeypatch, data_dir):
    a, b, home = tmp_path / "a", tmp_path / "b", tmp_path / "home"
    for d in (a, b, home / ".medmnist"):
        d.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MEDDISTILL_DATA", str(b))
    assert candidate_roots(a) == [a, b, home / ".medmnist"]
    shutil.copy(data_dir / "breastmnist.npz", home / ".medmnist")
    assert resolve_file("breastmnist", data_root=a, download_ok=False) == home / ".medmnist" / "breastmnist.npz"
    shutil.copy(data_dir / "breastmnist.npz", b)
    assert resolve_file("breastmnist", data_root=a, download_ok=False) == b / "breastmnist.npz"
    shutil.copy(data_dir / "breastmnist.npz", a)
    assert resolve_file("breastmnist", data_root=a, download_ok=False) == a / "breastmnist.npz"


def test_missing_file_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MEDDISTILL_DATA")
    with pytest.raises(DataError) as e:
        load_dataset("dermamnist", data_root=tmp_path / "d", download_ok=False)
    msg = str(e.value)
    assert "dermamnist.npz not found" in msg and str(tmp_path / "d" / "dermamnist.npz") in msg
    assert "zenodo.org" in msg and "\n" not in msg


def test_corrupt_and_truncated_files_fail_md5(tmp_path, data_dir):
    raw = (data_dir / "breastmnist.npz").read_bytes()
    (tmp_path / "breastmnist.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"has MD5 .* expected 750601b1"):
        load_dataset("breastmnist", data_root=tmp_path, download_ok=False)
    flipped = bytearray(raw)
    flipped[1000] ^= 0xFF
    (tmp_path / "breastmnist.npz").write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="corrupt, truncated"):
        load_dataset("breastmnist", data_root=tmp_path, download_ok=False)


def test_download_checks_md5_and_keeps_nothing_bad(tmp_path, data_dir):
    src = data_dir / "breastmnist.npz"
    dest = tmp_path / "out" / "breastmnist.npz"
    with pytest.raises(DataError, match="expected"):
        download(src.resolve().as_uri(), dest, "0" * 32)
    assert not dest.exists() and not list(dest.parent.glob("*.part"))
    download(src.resolve().as_uri(), dest, file_md5(src))
    assert file_md5(dest) == file_md5(src)


def test_unreachable_download_gives_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MEDDISTILL_DATA")
    import meddistill.data.loader as loader

    def refuse(*a, **k):
        raise loader.urllib.error.URLError("network unreachable")

    monkeypatch.setattr(loader.urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match=r"download failed: network unreachable.*place it at"):
        resolve_file("bloodmnist", data_root=tmp_path)


def test_npz_stores_no_pickles(data_dir):
    with np.load(data_dir / "retinamnist.npz", allow_pickle=False) as z:
        assert z["train_images"].shape == (1080, 28, 28, 3)


def test_a_failed_lookup_creates_no_folder(tmp_path, monkeypatch):
    """Only a real download may create a folder: not ~/.medmnist, not a mistyped --data-root."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MEDDISTILL_DATA")
    import meddistill.data.loader as loader

    def refuse(*a, **k):
        raise loader.urllib.error.URLError("network unreachable")

    monkeypatch.setattr(loader.urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match=r"typo \(no such folder\)"):
        resolve_file("bloodmnist", data_root=tmp_path / "typo")
    assert not (tmp_path / "typo").exists() and not (home / ".medmnist").exists()


def test_unreadable_data_file_or_folder_is_a_data_error(tmp_path, monkeypatch, data_dir, capsys):
    """Permissions are simulated: the tests run as root, which reads everything."""
    from pathlib import Path

    import meddistill.data.loader as loader
    from meddistill.cli import main

    shutil.copy(data_dir / "breastmnist.npz", tmp_path)
    real_open = open

    def denied(path, *a, **k):
        if Path(path) == tmp_path / "breastmnist.npz":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(loader, "open", denied, raising=False)
    with pytest.raises(DataError, match=r"cannot read .*breastmnist\.npz: permission denied"):
        load_dataset("breastmnist", data_root=tmp_path, download_ok=False)
    locked = tmp_path / "locked"
    real_is_file = Path.is_file

    def is_file(self):
        if self.parent == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    with pytest.raises(DataError, match=r"cannot look into .*locked: permission denied"):
        resolve_file("breastmnist", data_root=locked, download_ok=False)
    assert main(["datasets", "--data-root", str(locked)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meddistill: error: cannot look into") and err.count("\n") == 1

"""Own images (issue 14): real MedMNIST splits written as PNG folders, CSV manifests and DICOM
files must give the npz source's arrays, experts and synthetic set bit for bit."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from meddistill.cli import main
from meddistill.data.loader import _to_nchw
from meddistill.errors import ConfigError
from meddistill.experts import expert_dir, load_trajectory
from meddistill.identity import cell_key, distill_identity, expert_identity
from meddistill.pipeline import distill_set, load_data, run_cell, run_dir_for
from meddistill.utils import config_hash
from tests.conftest import tiny_config
from tests.own_images_data import (
    BLOOD_CLASSES,
    BREAST_CLASSES,
    npz_arrays,
    write_dicoms,
    write_manifest,
    write_pngs,
)

BLOOD_PART = {"train": 300, "val": 60, "test": 90}


@pytest.fixture(scope="session")
def own(tmp_path_factory, data_dir):
    """BreastMNIST (all splits) as PNG folder, CSV manifest and DICOM folder; a BloodMNIST part
    (RGB) as PNG folder and as a CSV without splits; one decoded-array cache for all."""
    root = tmp_path_factory.mktemp("own")
    breast = npz_arrays(data_dir / "breastmnist.npz")
    rows = write_pngs(breast, root / "breast", BREAST_CLASSES)
    write_manifest(root / "breast.csv", rows, prefix="breast/")
    write_dicoms(breast, root / "breast_dcm", BREAST_CLASSES)
    blood = npz_arrays(data_dir / "bloodmnist.npz", BLOOD_PART)
    blood_rows = write_pngs(blood, root / "blood", BLOOD_CLASSES)
    write_manifest(root / "blood_nosplit.csv", blood_rows, prefix="blood/", split=False)
    dirs = {k: root / k for k in ("runs", "experts", "cache")}
    return {"root": root, "breast_npz": breast, "blood_npz": blood, **dirs}


KEEP = {"data.duplicates": "keep"}  # BreastMNIST has one image in train (class 0) and test (class 1)


def own_cfg(own, name: str, **flags):
    flags.setdefault("data.cache_dir", str(own["cache"]))
    flags.update(KEEP)
    return tiny_config(str(own["root"] / name), own["runs"], own["experts"], **flags)


SAME_AUGMENTATION = {"data.flip": True, "data.rotate": True}  # BreastMNIST's modality defaults


def test_medmnist_identities_and_keys_are_unchanged():
    """The data-source layer leaves MedMNIST keys alone: expert and full-split keys are those of
    every stored row; run and cell keys those of the per-method-section layout (the stored rows
    were re-keyed to it once; tests/test_stored_keys.py finds them)."""
    # PTM's DOM reference epoch and start when these were stored
    last = {"distill.ptm.dom.feature_epoch": "last", "distill.ptm.init": "real"}
    expected = [
        ("tiny", last, "b65eda9edc65439a", "1279dfe3d50254b7", "7270bc54549bad30", "93bc14df8d61b87d"),
        (
            "cpu",
            {"experts.bf16": False, **last},
            "a482a6f5c5221ce7",
            "450431acb8159341",
            "7a10ec40ba922827",
            "480c59568e598334",
        ),
        (
            "tiny",
            {"distill.method": "random", "distill.ipc": 1, "size": 64, "dataset": "retinamnist"},
            "3855c7c5987d6900",
            "475faa9ac5bd4720",
            "359c45d6adcd76a9",
            "ba3b1bf07fcc3439",
        ),
    ]
    from meddistill.build import build_config

    for profile, extra, dist, expert, cell, full in expected:
        cfg = build_config(profile, **{"dataset": "breastmnist", "distill.ipc": 10, "device": "cpu", **extra})
        assert config_hash(distill_identity(cfg), 16) == dist
        assert config_hash(expert_identity(cfg), 16) == expert
        assert cell_key(cfg) == cell
        assert run_dir_for(cfg).parent.name == f"{cfg.dataset}_{cfg.size}"
        cfg.distill.method, cfg.distill.ipc = "full", 0
        assert cell_key(cfg) == full


@pytest.mark.parametrize("name", ["breast", "breast.csv", "breast_dcm"])
def test_folder_csv_and_dicom_give_the_npz_arrays_bit_for_bit(own, breast, name):
    ds = load_data(own_cfg(own, name), progress=False)
    for s in ("train", "val", "test"):
        assert torch.equal(getattr(ds, s).images, getattr(breast, s).images), s
        assert torch.equal(getattr(ds, s).labels, getattr(breast, s).labels), s
    assert torch.equal(ds.mean, breast.mean) and torch.equal(ds.std, breast.std)
    assert ds.info.modality == "user" and ds.info.task == "binary-class" and ds.info.n_samples == (546, 78, 156)
    assert not ds.info.flip and not ds.info.rotate  # conservative defaults


def test_rgb_folder_gives_the_npz_subset_bit_for_bit(own):
    ds = load_data(own_cfg(own, "blood"), progress=False)
    raw = {s: _to_nchw(own["blood_npz"][s][0], 3) for s in ("train", "val", "test")}
    mean, std = raw["train"].mean(dim=(0, 2, 3)), raw["train"].std(dim=(0, 2, 3)).clamp_min(1e-6)
    for s, x in raw.items():
        assert torch.equal(getattr(ds, s).images, (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)), s
        assert getattr(ds, s).labels.tolist() == own["blood_npz"][s][1].tolist()
    assert ds.shape == (3, 28, 28) and ds.num_classes == 8 and ds.info.task == "multi-class"


@pytest.mark.parametrize("name", ["breast", "breast.csv"])
def test_experts_and_synthetic_set_equal_the_npz_ones(own, breast, tiny, name):
    """Same seed, same augmentation: the whole tiny pipeline is bit-identical to the npz one
    (the folder through ``run_cell``, i.e. with evaluation; the CSV through ``distill``)."""
    _, syn_npz = distill_set(tiny(**{"distill.ipc": 2}), breast, progress=False)
    cfg = own_cfg(own, name, **{"distill.ipc": 2, **SAME_AUGMENTATION})
    if name == "breast":
        res = run_cell(cfg, progress=False)
        run_dir, syn = res.run_dir, res.synset
        assert res.row["dataset"] == "breast" and 0 <= res.row["acc_mean"] <= 1
        # what tells two settings apart in a report: the images and the augmentation too
        assert res.row["config"]["data"]["fingerprint"] and "scale" in res.row["config"]["dsa"]
    else:
        run_dir, syn = distill_set(cfg, progress=False)
    assert expert_dir(cfg) != expert_dir(tiny()) and expert_dir(cfg).parent.name == "breast_28"

    def trajectory(folder, k):  # runs train experts as far as they read them; other tests may finish them
        done = folder / f"expert_{k}.safetensors"
        return load_trajectory(done if done.exists() else folder / f"expert_{k}.partial.safetensors")

    for k in range(cfg.experts.num_experts):
        own_traj, npz_traj = trajectory(expert_dir(cfg), k), trajectory(expert_dir(tiny()), k)
        n = min(len(own_traj), len(npz_traj))
        assert n >= 3 and torch.equal(own_traj[:n], npz_traj[:n])
    assert torch.equal(syn.images, syn_npz.images) and syn.lr == syn_npz.lr
    # the run folder records the data: split.csv (usable as a manifest), data.json
    with open(run_dir / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 780 and {r["split"] for r in rows} == {"train", "val", "test"}
    desc = json.loads((run_dir / "data.json").read_text())
    assert desc["counts"]["train"] == [147, 399] and desc["source"] == ("csv" if name.endswith("csv") else "folder")


def test_auto_split_is_seeded_stratified_recorded_and_reproducible(own):
    cfg = own_cfg(own, "blood_nosplit.csv", **{"distill.ipc": 1})
    ds = load_data(cfg, progress=False)
    n = {s: len(getattr(ds, s)) for s in ("train", "val", "test")}
    assert sum(n.values()) == 450 and abs(n["test"] - 90) <= 8 and abs(n["val"] - 45) <= 8
    per_class = torch.bincount(ds.train.labels, minlength=8) / torch.bincount(
        torch.cat([ds.train.labels, ds.val.labels, ds.test.labels]), minlength=8
    )
    assert ((per_class > 0.55) & (per_class < 0.85)).all()  # stratified: every class ~70 % train
    again = load_data(cfg, progress=False)
    assert torch.equal(again.test.images, ds.test.images)
    other = load_data(own_cfg(own, "blood_nosplit.csv", **{"data.split_seed": 1}), progress=False)
    assert not torch.equal(other.test.labels, ds.test.labels)
    assert distill_identity(cfg) != distill_identity(own_cfg(own, "blood_nosplit.csv", **{"data.split_seed": 1}))
    # split.csv in the run folder reproduces the run's data when used as a manifest
    run_dir = run_dir_for(cfg)
    run_dir.mkdir(parents=True)
    from meddistill.data.sources import write_run_records

    write_run_records(ds, run_dir)
    copy = own["root"] / "reproduce.csv"
    copy.write_text((run_dir / "split.csv").read_text())
    rep = load_data(own_cfg(own, "reproduce.csv"), progress=False)
    for s in ("train", "val", "test"):
        assert torch.equal(getattr(rep, s).images, getattr(ds, s).images)


def test_second_load_reads_the_cache_not_the_images(own, tmp_path, monkeypatch, capsys):
    cfg = own_cfg(own, "breast", **{"data.cache_dir": str(tmp_path / "c")})
    first = load_data(cfg, progress=True)
    assert "decoding breast" in capsys.readouterr().err  # the progress bar
    cached = list((tmp_path / "c" / "decoded").glob("*.npz"))
    assert len(cached) == 1 and not list((tmp_path / "c" / "decoded").glob(".*tmp"))
    with np.load(cached[0], allow_pickle=False) as z:
        assert z["images"].dtype == np.uint8 and z["images"].shape == (780, 1, 28, 28)
    import meddistill.data.cache as cache

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache, "decode_file", no_decoding)  # the files are hashed again, not decoded
    second = load_data(cfg, progress=False)
    assert torch.equal(first.train.images, second.train.images)


def test_changed_data_changes_every_identity_and_a_touch_does_not(own, tmp_path):
    import shutil

    shutil.copytree(own["root"] / "breast", tmp_path / "breast")
    cfg = tiny_config(str(tmp_path / "breast"), **{"data.cache_dir": str(tmp_path / "c")}, **KEEP)
    idents = (expert_identity(cfg), distill_identity(cfg), cell_key(cfg), run_dir_for(cfg), expert_dir(cfg))
    assert idents[0]["dataset"] == "breast" and str(tmp_path) not in json.dumps(idents[0])
    # a copy of the same files elsewhere shares the identities (content, not paths or mtimes)
    shared = own_cfg(own, "breast")
    assert (expert_identity(shared), distill_identity(shared), cell_key(shared)) == idents[:3]
    f = next((tmp_path / "breast" / "train" / "0_malignant").glob("*.png"))
    os.utime(f, ns=(1, 1))
    assert (expert_identity(cfg), distill_identity(cfg), cell_key(cfg)) == idents[:3]
    # one changed pixel: new experts, new run, new cell
    from PIL import Image

    img = np.asarray(Image.open(f)).copy()
    img[0, 0] ^= 1
    Image.fromarray(img).save(f)
    changed = (expert_identity(cfg), distill_identity(cfg), cell_key(cfg), run_dir_for(cfg), expert_dir(cfg))
    assert all(a != b for a, b in zip(changed, idents, strict=True))


def test_cli_run_audit_and_export_on_an_image_folder(own, tmp_path, capsys):
    """``meddistill run PATH``: the same config as the run_cell test above, whose run it reuses."""
    args = ["--profile", "tiny", "--out", str(own["runs"]), "--experts-dir", str(own["experts"])]
    args += ["--no-progress", "--device", "cpu", "--set", f"data.cache_dir={own['cache']}"]
    args += ["--set", "data.flip=true", "--set", "data.rotate=true", "--set", "data.duplicates=keep"]
    folder = str(own["root"] / "breast")
    assert main(["run", folder, "--ipc", "2", "--licence", "CC BY-NC 4.0 (Example Lab)", *args]) == 0
    out = capsys.readouterr().out
    assert re.search(r"breast ptm ipc=2 .*test ACC \d+\.\d+", out)
    run_dir = Path(re.search(r"run folder: (\S+)", out).group(1))
    assert main(["audit", str(run_dir), "--device", "cpu", "--no-progress"]) == 0
    assert "loss-attack screen AUC" in capsys.readouterr().out
    assert main(["export", str(run_dir), str(tmp_path / "exp"), "--allow-traceable"]) == 0
    card = (tmp_path / "exp" / "card.md").read_text()
    assert "own images `breast`" in card and "CC BY-NC 4.0 (Example Lab)" in card
    assert "546 train / 78 val / 156 test" in card and "Yang et al." not in card and "MedMNIST `" not in card
    assert "Traceability" in card and "test ACC" in card
    assert main(["export", str(run_dir), str(tmp_path / "exp2"), "--licence", "CC0", "--allow-traceable"]) == 0
    assert "**CC0**" in (tmp_path / "exp2" / "card.md").read_text()
    assert json.loads((tmp_path / "exp2" / "meta.json").read_text())["license"] == "CC0"
    assert json.loads((tmp_path / "exp" / "meta.json").read_text())["license"] == "CC BY-NC 4.0 (Example Lab)"
    assert main(["eval", folder, "--full", *args[:4], "--set", "data.duplicates=keep"]) == 0  # reads no experts
    assert "full train split (546 images)" in capsys.readouterr().out


def test_medmnist_export_keeps_its_licence(tmp_path):
    from meddistill.data.describe import card_source

    lines, licence = card_source(tmp_path, {"dataset": "breastmnist", "size": 28})
    assert "MedMNIST `breastmnist`" in lines[0] and "CC BY 4.0" in lines[1] and "Yang et al." in lines[1]
    assert licence == "CC BY 4.0"
    with pytest.raises(ConfigError, match="--licence is for your own images"):
        card_source(tmp_path, {"dataset": "breastmnist"}, licence="CC0")


def test_bench_grid_takes_a_folder(own, tmp_path):
    from meddistill.bench import load_grid, run_grid, write_report
    from meddistill.bench.grid import expand as expand_grid
    from meddistill.utils import read_jsonl

    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(
        f"datasets: [{own['root'] / 'breast'}, breastmnist]\nipc: [1]\nmethods: [random]\nprofile: tiny\n"
        f"overrides: ['data.cache_dir={own['cache']}', 'data.duplicates=keep', 'device=cpu']\n"
        f"store: {tmp_path / 'store.jsonl'}\n"
        f"out_dir: {tmp_path / 'runs'}\nexperts_dir: {own['experts']}\n"
    )
    grid = load_grid(grid_file)
    cells = expand_grid(grid)
    assert len(cells) == 4 and len({c.key for c in cells}) == 4
    assert cells[0].cfg.dataset == str(own["root"] / "breast")
    assert expert_dir(cells[0].cfg).parent.name == "breast_28"
    grid.datasets, grid.full = [str(own["root"] / "breast")], False
    assert run_grid(grid, progress=False) == (1, 0)
    assert run_grid(grid, progress=False) == (0, 1)  # keyed by cell_key: the finished cell is skipped
    (row,) = read_jsonl(tmp_path / "store.jsonl")
    assert row["dataset"] == "breast" and row["method"] == "random"
    written = write_report(tmp_path / "store.jsonl", tmp_path / "report")
    assert "acc_vs_ipc_breast.png" in {p.name for p in written.values()}


def test_auto_settings_follow_the_listed_train_split(own):
    from meddistill.build import build_config
    from meddistill.data.sources import train_size
    from meddistill.distill.tm_auto import auto_span

    for name in ("breast", "blood_nosplit.csv"):
        cfg = own_cfg(own, name)
        ds = load_data(cfg, progress=False)
        assert train_size(cfg) == len(ds.train)
        cpu = build_config("cpu", dataset=str(own["root"] / name), **{"distill.method": "ptm"})
        active = cpu.distill.active
        assert (active.syn_steps, active.expert_epochs) == auto_span(len(ds.train), cpu.experts.batch_size)

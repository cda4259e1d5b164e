"""Own images: decoding (formats, bit depths, DICOM tags, channels, sizes) and every kind of bad
input, each a one-line DataError/ConfigError naming the file and what to do."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from meddistill.cli import main
from meddistill.data.decode import decode_file
from meddistill.errors import ConfigError, DataError
from meddistill.pipeline import load_data
from tests.conftest import tiny_config
from tests.own_images_data import npz_arrays, write_dicom


@pytest.fixture(scope="module")
def grey(data_dir) -> np.ndarray:
    return npz_arrays(data_dir / "breastmnist.npz", {"train": 40})["train"][0]  # (40, 28, 28) uint8


@pytest.fixture(scope="module")
def rgb(data_dir) -> np.ndarray:
    return npz_arrays(data_dir / "bloodmnist.npz", {"train": 8})["train"][0]  # (8, 28, 28, 3) uint8


def write(root, files: dict):
    """Write ``{relative path: array or bytes}``; arrays through Pillow (format from the suffix)."""
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            Image.fromarray(content).save(p)
    return root


def classes(grey, n: int = 10, names=("a", "b"), ext: str = "png") -> dict:
    return {f"{c}/{i:03d}.{ext}": grey[k * n + i] for k, c in enumerate(names) for i in range(n)}


def load(path, tmp_path, **flags):
    flags.setdefault("data.cache_dir", str(tmp_path / "cache"))
    return load_data(tiny_config(str(path), **flags), progress=False)


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


# ---- decoding -----------------------------------------------------------------------------


def test_16bit_png_and_tiff_decode_like_the_8bit_image(grey, tmp_path):
    img8 = grey[0]
    img16 = img8.astype(np.uint16) * 257
    ref = decode_file(tmp_path / "x.png", png_bytes(img8), 28)
    for ext in ("png", "tif"):
        write(tmp_path, {f"x16.{ext}": img16})
        x = decode_file(tmp_path / f"x16.{ext}", (tmp_path / f"x16.{ext}").read_bytes(), 28)
        np.testing.assert_array_equal(x, ref)
    # a whole 16-bit folder gives the same tensors as the 8-bit one
    write(tmp_path / "d8", classes(grey))
    write(tmp_path / "d16", {k.replace(".png", ".tif"): v.astype(np.uint16) * 257 for k, v in classes(grey).items()})
    a, b = load(tmp_path / "d8", tmp_path), load(tmp_path / "d16", tmp_path)
    assert (a.train.images == b.train.images).all() and (a.test.labels == b.test.labels).all()


def test_mixed_formats_sizes_and_modes_are_converted(grey, rgb, tmp_path, capsys):
    big = np.asarray(Image.fromarray(rgb[0]).resize((40, 32)))
    files = classes(grey, 10)
    files.update(
        {
            "a/rgb_big.png": big,
            "a/rgba.png": np.dstack([rgb[1], np.full((28, 28), 200, np.uint8)]),
            "a/photo.jpg": rgb[2],
            "a/bitmap.bmp": rgb[3],
            "b/grey16.tif": (grey[30].astype(np.uint16) * 300),
            "b/grey_big.png": np.asarray(Image.fromarray(grey[31]).resize((50, 61))),
            "b/notes.txt": b"not an image",
            "b/.DS_Store": b"\0\0",
        }
    )
    write(tmp_path / "mixed", files)
    Image.fromarray(grey[32]).convert("1").save(tmp_path / "mixed" / "b" / "mono.png")
    Image.fromarray(rgb[4]).convert("P").save(tmp_path / "mixed" / "b" / "palette.png")
    ds = load(tmp_path / "mixed", tmp_path)
    assert ds.shape == (3, 28, 28) and len(ds.train) + len(ds.val) + len(ds.test) == 28  # auto: colour present
    px = ds.denormalize(ds.train.images)
    assert px.min() >= -1e-5 and px.max() <= 1 + 1e-5
    assert "ignored 2 non-image file(s) by extension" in capsys.readouterr().err
    assert load(tmp_path / "mixed", tmp_path, **{"data.channels": 1}).shape == (1, 28, 28)
    assert load(tmp_path / "mixed", tmp_path, size=32).shape == (3, 32, 32)
    write(tmp_path / "grey", classes(grey, 10))
    assert load(tmp_path / "grey", tmp_path).shape == (1, 28, 28)
    assert load(tmp_path / "grey", tmp_path, **{"data.channels": 3}).shape == (3, 28, 28)


def test_dicom_rescale_window_monochrome1_and_bit_depths(grey, rgb, tmp_path):
    raw = grey[0].astype(np.uint16) * 16  # 12-bit values
    c, w = 200.0, 800.0
    kw = {"RescaleSlope": 2, "RescaleIntercept": -1024, "WindowCenter": c, "WindowWidth": w}
    hu = raw.astype(np.float64) * 2 - 1024
    windowed = np.clip((hu - (c - 0.5)) / (w - 1) + 0.5, 0, 1)  # DICOM LINEAR window, as a fraction

    def dec(name: str, pixels, photometric: str = "MONOCHROME2", **tags):
        p = write_dicom(tmp_path / name, pixels, photometric, **tags)
        return decode_file(p, p.read_bytes(), 28)[0]

    np.testing.assert_allclose(dec("w.dcm", raw, **kw), windowed, atol=1e-12)
    np.testing.assert_allclose(dec("m1.dcm", raw, "MONOCHROME1", **kw), 1 - windowed, atol=1e-12)
    np.testing.assert_allclose(dec("bits.dcm", raw, BitsStored=12, HighBit=11), raw / 4095.0, atol=1e-12)
    no_window = {"RescaleSlope": 2, "RescaleIntercept": -1024}
    np.testing.assert_allclose(dec("hu.dcm", raw, **no_window), (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-12)
    np.testing.assert_array_equal(dec("m1_8bit.dcm", 255 - grey[1], "MONOCHROME1"), grey[1] / 255.0)
    from pydicom.dataset import Dataset

    lut = Dataset()  # a VOI LUT (16-bit entries) instead of a window: output /65535
    lut.add_new(0x00283002, "US", [4096, 0, 16])
    lut.add_new(0x00283006, "US", [16 * v for v in range(4096)])
    np.testing.assert_array_equal(
        dec("lut.dcm", raw, BitsStored=12, HighBit=11, VOILUTSequence=[lut]), raw * 16 / 65535
    )
    p = write_dicom(tmp_path / "rgb.dcm", rgb[0], "RGB")
    np.testing.assert_array_equal(decode_file(p, p.read_bytes(), 28), rgb[0].transpose(2, 0, 1) / 255.0)


def test_dicom_without_pydicom_says_how_to_install_it(grey, tmp_path, monkeypatch):
    for i in range(6):
        write_dicom(tmp_path / "d" / "a" / f"{i}.dcm", grey[i])
        write_dicom(tmp_path / "d" / "b" / f"{i}.dcm", grey[10 + i])
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DataError, match=r"needs pydicom: pip install 'meddistill\[dicom\]'"):
        load(tmp_path / "d", tmp_path)


# ---- bad folders --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files,msg",
    [
        ({}, "has no class folders; put the images in"),
        ({"a/x.png": "grey", "b/notes.txt": b"x"}, r"class folder .*/b has no images"),
        ({"a/x.png": "grey", "a/y.png": "grey", "a/z.png": "grey"}, r"has one class \('a'\)"),
        ({"loose.png": "grey", "a/x.png": "grey"}, r"loose.png is not in a class folder"),
        ({"train/a/x.png": "grey", "b/y.png": "grey"}, r"mixes split folders \(train\) with class folders \(b\)"),
        ({"train/a/x.png": "grey", "train/b/y.png": "grey", "val/a/z.png": "grey"}, "has no test images"),
        (
            {"train/a/1.png": "grey", "train/a/2.png": "grey", "train/b/1.png": "grey", "test/c/1.png": "grey"},
            "class 'c' has test images but no train images",
        ),
    ],
)
def test_bad_folders_are_one_clear_error(grey, tmp_path, files, msg):
    root = tmp_path / "data"
    root.mkdir()
    write(root, {k: grey[i] if v == "grey" else v for i, (k, v) in enumerate(files.items())})  # distinct images
    with pytest.raises(DataError, match=msg) as e:
        load(root, tmp_path)
    assert "\n" not in str(e.value)


def test_a_class_too_small_for_the_split_is_an_error(grey, tmp_path):
    root = write(tmp_path / "d", {"a/1.png": grey[0], **{f"b/{i}.png": grey[i + 1] for i in range(9)}})
    with pytest.raises(DataError, match=r"class 'a' has 1 image\(s\); too few to split off val/test"):
        load(root, tmp_path, **{"data.split": [0.1, 0.1, 0.8]})
    assert load(root, tmp_path).info.n_samples == (7, 1, 2)  # 70/10/20: 'a' only in train (a note says so)


def test_missing_val_split_is_carved_from_train(grey, tmp_path, capsys):
    files = {f"train/{k}": v for k, v in classes(grey, 10).items()}
    files.update({f"test/{k}": v for k, v in classes(grey[20:], 2).items()})  # other images than train's
    ds = load(write(tmp_path / "d", files), tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 2, 4)
    assert "no val split given" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad",
    [
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40,  # a PNG header and garbage
        b"",  # empty file
        b"this is a text file",  # wrong format under an image extension
        "truncated",
    ],
)
def test_unreadable_images_fail_or_are_skipped_and_reported(grey, tmp_path, bad, capsys):
    from meddistill.data.sources import write_run_records

    content = png_bytes(grey[5])[:-30] if bad == "truncated" else bad
    root = write(tmp_path / "d", {**classes(grey, 10), "a/broken.png": content})
    with pytest.raises(DataError, match=r"cannot read image .*a/broken.png: .*--on-bad-image skip") as e:
        load(root, tmp_path)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "cache").rglob("*.npz"))  # nothing cached for a failed decode
    ds = load(root, tmp_path, **{"data.on_bad_image": "skip"})
    assert len(ds.train) + len(ds.val) + len(ds.test) == 20
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().err
    write_run_records(ds, tmp_path / "run")
    assert "broken.png" in (tmp_path / "run" / "bad_images.csv").read_text()
    assert ds.description()["skipped_images"] == 1
    with pytest.raises(DataError, match=r"broken\.png"):  # the cache keeps the bad list: fail still fails
        load(root, tmp_path)


def test_corrupt_dicom_is_a_bad_image(grey, tmp_path):
    root = write(tmp_path / "d", {**classes(grey, 10), "b/scan.dcm": b"\0" * 128 + b"DICM" + b"\1" * 50})
    with pytest.raises(DataError, match=r"cannot read image .*b/scan.dcm"):
        load(root, tmp_path)


def test_an_interrupted_decode_leaves_no_cache(grey, tmp_path, monkeypatch):
    import meddistill.data.cache as cache

    root = write(tmp_path / "d", classes(grey, 10))
    real, calls = cache.decode_file, []

    def interrupted(*a):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(cache, "decode_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(root, tmp_path)
    assert not (tmp_path / "cache" / "decoded").exists() or not list((tmp_path / "cache" / "decoded").iterdir())
    monkeypatch.setattr(cache, "decode_file", real)
    first = load(root, tmp_path)
    cached = next((tmp_path / "cache" / "decoded").glob("*.npz"))
    cached.write_bytes(b"garbage")  # a damaged cache is rebuilt, not trusted
    assert (load(root, tmp_path).train.images == first.train.images).all()


# ---- bad CSV manifests --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,msg",
    [
        ("path,label\na/000.png,a\nmissing.png,b\n", r"line 3: .*missing.png does not exist"),
        ("path,label\na/000.png,a\n./a/000.png,a\n", r"lines 2 and 3 both list a/000.png"),
        ("path,class\na/000.png,a\n", r"lacks the column\(s\) label; .*header path,label\[,split\]"),
        ("a/000.png,a\na/001.png,a\n", r"lacks the column\(s\) path, label"),
        ("path,label,split\na/000.png,a,training\n", r"line 2: split 'training' is not one of train, val, test"),
        ("path,label,split\na/000.png,a,train\na/001.png,a,\n", "line 3 has no split but other rows have one"),
        ("path,label\n", "lists no images"),
        ("path,label\na/000.png,\n", "line 2: empty label"),
        ("path,label\nb/notes.txt,b\n", r"notes.txt is not a supported image file"),
        (
            "path,label,split\na/000.png,a,train\na/001.png,a,test\nb/000.png,b,test\n",
            "class 'b' has test images but no train images",
        ),
    ],
)
def test_bad_manifests_are_one_clear_error(grey, tmp_path, text, msg):
    root = write(tmp_path, {**classes(grey, 3), "b/notes.txt": b"x"})
    (root / "m.csv").write_text(text)
    with pytest.raises(DataError, match=msg) as e:
        load(root / "m.csv", tmp_path)
    assert "\n" not in str(e.value)


def test_manifest_with_bom_absolute_paths_and_extra_columns(grey, tmp_path):
    root = write(tmp_path / "imgs", classes(grey, 10))
    rows = [f"{root / k},{k[0]},x{i}" for i, k in enumerate(classes(grey, 10))]
    (tmp_path / "m.csv").write_text("\ufeffPath, Label ,site\n" + "\n".join(rows) + "\n", encoding="utf-8")
    ds = load(tmp_path / "m.csv", tmp_path)
    assert ds.info.labels == ("a", "b") and len(ds.train) + len(ds.val) + len(ds.test) == 20


# ---- bad settings and the CLI -------------------------------------------------------------


@pytest.mark.parametrize(
    "flags,msg",
    [
        ({"data.channels": 2}, "data.channels must be 1, 3 or 0"),
        ({"data.split": [0.5, 0.5]}, "data.split must be three positive"),
        ({"data.on_bad_image": "ignore"}, "data.on_bad_image must be one of fail, skip"),
        ({"size": 4}, "size=4 is out of range"),
    ],
)
def test_bad_data_settings_are_config_errors(grey, tmp_path, flags, msg):
    root = write(tmp_path / "d", classes(grey))
    with pytest.raises(ConfigError, match=msg):
        load(root, tmp_path, **flags)


def test_unknown_names_and_paths(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar10'.*or give the path of an image folder"):
        load("cifar10", tmp_path)
    with pytest.raises(DataError, match="nope/ does not exist"):
        load(str(tmp_path / "nope") + "/", tmp_path)
    with pytest.raises(DataError, match=r"nope.csv does not exist"):
        load(tmp_path / "nope.csv", tmp_path)
    with pytest.raises(ConfigError, match="image size 32 is not a MedMNIST size"):
        load("breastmnist", tmp_path, size=32)


@pytest.mark.parametrize(
    "case,argv_extra,msg",
    [
        ("empty", [], "has no class folders"),
        ("broken", [], "--on-bad-image skip"),
        ("ok", ["--ipc", "50", "--method", "random"], "ipc 50 is larger than class 0 ('a') of"),
        ("ok", ["--size", "32", "--channels", "2"], "invalid choice: 2"),
    ],
)
def test_cli_prints_one_line_and_exits_2(grey, tmp_path, capsys, case, argv_extra, msg):
    root = tmp_path / "d"
    root.mkdir()
    if case != "empty":
        write(root, classes(grey, 10))
    if case == "broken":
        (root / "a" / "bad.png").write_bytes(b"nope")
    args = ["--profile", "tiny", "--out", str(tmp_path / "runs"), "--experts-dir", str(tmp_path / "ex")]
    args += ["--no-progress", "--device", "cpu", "--set", f"data.cache_dir={tmp_path / 'c'}"]
    if "invalid choice" in msg:
        with pytest.raises(SystemExit) as e:
            main(["run", str(root), *argv_extra, *args])
        assert e.value.code == 2 and msg in capsys.readouterr().err
        return
    assert main(["run", str(root), *argv_extra, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("meddistill: error: ") and msg in err and err.count("\n") == 1
    assert not (tmp_path / "ex").exists()  # failed before training any expert


def test_an_empty_dataset_name_is_not_the_working_directory(tmp_path, monkeypatch, capsys):
    # "" was read as the folder the command ran in
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["distill", "", "--profile", "tiny", "--dry-run"]) == 2
    assert "unknown dataset ''" in capsys.readouterr().err

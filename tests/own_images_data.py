"""Writers for the own-images tests: real MedMNIST images as PNG/DICOM folders and CSV manifests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
BREAST_CLASSES = ("0_malignant", "1_normal_benign")
BLOOD_CLASSES = tuple(f"{i}_{n}" for i, n in enumerate("baso eosino erythro ig lympho mono neutro platelet".split()))


def npz_arrays(path: Path, limits: dict[str, int] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images, labels)} of a MedMNIST npz, the first ``limits[split]`` of each split."""
    with np.load(path, allow_pickle=False) as z:
        out = {}
        for s in SPLITS:
            n = (limits or {}).get(s)
            out[s] = (z[f"{s}_images"][:n], z[f"{s}_labels"][:n, 0])
    return out


def image_name(index: int) -> str:
    return f"{index:05d}"  # natural order of file names = order in the npz


def write_pngs(arrays: dict, root: Path, classes: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """``root/<split>/<class>/<index>.png``; returns (relative path, class, split) rows."""
    rows = []
    for s, (images, labels) in arrays.items():
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            rel = Path(s) / classes[lab] / f"{image_name(i)}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / rel)
            rows.append((rel.as_posix(), classes[lab], s))
    return rows


def write_manifest(path: Path, rows: list[tuple[str, str, str]], prefix: str = "", split: bool = True) -> Path:
    """A CSV in shuffled row order with an extra column (ignored): canonical order must not depend on it."""
    order = np.random.default_rng(0).permutation(len(rows))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient", "path", "label", *(["split"] if split else [])])
        for k in order:
            rel, lab, s = rows[k]
            w.writerow([f"p{k}", f"{prefix}{rel}", lab, *([s] if split else [])])
    return path


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> Path:
    """A minimal Secondary Capture DICOM file (uncompressed, explicit VR little endian)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    uid = generate_uid(entropy_srcs=[str(path.name), str(path.parent.name)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, uid, "OT"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicoms(arrays: dict, root: Path, classes: tuple[str, ...], monochrome1: int = 0) -> None:
    """8-bit MONOCHROME2 DICOMs; train image ``monochrome1`` stored inverted as MONOCHROME1 and
    without a file extension (found by its DICM preamble)."""
    for s, (images, labels) in arrays.items():
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            folder = root / s / classes[lab]
            if s == "train" and i == monochrome1:
                write_dicom(folder / image_name(i), 255 - img, "MONOCHROME1")
            else:
                write_dicom(folder / f"{image_name(i)}.dcm", img)

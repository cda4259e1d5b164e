"""Decode one image file to float64 (C, H, W) in [0, 1], C = 1 or 3; resize; convert channels.

Decoders are picked by extension from a registry (files without an extension are DICOM when
they carry the ``DICM`` preamble): Pillow for PNG, JPEG, TIFF (incl. 16-bit) and BMP;
pydicom (optional extra ``meddistill[dicom]``) for DICOM, through its own
``apply_modality_lut`` (rescale slope/intercept, modality LUT) and ``apply_voi_lut``
(window centre/width or VOI LUT), then MONOCHROME1 inversion.

Intensity scaling: 8-bit /255, 16-bit /65535, DICOM by its VOI output range when it has a
window or VOI LUT, else by ``2**BitsStored - 1`` (unsigned, no rescale), else per-image
min-max (e.g. CT in Hounsfield units without a window).  Float images outside [0, 1] are
min-max scaled per image.  An image already at the target size is not resampled (8- and
16-bit values stay exact); others are resized with Pillow's bilinear filter (antialiased
when shrinking; a non-square image is stretched to the square).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from meddistill.errors import DataError

DICOM_MAGIC_OFFSET = 128
LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class Decoder:
    name: str
    extensions: tuple[str, ...]
    decode: Callable[[bytes], np.ndarray]  # file bytes → float64 (C, H, W) in [0, 1]


_DECODERS: dict[str, Decoder] = {}


def register_decoder(decoder: Decoder) -> Decoder:
    for ext in decoder.extensions:
        _DECODERS[ext] = decoder
    return decoder


def _is_dicom_without_extension(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


def decoder_for(path: Path) -> Decoder | None:
    """The decoder of ``path`` by extension, or None for a file that is not an image."""
    ext = path.suffix.lower()
    if ext in _DECODERS:
        return _DECODERS[ext]
    if not ext and _is_dicom_without_extension(path):
        return _DECODERS[".dcm"]
    return None


def image_kind(path: Path) -> str | None:
    dec = decoder_for(path)
    return dec.name if dec else None


# ---- Pillow -------------------------------------------------------------------------------


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _scaled(a: np.ndarray, top: float) -> np.ndarray:
    """Integers in [0, top] → [0, 1]; values outside that range → per-image min-max."""
    a = a.astype(np.float64)
    if a.size and (a.min() < 0 or a.max() > top):
        return _minmax(a)
    return a / top


def _float_image(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    if a.size and (a.min() < 0 or a.max() > 1):
        return _minmax(a)
    return a


_PIL_MODES: dict[str, Callable[[Image.Image], np.ndarray]] = {
    "L": lambda im: np.asarray(im, dtype=np.float64)[None] / 255.0,
    "RGB": lambda im: np.asarray(im, dtype=np.float64).transpose(2, 0, 1) / 255.0,
    "I;16": lambda im: np.asarray(im, dtype=np.float64)[None] / 65535.0,
    "I;16L": lambda im: np.asarray(im, dtype=np.float64)[None] / 65535.0,
    "I;16B": lambda im: np.asarray(im, dtype=np.float64)[None] / 65535.0,
    "I;16N": lambda im: np.asarray(im, dtype=np.float64)[None] / 65535.0,
    "I": lambda im: _scaled(np.asarray(im), 65535.0)[None],
    "F": lambda im: _float_image(np.asarray(im))[None],
    "1": lambda im: _PIL_MODES["L"](im.convert("L")),
    "LA": lambda im: _PIL_MODES["L"](im.convert("L")),
}


def decode_pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # decodes fully: a truncated file fails here
        convert = _PIL_MODES.get(im.mode)
        if convert is None:  # P, PA, RGBA, CMYK, YCbCr, ...: through RGB
            return _PIL_MODES["RGB"](im.convert("RGB"))
        return convert(im)


register_decoder(Decoder("pillow", (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"), decode_pillow))


# ---- DICOM --------------------------------------------------------------------------------


def _pydicom():
    try:
        import pydicom
        import pydicom.pixels
    except ImportError:
        raise DataError("reading DICOM files needs pydicom: pip install 'meddistill[dicom]'") from None
    return pydicom


def _voi_range(ds, out: np.ndarray) -> tuple[float, float]:
    """The output range of ``apply_voi_lut``: a VOI LUT's nominal depth, or the window's
    [y_min, y_max] found by pushing two extreme values through pydicom's own windowing."""
    from pydicom.pixels import apply_voi_lut

    if np.issubdtype(out.dtype, np.integer):
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    with np.errstate(over="ignore"):
        lo, hi = apply_voi_lut(np.array([-1e15, 1e15]), ds)
    return float(lo), float(hi)


def _has_voi(ds) -> bool:
    return bool(ds.get("VOILUTSequence")) or (ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None)


def _has_rescale(ds) -> bool:
    return bool(ds.get("ModalityLUTSequence")) or ("RescaleSlope" in ds and "RescaleIntercept" in ds)


def _dicom_grey(ds, raw: np.ndarray) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    out = apply_modality_lut(raw, ds)
    if _has_voi(ds):
        out = apply_voi_lut(out, ds)
        lo, hi = _voi_range(ds, out)
    elif not _has_rescale(ds) and int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        lo, hi = float(out.min()), float(out.max())
    if hi <= lo:
        return np.zeros((1, *raw.shape))
    out = out.astype(np.float64)
    # MONOCHROME1: low values are white; (hi - v) keeps integer inputs exact
    x = (hi - out) / (hi - lo) if ds.PhotometricInterpretation == "MONOCHROME1" else (out - lo) / (hi - lo)
    return np.clip(x, 0.0, 1.0)[None]


def _dicom_colour(ds, raw: np.ndarray) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    if ds.PhotometricInterpretation == "PALETTE COLOR":
        raw = apply_color_lut(raw, ds)
        top = 255.0 if raw.dtype == np.uint8 else 65535.0
    else:  # pixel_array already converted YBR to RGB
        top = float(2 ** int(ds.BitsStored) - 1)
    return np.clip(raw.astype(np.float64) / top, 0.0, 1.0).transpose(2, 0, 1)


def decode_dicom(data: bytes) -> np.ndarray:
    pydicom = _pydicom()
    ds = pydicom.dcmread(io.BytesIO(data))
    raw = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"multi-frame DICOM ({frames} frames) is not supported; export one file per frame")
    if int(ds.get("SamplesPerPixel", 1)) == 3 or ds.PhotometricInterpretation == "PALETTE COLOR":
        return _dicom_colour(ds, raw)
    return _dicom_grey(ds, raw)


register_decoder(Decoder("dicom", (".dcm", ".dicom"), decode_dicom))


# ---- geometry and channels ----------------------------------------------------------------


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) → (C, size, size); untouched when already that size."""
    if x.shape[1:] == (size, size):
        return x
    chans = [
        np.asarray(Image.fromarray(c.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)) for c in x
    ]
    return np.clip(np.stack(chans).astype(np.float64), 0.0, 1.0)


def is_grey(x: np.ndarray) -> bool:
    """One channel, or three identical ones (grey content stored as RGB)."""
    return x.shape[0] == 1 or bool((x[0] == x[1]).all() and (x[0] == x[2]).all())


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Grey → RGB by repetition; RGB → grey by ITU-R 601 luma (exact for grey content).
    Integer levels stay integer levels of the same dtype (the luma is rounded)."""
    if x.shape[0] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=0)
    if is_grey(x):
        return x[:1]
    luma = np.tensordot(LUMA, x.astype(np.float64), axes=1)[None]
    return np.rint(luma).astype(x.dtype) if np.issubdtype(x.dtype, np.integer) else luma


def decode_file(path: Path, data: bytes, size: int) -> np.ndarray:
    """Decode and resize one file; raises whatever its decoder raises for a bad file."""
    dec = decoder_for(path)
    if dec is None:
        raise ValueError(f"{path.suffix or 'no extension'} is not an image type ({', '.join(sorted(_DECODERS))})")
    x = dec.decode(data)
    if x.ndim != 3 or x.shape[0] not in (1, 3) or min(x.shape[1:]) < 1:
        raise ValueError(f"decoded to an unusable array of shape {x.shape}")
    return resize(x, size)

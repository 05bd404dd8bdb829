"""Image IO and the ONE preprocessing function shared by training and serving."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom")


class ImageDecodeError(ValueError):
    """The bytes are not an image this pipeline can read; the message says why."""


@dataclass(frozen=True)
class LoadedImage:
    """Decoded pixels: Hounsfield units for DICOM, 0-255 gray levels for PNG/JPEG."""

    pixels: np.ndarray  # 2-D float32
    kind: Literal["dicom", "raster"]
    mode: str  # original mode/dtype, e.g. "int16" or "L"/"RGB"


def looks_like_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def decode_dicom(data: bytes) -> LoadedImage:
    """Decode a DICOM file to Hounsfield units with pydicom's modality LUT (LUT Sequence or rescale)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise ImageDecodeError(f"not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds:
        raise ImageDecodeError("DICOM file has no pixel data")
    try:
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken pixel data
        raise ImageDecodeError(f"DICOM pixel data cannot be decoded ({exc})") from None
    if raw.ndim != 2:
        raise ImageDecodeError(f"expected one 2-D slice, got pixel array of shape {raw.shape}")
    try:  # Modality LUT Sequence if present, else RescaleSlope/Intercept, else the stored values
        hu = apply_modality_lut(raw, ds).astype(np.float32)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError, struct.error) as exc:
        raise ImageDecodeError(f"DICOM modality LUT cannot be applied ({type(exc).__name__}: {exc})") from None
    return LoadedImage(pixels=hu, kind="dicom", mode=str(raw.dtype))


def decode_raster(data: bytes, max_pixels: int = 64_000_000) -> LoadedImage:
    """Decode PNG/JPEG bytes to a grayscale float32 array (0-255)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise ImageDecodeError(f"image of {img.width}x{img.height} pixels is larger than allowed")
            mode = img.mode
            img.load()
            gray = np.asarray(img.convert("L"), dtype=np.float32)
    except Image.DecompressionBombError:  # PIL refuses a header claiming > 179M pixels before our own check
        raise ImageDecodeError("image header claims more pixels than allowed (a decompression bomb)") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not a PNG or JPEG image") from None
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"image file is damaged or truncated ({exc})") from None
    return LoadedImage(pixels=gray, kind="raster", mode=mode)


def decode_image(data: bytes) -> LoadedImage:
    """Decode DICOM, PNG or JPEG bytes, sniffing the format from the content."""
    if not data:
        raise ImageDecodeError("file is empty")
    return decode_dicom(data) if looks_like_dicom(data) else decode_raster(data)


def window_unit(image: LoadedImage, center: float, width: float) -> np.ndarray:
    """Map pixels to [0, 1]: HU windowing for DICOM, plain scaling for 8-bit rasters."""
    if image.kind == "dicom":
        low = center - width / 2.0
        return np.clip((image.pixels - low) / width, 0.0, 1.0).astype(np.float32)
    return np.clip(image.pixels / 255.0, 0.0, 1.0).astype(np.float32)


def resize(unit: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a 2-D float image to size x size."""
    from PIL import Image

    if unit.shape == (size, size):
        return unit.astype(np.float32)
    img = Image.fromarray(unit.astype(np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


BODY_THRESHOLD = 0.05   # on the [0, 1] window, after smoothing: air and the surround sit below it, fat above


def body_mask(unit: np.ndarray, threshold: float = BODY_THRESHOLD, smoothing: float = 1.0) -> np.ndarray:
    """The patient's outline in a [0, 1] slice: smoothed (noise of a sharp kernel is no edge), thresholded, opened
    (the table's thin curve and burnt-in text go), every component at least 5% of the largest kept (a coronal
    slice's arms), closed and holes filled (lungs, bowel gas). Nothing above the threshold: an all-True mask.
    """
    from scipy import ndimage

    bright = ndimage.binary_opening(ndimage.gaussian_filter(unit, smoothing) > threshold, iterations=4)
    labelled, count = ndimage.label(bright)
    if count == 0:
        return np.ones(unit.shape, dtype=bool)
    sizes = ndimage.sum_labels(bright, labelled, index=np.arange(1, count + 1))
    kept = np.isin(labelled, 1 + np.flatnonzero(sizes >= 0.05 * sizes.max()))
    return ndimage.binary_fill_holes(ndimage.binary_closing(kept, iterations=4, border_value=0))


def crop_to_body(unit: np.ndarray, margin: float = 0.04) -> np.ndarray:
    """The body's square bounding box (a `margin` of its side added), everything outside the body set to air.

    The square keeps the anatomy's aspect ratio; where it passes the slice's edge it is padded with air. The
    kidneys get more of the model's pixels, and the table, the text and the surround nothing to read.
    """
    mask = body_mask(unit)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = int(np.ceil(max(bottom - top, right - left) * (1 + 2 * margin)))
    center_r, center_c = (top + bottom) // 2, (left + right) // 2
    r0, c0 = center_r - side // 2, center_c - side // 2
    out = np.zeros((side, side), dtype=np.float32)
    src = np.where(mask, unit, 0.0).astype(np.float32)
    sr0, sc0 = max(r0, 0), max(c0, 0)
    sr1, sc1 = min(r0 + side, unit.shape[0]), min(c0 + side, unit.shape[1])
    out[sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0] = src[sr0:sr1, sc0:sc1]
    return out


def kernel_shift(unit: np.ndarray, rng: np.random.Generator, sharpen: float = 1.0, noise: float = 10 / 255,
                 radius: float = 1.0) -> np.ndarray:
    """A [0, 1] slice as a sharper reconstruction kernel shows it: an unsharp mask (`sharpen` x the detail at
    Gaussian `radius` px added back) plus Gaussian noise of std `noise` (10 grey levels by default)."""
    from scipy import ndimage

    detail = unit - ndimage.gaussian_filter(unit, radius)
    shifted = unit + sharpen * detail + rng.normal(0.0, noise, unit.shape)
    return np.clip(shifted, 0.0, 1.0).astype(np.float32)


def prepare_for_model(image: LoadedImage, size: int, center: float, width: float,
                      body_crop: bool = False) -> np.ndarray:
    """Window, (with `body_crop`) crop to the body with the background set to air, resize and quantise one image
    to the model's (size, size) uint8 input.

    Training (preprocess stage) and serving both call this function, so they cannot drift.
    Standardisation is the model's own first layers (Rescaling + Normalization with the training
    split's statistics), so a served image is standardised exactly as a training image was.
    """
    unit = window_unit(image, center, width)
    unit = resize(crop_to_body(unit) if body_crop else unit, size)
    return np.clip(np.round(unit * 255.0), 0, 255).astype(np.uint8)


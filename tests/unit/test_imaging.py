"""Image decoding and the one preprocessing function shared by training and serving."""

import io

import numpy as np
import pytest
from PIL import Image

from components.common.imaging import ImageDecodeError, decode_image, prepare_for_model, window_unit
from tests.fixtures import ct_dicom_bytes, png_bytes


def test_dicom_decodes_to_hounsfield_units():
    stored = np.full((64, 64), 1024, dtype=np.int16)  # 1024 stored - 1024 intercept = 0 HU (water)
    stored[10:20, 10:20] = 0  # air, -1024 HU
    image = decode_image(ct_dicom_bytes(stored))
    assert image.kind == "dicom" and image.mode == "int16"
    assert image.pixels[0, 0] == pytest.approx(0.0)
    assert image.pixels[15, 15] == pytest.approx(-1024.0)


def test_window_maps_hu_range_to_unit_interval():
    stored = np.array([[1024 - 1000, 1024 + 40, 1024 + 1000]], dtype=np.int16)
    unit = window_unit(decode_image(ct_dicom_bytes(stored)), center=40, width=400)
    assert unit[0].tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_png_and_rgb_jpeg_decode_to_gray():
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    image = decode_image(png_bytes(gray))
    assert image.kind == "raster" and image.pixels.shape == (64, 64)
    assert image.pixels.max() == 252
    buffer = io.BytesIO()
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(buffer, format="JPEG")
    assert decode_image(buffer.getvalue()).mode == "RGB"


@pytest.mark.parametrize("payload, message", [
    (b"", "empty"),
    (b"hello, not an image", "not a PNG or JPEG"),
])
def test_bad_bytes_are_refused_with_a_reason(payload, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(payload)


def test_truncated_png_is_refused():
    data = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match="damaged or truncated"):
        decode_image(data[: len(data) // 2])


def test_dicom_without_pixels_is_refused():
    with pytest.raises(ImageDecodeError, match="no pixel data"):
        decode_image(ct_dicom_bytes(None))


def test_prepare_for_model_is_uint8_square_and_deterministic():
    rng = np.random.default_rng(1)
    data = ct_dicom_bytes(rng.integers(0, 2000, (100, 80), dtype=np.int16))
    first = prepare_for_model(decode_image(data), 48, 40, 400)
    again = prepare_for_model(decode_image(data), 48, 40, 400)
    assert first.shape == (48, 48) and first.dtype == np.uint8
    assert np.array_equal(first, again)

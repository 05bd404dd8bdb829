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


def with_modality_lut(data: bytes, first_map: int, table: list[int], bits: int = 16) -> bytes:
    """The same DICOM file with a Modality LUT Sequence in place of RescaleSlope/Intercept."""
    import pydicom
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.RescaleSlope, ds.RescaleIntercept
    item = Dataset()
    item.LUTDescriptor = [len(table), first_map, bits]
    item.ModalityLUTType = "HU"
    item.add_new(0x00283006, "OW", np.asarray(table, dtype="<u2").tobytes())  # LUT Data, as scanners write it
    ds.ModalityLUTSequence = [item]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_rescale_slope_is_applied():
    import pydicom

    stored = np.array([[0, 10], [100, -5]], dtype=np.int16)
    ds = pydicom.dcmread(io.BytesIO(ct_dicom_bytes(stored, intercept=-1000.0)))
    ds.RescaleSlope = 2.5
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert decode_image(buffer.getvalue()).pixels.tolist() == [[-1000.0, -975.0], [-750.0, -1012.5]]


def test_modality_lut_sequence_maps_stored_values_through_the_table():
    stored = np.array([[98, 100, 101], [102, 103, 500]], dtype=np.int16)
    table = [7, 50, 900, 1300]  # entries for stored values 100, 101, 102, 103
    image = decode_image(with_modality_lut(ct_dicom_bytes(stored), first_map=100, table=table))
    assert image.kind == "dicom" and image.pixels.dtype == np.float32
    # below first_map -> first entry, above the table -> last entry
    assert image.pixels.tolist() == [[7.0, 7.0, 50.0], [900.0, 1300.0, 1300.0]]


def test_broken_modality_lut_is_refused_with_a_reason():
    import pydicom

    data = with_modality_lut(ct_dicom_bytes(np.zeros((2, 2), np.int16)), first_map=0, table=[1, 2])
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.ModalityLUTSequence[0].LUTData
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="modality LUT cannot be applied"):
        decode_image(buffer.getvalue())


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


def synthetic_axial_slice(size: int = 224) -> np.ndarray:
    """A [0, 1] slice: an elliptic body (soft tissue 0.5, dark lungs inside), a thin table curve below it and a
    burnt-in text block in a corner, on an air (0) surround."""
    rows, cols = np.mgrid[:size, :size]
    body = ((rows - 100) / 60.0) ** 2 + ((cols - 112) / 90.0) ** 2 <= 1
    lungs = ((rows - 90) / 20.0) ** 2 + ((cols - 80) / 15.0) ** 2 <= 1
    unit = np.where(body, 0.5, 0.0)
    unit[lungs] = 0.0
    unit[175:177, 20:204] = 0.8        # the table: a 2-px line
    unit[5:12, 5:40] = 0.9             # burnt-in text
    return unit.astype(np.float32)


def test_the_body_mask_keeps_the_body_with_its_lungs_and_drops_the_table_and_text():
    from components.common.imaging import body_mask

    unit = synthetic_axial_slice()
    mask = body_mask(unit)
    assert mask[100, 112] and mask[90, 80]                    # the body and its (dark) lungs
    assert not mask[176, 112] and not mask[8, 20]             # the table line and the text
    assert body_mask(np.zeros((64, 64), np.float32)).all()   # an empty slice: nothing to crop, all kept


def test_crop_to_body_squares_the_body_and_sets_the_surround_to_air():
    from components.common.imaging import crop_to_body

    unit = synthetic_axial_slice()
    crop = crop_to_body(unit)
    assert crop.shape[0] == crop.shape[1] and 180 <= crop.shape[0] <= 200   # 181 px body width plus the margin
    assert crop.max() == pytest.approx(0.5)                   # no table, no text left
    assert (crop > 0).mean() > 0.4                            # the body fills the frame


def test_prepare_for_model_crops_only_when_asked():
    from components.common.imaging import LoadedImage, prepare_for_model

    image = LoadedImage(synthetic_axial_slice() * 255.0, "raster", "L")
    plain = prepare_for_model(image, 64, 40, 400)
    cropped = prepare_for_model(image, 64, 40, 400, body_crop=True)
    assert plain.shape == cropped.shape == (64, 64)
    assert plain.max() > 200 and cropped.max() < 140          # the text/table (0.8-0.9) gone, body 0.5 -> 128
    assert (cropped > 0).mean() > (plain > 0).mean()          # the body takes more of the model's pixels

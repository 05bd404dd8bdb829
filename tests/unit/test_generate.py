"""The generate core: deterministic, valid CT DICOM whose pixels show each class's lesion in HU."""

from __future__ import annotations

import io
import re
from collections import defaultdict

import numpy as np
import pydicom
import pytest

from components.common.imaging import decode_image
from components.common.params import GenerateParams
from components.generate.core import dicom_bytes, encoded_export, generate_export, lesion_kind, patient_anatomy, patient_series
from components.generate.phantom import Grid, draw_slice

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]
SETTINGS = GenerateParams(seed=5, patients_per_class=2, slices_per_patient=4, matrix=128)
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "ReferringPhysicianName",
                "StudyDate", "AccessionNumber")


@pytest.fixture(scope="module")
def export() -> dict[str, bytes]:
    """relative path -> file bytes of a small export."""
    return {item.path: dicom_bytes(item.dataset) for item in generate_export(SETTINGS, CLASSES)}


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _series(export: dict[str, bytes]) -> dict[str, list[str]]:
    """study folder -> its file paths in slice order."""
    folders: dict[str, list[str]] = defaultdict(list)
    for path in sorted(export):
        folders[path.rsplit("/", 1)[0]].append(path)
    return folders


def test_same_params_give_byte_identical_files(export):
    again = {item.path: dicom_bytes(item.dataset) for item in generate_export(SETTINGS, CLASSES)}
    assert again == export


def test_another_seed_gives_other_patients(export):
    reseeded = SETTINGS.model_copy(update={"seed": 6})
    other = {item.path: dicom_bytes(item.dataset) for item in generate_export(reseeded, CLASSES)}
    assert set(other).isdisjoint(export)  # study folders hash the UIDs, which come from the seed
    first, first_other = _read(export[min(export)]), _read(other[min(other)])
    assert first.StudyInstanceUID != first_other.StudyInstanceUID
    assert not np.array_equal(first.pixel_array, first_other.pixel_array)


def test_layout_is_class_folder_study_folder_numbered_files(export):
    assert len(export) == len(CLASSES) * SETTINGS.patients_per_class * SETTINGS.slices_per_patient
    for path in export:
        assert re.fullmatch(r"(Normal|Cyst|Tumor|Stone)/study-[0-9a-f]{10}/IM0000[1-4]\.dcm", path), path
    assert len(_series(export)) == len(CLASSES) * SETTINGS.patients_per_class


def test_no_phi_in_any_file_or_folder_name(export):
    for path, data in export.items():
        ds = _read(data)
        for keyword in PHI_KEYWORDS:
            for part in re.split(r"[\^ ]+", str(ds.data_element(keyword).value)):
                if part:
                    assert part.lower() not in path.lower(), (keyword, part, path)


def test_each_file_is_a_ct_slice_in_hounsfield_units_with_fake_phi(export):
    for data in export.values():
        assert data[128:132] == b"DICM"
        ds = _read(data)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert (ds.Rows, ds.Columns) == (SETTINGS.matrix, SETTINGS.matrix)
        assert ds.pixel_array.dtype == np.int16 and ds.PixelRepresentation == 1
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
        assert float(ds.PixelSpacing[0]) == pytest.approx(380 / SETTINGS.matrix, rel=1e-4)
        assert float(ds.SliceThickness) > 0
        for keyword in PHI_KEYWORDS:
            assert str(ds.data_element(keyword).value).strip(), f"{keyword} should carry fake PHI"


def test_one_series_per_patient_with_neighbouring_positions(export):
    sop_uids, series_uids = set(), set()
    for paths in _series(export).values():
        slices = [_read(export[path]) for path in paths]
        assert len({(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID) for ds in slices}) == 1
        series_uids.add(slices[0].SeriesInstanceUID)
        sop_uids.update(ds.SOPInstanceUID for ds in slices)
        assert [int(ds.InstanceNumber) for ds in slices] == [1, 2, 3, 4]
        locations = [float(ds.SliceLocation) for ds in slices]
        assert np.allclose(np.diff(locations), float(slices[0].SliceThickness))
        assert all(float(ds.ImagePositionPatient[2]) == float(ds.SliceLocation) for ds in slices)
    assert len(sop_uids) == len(export) and len(series_uids) == len(_series(export))


def test_air_body_and_spine_have_plausible_hu(export):
    hu = decode_image(export[min(p for p in export if p.startswith("Normal/"))]).pixels
    assert hu.min() >= -1024
    assert abs(float(hu[:8, :8].mean()) + 1000) < 30  # air in the corner
    centre = hu[60:68, 60:68]
    assert 10 < float(np.median(centre)) < 70  # soft tissue in the middle of the body
    assert float(hu.max()) > 500  # bone of the vertebra


def test_neighbouring_slices_are_near_identical_and_patients_differ(export):
    pixels = {path: decode_image(data).pixels for path, data in export.items()}
    series = list(_series(export).values())
    within = [np.corrcoef(pixels[a].ravel(), pixels[b].ravel())[0, 1] for s in series for a, b in zip(s, s[1:])]
    across = [np.corrcoef(pixels[a[0]].ravel(), pixels[b[0]].ravel())[0, 1] for a, b in zip(series, series[1:])]
    assert min(within) > 0.98
    assert max(across) < min(within)


def _slices_with_masks(label: str, patient: int, matrix: int = 256):
    """(HU of the generated DICOM slice, noise-free layers) for every slice of one patient."""
    settings = SETTINGS.model_copy(update={"matrix": matrix})
    grid = Grid.square(matrix)
    anatomy = patient_anatomy(settings, label, patient)
    files = list(patient_series(settings, label, patient, grid))
    return [(decode_image(dicom_bytes(f.dataset)).pixels, draw_slice(anatomy, z, grid)) for z, f in enumerate(files)]


@pytest.mark.parametrize("patient", [0, 1])
def test_stone_is_a_dense_focus_inside_a_kidney(patient):
    for hu, layers in _slices_with_masks("Stone", patient):
        assert layers.lesion.any() and (layers.lesion <= layers.kidneys).all()
        assert float(hu[layers.lesion].max()) > 450  # still dense after the kernel's blur
        assert float(layers.hu[layers.lesion].max()) <= 1500
        assert float(layers.hu[layers.lesion].max()) >= 800


@pytest.mark.parametrize("patient", [0, 1])
def test_cyst_is_a_homogeneous_fluid_disc_in_a_kidney(patient):
    for hu, layers in _slices_with_masks("Cyst", patient):
        inside = layers.lesion
        assert inside.sum() > 20 and (inside & layers.kidneys).sum() > 0.6 * inside.sum()  # may bulge out a little
        clean = layers.hu[inside]
        assert clean.min() == clean.max() and 0 <= clean.min() <= 20  # one fluid value
        core = inside & np.roll(inside, 2, 0) & np.roll(inside, -2, 0) & np.roll(inside, 2, 1) & np.roll(inside, -2, 1)
        assert -10 <= float(np.median(hu[core])) <= 30 and float(hu[core].std()) < 35  # away from the blurred wall:
        #                                                                                  only kernel noise on top


@pytest.mark.parametrize("patient", [0, 1])
def test_tumor_is_a_textured_soft_tissue_mass_bulging_out_of_the_kidney(patient):
    for hu, layers in _slices_with_masks("Tumor", patient):
        clean = layers.hu[layers.lesion]
        parenchyma = float(np.median(layers.hu[layers.kidneys & ~layers.lesion]))
        assert clean.std() > 3 and np.ptp(clean) <= 40  # heterogeneous solid tissue around its mean
        assert float(clean.mean()) < parenchyma - 40  # hypoenhancing against the enhanced kidney
        assert (layers.lesion & layers.kidneys).any() and (layers.lesion & ~layers.kidneys).sum() > 10
        assert float(hu[layers.lesion].mean()) < parenchyma - 30


@pytest.mark.parametrize("patient", [0, 1])
def test_normal_kidneys_have_no_lesion_and_no_dense_pixels(patient):
    for hu, layers in _slices_with_masks("Normal", patient):
        assert not layers.lesion.any() and layers.kidneys.sum() > 100
        assert float(hu[layers.kidneys].max()) < 400  # enhanced parenchyma plus noise, nothing stone-dense


def test_lesion_size_changes_smoothly_along_z():
    for label in ("Cyst", "Tumor"):
        areas = [int(layers.lesion.sum()) for _, layers in _slices_with_masks(label, 0)]
        assert len(set(areas)) > 1, f"{label} lesion should grow/shrink along z"
        assert all(abs(a - b) <= 0.5 * max(a, b) for a, b in zip(areas, areas[1:])), areas


def test_patients_drawn_on_two_processes_give_the_same_files_in_the_same_order(export):
    parallel = list(encoded_export(SETTINGS, CLASSES, workers=2))
    assert [path for path, _, _ in parallel] == list(export)
    assert {path: data for path, _, data in parallel} == export
    assert [label for _, label, _ in parallel] == [path.split("/")[0] for path in export]
    with pytest.raises(ValueError, match="cannot draw class 'Polyp'"):
        next(encoded_export(SETTINGS, ["Normal", "Polyp"], workers=2))


def test_unknown_class_is_refused_before_anything_is_drawn():
    assert lesion_kind("stone") == "stone"
    with pytest.raises(ValueError, match="cannot draw class 'Polyp'.*Normal, Cyst, Tumor, Stone"):
        next(generate_export(SETTINGS, ["Normal", "Polyp"]))


def test_default_params_generate_the_promised_number_of_files():
    defaults = GenerateParams()
    count = sum(1 for item in generate_export(defaults, CLASSES) if dicom_bytes(item.dataset))
    assert count == 4 * defaults.patients_per_class * defaults.slices_per_patient  # speed: BENCHMARKS.md


def test_patients_differ_in_phase_rotation_and_reconstruction():
    anatomies = [patient_anatomy(SETTINGS.model_copy(update={"patients_per_class": 12}), "Normal", p) for p in range(12)]
    assert {a.enhancement.phase for a in anatomies} == {"corticomedullary", "nephrographic"}
    assert len({round(a.body.angle, 3) for a in anatomies}) == 12  # each patient lies differently on the table
    assert len({round(a.reconstruction.blur_mm, 3) for a in anatomies}) == 12


def test_stones_span_two_to_eight_millimetres():
    radii = [patient_anatomy(SETTINGS.model_copy(update={"patients_per_class": 40}), "Stone", p).lesion.radius
             for p in range(40)]
    assert 1.0 <= min(radii) < 1.6 and 3.4 < max(radii) <= 4.0  # diameters 2-8 mm


def test_corticomedullary_phase_shows_cortex_brighter_than_medulla():
    settings = SETTINGS.model_copy(update={"patients_per_class": 12, "matrix": 256})
    grid = Grid.square(256)
    for p in range(12):
        anatomy = patient_anatomy(settings, "Normal", p)
        layers = draw_slice(anatomy, 0, grid)
        values = layers.hu[layers.kidneys]
        if anatomy.enhancement.phase == "corticomedullary":
            assert anatomy.enhancement.cortex - anatomy.enhancement.medulla >= 40
            assert (values == anatomy.enhancement.medulla).sum() > 50 and (values == anatomy.enhancement.cortex).sum() > 50
            return
    raise AssertionError("no corticomedullary patient among 12")

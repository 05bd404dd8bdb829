"""Pure core of `generate`: seeded phantom patients -> in-memory DICOM CT datasets.

Each fake patient is one study with one axial series of neighbouring slices. Every value (pixels,
UIDs, dates, fake PHI) comes from the seed, so the same params give byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from components.common.params import GenerateParams
from components.generate.phantom import (
    LESION_KINDS,
    Anatomy,
    Grid,
    draw_slice,
    random_anatomy,
    reconstruct,
    to_stored_values,
    with_scanner,
)

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root for UIDs generated with pydicom
IMPLEMENTATION_UID = UID("1.2.826.0.1.3680043.8.498.1.1.77")  # fixed, so bytes don't depend on pydicom version
SLICE_THICKNESS_MM = 2.5
RESCALE_INTERCEPT = -1024.0
FIRST_NAMES = ("ALEX", "SAM", "ROBIN", "KIM", "JORDAN", "CASEY", "MORGAN", "TAYLOR", "JAMIE", "RILEY")
LAST_NAMES = ("DOE", "ROE", "SMITH", "JONES", "MILLER", "GARCIA", "KHAN", "SATO", "NOVAK", "SILVA")
INSTITUTIONS = ("SYNTHETIC GENERAL HOSPITAL", "FAKE VALLEY MEDICAL CENTER", "PHANTOM CITY CLINIC")


@dataclass(frozen=True)
class GeneratedFile:
    """One DICOM file of the export: where it goes (relative path) and what it holds."""

    path: str  # <Class>/<study-folder>/IM00001.dcm, POSIX, no PHI
    label: str
    dataset: Dataset


@dataclass(frozen=True)
class Scanner:
    """What every file says about the scanner that made it."""

    manufacturer: str
    convolution_kernel: str | None  # None: no ConvolutionKernel attribute (each patient has its own random kernel)


@dataclass(frozen=True)
class FakeStudy:
    """The fake identity and UIDs of one patient's study (the PHI `ingest` must strip)."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_date: str
    accession: str
    institution: str
    referring_physician: str
    study_uid: str
    series_uid: str
    frame_uid: str
    table_start_mm: float

    @property
    def folder(self) -> str:
        """Study folder name: a hash of the study UID, carrying no PHI."""
        return "study-" + hashlib.sha256(self.study_uid.encode()).hexdigest()[:10]


def lesion_kind(label: str) -> str:
    """The phantom lesion drawn for a class label (Normal, Cyst, Tumor, Stone; any case)."""
    kind = label.lower()
    if kind not in LESION_KINDS:
        known = ", ".join(k.capitalize() for k in LESION_KINDS)
        raise ValueError(f"generate cannot draw class {label!r}: it knows {known}")
    return kind


def _label_code(label: str) -> int:
    """A stable integer per label for seeding (independent of the order of `classes`)."""
    return zlib.crc32(label.encode())


def patient_rng(seed: int, label: str, patient: int, stream: int = 0) -> np.random.Generator:
    """The generator for one patient (stream 0: anatomy and identity; 1000+z: noise of slice z)."""
    return np.random.default_rng([seed, _label_code(label), patient, stream])


def patient_anatomy(settings: GenerateParams, label: str, patient: int) -> Anatomy:
    """The anatomy of one fake patient, exactly as `generate_export` draws it (on the export's kernel and noise)."""
    rng = patient_rng(settings.seed, label, patient)
    anatomy = random_anatomy(rng, lesion_kind(label), settings.slices_per_patient)
    return with_scanner(anatomy, settings.reconstruction_kernel, settings.noise_scale)


def export_scanner(settings: GenerateParams) -> Scanner:
    """The manufacturer and (when the export is forced onto one) the named kernel every file records."""
    return Scanner(manufacturer=settings.manufacturer, convolution_kernel=settings.reconstruction_kernel)


def fake_study(settings: GenerateParams, label: str, patient: int) -> FakeStudy:
    """Fake but realistic-looking PHI and deterministic UIDs for one patient's study."""
    rng = patient_rng(settings.seed, label, patient, stream=1)
    entropy = [str(settings.seed), label, str(patient)]
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 50)))
    study = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
    return FakeStudy(
        patient_name=f"{rng.choice(LAST_NAMES)}^{rng.choice(FIRST_NAMES)}",
        patient_id=f"PID{int(rng.integers(1_000_000, 9_999_999))}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=str(rng.choice(["F", "M"])),
        study_date=study.strftime("%Y%m%d"),
        accession=f"ACC{int(rng.integers(10_000_000, 99_999_999))}",
        institution=str(rng.choice(INSTITUTIONS)),
        referring_physician=f"{rng.choice(LAST_NAMES)}^{rng.choice(FIRST_NAMES)}^^DR",
        study_uid=generate_uid(UID_ROOT, entropy + ["study"]),
        series_uid=generate_uid(UID_ROOT, entropy + ["series"]),
        frame_uid=generate_uid(UID_ROOT, entropy + ["frame"]),
        table_start_mm=float(np.round(rng.uniform(-180, -120), 1)),
    )


def generate_export(settings: GenerateParams, classes: Sequence[str]) -> Iterator[GeneratedFile]:
    """Every file of the export, class by class, patient by patient, slice by slice."""
    grid = Grid.square(settings.matrix)
    for label, patient in export_patients(settings, classes):
        yield from patient_series(settings, label, patient, grid)


def export_patients(settings: GenerateParams, classes: Sequence[str]) -> list[tuple[str, int]]:
    """(label, patient) of every patient in export order; refuses a class it cannot draw before any drawing.

    Patients of a class are numbered from `patient_offset` on, as many as its class_mix share of patients_per_class.
    """
    for label in classes:
        lesion_kind(label)
    unknown = settings.unknown_mix_classes(list(classes))
    if unknown:
        raise ValueError(f"class_mix names {', '.join(map(repr, unknown))}, not among the classes ({', '.join(classes)})")
    first = settings.patient_offset
    return [(label, patient) for label in classes for patient in range(first, first + settings.patients_of(label))]


def encoded_export(settings: GenerateParams, classes: Sequence[str], workers: int = 1) -> Iterator[tuple[str, str, bytes]]:
    """(path, label, DICOM bytes) of every file, in `generate_export`'s order; patients drawn on `workers` processes.

    Each patient's pixels depend only on (seed, label, patient), so the files are the same for any `workers`.
    """
    jobs = [(settings, label, patient) for label, patient in export_patients(settings, classes)]
    if workers <= 1:
        for job in jobs:
            yield from _encoded_patient(job)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        for files in pool.map(_encoded_patient, jobs, chunksize=4):
            yield from files


def _encoded_patient(job: tuple[GenerateParams, str, int]) -> list[tuple[str, str, bytes]]:
    """One patient's series as encoded files (what a worker process sends back)."""
    settings, label, patient = job
    return [(item.path, item.label, dicom_bytes(item.dataset))
            for item in patient_series(settings, label, patient, Grid.square(settings.matrix))]


def patient_series(settings: GenerateParams, label: str, patient: int, grid: Grid) -> Iterator[GeneratedFile]:
    """The slices of one patient's single series, as DICOM datasets."""
    anatomy = patient_anatomy(settings, label, patient)
    study = fake_study(settings, label, patient)
    scanner = export_scanner(settings)
    for z in range(settings.slices_per_patient):
        noise_rng = patient_rng(settings.seed, label, patient, stream=1000 + z)
        hu = reconstruct(draw_slice(anatomy, z, grid).hu, anatomy, grid.spacing, noise_rng)
        dataset = ct_dataset(study, z, to_stored_values(hu, RESCALE_INTERCEPT), grid, scanner)
        yield GeneratedFile(path=f"{label}/{study.folder}/IM{z + 1:05d}.dcm", label=label, dataset=dataset)


def ct_dataset(study: FakeStudy, z: int, stored: np.ndarray, grid: Grid, scanner: Scanner) -> Dataset:
    """A CT Image Storage dataset for slice z of the study made on `scanner`, pixels already as int16 stored values."""
    sop_uid = generate_uid(UID_ROOT, [study.series_uid, str(z)])
    ds = Dataset()
    ds.file_meta = _file_meta(sop_uid)
    _set_patient_and_study(ds, study)
    _set_scanner(ds, scanner)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study.series_uid, study.frame_uid
    ds.SeriesNumber, ds.InstanceNumber = 1, z + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.study_date
    ds.KVP, ds.BodyPartExamined, ds.SeriesDescription = 120, "ABDOMEN", "ABDOMEN 2.5MM AXIAL"
    _set_geometry(ds, study, z, grid)
    _set_pixels(ds, stored)
    return ds


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "KIDNEYCT_GEN_1"
    return meta


def _set_patient_and_study(ds: Dataset, study: FakeStudy) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID = study.patient_name, study.patient_id
    ds.PatientBirthDate, ds.PatientSex = study.birth_date, study.sex
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study.study_uid, study.study_date, "093000"
    ds.StudyID, ds.AccessionNumber = "1", study.accession
    ds.InstitutionName, ds.ReferringPhysicianName = study.institution, study.referring_physician
    ds.Modality = "CT"
    ds.StudyDescription = "CT ABDOMEN WITHOUT CONTRAST"


def _set_scanner(ds: Dataset, scanner: Scanner) -> None:
    ds.Manufacturer = scanner.manufacturer
    if scanner.convolution_kernel is not None:
        ds.ConvolutionKernel = scanner.convolution_kernel


def _set_geometry(ds: Dataset, study: FakeStudy, z: int, grid: Grid) -> None:
    location = round(study.table_start_mm + z * SLICE_THICKNESS_MM, 2)
    ds.ImagePositionPatient = [round(float(grid.x[0, 0]), 3), round(float(grid.y[0, 0]), 3), location]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = location
    ds.SliceThickness = SLICE_THICKNESS_MM
    ds.SpacingBetweenSlices = SLICE_THICKNESS_MM
    ds.PixelSpacing = [round(grid.spacing, 6), round(grid.spacing, 6)]


def _set_pixels(ds: Dataset, stored: np.ndarray) -> None:
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = RESCALE_INTERCEPT, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = stored.astype("<i2").tobytes()


def dicom_bytes(dataset: Dataset) -> bytes:
    """Serialise a dataset as a DICOM Part 10 file (128-byte preamble, 'DICM', file meta)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

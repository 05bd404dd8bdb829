"""Tiny in-memory fixtures: CT DICOM and PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def ct_dicom_bytes(stored: np.ndarray | None, intercept: float = -1024.0) -> bytes:
    """A minimal CT DICOM Part 10 file; `stored=None` writes one without pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["fixture"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "FIXTURE-1"
    if stored is not None:
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        ds.PixelData = stored.astype(np.int16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png_bytes(gray: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(gray.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()

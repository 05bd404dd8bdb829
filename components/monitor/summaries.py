"""Per-image summaries the monitor compares: windowed intensity moments, air/bone shares, texture, headers.

Pure functions on decoded pixels and a header dict; the CLI reads the bytes from the object store.
"""

from __future__ import annotations

import io

import numpy as np

from components.common.imaging import LoadedImage, window_unit

NUMERIC_SUMMARIES = ("intensity_mean", "intensity_std", "intensity_skew", "intensity_kurtosis", "air_fraction",
                     "bone_fraction", "texture", "rows", "pixel_spacing_mm", "slice_thickness_mm")
CATEGORICAL_SUMMARIES = ("manufacturer", "kernel")
UNKNOWN = "unknown"


def dicom_header(data: bytes) -> dict[str, object]:
    """Scanner and geometry attributes ingest's de-identification keeps; `unknown`/NaN where absent or raster."""
    import pydicom

    header: dict[str, object] = {"manufacturer": UNKNOWN, "kernel": UNKNOWN, "pixel_spacing_mm": np.nan,
                                 "slice_thickness_mm": np.nan}
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # a raster image, or a DICOM pydicom cannot parse: its pixels still count
        return header
    header["manufacturer"] = str(ds.get("Manufacturer", "") or UNKNOWN)
    kernel = ds.get("ConvolutionKernel", "")
    header["kernel"] = str("\\".join(kernel) if isinstance(kernel, (list, tuple)) else kernel or UNKNOWN)
    spacing = ds.get("PixelSpacing")
    header["pixel_spacing_mm"] = float(spacing[0]) if spacing else np.nan
    thickness = ds.get("SliceThickness")
    header["slice_thickness_mm"] = float(thickness) if thickness not in (None, "") else np.nan
    return header


def texture(unit: np.ndarray) -> float:
    """Standard deviation of the discrete Laplacian: high-frequency energy (noise, a sharp kernel's grain)."""
    if min(unit.shape) < 3:
        return 0.0
    lap = (4 * unit[1:-1, 1:-1] - unit[:-2, 1:-1] - unit[2:, 1:-1] - unit[1:-1, :-2] - unit[1:-1, 2:])
    return float(lap.std())


def image_summary(image: LoadedImage, center: float, width: float) -> dict[str, float]:
    """Moments of the windowed image (the model's view), the shares below/above the window, texture, size.

    Below the window is air (and fat for a narrow window), above it bone and contrast: both move when the field
    of view, the patient mix or the protocol changes.
    """
    unit = window_unit(image, center, width).astype(np.float64)
    values = unit.ravel()
    mean, std = float(values.mean()), float(values.std())
    centred = (values - mean) / std if std > 0 else np.zeros_like(values)
    return {"intensity_mean": mean, "intensity_std": std, "intensity_skew": float(np.mean(centred ** 3)),
            "intensity_kurtosis": float(np.mean(centred ** 4) - 3.0), "air_fraction": float(np.mean(values <= 0.0)),
            "bone_fraction": float(np.mean(values >= 1.0)), "texture": texture(unit), "rows": float(unit.shape[0])}

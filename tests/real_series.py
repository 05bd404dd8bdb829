"""Real slices of ../shared/data/kidney-ct, for tests that need real CT (skipped where the folder is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kidney-ct"
CLASSES = ("Normal", "Cyst", "Tumor", "Stone")


def require_real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (a fresh clone has no ../shared): this test needs the "
                    "4,612 real slices of ../shared/data/kidney-ct")
    return REAL_DATA

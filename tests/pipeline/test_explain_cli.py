"""`python -m components.explain IMAGE --out overlay.png` with the registry's champion; bad input is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.fixtures import png_bytes
from tests.package_support import IMAGE_SIZE, PROJECT_ROOT, register_tiny_model, write_project


def run_explain(cwd, *args):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return subprocess.run([sys.executable, "-m", "components.explain", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_explain_writes_an_overlay_and_names_the_class(tmp_path):
    write_project(tmp_path, register_tiny_model(tmp_path))
    (tmp_path / "slice.png").write_bytes(png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64))))
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    done = run_explain(tmp_path, "slice.png", "--out", "out/overlay.png")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "decision support only" in done.stderr and "v1" in done.stderr
    with Image.open(tmp_path / "out/overlay.png") as overlay:
        assert overlay.mode == "RGB" and overlay.size == (IMAGE_SIZE, IMAGE_SIZE)
    bad = run_explain(tmp_path, "notes.png")
    assert bad.returncode == 2 and "cannot read notes.png: not a PNG or JPEG image" in bad.stderr

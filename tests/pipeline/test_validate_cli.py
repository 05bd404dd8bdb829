"""Validate stage CLI: outputs on a passing and a failing tiny project, clean failures, real data."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from components.common.params import load_params
from components.common.storage import LocalStore
from components.validate.__main__ import main, validate_table
from components.validate.core import build_table

ROOT = Path(__file__).resolve().parents[2]
REAL_DATA = ROOT.parent / "shared" / "data" / "kidney-ct"
CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]


def png(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_project(tmp_path: Path, images: dict[str, tuple[str, bytes]]) -> Path:
    """params.yaml with every path under tmp_path, a store holding `images`, and their manifest."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"].update(store=str(tmp_path / "store"), ingested=str(tmp_path / "ingested"),
                        validation=str(tmp_path / "reports" / "validate"))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    store = LocalStore(tmp_path / "store")
    rows = []
    for key, (label, data) in images.items():
        store.put(key, data)
        rows.append({"key": key, "sha256": hashlib.sha256(data).hexdigest(), "source": f"export/{key}",
                     "label": label, "group": f"p-{key}", "series": f"s-{key}", "format": "png"})
    (tmp_path / "ingested").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "ingested" / "manifest.csv", index=False)
    return params_file


def balanced_images() -> dict[str, tuple[str, bytes]]:
    return {f"{name.lower()}/{i}.png": (name, png(10 * n + i)) for n, name in enumerate(CLASSES) for i in range(2)}


def outputs(tmp_path: Path) -> tuple[dict, pd.DataFrame, Path]:
    out = tmp_path / "reports" / "validate"
    return json.loads((out / "result.json").read_text()), pd.read_csv(out / "table.csv"), out / "data_docs"


def _no_network(*args, **kwargs):
    raise AssertionError(f"the validate stage tried to open a network connection: {args}")


def test_passing_project_writes_table_result_and_data_docs(tmp_path, monkeypatch):
    params_file = make_project(tmp_path, balanced_images())
    monkeypatch.chdir(tmp_path)  # nothing (no GX project folder) may land in the working directory
    monkeypatch.setattr(socket.socket, "connect", _no_network)  # offline: no usage statistics, no lookups
    assert main(["--params", str(params_file)]) == 0
    result, table, docs = outputs(tmp_path)
    assert result["success"] is True and result["failures"] == []
    assert result["statistics"]["class_counts"] == {name: 2 for name in CLASSES}
    assert all(entry["success"] for entry in result["expectations"])
    assert len(table) == 8 and set(table["width"]) == {64} and set(table["mode"]) == {"L"}
    assert (docs / "index.html").is_file()
    assert list(docs.glob("validations/**/*.html")), "data docs hold no validation page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ingested", "params.yaml", "reports", "store"]


def test_failing_project_still_writes_outputs_and_exits_non_zero(tmp_path, caplog):
    images = balanced_images()
    for key in [k for k in images if k.startswith("stone/")]:
        del images[key]
    images["normal/tiny.png"] = ("Normal", png(99, size=32))
    params_file = make_project(tmp_path, images)
    assert main(["--params", str(params_file)]) == 2
    result, table, docs = outputs(tmp_path)
    assert result["success"] is False and len(table) == 7
    assert (docs / "index.html").is_file()
    assert "no images of class 'Stone'" in result["failures"]
    assert "1 image with width outside [64, 4096]: normal/tiny.png (32)" in result["failures"]
    assert "class share of 'Stone' is 0.00 (0 of 7 images), below the minimum 0.05" in caplog.text
    assert "Traceback" not in caplog.text


def test_undecodable_image_fails_with_its_key_and_reason(tmp_path, caplog):
    images = balanced_images()
    images["cyst/broken.png"] = ("Cyst", b"\x89PNG but truncated")
    params_file = make_project(tmp_path, images)
    assert main(["--params", str(params_file)]) == 2
    assert "could not be read or decoded: cyst/broken.png (" in caplog.text


@pytest.mark.parametrize("manifest, words", [
    (None, "run the ingest stage first"),
    ("key,label\n", "lacks column(s) sha256"),
    ("key,sha256,label\n", "lists no images"),
], ids=["missing", "bad-columns", "empty"])
def test_bad_manifest_is_refused_in_plain_words(tmp_path, caplog, manifest, words):
    params_file = make_project(tmp_path, {})
    manifest_file = tmp_path / "ingested" / "manifest.csv"
    manifest_file.unlink()
    if manifest is not None:
        manifest_file.write_text(manifest)
    assert main(["--params", str(params_file)]) == 2
    assert words in caplog.text


@pytest.mark.slow
def test_real_kidney_ct_images_pass_the_suite_quickly():
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (only present beside a developer's checkout)")
    files = sorted(REAL_DATA.glob("*/*.jpg"))
    rows = [{"key": p.relative_to(REAL_DATA).as_posix(), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
             "source": str(p), "label": p.parent.name, "group": "", "series": "", "format": "jpeg"}
            for p in files]
    started = time.perf_counter()
    table = build_table(rows, lambda key: (REAL_DATA / key).read_bytes(), progress=False)
    outcome, entries = validate_table(table, load_params(ROOT / "params.yaml"), docs_dir=None)
    elapsed = time.perf_counter() - started
    assert len(table) == len(files) == 4612
    assert outcome.success, [e["problem"] for e in entries if not e["success"]]
    assert elapsed < 60, f"table + suite on 4,612 images took {elapsed:.0f} s"

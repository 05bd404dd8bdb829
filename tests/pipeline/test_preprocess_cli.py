"""preprocess through its CLI: generated export -> ingest -> validate -> preprocess."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from components.ingest.__main__ import main as ingest
from components.preprocess.__main__ import main as preprocess
from components.validate.__main__ import main as validate
from tests.tiny import tiny_params, write_params


def test_preprocess_writes_grouped_split_and_its_check(tmp_path, tiny_export, monkeypatch):
    monkeypatch.setenv("KIDNEY_CT_SALT", "test-salt")
    raw = tiny_params(tmp_path)
    raw["paths"]["source"] = str(tiny_export)
    raw["validate"].update(min_width=32)
    params = str(write_params(raw, tmp_path / "params.yaml"))
    assert ingest(["--params", params]) == 0
    assert validate(["--params", params]) == 0
    assert preprocess(["--params", params]) == 0
    prepared = tmp_path / "data/prepared"
    split = pd.read_csv(prepared / "split.csv")
    assert list(split.columns) == ["key", "label", "group", "split", "sha256", "series"]
    assert split["series"].str.startswith("s-").all()  # the salted SeriesInstanceUID: the study verdict's unit
    assert (split.groupby("series")["group"].nunique() == 1).all()  # a series belongs to one patient
    assert split["sha256"].notna().all()
    assert (split.groupby("group")["split"].nunique() == 1).all()
    assert json.loads((prepared / "split_check.json").read_text())["success"] is True
    x = np.load(prepared / "arrays/X_train.npy")
    assert x.dtype == np.uint8 and x.shape[1:] == (48, 48, 1)
    total = sum(len(np.load(prepared / f"arrays/y_{s}.npy")) for s in ("train", "val", "test"))
    assert total == len(split) == 16


def test_preprocess_without_validated_table_fails_cleanly(tmp_path, capsys):
    params = str(write_params(tiny_params(tmp_path), tmp_path / "params.yaml"))
    assert preprocess(["--params", params]) == 2
    assert not (tmp_path / "data/prepared").exists()

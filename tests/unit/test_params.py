"""The typed params object: the repo's params.yaml loads, and mistakes are named."""

from pathlib import Path

import pytest
import yaml

from components.common.params import ParamsError, load_params, parse_params

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def raw_params() -> dict:
    return yaml.safe_load(REPO_PARAMS.read_text())


def test_repo_params_load():
    params = load_params(REPO_PARAMS)
    assert params.classes == ["Normal", "Cyst", "Tumor", "Stone"]
    assert "compact_cnn" in params.train.candidates
    assert params.evaluate.min_macro_f1 >= 0.9 and params.evaluate.min_class_recall >= 0.85  # the gate is on
    assert params.preprocess.image_size == 180
    assert params.validate_.min_class_share < params.validate_.max_class_share


def test_unknown_key_is_named():
    raw = raw_params()
    raw["preprocess"]["image_sise"] = 64
    with pytest.raises(ParamsError, match=r"preprocess\.image_sise"):
        parse_params(raw)


def test_out_of_range_value_is_named():
    raw = raw_params()
    raw["train"]["candidates"]["compact_cnn"]["dropout"] = 1.5
    with pytest.raises(ParamsError, match=r"train\.candidates\.compact_cnn\.dropout"):
        parse_params(raw)


def test_no_candidates_refused():
    raw = raw_params()
    raw["train"]["candidates"] = {}
    with pytest.raises(ParamsError, match="at least one candidate"):
        parse_params(raw)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "params.yaml"
    broken.write_text("classes: [a, b\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)

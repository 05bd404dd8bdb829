"""The typed params object: the repo's params.yaml loads, and mistakes are named."""

import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from components.common.params import Params, ParamsError, load_params, parse_params

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


def test_a_pooling_temperature_without_softmax_pooling_is_refused_not_ignored():
    raw = raw_params()
    default = raw["train"]["candidates"]["compact_cnn"]
    parse_params(raw | {"train": {**raw["train"], "candidates": {"c": {**default, "pooling_temperature": 4.0}}}})
    for change in ({"global_pooling": "max"}, {"architecture": "paper_cnn", "global_pooling": "avg_max", "roi": []}):
        raw["train"]["candidates"] = {"c": {**default, **change, "pooling_temperature": 4.0}}
        with pytest.raises(ParamsError, match=r"train\.candidates\.c: .*pooling_temperature is the starting scale"):
            parse_params(raw)
        raw["train"]["candidates"] = {"c": {**default, **change}}  # left out: accepted
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


def code_defaults(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
    """dotted key -> the default this code gives it, for every field that has one (nested models walked)."""
    found: dict[str, object] = {}
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found |= code_defaults(field.annotation, key + ".")
        elif not field.is_required():
            found[key] = field.get_default(call_default_factory=True)
    return found


def stated(raw: dict, dotted: str) -> tuple[bool, object]:
    value: object = raw
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def test_no_code_default_disagrees_with_params_yaml():
    """One set of defaults: a key params.yaml states has no default in the code, or the same one (a candidate's
    settings are choices per candidate, not defaults: train.candidates is a required mapping, not walked)."""
    raw = raw_params()
    defaults = code_defaults(Params)
    assert "preprocess.window_center" not in defaults and "evaluate.min_macro_f1" not in defaults
    disagree = {}
    for key, default in defaults.items():
        is_stated, value = stated(raw, key)
        if is_stated and json.loads(json.dumps(default)) != value:  # tuples as lists, as YAML reads them
            disagree[key] = {"code": default, "params.yaml": value}
    assert disagree == {}, "state these in one place: drop the code default or the params.yaml line"


def test_params_yaml_states_every_setting_that_has_no_default():
    """What the code leaves to params.yaml, params.yaml gives (else load_params would refuse the repo's file)."""
    assert load_params(REPO_PARAMS).leakage.random_split is False
    for section in ("generate", "preprocess", "augment", "leakage"):
        raw = raw_params()
        del raw[section]
        with pytest.raises(ParamsError, match=section):
            parse_params(raw)

"""evaluate.protocol cv_refit: the deployed model learns from every labelled series and is certified by the
out-of-fold predictions of its recipe's grouped CV; the gate may read the lower CI bound; the champion is only
compared on the same folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import f1_score

from components.common.params import EvaluateParams, ParamsError, parse_params
from components.evaluate.core import gate_verdict
from components.leakage.core import folds_fingerprint
from components.register.core import cv_champion_score
from tests.tiny import REPO
from tests.unit.test_backbone_candidate import project  # noqa: F401  (the tiny frozen-backbone project)

BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def with_protocol(**evaluate) -> dict:
    raw = json.loads(json.dumps(BASE))
    raw["evaluate"].update(protocol="cv_refit", **evaluate)
    raw["leakage"]["cv_folds"] = 5
    return raw


def test_cv_refit_needs_a_grouped_cv_and_certifies_only_the_recipe_it_scored():
    assert parse_params(with_protocol()).evaluate.protocol == "cv_refit"
    no_cv = with_protocol()
    no_cv["leakage"]["cv_folds"] = 0
    with pytest.raises(ParamsError, match="set leakage.cv_folds to 2 or more"):
        parse_params(no_cv)
    two = with_protocol()
    two["train"]["candidates"]["other"] = {"architecture": "paper_cnn"}
    assert parse_params(two).certified_candidates() == ["compact_cnn"]
    two["leakage"]["candidate"] = "other"
    assert parse_params(two).certified_candidates() == ["other"]
    two["evaluate"]["protocol"] = "holdout"
    assert parse_params(two).certified_candidates() == ["compact_cnn", "other"]
    two["evaluate"]["protocol"], two["leakage"]["candidate"] = "cv_refit", "missing"
    with pytest.raises(ParamsError, match="'missing' is not in train.candidates"):
        parse_params(two)


def test_the_gate_can_read_the_lower_bound_of_each_interval():
    metrics = {"accuracy": 0.93, "accuracy_ci": [0.85, 0.97], "macro_f1": 0.92, "macro_f1_ci": [0.91, 0.95],
               "per_class": {}, "series": {"macro_f1": 0.95, "macro_f1_ci": [0.80, 1.0], "pooling": "gem", "series": 9}}
    gate = dict(min_accuracy=0.9, min_macro_f1=0.9, min_class_recall=0.0, min_series_macro_f1=0.9)
    assert gate_verdict(metrics, EvaluateParams(**gate)) == (True, [])
    passed, reasons = gate_verdict(metrics, EvaluateParams(**gate, gate_bound="ci_low"))
    assert not passed and reasons == [
        "series-level macro-F1 lower 95% bound 0.800 (estimate 0.950) (gem of the slice probabilities over 9 series) "
        "is below the minimum 0.900",
        "accuracy lower 95% bound 0.850 (estimate 0.930) is below the minimum 0.900"]
    with pytest.raises(ValueError, match="needs a confidence interval of accuracy"):
        gate_verdict({"accuracy": 0.9, "macro_f1": 0.9}, EvaluateParams(**gate, gate_bound="ci_low"))


def test_folds_fingerprint_depends_on_which_image_sits_in_which_fold_not_on_order():
    keys, folds = ["a", "b", "c", "d"], np.array([1, 1, 2, 2])
    assert folds_fingerprint(keys, folds) == folds_fingerprint(keys[::-1], folds[::-1])
    assert folds_fingerprint(keys, folds) != folds_fingerprint(keys, np.array([1, 2, 1, 2]))


def test_a_refitted_challenger_meets_the_champion_only_on_the_same_folds():
    champion = {"protocol": "cv_refit", "folds_fingerprint": "f1", "certified_macro_f1": "0.7100"}
    assert cv_champion_score(champion, "f1", "macro_f1") == (0.71, "")
    score, why = cv_champion_score(champion, "f2", "macro_f1")
    assert score is None and "other folds" in why and "promote by hand" in why
    score, why = cv_champion_score({"protocol": "holdout", "test_macro_f1": "0.9"}, "f1", "macro_f1")
    assert score is None and "held-out split the refitted challenger has trained on" in why


def test_cv_refit_trains_on_train_and_test_and_evaluate_certifies_with_the_out_of_fold_predictions(project):  # noqa: F811
    from components.common.params import load_params
    from components.evaluate.__main__ import main as evaluate_main
    from components.features.__main__ import main as features_main
    from components.leakage.__main__ import main as leakage_main
    from components.train.__main__ import main as train_main

    raw = yaml.safe_load(project.read_text())
    raw["evaluate"].update(protocol="cv_refit", gate_bound="ci_low", series_pooling="gem")
    raw["leakage"].update(cv_folds=2, random_split=False)
    project.write_text(yaml.safe_dump(raw))
    params = load_params(project)
    assert features_main(["--params", str(project)]) == 0
    assert leakage_main(["--params", str(project)]) == 0
    cv = json.loads((Path(params.paths.leakage) / "leakage.json").read_text())["grouped_cv"]
    oof = pd.read_csv(Path(params.paths.leakage) / "cv_predictions.csv")
    assert len(oof) == 32 and sorted(oof["fold"].unique()) == [1, 2]  # every image, in one of two folds
    predicted = oof[["p_Normal", "p_Cyst"]].to_numpy().argmax(axis=1)
    truth = oof["label"].map({"Normal": 0, "Cyst": 1}).to_numpy()

    assert train_main(["--params", str(project), "--candidate", "ct"]) == 0
    run = json.loads((Path(params.paths.models) / "ct" / "run.json").read_text())
    assert run["protocol"] == "cv_refit" and run["fitted_on"] == ["train", "test"]

    assert evaluate_main(["--params", str(project)]) == 0
    metrics = json.loads((Path(params.paths.evaluation) / "metrics.json").read_text())["ct"]
    assert metrics["test_images"] == 32 and metrics["series"]["pooling"] == "gem"
    assert metrics["protocol"]["name"] == "cv_refit"
    assert metrics["protocol"]["folds_fingerprint"] == cv["folds_fingerprint"]
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    verdict = json.loads((Path(params.paths.evaluation) / "verdict.json").read_text())
    assert verdict["candidates"]["ct"]["gate_metric"] == metrics["macro_f1"]

    raw["train"]["candidates"]["ct"]["head_c"] = [0.5]  # another recipe: the certificate no longer matches
    project.write_text(yaml.safe_dump(raw))
    assert evaluate_main(["--params", str(project)]) == 2


def test_scanner_copies_train_the_head_and_give_the_shifted_fold_report(project):  # noqa: F811
    """backbone.copies: the features stage caches each slice's shift and aug copies, leakage scores every fold's
    test series shifted beside plain (shift_p_* columns), evaluate reports the drop through the study model."""
    from components.common.params import load_params
    from components.evaluate.__main__ import main as evaluate_main
    from components.features.__main__ import main as features_main
    from components.leakage.__main__ import main as leakage_main
    from components.train.__main__ import main as train_main

    raw = yaml.safe_load(project.read_text())
    raw["evaluate"].update(protocol="cv_refit", series_pooling="mean", decision_rule="offsets")
    raw["leakage"].update(cv_folds=2, random_split=False)
    raw["backbone"]["copies"] = ["shift", "aug"]
    project.write_text(yaml.safe_dump(raw))
    params = load_params(project)
    assert features_main(["--params", str(project)]) == 0
    folder = Path(params.paths.features)
    assert json.loads((folder / "features.json").read_text())["copies"] == ["shift", "aug"]
    plain, shifted = np.load(folder / "train.npy"), np.load(folder / "train_shift.npy")
    assert plain.shape == shifted.shape == np.load(folder / "train_aug.npy").shape and not np.allclose(plain, shifted)
    assert leakage_main(["--params", str(project)]) == 0
    oof = pd.read_csv(Path(params.paths.leakage) / "cv_predictions.csv")
    assert {"shift_p_Normal", "shift_p_Cyst"} <= set(oof.columns) and oof["shift_p_Normal"].notna().all()
    cv = json.loads((Path(params.paths.leakage) / "leakage.json").read_text())["grouped_cv"]
    assert "shift" in cv["variants"]
    assert train_main(["--params", str(project), "--candidate", "ct"]) == 0
    assert evaluate_main(["--params", str(project)]) == 0
    study = json.loads((Path(params.paths.evaluation) / "metrics.json").read_text())["ct"]["study"]
    shift = study["shift"]
    assert shift["drop"] == pytest.approx(shift["plain"]["series_macro_f1"] - shift["shifted"]["series_macro_f1"],
                                          abs=1e-3)
    assert shift["robust"] == (shift["drop"] <= 0.10)

"""A grouped CV scored on another machine (its leakage.json) is logged here as the trial it was."""

import json

from components.leakage.log import main
from tests.tiny import tiny_params, write_params

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]


def fold(f1: float) -> dict:
    return {"accuracy": f1, "macro_f1": f1, "per_class": {c: {"recall": f1} for c in CLASSES},
            "variants": {"ensemble": {"accuracy": f1 + 0.1, "macro_f1": f1 + 0.1,
                                      "per_class": {c: {"recall": f1 + 0.1} for c in CLASSES}}}}


def test_a_leakage_json_from_a_gpu_node_becomes_one_cv_table_row(tmp_path, monkeypatch, capsys):
    from components.common.params import load_params
    from components.common.tracking import configure_mlflow
    from components.leakage.core import summarise_folds, summarise_variants
    from components.leakage.table import fetch_runs, trial_rows

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    raw = tiny_params(tmp_path)
    raw["leakage"]["cv_folds"] = 2
    params_file = write_params(raw, tmp_path / "params.yaml")
    folds = [fold(0.5), fold(0.7)]
    cv = {"folds": 2, "per_fold": folds, "seconds": 240.0, "machine": "1 accelerator(s)",
          **summarise_folds(folds, CLASSES), "variants": summarise_variants(folds, CLASSES)}
    (tmp_path / "leakage.json").write_text(json.dumps({"candidate": "paper_cnn", "grouped_cv": cv}))

    assert main([str(tmp_path / "leakage.json"), "--params", str(params_file), "--trial", "t10-on-gpu"]) == 0
    assert "macro-F1 0.600" in capsys.readouterr().out

    runs = fetch_runs(configure_mlflow(load_params(params_file).mlflow))
    assert [run["name"] for run in runs] == ["t10-on-gpu"]
    rows = trial_rows(runs, CLASSES)
    assert [row[0] for row in rows] == ["t10-on-gpu", "t10-on-gpu + ensemble of 1"]
    assert rows[0][2] == "0.600 ± 0.141" and rows[1][2] == "0.700 ± 0.141"
    assert rows[0][-1] == "1 accelerator(s)" and rows[0][-2] == "4 min (2.0/fold)"  # the machine it ran on


def test_a_file_without_a_grouped_cv_or_of_another_candidate_is_refused(tmp_path, capsys):
    params_file = write_params(tiny_params(tmp_path), tmp_path / "params.yaml")
    (tmp_path / "leakage.json").write_text(json.dumps({"candidate": "paper_cnn", "random_split": {}}))
    assert main([str(tmp_path / "leakage.json"), "--params", str(params_file), "--trial", "t"]) == 2
    assert "holds no grouped CV" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json"), "--params", str(params_file), "--trial", "t"]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "leakage.json").write_text(json.dumps({"candidate": "paper_cnn", "grouped_cv": {"folds": 5}}))
    assert main([str(tmp_path / "leakage.json"), "--params", str(params_file), "--trial", "t"]) == 2
    assert "5-fold CV" in capsys.readouterr().err

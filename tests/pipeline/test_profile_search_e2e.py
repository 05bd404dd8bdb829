"""End to end: `make search` runs profile + trial overlays through `dvc exp run`, one grouped CV each, logged
to MLflow under the experiment's name, and `make cv-table` lists them; params.yaml is left as it was.
`make real-data` runs the whole pipeline with the profile: below its gate nothing is registered, the report
is still written, the summary says why, and make exits non-zero."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.tiny import copy_project, run, tiny_params, write_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VENV = Path(sys.executable).parent.parent
# The real-data profile's shape, shrunk: a compact CNN scored by grouped 2-fold CV, every model trained for one
# epoch (the fewest folds and epochs that still make a CV with a spread: the plumbing is under test, not the model).
TINY_PROFILE = {
    "evaluate": {"min_macro_f1": 1.0, "min_class_recall": 1.0,  # out of a 1-epoch model's reach: refused
                 "protocol": "cv_refit"},  # as the real profile: refitted on every series, certified by the CV
    "augment": {"flip": True, "translate": 0.05, "noise": 0.02},
    "train": {"candidates": {"paper_cnn": {"epochs": 1}, "compact_cnn": {
        "architecture": "compact_cnn", "filters": [4, 8], "dense_units": 8, "intensity_channels": [0.8],
        "loss_weighting": "class_and_group", "weighted_sampling": True, "epoch_images": 32, "epochs": 1,
        "batch_size": 8, "patience": 1}}},
    "leakage": {"candidate": "compact_cnn", "cv_folds": 2, "random_split": False},
}
TRIALS = {"profile": "real-data", "trials": {"ta-baseline": {"leakage": {"candidate": "paper_cnn"}},
                     "tb-label-smoothing": {"train": {"candidates": {"compact_cnn": {"label_smoothing": 0.1}}},
                                            "augment": {"blur": 0.5},
                                            "leakage": {"tta": ["flip", "shift"], "ensemble": 2}}}}


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> dict:
    project = copy_project(tmp_path_factory.mktemp("project"))
    write_params(tiny_params(project, absolute=False), project / "params.yaml")
    (project / "profiles" / "real-data.yaml").write_text(yaml.safe_dump(TINY_PROFILE))
    (project / "profiles" / "search.yaml").write_text(yaml.safe_dump(TRIALS))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BENTOML_HOME")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", KIDNEY_CT_SALT="e2e-salt", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@x",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@x")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        assert run(cmd, project, env).returncode == 0
    before = (project / "params.yaml").read_text()
    search = run(["make", "--no-print-directory", "search", f"VENV={VENV}"], project, env)
    table = run(["make", "--no-print-directory", "cv-table", f"VENV={VENV}"], project, env)
    after_search = (project / "params.yaml").read_text()
    whole = run(["make", "--no-print-directory", "real-data", f"VENV={VENV}"], project, env)
    return {"project": project, "search": search, "table": table, "before": before, "after_search": after_search,
            "whole": whole}


def test_every_trial_ran_as_a_dvc_experiment(searched):
    assert searched["search"].returncode == 0, searched["search"].stdout[-4000:] + searched["search"].stderr[-4000:]
    shown = subprocess.run([str(VENV / "bin" / "dvc"), "exp", "show", "--csv"], cwd=searched["project"],
                           capture_output=True, text=True, check=True).stdout
    assert "ta-baseline" in shown and "tb-label-smoothing" in shown
    assert searched["after_search"] == searched["before"]  # params.yaml restored after the search


def test_each_trial_is_one_mlflow_grouped_cv_run_with_its_recipe(searched):
    db = sqlite3.connect(searched["project"] / "mlruns.db")
    runs = dict(db.execute("select name, run_uuid from runs where status = 'FINISHED'").fetchall())
    assert {"ta-baseline", "tb-label-smoothing"} <= set(runs)
    params = dict(db.execute("select key, value from params where run_uuid = ?", (runs["tb-label-smoothing"],)))
    assert params["candidate.label_smoothing"] == "0.1" and params["candidate.architecture"] == "compact_cnn"
    assert params["augment.flip"] == "True" and params["leakage.cv_folds"] == "2"
    assert params["augment.blur"] == "0.5" and params["leakage.tta"] == "flip+shift"  # a list through `-S`
    assert params["leakage.ensemble"] == "2"
    base = dict(db.execute("select key, value from params where run_uuid = ?", (runs["ta-baseline"],)))
    assert base["candidate.architecture"] == "paper_cnn"
    metrics = {k for (k,) in db.execute("select key from metrics where run_uuid = ?", (runs["ta-baseline"],))}
    assert {"cv_macro_f1_mean", "cv_macro_f1_std", "cv_recall_Stone_mean", "fold_macro_f1",
            "cv_series_macro_f1_mean", "cv_series_accuracy_std", "fold_series_macro_f1"} <= metrics  # study verdicts
    assert not any(k.startswith(("cv_tta_", "cv_ensemble")) for k in metrics)  # no variant asked for, none scored
    scored = {k for (k,) in db.execute("select key from metrics where run_uuid = ?", (runs["tb-label-smoothing"],))}
    assert {"cv_tta_macro_f1_mean", "cv_tta_recall_Stone_std", "cv_tta_series_macro_f1_mean", "fold_tta_macro_f1", "cv_ensemble_macro_f1_mean",  # noqa: E501
            "cv_ensemble_tta_recall_Stone_std", "fold_ensemble_tta_macro_f1"} <= scored


def test_cv_table_lists_both_trials_in_order_and_the_variant_scores_of_the_second(searched):
    assert searched["table"].returncode == 0, searched["table"].stderr[-2000:]
    rows = [line for line in searched["table"].stdout.splitlines()[2:] if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows] == ["| ta-baseline", "| tb-label-smoothing",
                                                     "| tb-label-smoothing + TTA (flip+shift)",
                                                     "| tb-label-smoothing + ensemble of 2",
                                                     "| tb-label-smoothing + ensemble of 2 + TTA (flip+shift)"]
    assert all(" ± " in row for row in rows)
    header = next(line for line in searched["table"].stdout.splitlines() if line.startswith("| trial")).split(" | ")
    column = header.index("series macro-F1")
    assert all(" ± " in row.split(" | ")[column] for row in rows)  # every row, variants too, scores per series


def test_real_data_runs_everything_and_refuses_to_register_below_the_gate(searched):
    project, whole = searched["project"], searched["whole"]
    assert whole.returncode != 0, "a model below the clinical gate must not end in success"
    registration = json.loads((project / "reports" / "register" / "registration.json").read_text())
    assert registration["registered"] is False and "recall" in registration["reason"]
    assert (project / "reports" / "report" / "report.html").is_file()  # the evidence is written all the same
    assert "nothing registered:" in whole.stdout and "grouped 2-fold CV of compact_cnn" in whole.stdout
    applied = yaml.safe_load((project / "params.yaml").read_text())  # DVC applied the profile to the workspace
    assert applied["leakage"]["candidate"] == "compact_cnn" and applied["evaluate"]["min_class_recall"] == 1.0
    metrics = json.loads((project / "reports" / "evaluate" / "metrics.json").read_text())
    assert list(metrics) == ["compact_cnn"] and metrics["compact_cnn"]["protocol"]["name"] == "cv_refit"
    images = sum(len(np.load(project / "data" / "prepared" / "arrays" / f"y_{s}.npy")) for s in ("train", "val", "test"))
    assert metrics["compact_cnn"]["test_images"] == images  # certified on every image's out-of-fold prediction
    run_info = json.loads((project / "models" / "compact_cnn" / "run.json").read_text())
    assert run_info["fitted_on"] == ["train", "test"]

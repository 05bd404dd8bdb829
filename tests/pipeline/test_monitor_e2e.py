"""Retraining that watches its data: three weekly exports through the real stages.

Week 1 trains the champion. Week 2 (new patients, same scanner) is judged "no drift" and sends no alert,
and the retrained challenger is compared with the champion on the same new held-out cases. Week 3 (another
vendor's sharp kernel, noisier, another class mix) is judged "drift" on what changed, the alert reaches a
local receiver once (a retry sends nothing), and the decision is again taken on the same new cases.
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import pytest
import yaml

from tests.services import WebhookReceiver
from tests.tiny import tiny_params, write_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RETRAIN = ("validate", "preprocess", "train", "evaluate", "register")
SHIFTED = {"kernel", "manufacturer", "texture"}  # what week 3 changes that each series shows
UNSHIFTED = {"rows", "pixel_spacing_mm", "slice_thickness_mm"}  # same matrix, field of view and slices


def run_stage(stage: str, params: Path, *extra: str) -> None:
    module = f"components.{stage}" if "." in stage else f"components.{stage}.__main__"
    main = importlib.import_module(module).main
    assert main(["--params", str(params), *extra]) == 0, f"{stage} failed"


def week(root: Path, name: str, base: dict, **generate) -> Path:
    """A params file whose export is `root/name` (patients new from week 1 when an offset is given)."""
    raw = copy.deepcopy(base)
    raw["generate"].update(generate)
    raw["paths"]["generated_export"] = raw["paths"]["source"] = str(root / name)
    return write_params(raw, root / f"{name}.yaml")


def retrain(params: Path) -> dict:
    for stage in RETRAIN:
        run_stage(stage, params, *(["--candidate", "paper_cnn"] if stage == "train" else []))
    return yaml.safe_load(params.read_text())


def monitor_report(params: Path) -> dict:
    run_stage("monitor", params)
    folder = Path(yaml.safe_load(params.read_text())["paths"]["monitor"])
    return json.loads((folder / "monitor.json").read_text())


def registration(raw: dict) -> dict:
    return json.loads((Path(raw["paths"]["registration"]) / "registration.json").read_text())


@pytest.fixture(scope="module")
def weeks(tmp_path_factory) -> dict:
    import os

    os.environ.setdefault("KIDNEY_CT_SALT", "monitor-e2e-salt")
    root = tmp_path_factory.mktemp("monitor")
    base = tiny_params(root)
    base["generate"].update(patients_per_class=8, slices_per_patient=3)
    base["ingest"]["accumulate"] = True
    base["monitor"]["min_new_series"] = 8
    base["register"]["min_comparison_series"] = 4
    files = {"week1": week(root, "week1", base),
             "week2": week(root, "week2", base, seed=8, patient_offset=1000),
             "week3": week(root, "week3", base, seed=9, patient_offset=2000, reconstruction_kernel="B70f",
                           noise_scale=1.8, manufacturer="OTHER-VENDOR PHANTOM",
                           class_mix={"Cyst": 0.5, "Tumor": 2.0, "Stone": 0.5})}
    out: dict = {"files": files}
    for name, params in files.items():
        run_stage("generate", params)
        run_stage("ingest", params)
        out[name] = {"monitor": monitor_report(params)}
        if name == "week3":
            with WebhookReceiver(fail_first=1) as receiver:
                raw = yaml.safe_load(params.read_text())
                raw["monitor"]["alert_webhook"] = receiver.url
                write_params(raw, params)
                run_stage("monitor.alert", params, "--run-label", "week 3")
                run_stage("monitor.alert", params, "--run-label", "week 3 (a retried task)")
            out["alerts"], out["alert_attempts"] = receiver.received, receiver.attempts
        if name == "week2":
            with WebhookReceiver() as receiver:
                raw = yaml.safe_load(params.read_text())
                raw["monitor"]["alert_webhook"] = receiver.url
                write_params(raw, params)
                run_stage("monitor.alert", params)
            out["week2"]["alerts"] = receiver.received
        out[name]["registration"] = registration(retrain(params))
    monitor = Path(yaml.safe_load(files["week3"].read_text())["paths"]["monitor"])
    run_stage("monitor", files["week3"], "--source", str(root / "week3"))  # shadow: the raw folder, no labels
    out["shadow"] = json.loads((monitor / "monitor.json").read_text())
    predictions = root / "shadow" / "predictions.csv"  # shadow on predict's output: what it scored
    run_stage("predict", files["week3"], str(root / "week3"), "--out", str(predictions), "--no-progress")
    run_stage("monitor", files["week3"], "--predictions", str(predictions))
    out["predicted"] = json.loads((monitor / "monitor.json").read_text())
    return out


def test_the_first_week_has_no_champion_to_compare_with(weeks):
    assert weeks["week1"]["monitor"]["status"] == "no champion"
    assert weeks["week1"]["registration"]["promoted"] is True


def test_new_patients_from_the_same_scanner_are_no_drift_and_send_no_alert(weeks):
    report = weeks["week2"]["monitor"]
    assert report["status"] == "no drift", report["reasons"]
    assert report["counts"]["current_series"] == 32 and report["counts"]["reference_series"] > 0
    assert not report["drifted"] and weeks["week2"]["alerts"] == []
    assert report["performance"]["cases"] == 96  # the champion scored on every new labelled slice


def test_the_reference_is_described_once_per_champion_with_held_out_outputs(weeks):
    first, later = weeks["week2"]["monitor"]["reference"], weeks["predicted"]["reference"]
    assert first["cached"] is False and first["outputs"].startswith("held out")
    held_out = int(first["outputs"].split()[2])  # "held out: N of M images": the test split's slices only
    assert 0 < held_out < first["images"]
    assert weeks["shadow"]["champion"] == weeks["predicted"]["champion"]  # the same version: scored once
    assert later["cached"] is True and later["images"] == weeks["shadow"]["reference"]["images"]


def test_the_shifted_week_drifts_on_what_changed_and_alerts_once(weeks):
    report = weeks["week3"]["monitor"]
    assert report["status"] == "drift", report["reasons"]
    drifted = set(report["drifted"])
    assert SHIFTED <= drifted and not drifted & UNSHIFTED
    assert weeks["alert_attempts"] == 2 and len(weeks["alerts"]) == 1  # one 503, one delivery, no second alert
    alert = weeks["alerts"][0]
    assert alert["status"] == "drift" and "week 3" in alert["text"] and "kernel" in alert["text"]
    figure = Path(report["outputs"]["drift.png"])
    assert figure.stat().st_size > 10_000 and Path(report["outputs"]["evidently.html"]).stat().st_size > 100_000


def test_each_retrained_challenger_meets_the_champion_on_the_same_new_held_out_cases(weeks):
    for name in ("week2", "week3"):
        comparison = weeks[name]["registration"]["comparison"]
        assert comparison["on"].startswith("the new held-out cases"), comparison["on"]
        assert comparison["low"] <= comparison["difference"] <= comparison["high"]
        assert comparison["difference"] == pytest.approx(comparison["challenger"] - comparison["champion"])
        promoted = weeks[name]["registration"]["promoted"]
        assert promoted is (comparison["low"] >= -0.02), weeks[name]["registration"]["reason"]


def test_an_unlabelled_folder_feeds_the_same_monitor_in_shadow_mode(weeks):
    report = weeks["shadow"]  # week 3's raw files against the champion now fitted on weeks 1-3
    assert report["mode"].startswith("shadow") and report["performance"] is None
    assert report["counts"]["current_images"] == 96 and report["counts"]["current_series_per_class"] is None
    assert "label" not in {t["column"] for t in report["tests"]}
    assert {"kernel", "manufacturer"} <= set(report["drifted"])  # all B70f vs a third of the reference


def test_predicts_own_output_feeds_the_monitor_with_verdict_shares_and_confidence(weeks):
    report = weeks["predicted"]
    assert report["mode"].startswith("shadow (components.predict") and report["performance"] is None
    assert {t["column"] for t in report["tests"]} == {"confidence", "series_verdict", "set_size"}  # no pixels, no
    #   embeddings: what the model said (its verdicts, confidence and the size of each study's conformal set)
    assert report["counts"]["current_images"] == 96 and report["counts"]["current_series"] == 32

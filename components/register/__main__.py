"""CLI: python -m components.register — register the gated winner; it becomes champion unless it is worse than
the champion beyond register.non_inferiority_margin on the same new held-out cases (paired bootstrap)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from components.common.champion import STUDY_MODEL_TAG
from components.common.cli import StageError, log, read_json, run_stage, stage_parser, write_json
from components.common.params import Params
from components.common.registry import HELDOUT_ARTIFACT, REFERENCE_ARTIFACT
from components.common.tracking import configure_mlflow
from components.lib.predictions import load_probabilities, read_split
from components.register.card import dvc_data_version, model_card, provenance_tags
from components.register.core import (
    GateRefusal,
    comparison_cases,
    cv_champion_score,
    decide_champion,
    decide_paired,
    heldout_predictions,
    reference_record,
    registrable_winner,
)

SOURCE_ROOT = Path(__file__).resolve().parents[2]


FINGERPRINT_TAG = "data_params_fingerprint"


def run_fingerprint(client, run_id: str) -> str:
    """sha256 of a training run's data version and logged params: equal for a retried, identical training."""
    import hashlib

    run = client.get_run(run_id)
    payload = {"data_version": run.data.tags.get("data_version", ""), "params": dict(sorted(run.data.params.items()))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def find_or_register(client, name: str, model_uri: str, run_id: str, fingerprint: str = ""):
    """The version already registered from this run or from the same data + params, else a new one.

    So neither a re-run of register nor a retried training (a new run on the same data and params)
    ever adds a second version.
    """
    import mlflow

    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name, description="Kidney CT slice classifier (Normal, Cyst, Tumor, Stone)")
    versions = client.search_model_versions(f"name = '{name}'")
    for version in versions:
        if version.run_id == run_id:
            return version
    for version in versions:
        if fingerprint and (version.tags or {}).get(FINGERPRINT_TAG) == fingerprint:
            log.info("v%s was registered from the same data and params (run %s): reusing it", version.version,
                     version.run_id)
            return version
    version = mlflow.register_model(model_uri, name)
    if fingerprint:
        client.set_model_version_tag(name, version.version, FINGERPRINT_TAG, fingerprint)
    return version


def git_commit() -> str:
    """HEAD of the code that registered the model, '+dirty' when the tree had uncommitted changes."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=SOURCE_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=SOURCE_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def attach_evidence(client, name: str, version: str, winner: str, params: Params, verdict: dict, metrics: dict,
                    x_test: np.ndarray) -> None:
    """Provenance tags, params, metrics, input example, signature check and model card on the version + run."""
    import hashlib

    from mlflow.models import get_model_info

    entry = verdict["candidates"][winner]
    manifest = Path(params.paths.ingested) / "manifest.csv"
    lock = Path("dvc.lock")
    params_json = params.model_dump_json(by_alias=True, indent=2)
    tags = provenance_tags(git_commit(), hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file()
                           else "unknown", dvc_data_version(lock.read_text() if lock.is_file() else None, str(manifest)),
                           hashlib.sha256(params_json.encode()).hexdigest()[:16], entry, metrics)
    signature = get_model_info(entry["model_uri"]).signature
    tags["signature"] = json.dumps(signature.to_dict()) if signature else "missing: re-run train"
    card = model_card(name, version, winner, params.classes, params.preprocess.image_size,
                      (params.preprocess.window_center, params.preprocess.window_width), metrics, tags)
    run_id = entry["run_id"]
    client.log_text(run_id, card, "registration/model_card.md")
    client.log_text(run_id, params_json, "registration/params.json")
    client.log_dict(run_id, {"winner": winner, "verdict": verdict, "metrics": metrics}, "registration/evaluation.json")
    client.log_dict(run_id, {"inputs": np.asarray(x_test[:1], dtype="float32").tolist()},
                    "registration/input_example.json")
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value[:5000])
    (Path(params.paths.registration)).mkdir(parents=True, exist_ok=True)
    (Path(params.paths.registration) / "model_card.md").write_text(card)


def champion_probabilities(client, name: str, x_test: np.ndarray):
    """(the champion's version, its probabilities on the test split), or (None, None) when there is none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, None
    model = mlflow.keras.load_model(f"models:/{name}@champion")
    if tuple(model.input_shape[1:]) != tuple(x_test.shape[1:]):
        raise StageError(f"champion v{current.version} expects input {model.input_shape[1:]}, the test split is "
                         f"{x_test.shape[1:]}: compare and promote by hand")
    return current, np.asarray(model.predict(x_test.astype("float32"), batch_size=64, verbose=0))


def paired_comparison(params: Params, winner: str, champion_run_id: str, champion_probs: np.ndarray) -> dict:
    """Challenger vs champion on the same held-out cases: the new ones when enough, paired bootstrap over series."""
    from components.common.bootstrap import paired_group_bootstrap, score_function
    from components.common.registry import version_reference

    test = read_split(load_probabilities(Path(params.paths.predictions)), winner, "test", params.classes)
    reference = version_reference(champion_run_id)
    cases, on = comparison_cases(test.keys, test.series, None if reference is None else set(reference["key"]),
                                 params.register.min_comparison_series)
    metric = score_function(params.evaluate.gate_metric, len(params.classes))
    chosen = np.asarray(cases, dtype=np.int64)
    result = paired_group_bootstrap(test.labels[chosen], test.probabilities[chosen].argmax(axis=1),
                                    champion_probs[chosen].argmax(axis=1), [test.series[i] for i in cases], metric,
                                    resamples=params.report.bootstrap_resamples)
    return {**result, "on": on}


def winner_metrics(params: Params, winner: str) -> dict:
    """The winner's entry of evaluate's metrics.json (scores, CIs, and the `protocol` that certified them)."""
    path = Path(params.paths.evaluation) / "metrics.json"
    return (read_json(path) if path.is_file() else {}).get(winner, {})


def winner_study_model(params: Params, winner: str) -> dict:
    """The winner's study model as evaluate fitted it (series pooling, series head, rule, conformal calibration)."""
    path = Path(params.paths.evaluation) / "study" / f"{winner}.json"
    if not path.is_file():
        raise StageError(f"{path} not found: re-run the evaluate stage (it fits each candidate's study model)")
    return read_json(path)


def champion_decision(client, name: str, winner: str, entry: dict, params: Params, protocol: dict, x_test):
    """(champion version or None, ChampionDecision or None when no fair comparison exists, why, comparison)."""
    from mlflow.exceptions import MlflowException

    metric, margin = params.evaluate.gate_metric, params.register.non_inferiority_margin
    if protocol["name"] != "cv_refit":
        current, champion_probs = champion_probabilities(client, name, x_test)
        if current is None:
            return None, decide_champion(entry["gate_metric"], None, margin, metric), "", None
        comparison = paired_comparison(params, winner, current.run_id, champion_probs)
        return current, decide_paired(comparison, margin, metric), "", comparison
    try:
        current = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, decide_champion(entry["gate_metric"], None, margin, metric), "", None
    score, why = cv_champion_score(current.tags or {}, protocol.get("folds_fingerprint"), metric)
    if why:
        return current, None, why, None
    return current, decide_champion(entry["gate_metric"], score, margin, metric), "", {"champion": score}


def log_reference(client, run_id: str, params: Params, fitted_on: list[str]) -> None:
    """The record of the data this version was developed on (the monitor's reference, register's new cases)."""
    import io

    import pandas as pd

    split = pd.read_csv(Path(params.paths.prepared) / "split.csv", dtype=str, keep_default_na=False)
    manifest = pd.read_csv(Path(params.paths.ingested) / "manifest.csv", dtype=str, keep_default_na=False)
    rows = reference_record(split.to_dict("records"), manifest.set_index("key").to_dict("index"), {*fitted_on, "val"})
    buffer = io.StringIO()
    pd.DataFrame(rows, columns=["key", "split", "group", "series", "label", "fitted"]).to_csv(buffer, index=False)
    client.log_text(run_id, buffer.getvalue(), REFERENCE_ARTIFACT)


def log_heldout(client, run_id: str, params: Params, winner: str, protocol: str) -> int:
    """The winner's predictions on slices it was not fitted on (the monitor's reference for its outputs); how many."""
    import io

    import pandas as pd

    from components.lib.predictions import CV_PREDICTIONS, CV_SPLIT, PROBABILITIES

    folder, split = ((Path(params.paths.leakage), CV_SPLIT) if protocol == "cv_refit"
                     else (Path(params.paths.predictions), "test"))
    name = CV_PREDICTIONS if protocol == "cv_refit" else PROBABILITIES
    if not (folder / name).is_file():
        log.warning("no %s: the version carries no held-out predictions, so the monitor compares its outputs on "
                    "its training slices (run evaluate and leakage before register)", folder / name)
        return 0
    frame = load_probabilities(folder, name)
    try:
        rows = heldout_predictions(frame.to_dict("records"), winner, split, params.classes)
    except ValueError as exc:
        raise StageError(f"{folder}: {exc}") from None
    buffer = io.StringIO()
    pd.DataFrame(rows, columns=["key", "series", "label", *[f"p_{c}" for c in params.classes]]).to_csv(buffer,
                                                                                                     index=False)
    client.log_text(run_id, buffer.getvalue(), HELDOUT_ARTIFACT)
    return len(rows)


def run(params: Params, args: argparse.Namespace) -> None:
    from mlflow import MlflowClient

    out = Path(params.paths.registration) / "registration.json"
    verdict = read_json(Path(params.paths.evaluation) / "verdict.json")
    try:
        winner = registrable_winner(verdict)
    except GateRefusal as exc:
        write_json(out, {"gate_passed": False, "registered": False, "reason": str(exc)})
        raise StageError(str(exc)) from None
    entry, metric = verdict["candidates"][winner], params.evaluate.gate_metric
    configure_mlflow(params.mlflow)
    client, name = MlflowClient(), params.register.model_name
    version = find_or_register(client, name, entry["model_uri"], entry["run_id"],
                               run_fingerprint(client, entry["run_id"]))
    pre = params.preprocess
    study = winner_study_model(params, winner)
    metrics = winner_metrics(params, winner)
    protocol = metrics.get("protocol") or {"name": "holdout"}
    for key, value in {"candidate": winner, "gate_passed": "true", f"test_{metric}": f"{entry['gate_metric']:.4f}",
                       f"certified_{metric}": f"{entry['gate_metric']:.4f}", "protocol": protocol["name"],
                       "folds_fingerprint": str(protocol.get("folds_fingerprint") or ""),
                       "classes": json.dumps(params.classes), "image_size": str(pre.image_size),
                       "window_center": str(pre.window_center), "window_width": str(pre.window_width),
                       "body_crop": str(pre.body_crop).lower(), "series_pooling": study["pooling"],
                       STUDY_MODEL_TAG: json.dumps(study, separators=(",", ":"))}.items():
        client.set_model_version_tag(name, version.version, key, value)
    client.log_dict(entry["run_id"], study, "registration/study_model.json")
    client.set_registered_model_alias(name, "challenger", version.version)
    arrays = Path(params.paths.prepared) / "arrays"
    x_test = np.load(arrays / "X_test.npy", mmap_mode="r")
    attach_evidence(client, name, str(version.version), winner, params, verdict, metrics, x_test)
    run_record = read_json(Path(params.paths.models) / winner / "run.json")
    log_reference(client, entry["run_id"], params, run_record.get("fitted_on") or ["train"])
    log_heldout(client, entry["run_id"], params, winner, protocol["name"])
    current, decision, incomparable, comparison = champion_decision(client, name, winner, entry, params, protocol,
                                                                    x_test)
    if current is not None and current.version == version.version:
        decision_promote, reason = False, f"v{version.version} is already the champion"
    elif decision is None:
        decision_promote, reason = False, f"champion v{current.version} stays: {incomparable}"
    else:
        decision_promote, reason = decision.promote, decision.reason
        if decision.promote:  # through the registry CLI's path, so rollback knows the history
            from components.lib import registry_store

            registry_store.promote(client, name, str(version.version), reason=decision.reason)
    client.set_tag(entry["run_id"], "champion_decision", reason[:5000])
    champion = client.get_model_version_by_alias(name, "champion")
    write_json(out, {"gate_passed": True, "registered": True, "model_name": name, "version": int(version.version),
                     "candidate": winner, "promoted": decision_promote, "reason": reason,
                     "champion_version": int(champion.version), f"challenger_{metric}": entry["gate_metric"],
                     f"previous_champion_{metric}": (comparison or {}).get("champion"),
                     "comparison": comparison})
    log.info("registered %s v%s (alias challenger); %s; champion is v%s", name, version.version, reason,
             champion.version)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Register the gated winner in the MLflow Model Registry (with the record of its data); promote it "
                          "unless it is worse than the champion beyond register.non_inferiority_margin on the same "
                          "new held-out cases.")
    return run_stage("register", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""CLI: python -m components.register — register the gated winner; promote it if it beats the champion."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from components.common.cli import StageError, log, read_json, run_stage, stage_parser, write_json
from components.common.params import Params
from components.common.tracking import configure_mlflow
from components.evaluate.core import classification_metrics
from components.register.card import dvc_data_version, model_card, provenance_tags
from components.register.core import GateRefusal, cv_champion_score, decide_champion, registrable_winner

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


def champion_score(client, name: str, metric: str, classes: list[str], x_test: np.ndarray, y_test: np.ndarray):
    """(version, score) of the current champion re-scored on this test split, or (None, None)."""
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
    probabilities = np.asarray(model.predict(x_test.astype("float32"), batch_size=64, verbose=0))
    return current, classification_metrics(y_test, probabilities, classes)[metric]


def winner_metrics(params: Params, winner: str) -> dict:
    """The winner's entry of evaluate's metrics.json (scores, CIs, and the `protocol` that certified them)."""
    path = Path(params.paths.evaluation) / "metrics.json"
    return (read_json(path) if path.is_file() else {}).get(winner, {})


def champion_to_beat(client, name: str, metric: str, params: Params, protocol: dict, x_test, y_test):
    """(champion version, its score, why no fair comparison exists or ""): re-scored on the held-out test split,
    or, for a cv_refit challenger, its certified score from a grouped CV on the same folds."""
    from mlflow.exceptions import MlflowException

    if protocol["name"] != "cv_refit":
        return (*champion_score(client, name, metric, params.classes, x_test, y_test), "")
    try:
        current = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, None, ""
    score, why = cv_champion_score(current.tags or {}, protocol.get("folds_fingerprint"), metric)
    return current, score, why


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
    metrics = winner_metrics(params, winner)
    protocol = metrics.get("protocol") or {"name": "holdout"}
    for key, value in {"candidate": winner, "gate_passed": "true", f"test_{metric}": f"{entry['gate_metric']:.4f}",
                       f"certified_{metric}": f"{entry['gate_metric']:.4f}", "protocol": protocol["name"],
                       "folds_fingerprint": str(protocol.get("folds_fingerprint") or ""),
                       "classes": json.dumps(params.classes), "image_size": str(pre.image_size),
                       "window_center": str(pre.window_center), "window_width": str(pre.window_width)}.items():
        client.set_model_version_tag(name, version.version, key, value)
    client.set_registered_model_alias(name, "challenger", version.version)
    arrays = Path(params.paths.prepared) / "arrays"
    x_test, y_test = np.load(arrays / "X_test.npy", mmap_mode="r"), np.load(arrays / "y_test.npy")
    attach_evidence(client, name, str(version.version), winner, params, verdict, metrics, x_test)
    current, score, incomparable = champion_to_beat(client, name, metric, params, protocol, x_test, y_test)
    if current is not None and current.version == version.version:
        decision_promote, reason = False, f"v{version.version} is already the champion"
    elif incomparable:
        decision_promote, reason = False, f"champion v{current.version} stays: {incomparable}"
    else:
        decision = decide_champion(entry["gate_metric"], score, params.register.champion_margin, metric)
        decision_promote, reason = decision.promote, decision.reason
        if decision.promote:  # through the registry CLI's path, so rollback knows the history
            from components.registry import mlflow_store

            mlflow_store.promote(client, name, str(version.version), reason=decision.reason)
    champion = client.get_model_version_by_alias(name, "champion")
    write_json(out, {"gate_passed": True, "registered": True, "model_name": name, "version": int(version.version),
                     "candidate": winner, "promoted": decision_promote, "reason": reason,
                     "champion_version": int(champion.version), f"challenger_{metric}": entry["gate_metric"],
                     f"previous_champion_{metric}": score})
    log.info("registered %s v%s (alias challenger); %s; champion is v%s", name, version.version, reason,
             champion.version)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Register the gated winner in the MLflow Model Registry; promote it if it beats the champion.")
    return run_stage("register", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())

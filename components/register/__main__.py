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
from components.register.core import GateRefusal, decide_champion, registrable_winner


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
    for key, value in {"candidate": winner, "gate_passed": "true", f"test_{metric}": f"{entry['gate_metric']:.4f}",
                       "classes": json.dumps(params.classes), "image_size": str(pre.image_size),
                       "window_center": str(pre.window_center), "window_width": str(pre.window_width)}.items():
        client.set_model_version_tag(name, version.version, key, value)
    client.set_registered_model_alias(name, "challenger", version.version)
    arrays = Path(params.paths.prepared) / "arrays"
    x_test, y_test = np.load(arrays / "X_test.npy", mmap_mode="r"), np.load(arrays / "y_test.npy")
    current, score = champion_score(client, name, metric, params.classes, x_test, y_test)
    if current is not None and current.version == version.version:
        decision_promote, reason = False, f"v{version.version} is already the champion"
    else:
        decision = decide_champion(entry["gate_metric"], score, params.register.champion_margin, metric)
        decision_promote, reason = decision.promote, decision.reason
        if decision.promote:
            client.set_registered_model_alias(name, "champion", version.version)
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

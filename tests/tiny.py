"""A tiny, seconds-long version of the repo's params, with every output under one folder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# the mild policy the unit tests train with (AugmentParams has no defaults for what params.yaml states)
MILD_AUGMENT = {"rotation": 0.05, "zoom": 0.1, "contrast": 0.2, "flip": False}


def tiny_params(root: Path, absolute: bool = True) -> dict:
    """The repo's params.yaml shrunk for tests: 3 patients x 4 slices per class, 48 px, 3 epochs.

    With `absolute`, every path points under `root`; else paths stay relative (for a project copy).
    """
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["generate"].update(patients_per_class=3, slices_per_patient=4, matrix=128)
    raw["preprocess"].update(image_size=48, duplicate_size=16)
    raw["augment"]["preview_samples"] = 2
    raw["leakage"]["random_split"] = True  # the e2e runs show the leaky number beside the honest one
    raw["train"]["candidates"] = {"paper_cnn": {"architecture": "paper_cnn", "filters": [8, 16], "dense_units": 16,
                                                "dropout": 0.2, "learning_rate": 0.003, "epochs": 3, "batch_size": 8,
                                                "patience": 3}}
    # a 3-epoch model: the gates are unit-tested, and shown biting in test_gate_refuses_crippled
    raw["evaluate"].update(min_accuracy=0.0, min_macro_f1=0.0, min_class_recall=0.0, min_series_macro_f1=0.0)
    if absolute:
        raw["paths"] = {key: str(root / value) for key, value in raw["paths"].items()}
        raw["mlflow"]["tracking_uri"] = f"sqlite:///{root / 'mlruns.db'}"
        raw["package"]["bentoml_home"] = str(root / "bentoml")
    return raw


def wiring_params(root: Path, absolute: bool = True) -> dict:
    """tiny_params for a test of the orchestration, not of the model: one epoch, no extra CV or leaky model,
    50 bootstrap draws, one Grad-CAM per class."""
    raw = tiny_params(root, absolute)
    for candidate in raw["train"]["candidates"].values():
        candidate["epochs"] = 1
    raw["leakage"].update(random_split=False, cv_folds=0)
    raw["report"].update(bootstrap_resamples=50, gradcam_per_class=1)
    return raw


def write_params(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def copy_project(destination: Path) -> Path:
    """Copy the files git tracks or would track (not .venv, outputs or caches) into `destination`."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split("\n")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)

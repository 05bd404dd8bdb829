"""An immutable Bento pinned to the champion: `bentoml build` alone (serving/bentofile.yaml) pins the
registry's champion, also after a rollback re-packaged by the package stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.package_support import MODEL_NAME, PROJECT_ROOT, register_tiny_model, run_package, write_project

pytestmark = [pytest.mark.slow]


def package(root: Path, version: str) -> dict:
    write_project(root, version)
    done = run_package(root)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / "reports/package/bento.json").read_text())


def bento_info(root: Path, tag: str) -> dict:
    return yaml.safe_load((root / ".bentoml/bentos" / tag.replace(":", "/") / "bento.yaml").read_text())


def test_plain_bentoml_build_pins_the_champion_also_after_a_rollback(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    first = register_tiny_model(tmp_path)
    v1 = package(tmp_path, first)
    second = register_tiny_model(tmp_path)  # v2 becomes champion
    v2 = package(tmp_path, second)
    assert v2["bento_model_tag"] != v1["bento_model_tag"] and v2["mlflow_model_version"] == second

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(MODEL_NAME, "champion", first)
    rolled_back = package(tmp_path, first)
    assert rolled_back["mlflow_model_version"] == first and rolled_back["bento_model_reused"] is False

    env = {**{k: v for k, v in os.environ.items() if k != "BENTOML_HOME"},
           "BENTOML_HOME": str(tmp_path / ".bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    built = subprocess.run([str(Path(sys.executable).with_name("bentoml")), "build", "-f", "serving/bentofile.yaml",
                            "--output", "tag", "."], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, (built.stdout + built.stderr)[-3000:]
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    model = bento_info(tmp_path, tag)["models"][0]
    assert (model["tag"], model["alias"]) == (rolled_back["bento_model_tag"], "champion")
    model_dir = tmp_path / ".bentoml/models" / model["tag"].replace(":", "/")
    labels = yaml.safe_load((model_dir / "model.yaml").read_text())["labels"]
    assert labels["mlflow_version"] == first  # the rolled-back champion, not the newest version (v2)
    assert bento_info(tmp_path, rolled_back["bento_tag"])["models"][0]["tag"] == rolled_back["bento_model_tag"]

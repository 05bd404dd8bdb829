"""One tiny `dvc repro` of the whole pipeline, shared by the tests that only read what it wrote.

`make run`'s own steps (git + DVC project, DVC's autostage, `dvc repro`, then `python -m components`) on tiny
params in a copy of the project, with no terminal and no TensorFlow/MLflow settings from the caller's shell:
test_pipeline_e2e reads its outputs, test_quiet_output reads its log, test_gate_refuses_crippled and
test_dag_airflow_server (a real Airflow's runs on a project that ran before) start from a
copy of it. Built once per test session; under pytest-xdist the first worker to ask builds it (a file lock)
and the others reuse it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tiny import copy_project, run, tiny_params, write_params

BIN = Path(sys.executable).parent
# set by a developer's shell or CI, they would decide what the output test is about
CALLER_SETTINGS = ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_TRACKING_URI", "BENTOML_HOME")


@dataclass(frozen=True)
class TinyPipeline:
    """A finished tiny pipeline: its project folder (read only: copy it to change anything) and its logs."""

    project: Path
    repro_log: str      # `dvc repro`'s stdout and stderr in one pipe, as `make run > log 2>&1` sees them
    status_log: str     # `dvc status` right after
    summary_log: str    # `python -m components`

    def env(self) -> dict[str, str]:
        """The environment it ran in (its salt, no caller settings): what a stage run on a copy of it needs."""
        return pipeline_env()


def pipeline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CALLER_SETTINGS}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", KIDNEY_CT_SALT="e2e-salt", PYTHONUNBUFFERED="1")
    return env


def build_tiny_pipeline(project: Path) -> dict[str, str]:
    """Copy the project, shrink its params, run `make run`'s steps; the logs (asserting each step worked)."""
    import subprocess

    copy_project(project)
    write_params(tiny_params(project, absolute=False), project / "params.yaml")
    env = pipeline_env()
    run(["git", "init", "-q"], project, env)
    run([str(BIN / "dvc"), "config", "--local", "core.autostage", "true"], project, env)  # as `make run`
    # bytes, decoded as they are: text mode would turn a progress bar's carriage returns into newlines
    repro = subprocess.run([str(BIN / "dvc"), "repro"], cwd=project, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1200)
    repro_log = repro.stdout.decode(errors="replace")
    assert repro.returncode == 0, repro_log[-6000:]
    status = run([str(BIN / "dvc"), "status"], project, env)
    summary = run([str(BIN / "python"), "-m", "components"], project, env)
    assert status.returncode == 0 and summary.returncode == 0, status.stderr + summary.stderr
    return {"repro_log": repro_log, "status_log": status.stdout, "summary_log": summary.stdout}


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> TinyPipeline:
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared  # the workers' common folder
    project, logs_file = shared / "tiny-pipeline", shared / "tiny-pipeline.logs.json"
    with FileLock(str(shared / "tiny-pipeline.lock")):
        if not logs_file.is_file():
            logs_file.write_text(json.dumps(build_tiny_pipeline(project)))
    return TinyPipeline(project=project, **json.loads(logs_file.read_text()))


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A tiny champion registered, packaged and served by `bentoml serve` on 127.0.0.1: (url, bento.json, root).
    One per session for test_serving and test_page_browser (one xdist work unit: tests/conftest.py)."""
    from tests.pipeline.test_serving import serve_tiny_champion

    yield from serve_tiny_champion(tmp_path_factory.mktemp("serving"))


@pytest.fixture
def orthanc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real Orthanc (Debian's orthanc + orthanc-dicomweb) on 127.0.0.1 for one test, its password exported as the
    variable ingest reads (ingest.dicomweb_password_env); skips, saying why, where Orthanc is not installed."""
    from tests.services import Orthanc, orthanc_available

    reason = orthanc_available()
    if reason:
        pytest.skip(reason)
    server = Orthanc(tmp_path / "orthanc").start()
    monkeypatch.setenv("KIDNEY_CT_DICOMWEB_PASSWORD", server.password)
    yield server
    server.stop()

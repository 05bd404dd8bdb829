"""
### Kidney CT weekly retraining

Runs the project's stages, in the order of `dvc.yaml`, once a week (and whenever it is
triggered by hand):

`generate -> ingest -> validate -> preprocess -> augment -> train (one mapped task per
candidate) -> evaluate -> register -> package`

Each task only **wires** a stage: it runs `python -m components.<stage> --params <file>` (the
very command `dvc.yaml` runs) in the project directory and fails with the stage's own message
when the stage exits non-zero. All ML logic lives in `components/`.

`list_candidates` reads `params.train.candidates` at run time, and `train` is mapped over the
names it returns, so adding a candidate to the params file adds a training task; `evaluate`
waits for every candidate.

**Where the project and its params are** — looked up when a task runs, never when this file is
parsed, first match wins:

| setting | DAG param (trigger form / conf) | Airflow Variable | environment | default |
| --- | --- | --- | --- | --- |
| project directory (working directory of the stages) | `project_dir` | `kidney_ct_project_dir` | `KIDNEY_CT_PROJECT_DIR` | the folder above `dags/` |
| params file (relative paths are under the project directory) | `params_file` | `kidney_ct_params` | `KIDNEY_CT_PARAMS` | `params.yaml` |

Every path the stages read or write comes from the params file's `paths` block, so pointing
`params_file` at another file runs the whole pipeline on other data in other folders.

**Failures**: a stage that refuses its input or its verdict (exit code 2, e.g. a failed data
check or a failed quality gate) fails its task at once without a retry, because running it again
gives the same answer; any other non-zero exit (a crash, a kill) is retried once.

The `ingest` task updates the asset `kidney_ct_ingested_manifest`; the event's extra holds the
manifest's path.
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from airflow.sdk import Asset, Param, Variable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException

log = logging.getLogger(__name__)

DAG_ID = "kidney_ct_retraining"
STAGE_REFUSED_EXIT_CODE = 2  # components.common.cli.run_stage: ParamsError / StageError
LOG_TAIL_LINES = 30

INGESTED_MANIFEST = Asset(name="kidney_ct_ingested_manifest", uri="x-kidney-ct://ingested/manifest.csv")

# (DAG param, Airflow Variable, environment variable) for each run-time setting.
PROJECT_DIR_KEYS = ("project_dir", "kidney_ct_project_dir", "KIDNEY_CT_PROJECT_DIR")
PARAMS_FILE_KEYS = ("params_file", "kidney_ct_params", "KIDNEY_CT_PARAMS")

DEFAULT_ARGS = {
    "owner": "mlops",
    "retries": 1,
    "retry_delay": timedelta(minutes=5),
    "execution_timeout": timedelta(hours=3),
}


@dataclass(frozen=True)
class StageSettings:
    """Where a run's stages execute (`project_dir`) and which params file they read."""

    project_dir: Path
    params_file: Path


def _how_to_set(keys: tuple[str, str, str]) -> str:
    param, variable, env = keys
    return f"set the DAG param `{param}`, the Airflow Variable `{variable}` or the env var {env}"


def _first_set(*values: Any) -> str | None:
    """The first value that is a non-blank string, else None."""
    return next((str(value) for value in values if value is not None and str(value).strip()), None)


def resolve_settings(
    run_params: Mapping[str, Any],
    get_variable: Callable[[str], str | None],
    environ: Mapping[str, str],
    default_project_dir: Path,
) -> StageSettings:
    """Pick project dir and params file: DAG param, then Variable, then env, then the default."""

    def pick(keys: tuple[str, str, str]) -> str | None:
        param, variable, env = keys
        return _first_set(run_params.get(param), get_variable(variable), environ.get(env))

    project_dir = Path(pick(PROJECT_DIR_KEYS) or default_project_dir).expanduser()
    params_file = Path(pick(PARAMS_FILE_KEYS) or "params.yaml").expanduser()
    if not params_file.is_absolute():
        params_file = project_dir / params_file
    if not project_dir.is_dir():
        raise AirflowFailException(
            f"project directory {project_dir} does not exist ({_how_to_set(PROJECT_DIR_KEYS)})")
    if not params_file.is_file():
        raise AirflowFailException(
            f"params file {params_file} does not exist ({_how_to_set(PARAMS_FILE_KEYS)})")
    return StageSettings(project_dir.absolute(), params_file.absolute())


def current_settings() -> StageSettings:
    """The settings of the running task's DAG run (run time only: reads context, Variables, env)."""
    context = get_current_context()
    return resolve_settings(
        run_params=context["params"],
        get_variable=lambda key: Variable.get(key, default=None),
        environ=os.environ,
        default_project_dir=Path(__file__).absolute().parent.parent,
    )


def run_stage_command(stage: str, settings: StageSettings, *extra_args: str) -> None:
    """Run `python -m components.<stage> --params FILE [extra]` in the project dir; raise on failure.

    A subprocess per stage (rather than calling `main()` in the worker) because: TensorFlow keeps
    the memory it grabbed (and its graph/Keras global state) for the life of the process, so
    in-process stages would pile up memory across tasks in a long-lived worker; a crash or an
    OOM kill takes down only the child, which Airflow then reports and retries; and it is the
    exact command dvc.yaml runs, so `dvc repro` and this DAG execute the same code path.
    """
    command = [sys.executable, "-m", f"components.{stage}", "--params", str(settings.params_file), *extra_args]
    log.info("running %s in %s", " ".join(command), settings.project_dir)
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    with subprocess.Popen(
        command,
        cwd=settings.project_dir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            log.info("[%s] %s", stage, line.rstrip())
            tail.append(line.rstrip())
    _raise_on_failure(stage, process.returncode, list(tail))


def _raise_on_failure(stage: str, returncode: int, tail: list[str]) -> None:
    """Turn a stage's exit code into Airflow's verdict: refused = no retry, crashed = retryable."""
    if returncode == 0:
        return
    message = f"stage {stage} exited with code {returncode}:\n" + "\n".join(tail)
    if returncode == STAGE_REFUSED_EXIT_CODE:
        raise AirflowFailException(message)
    raise AirflowException(message)


def read_candidate_names(params_file: Path) -> list[str]:
    """Names under `train.candidates` of a params file, in file order."""
    import yaml  # run time only

    try:
        raw = yaml.safe_load(params_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AirflowFailException(f"{params_file} is not valid YAML: {exc}") from None
    candidates = (raw.get("train") or {}).get("candidates") if isinstance(raw, dict) else None
    if not isinstance(candidates, dict) or not candidates:
        raise AirflowFailException(f"{params_file} lists no candidates under train.candidates")
    return [str(name) for name in candidates]


def ingested_manifest_path(settings: StageSettings) -> str:
    """Where ingest wrote manifest.csv, from the params file's `paths.ingested`."""
    import yaml  # run time only

    raw = yaml.safe_load(settings.params_file.read_text()) or {}
    ingested = Path(str(raw.get("paths", {}).get("ingested", "")))
    return str((settings.project_dir / ingested / "manifest.csv").absolute())


@dag(
    dag_id=DAG_ID,
    description="Weekly retrain, gate, register and package of the kidney CT classifier",
    doc_md=__doc__,
    schedule="@weekly",
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,  # runs share the output folders named in the params file
    default_args=DEFAULT_ARGS,
    tags=["kidney-ct", "mlops", "retraining"],
    params={
        "project_dir": Param(None, type=["null", "string"], description="project root (working dir of stages)"),
        "params_file": Param(None, type=["null", "string"], description="params file, relative to project_dir"),
    },
)
def kidney_ct_retraining() -> None:
    """Wire the stages in dvc.yaml's order; train is mapped over the candidates."""

    @task
    def generate() -> None:
        run_stage_command("generate", current_settings())

    @task(outlets=[INGESTED_MANIFEST])
    def ingest(*, outlet_events: Any = None) -> None:
        settings = current_settings()
        run_stage_command("ingest", settings)
        outlet_events[INGESTED_MANIFEST].extra = {"manifest": ingested_manifest_path(settings)}

    @task
    def validate() -> None:
        run_stage_command("validate", current_settings())

    @task
    def preprocess() -> None:
        run_stage_command("preprocess", current_settings())

    @task
    def augment() -> None:
        run_stage_command("augment", current_settings())

    @task
    def list_candidates() -> list[str]:
        return read_candidate_names(current_settings().params_file)

    @task(map_index_template="{{ candidate_name }}")
    def train(candidate: str) -> None:
        get_current_context()["candidate_name"] = candidate  # type: ignore[typeddict-unknown-key]
        run_stage_command("train", current_settings(), "--candidate", candidate)

    @task
    def evaluate() -> None:
        run_stage_command("evaluate", current_settings())

    @task
    def leakage() -> None:
        run_stage_command("leakage", current_settings())

    @task
    def report() -> None:
        run_stage_command("report", current_settings())

    @task
    def register() -> None:
        run_stage_command("register", current_settings())

    @task
    def package() -> None:
        run_stage_command("package", current_settings())

    preprocessed = generate() >> ingest() >> validate() >> preprocess()
    trained = train.expand(candidate=list_candidates())
    scored = preprocessed >> augment() >> trained >> evaluate()
    scored >> register() >> package()
    [scored, preprocessed >> leakage()] >> report()


kidney_ct_retraining()

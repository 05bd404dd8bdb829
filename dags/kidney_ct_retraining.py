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

**When it runs** (asset-aware): every week (Monday 00:00 UTC) **or** as soon as one of these assets
is updated, whichever comes first:

* `kidney_ct_new_studies` — emitted by the DAG `kidney_ct_pacs_watch`, which asks the PACS
  (QIDO-RS, `ingest.dicomweb_url`) every hour whether studies arrived since the last ingest and
  skips (no event) when none did;
* `kidney_ct_pacs_export` — for folder exports: the job that drops a new export updates it (e.g.
  `POST /api/v2/assets/events` with `{"asset_id": ..}` on Airflow's REST API).

**Retries are safe**: every stage is idempotent (ingest skips stored objects, train resumes its
checkpointed MLflow run, register reuses the model version of the same run or of the same data and
params fingerprint), so a retried task never duplicates data or model versions.

**Where each stage runs** — chosen per task by configuration, not by editing this file
(Airflow Variable `kidney_ct_runners` or env `KIDNEY_CT_RUNNERS`, JSON):
`{"default": "local", "train": "kubernetes"}`. `local` runs the stage as a subprocess of the worker;
`kubernetes` runs it in a pod (KubernetesPodOperator) from the stage's image, with the settings in
Variable `kidney_ct_kubernetes` / env `KIDNEY_CT_KUBERNETES` (JSON; keys of `PodSettings`: namespace,
cpu_image, gpu_image, train_gpus, workspace_pvc, workspace, config_map, secret). Training pods request
`nvidia.com/gpu`. In a pod the params file is looked up at the same path relative to the workspace
volume as it has relative to the project directory here.
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

from airflow.sdk import (Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, Variable, dag,
                         get_current_context, task)
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

log = logging.getLogger(__name__)

DAG_ID = "kidney_ct_retraining"
STAGE_REFUSED_EXIT_CODE = 2  # components.common.cli.run_stage: ParamsError / StageError
LOG_TAIL_LINES = 30

INGESTED_MANIFEST = Asset(name="kidney_ct_ingested_manifest", uri="x-kidney-ct://ingested/manifest.csv")
NEW_STUDIES = Asset(name="kidney_ct_new_studies", uri="x-kidney-ct://pacs/new-studies")
PACS_EXPORT = Asset(name="kidney_ct_pacs_export", uri="x-kidney-ct://pacs/export")
WEEKLY = CronTriggerTimetable("0 0 * * 1", timezone="UTC")
RETRAIN_SCHEDULE = AssetOrTimeSchedule(timetable=WEEKLY, assets=(NEW_STUDIES | PACS_EXPORT))
WATCH_DAG_ID = "kidney_ct_pacs_watch"
RUNNER_KEYS = ("kidney_ct_runners", "KIDNEY_CT_RUNNERS")  # (Airflow Variable, env var)
POD_KEYS = ("kidney_ct_kubernetes", "KIDNEY_CT_KUBERNETES")
RUNNERS = ("local", "kubernetes")

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


@dataclass(frozen=True)
class PodSettings:
    """How a stage runs as a Kubernetes pod (KubernetesPodOperator)."""

    namespace: str = "kidney-ct"
    cpu_image: str = "ghcr.io/example/kidney-ct-cpu:latest"
    gpu_image: str = "ghcr.io/example/kidney-ct-gpu:latest"
    train_gpus: int = 1
    workspace_pvc: str = "kidney-ct-workspace"  # shared volume with params and local outputs
    workspace: str = "/workspace"
    config_map: str = "kidney-ct-config"  # MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, ...
    secret: str = "kidney-ct-secrets"  # AWS keys, KIDNEY_CT_SALT, PACS password


def _json_setting(keys: tuple[str, str], get_variable: Callable[[str], str | None],
                  environ: Mapping[str, str]) -> dict:
    """A JSON object from the Airflow Variable, else the env var, else {}; a clear error if malformed."""
    import json

    variable, env = keys
    text = _first_set(get_variable(variable), environ.get(env))
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise AirflowFailException(f"Variable {variable} / env {env} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AirflowFailException(f"Variable {variable} / env {env} must be a JSON object")
    return value


def resolve_runner(stage: str, get_variable: Callable[[str], str | None], environ: Mapping[str, str]) -> str:
    """'local' or 'kubernetes' for `stage`: its own entry, else `default`, else local."""
    config = _json_setting(RUNNER_KEYS, get_variable, environ)
    runner = str(config.get(stage, config.get("default", "local")))
    if runner not in RUNNERS:
        raise AirflowFailException(f"runner {runner!r} for stage {stage} is not one of {', '.join(RUNNERS)} "
                                   f"(Variable {RUNNER_KEYS[0]} / env {RUNNER_KEYS[1]})")
    return runner


def resolve_pod_settings(get_variable: Callable[[str], str | None], environ: Mapping[str, str]) -> PodSettings:
    config = _json_setting(POD_KEYS, get_variable, environ)
    unknown = set(config) - set(PodSettings.__dataclass_fields__)
    if unknown:
        raise AirflowFailException(f"unknown keys {sorted(unknown)} in Variable {POD_KEYS[0]} / env {POD_KEYS[1]}")
    return PodSettings(**config)


def stage_pod_operator(stage: str, settings: StageSettings, pod: PodSettings, task_id: str, *extra_args: str):
    """A KubernetesPodOperator running the stage's entry point in its image on the workspace volume."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    gpus = pod.train_gpus if stage == "train" else 0
    params_in_pod = Path(pod.workspace) / settings.params_file.relative_to(settings.project_dir)
    optional_env = [k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=pod.config_map, optional=True)),
                    k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=pod.secret, optional=True))]
    return KubernetesPodOperator(
        task_id=f"{task_id}_pod", name=f"kidney-ct-{stage}", namespace=pod.namespace,
        image=pod.gpu_image if stage == "train" else pod.cpu_image,
        cmds=["sh", "-ec", 'cd "$1" && shift && exec python -m "$@"', stage],
        arguments=[pod.workspace, f"components.{stage}", "--params", str(params_in_pod), *extra_args],
        container_resources=k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)}) if gpus else None,
        volumes=[k8s.V1Volume(name="workspace", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=pod.workspace_pvc))],
        volume_mounts=[k8s.V1VolumeMount(name="workspace", mount_path=pod.workspace)],
        env_from=optional_env, get_logs=True, on_finish_action="delete_pod",
    )


def run_stage(stage: str, settings: StageSettings, *extra_args: str) -> None:
    """Run a stage where the configuration says: a local subprocess (default) or a Kubernetes pod."""
    get_variable = lambda key: Variable.get(key, default=None)  # noqa: E731
    if resolve_runner(stage, get_variable, os.environ) == "local":
        run_stage_command(stage, settings, *extra_args)
        return
    context = get_current_context()
    pod = resolve_pod_settings(get_variable, os.environ)
    log.info("running %s as a pod in namespace %s", stage, pod.namespace)
    stage_pod_operator(stage, settings, pod, context["ti"].task_id, *extra_args).execute(context)


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
    schedule=RETRAIN_SCHEDULE,
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
        run_stage("generate", current_settings())

    @task(outlets=[INGESTED_MANIFEST])
    def ingest(*, outlet_events: Any = None) -> None:
        settings = current_settings()
        run_stage("ingest", settings)
        outlet_events[INGESTED_MANIFEST].extra = {"manifest": ingested_manifest_path(settings)}

    @task
    def validate() -> None:
        run_stage("validate", current_settings())

    @task
    def preprocess() -> None:
        run_stage("preprocess", current_settings())

    @task
    def augment() -> None:
        run_stage("augment", current_settings())

    @task
    def backbone() -> None:
        run_stage("backbone", current_settings())

    @task
    def features() -> None:
        run_stage("features", current_settings())

    @task
    def list_candidates() -> list[str]:
        return read_candidate_names(current_settings().params_file)

    @task(map_index_template="{{ candidate_name }}")
    def train(candidate: str) -> None:
        get_current_context()["candidate_name"] = candidate  # type: ignore[typeddict-unknown-key]
        run_stage("train", current_settings(), "--candidate", candidate)

    @task
    def evaluate() -> None:
        run_stage("evaluate", current_settings())

    @task
    def leakage() -> None:
        run_stage("leakage", current_settings())

    @task
    def report() -> None:
        run_stage("report", current_settings())

    @task
    def register() -> None:
        run_stage("register", current_settings())

    @task
    def package() -> None:
        run_stage("package", current_settings())

    preprocessed = generate() >> ingest() >> validate() >> preprocess()
    converted = backbone()
    featured = [preprocessed, converted] >> features()
    trained = train.expand(candidate=list_candidates())
    scored = [preprocessed >> augment(), featured] >> trained >> evaluate()
    scored >> register() >> package()
    [scored, featured >> leakage()] >> report()


kidney_ct_retraining()


@dag(
    dag_id=WATCH_DAG_ID,
    description="Hourly: ask the PACS (QIDO-RS) for studies new since the last ingest; update the asset if any",
    doc_md="Updates the asset `kidney_ct_new_studies` (which triggers `kidney_ct_retraining`) when the PACS at "
           "`ingest.dicomweb_url` lists studies not pulled yet; skips, emitting nothing, when there are none "
           "or no PACS is configured. Same settings as `kidney_ct_retraining` (project dir, params file).",
    schedule="@hourly",
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "retry_delay": timedelta(minutes=2)},
    tags=["kidney-ct", "mlops", "pacs"],
    params={
        "project_dir": Param(None, type=["null", "string"], description="project root (working dir of stages)"),
        "params_file": Param(None, type=["null", "string"], description="params file, relative to project_dir"),
    },
)
def kidney_ct_pacs_watch() -> None:
    """One task: count new studies; emit `kidney_ct_new_studies` only when there are some."""

    @task(outlets=[NEW_STUDIES])
    def check_pacs(*, outlet_events: Any = None) -> int:
        import json
        import tempfile

        settings = current_settings()
        with tempfile.TemporaryDirectory() as folder:
            result_file = Path(folder) / "check.json"
            run_stage_command("ingest", settings, "--check-new", str(result_file))
            result = json.loads(result_file.read_text())
        if not result["new_studies"]:
            raise AirflowSkipException(result.get("reason") or f"no new studies among {result['listed']}")
        outlet_events[NEW_STUDIES].extra = result
        return int(result["new_studies"])

    check_pacs()


kidney_ct_pacs_watch()

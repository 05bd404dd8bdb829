"""
### Kidney CT weekly retraining

Runs the project's stages, in the order of `dvc.yaml`, once a week (and whenever it is
triggered by hand):

`generate -> ingest -> validate -> preprocess -> [augment, backbone -> features] -> train (one mapped task
per candidate) -> evaluate -> register -> package`

`monitor` (after ingest, before register) compares what arrived since the champion was registered with the
data it was trained on and scores the champion on the new labelled cases (verdict: no champion, no new data,
too few new series, no drift, drift, degraded: `reports/monitor/monitor.json`); `alert` then POSTs a drift or
degraded verdict to `monitor.alert_webhook` once (skipped otherwise), and the run goes on to retrain; register
compares the challenger with the champion on the same new held-out cases (docs/monitoring.md).

Each task only **wires** a stage. By default (runner `dvc`) it runs
`python -m components.common.dvc_run <stage> --params <file>` in the project directory, a git + DVC
checkout: the run's params file is copied over its `params.yaml`, `dvc repro --single-item <stage>`
runs the stage's `cmd` (`python -m components.<stage>`, as a plain `dvc repro` and Kubeflow do) only
when its deps or params changed, its outputs are pushed to the default DVC remote, and `dvc.lock`
(with `params.yaml`) is committed on the checked-out branch, message `kidney_ct_retraining <run id>:
<stage>`. An **unchanged stage ends as `skipped`** (its dependents still run: trigger rule
`none_failed`), so a run with nothing new is a string of skips. A task fails with the stage's own
message when the stage exits non-zero. All ML logic lives in `components/`.

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
manifest's path (an unchanged, skipped ingest emits no event: there is no new data).

**When it runs** (asset-aware): every week (Monday 00:00 UTC) **or** as soon as one of these assets
is updated, whichever comes first:

* `kidney_ct_new_studies` — emitted by the DAG `kidney_ct_pacs_watch`, which asks the PACS
  (QIDO-RS, `ingest.dicomweb_url`) every hour whether studies arrived since the last ingest and
  skips (no event) when none did;
* `kidney_ct_pacs_export` — for folder exports: the job that drops a new export updates it (e.g.
  `POST /api/v2/assets/events` with `{"asset_id": ..}` on Airflow's REST API).

**Retries are safe**: a stage whose dvc.lock entry was written is not rerun, push and commit are
no-ops the second time, and every stage is idempotent anyway (ingest skips stored objects, train
resumes its checkpointed MLflow run, register reuses the model version of the same run or of the
same data and params fingerprint), so a retried task never duplicates data or model versions.

**Where each stage runs** — chosen per stage by the env var `KIDNEY_CT_RUNNERS` (JSON, e.g.
`{"default": "dvc", "train": "kubernetes"}`), read when this file is parsed because it decides the
operator (no Variable: that would need the metadata DB at parse time). `dvc` (default): the tracked
run above, a subprocess of the worker; `local`: `python -m components.<stage> --params <file>` directly,
untracked (a project folder without git/DVC, e.g. `dag.test()`); `kubernetes`: the task **is** a
KubernetesPodOperator (train: one mapped pod per candidate) that runs the same `dvc_run` command in
the stage's image on the workspace volume (a git + DVC checkout), exit code 99 = unchanged = skipped;
settings in env `KIDNEY_CT_KUBERNETES` (JSON; the keys of params.yaml's `cluster`, `ClusterParams`, the
type Kubeflow Pipelines uses too: namespace, cpu_image, gpu_image, train_gpus, train_cpu, train_memory,
workspace_pvc, workspace, config_map, secret; env because it is read at parse time, when no params file may
be opened). Training pods request `nvidia.com/gpu`, cpu and memory. In a pod the DAG param `params_file`
is read relative to the workspace (default `params.yaml`).
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    Variable,
    dag,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from components.common.cluster import StageContainer, cluster_settings, stage_arguments, stage_container
from components.common.params import ClusterParams, Params, ParamsError, load_params

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
RUNNERS_ENV = "KIDNEY_CT_RUNNERS"  # read at parse time: which operator each stage's task is
POD_ENV = "KIDNEY_CT_KUBERNETES"
RUNNERS = ("dvc", "local", "kubernetes")
STAGES = ("generate", "ingest", "monitor", "validate", "preprocess", "augment", "backbone", "features", "train", "evaluate",
          "leakage", "report", "register", "package")
UNCHANGED_EXIT_CODE = 99  # components.common.dvc_run --skip-exit-code: the stage was unchanged
STAGE_TRIGGER_RULE = "none_failed"  # an unchanged (skipped) upstream stage still lets its dependents run
POD_PARAMS_TEMPLATE = "{{ params.params_file or 'params.yaml' }}"  # relative to the pod's workspace
POD_MESSAGE_TEMPLATE = "kidney_ct_retraining {{ run_id }}"

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


def _stream(label: str, command: list[str], cwd: Path) -> tuple[int, list[str]]:
    """Run `command` in `cwd`, logging its output live; return the exit code and the last lines."""
    log.info("running %s in %s", " ".join(command), cwd)
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    with subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            log.info("[%s] %s", label, line.rstrip())
            tail.append(line.rstrip())
    return process.returncode, list(tail)


def run_stage_command(stage: str, settings: StageSettings, *extra_args: str, candidate: str | None = None) -> None:
    """Runner `local`: `python -m components.<stage> --params FILE [--candidate NAME] [extra]`, untracked by DVC.

    A subprocess per stage (rather than calling `main()` in the worker) because: TensorFlow keeps
    the memory it grabbed (and its graph/Keras global state) for the life of the process, so
    in-process stages would pile up memory across tasks in a long-lived worker; a crash or an
    OOM kill takes down only the child, which Airflow then reports and retries; and it is the
    exact command dvc.yaml runs, so `dvc repro` and this DAG execute the same code path.
    """
    command = [sys.executable, "-m", *stage_arguments(stage, str(settings.params_file), candidate), *extra_args]
    returncode, tail = _stream(stage, command, settings.project_dir)
    _raise_on_failure(stage, returncode, tail)


def dvc_target(stage: str, candidate: str | None = None) -> str:
    """The dvc.yaml stage name: `train@<candidate>` for a training task, else the stage itself."""
    return f"{stage}@{candidate}" if candidate else stage


def dvc_run_arguments(target: str, params_file: str, message: str) -> list[str]:
    """`python -m` arguments of the tracked run of one stage (worker and pod run the same)."""
    return ["components.common.dvc_run", target, "--params", params_file, "--message", message,
            "--skip-exit-code", str(UNCHANGED_EXIT_CODE)]


def run_stage_dvc(target: str, settings: StageSettings, run_id: str) -> None:
    """Runner `dvc`: the stage through DVC (repro --single-item, push, commit dvc.lock); skip if unchanged."""
    arguments = dvc_run_arguments(target, str(settings.params_file), f"{DAG_ID} {run_id}")
    returncode, tail = _stream(target, [sys.executable, "-m", *arguments], settings.project_dir)
    if returncode == UNCHANGED_EXIT_CODE:
        raise AirflowSkipException(f"stage {target} unchanged since dvc.lock (same deps, params and code): "
                                   "nothing to do, its outputs are the recorded ones")
    _raise_on_failure(target, returncode, tail)


def _raise_on_failure(stage: str, returncode: int, tail: list[str]) -> None:
    """Turn a stage's exit code into Airflow's verdict: refused = no retry, crashed = retryable."""
    if returncode == 0:
        return
    message = f"stage {stage} exited with code {returncode}:\n" + "\n".join(tail)
    if returncode == STAGE_REFUSED_EXIT_CODE:
        raise AirflowFailException(message)
    raise AirflowException(message)


def _json_setting(env: str, environ: Mapping[str, str]) -> dict:
    """A JSON object from env var `env`, else {}; a clear error if malformed (raised at parse time)."""
    import json

    text = _first_set(environ.get(env))
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"env {env} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"env {env} must be a JSON object")
    return value


def resolve_runners(stages: tuple[str, ...], environ: Mapping[str, str]) -> dict[str, str]:
    """Each stage's runner from env KIDNEY_CT_RUNNERS: its own entry, else `default`, else `dvc`.

    Read when the DAG file is parsed (it decides which operator a task is), from the environment
    only: an Airflow Variable would need the metadata DB at parse time.
    """
    config = _json_setting(RUNNERS_ENV, environ)
    unknown = set(config) - set(stages) - {"default"}
    if unknown:
        raise ValueError(f"env {RUNNERS_ENV} names unknown stages {sorted(unknown)}")
    runners = {stage: str(config.get(stage, config.get("default", "dvc"))) for stage in stages}
    wrong = {stage: runner for stage, runner in runners.items() if runner not in RUNNERS}
    if wrong:
        raise ValueError(f"env {RUNNERS_ENV}: runners {wrong} are not among {', '.join(RUNNERS)}")
    return runners


def resolve_cluster(environ: Mapping[str, str]) -> ClusterParams:
    """The pods' settings from env KIDNEY_CT_KUBERNETES (keys of params `cluster`), images pinned by digest."""
    return cluster_settings(_json_setting(POD_ENV, environ), f"env {POD_ENV}")


def pod_container(cluster: ClusterParams, target: str) -> StageContainer:
    """The pod of dvc.yaml stage `target`: the tracked run of it in the workspace (params templated per run)."""
    arguments = dvc_run_arguments(target, POD_PARAMS_TEMPLATE, POD_MESSAGE_TEMPLATE)
    return stage_container(cluster, target.split("@")[0], arguments)


def pod_kwargs(container: StageContainer, stage: str, cluster: ClusterParams) -> dict[str, Any]:
    """KubernetesPodOperator arguments shared by every task of `stage` (image, volume, env, resources)."""
    from kubernetes.client import models as k8s

    optional_env = [k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=cluster.config_map, optional=True)),
                    k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=cluster.secret, optional=True))]
    resources = (k8s.V1ResourceRequirements(limits=container.limits or None, requests=dict(container.requests) or None)
                 if container.limits or container.requests else None)
    return dict(
        name=f"kidney-ct-{stage}", namespace=cluster.namespace, image=container.image, cmds=list(container.command),
        container_resources=resources,
        volumes=[k8s.V1Volume(name="workspace", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=cluster.workspace_pvc))],
        volume_mounts=[k8s.V1VolumeMount(name="workspace", mount_path=cluster.workspace)],
        env_from=optional_env, get_logs=True, on_finish_action="delete_pod",
        skip_on_exit_code=UNCHANGED_EXIT_CODE, trigger_rule=STAGE_TRIGGER_RULE,
    )


def _params(params_file: Path) -> Params:
    """The run's typed params (run time only); a task failure that says why when they are invalid."""
    try:
        return load_params(params_file)
    except ParamsError as exc:
        raise AirflowFailException(str(exc)) from None


def read_candidate_names(params_file: Path) -> list[str]:
    """Names under `train.candidates` of a params file, in file order."""
    return list(_params(params_file).train.candidates)


def ingested_manifest_path(settings: StageSettings) -> str:
    """Where ingest wrote manifest.csv, from the params file's `paths.ingested`."""
    ingested = Path(_params(settings.params_file).paths.ingested)
    return str((settings.project_dir / ingested / "manifest.csv").absolute())


def run_stage(stage: str, runner: str, candidate: str | None = None) -> StageSettings:
    """Run a stage on the worker: through DVC (`dvc`) or directly (`local`); return the run's settings."""
    settings = current_settings()
    if runner == "dvc":
        run_stage_dvc(dvc_target(stage, candidate), settings, get_current_context()["run_id"])
    else:
        run_stage_command(stage, settings, candidate=candidate)
    return settings


def stage_task(stage: str, runner: str, cluster: ClusterParams | None):
    """The task of one (unmapped) stage: a KubernetesPodOperator, or a Python task on the worker."""
    outlets = [INGESTED_MANIFEST] if stage == "ingest" else []
    if runner == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        container = pod_container(cluster, stage)
        return KubernetesPodOperator(task_id=stage, outlets=outlets, arguments=list(container.args),
                                     **pod_kwargs(container, stage, cluster))

    @task(task_id=stage, outlets=outlets, trigger_rule=STAGE_TRIGGER_RULE)
    def body(*, outlet_events: Any = None) -> None:
        settings = run_stage(stage, runner)
        if outlets:
            outlet_events[INGESTED_MANIFEST].extra = {"manifest": ingested_manifest_path(settings)}

    return body()


def alert_task(runner: str, cluster: ClusterParams | None):
    """`alert`: the monitor's verdict to `monitor.alert_webhook` when it is drift or degraded, once (its ledger
    makes a retry send nothing twice); skipped when nothing was sent. Retraining does not wait for it."""
    arguments = ["components.monitor.alert", "--run-label", f"{DAG_ID} {{{{ run_id }}}}",
                 "--skip-exit-code", str(UNCHANGED_EXIT_CODE)]
    if runner == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        container = stage_container(cluster, "monitor", [*arguments, "--params", POD_PARAMS_TEMPLATE])
        return KubernetesPodOperator(task_id="alert", arguments=list(container.args),
                                     **{**pod_kwargs(container, "monitor", cluster), "trigger_rule": "all_success"})

    @task(task_id="alert")
    def alert() -> None:
        settings = current_settings()
        run_label = f"{DAG_ID} {get_current_context()['run_id']}"
        command = [sys.executable, "-m", *arguments[:2], run_label, *arguments[3:], "--params",
                   str(settings.params_file)]
        returncode, tail = _stream("alert", command, settings.project_dir)
        if returncode == UNCHANGED_EXIT_CODE:
            raise AirflowSkipException("\n".join(tail[-1:]) or "no alert to send")
        _raise_on_failure("alert", returncode, tail)

    return alert()


def train_tasks(runner: str, cluster: ClusterParams | None):
    """`train`, mapped over the candidates `list_candidates` reads from the run's params file."""

    @task(trigger_rule=STAGE_TRIGGER_RULE)
    def list_candidates() -> list[str]:
        return read_candidate_names(current_settings().params_file)

    names = list_candidates()
    if runner == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        arguments = names.map(lambda name: list(pod_container(cluster, dvc_target("train", name)).args))
        kwargs = pod_kwargs(pod_container(cluster, "train"), "train", cluster)
        return names, KubernetesPodOperator.partial(task_id="train", **kwargs).expand(arguments=arguments)

    @task(map_index_template="{{ candidate_name }}", trigger_rule=STAGE_TRIGGER_RULE)
    def train(candidate: str) -> None:
        get_current_context()["candidate_name"] = candidate  # type: ignore[typeddict-unknown-key]
        run_stage("train", runner, candidate)

    return names, train.expand(candidate=names)


@dag(
    dag_id=DAG_ID,
    description="Weekly retrain, gate, register and package of the kidney CT classifier",
    doc_md=__doc__,
    schedule=RETRAIN_SCHEDULE,
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
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
    runners = resolve_runners(STAGES, os.environ)
    cluster = resolve_cluster(os.environ) if "kubernetes" in runners.values() else None
    task_of = {stage: stage_task(stage, runners[stage], cluster) for stage in STAGES if stage != "train"}
    names, trained = train_tasks(runners["train"], cluster)

    preprocessed = task_of["generate"] >> task_of["ingest"] >> task_of["validate"] >> task_of["preprocess"]
    preprocessed >> names
    featured = [preprocessed, task_of["backbone"]] >> task_of["features"]  # a no-op unless backbone.enabled
    crossvalidated = featured >> task_of["leakage"]  # the grouped CV that certifies a cv_refit model
    scored = [[preprocessed >> task_of["augment"], featured] >> trained, crossvalidated] >> task_of["evaluate"]
    monitored = task_of["ingest"] >> task_of["monitor"]  # against the champion of before (docs/monitoring.md)
    monitored >> alert_task(runners["monitor"], cluster)
    [scored, monitored] >> task_of["register"] >> task_of["package"]
    [scored, crossvalidated, monitored] >> task_of["report"]


kidney_ct_retraining()


@dag(
    dag_id=WATCH_DAG_ID,
    description="Hourly: ask the PACS (QIDO-RS) for studies new since the last ingest; update the asset if any",
    doc_md="Updates the asset `kidney_ct_new_studies` (which triggers `kidney_ct_retraining`) when the PACS at "
           "`ingest.dicomweb_url` lists studies not pulled yet; skips, emitting nothing, when there are none "
           "or no PACS is configured. Same settings as `kidney_ct_retraining` (project dir, params file).",
    schedule="@hourly",
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
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

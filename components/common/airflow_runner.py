"""How Airflow runs a stage: settings, the subprocess, the tracked DVC run, the pod, and the task factories.

`dags/kidney_ct_retraining.py` only wires the tasks this module makes, one per stage of dvc.yaml's stage graph
(components.common.stage_graph, the graph Kubeflow Pipelines is built from too); docs/airflow.md describes
the runners and settings. Every Airflow import is inside a function: this module is importable where no
Airflow is installed (a stage's container), and importing it costs nothing until a DAG uses it.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from components.common.cluster import StageContainer, cluster_settings, stage_arguments, stage_container
from components.common.params import ClusterParams, Params, ParamsError, load_params
from components.common.stage_graph import PROJECT_ROOT

log = logging.getLogger(__name__)

DAG_ID = "kidney_ct_retraining"
STAGE_REFUSED_EXIT_CODE = 2  # components.common.cli.run_stage: ParamsError / StageError
UNCHANGED_EXIT_CODE = 99  # components.common.dvc_run --skip-exit-code: the stage was unchanged
LOG_TAIL_LINES = 30
RUNNERS_ENV = "KIDNEY_CT_RUNNERS"  # read at parse time: which operator each stage's task is
TRAIN_QUEUE_ENV = "KIDNEY_CT_TRAIN_QUEUE"  # read at parse time: the executor queue of `train` (GPU workers)
POD_ENV = "KIDNEY_CT_KUBERNETES"
RUNNERS = ("dvc", "local", "kubernetes")
STAGE_TRIGGER_RULE = "none_failed"  # an unchanged (skipped) upstream stage still lets its dependents run
POD_PARAMS_TEMPLATE = "{{ params.params_file or 'params.yaml' }}"  # relative to the pod's workspace
POD_MESSAGE_TEMPLATE = f"{DAG_ID} {{{{ run_id }}}}"

# (DAG param, Airflow Variable, environment variable) for each run-time setting.
PROJECT_DIR_KEYS = ("project_dir", "kidney_ct_project_dir", "KIDNEY_CT_PROJECT_DIR")
PARAMS_FILE_KEYS = ("params_file", "kidney_ct_params", "KIDNEY_CT_PARAMS")

# No retry_delay: Airflow's `[core] default_task_retry_delay` (300 s unless configured) decides it.
DEFAULT_ARGS = {
    "owner": "mlops",
    "retries": 1,
    "execution_timeout": timedelta(hours=3),
}


def _fail(message: str) -> Exception:
    """A task failure without retry (the same input gives the same answer)."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(message)


def _skip(message: str) -> Exception:
    from airflow.sdk.exceptions import AirflowSkipException

    return AirflowSkipException(message)


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
        raise _fail(f"project directory {project_dir} does not exist ({_how_to_set(PROJECT_DIR_KEYS)})")
    if not params_file.is_file():
        raise _fail(f"params file {params_file} does not exist ({_how_to_set(PARAMS_FILE_KEYS)})")
    return StageSettings(project_dir.absolute(), params_file.absolute())


def current_settings() -> StageSettings:
    """The settings of the running task's DAG run (run time only: reads context, Variables, env)."""
    from airflow.sdk import Variable, get_current_context

    return resolve_settings(
        run_params=get_current_context()["params"],
        get_variable=lambda key: Variable.get(key, default=None),
        environ=os.environ,
        default_project_dir=PROJECT_ROOT,
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
    exact command dvc.yaml runs, so `dvc repro` and the DAG execute the same code path.
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
        raise _skip(f"stage {target} unchanged since dvc.lock (same deps, params and code): "
                    "nothing to do, its outputs are the recorded ones")
    _raise_on_failure(target, returncode, tail)


def _raise_on_failure(stage: str, returncode: int, tail: list[str]) -> None:
    """Turn a stage's exit code into Airflow's verdict: refused = no retry, crashed = retryable."""
    if returncode == 0:
        return
    message = f"stage {stage} exited with code {returncode}:\n" + "\n".join(tail)
    if returncode == STAGE_REFUSED_EXIT_CODE:
        raise _fail(message)
    from airflow.sdk.exceptions import AirflowException

    raise AirflowException(message)


def _json_setting(env: str, environ: Mapping[str, str]) -> dict:
    """A JSON object from env var `env`, else {}; a clear error if malformed (raised at parse time)."""
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
        raise _fail(str(exc)) from None


def read_candidate_names(params_file: Path) -> list[str]:
    """Names under `train.candidates` of a params file, in file order."""
    return list(_params(params_file).train.candidates)


def ingested_manifest_path(settings: StageSettings) -> str:
    """Where ingest wrote manifest.csv, from the params file's `paths.ingested`."""
    ingested = Path(_params(settings.params_file).paths.ingested)
    return str((settings.project_dir / ingested / "manifest.csv").absolute())


def run_params() -> dict[str, Any]:
    """The DAG params (trigger form / conf) both DAGs take: where the project and its params file are."""
    from airflow.sdk import Param

    return {
        "project_dir": Param(None, type=["null", "string"], description="project root (working dir of stages)"),
        "params_file": Param(None, type=["null", "string"], description="params file, relative to project_dir"),
    }


def run_stage(stage: str, runner: str, candidate: str | None = None) -> StageSettings:
    """Run a stage on the worker: through DVC (`dvc`) or directly (`local`); return the run's settings."""
    from airflow.sdk import get_current_context

    settings = current_settings()
    if runner == "dvc":
        run_stage_dvc(dvc_target(stage, candidate), settings, get_current_context()["run_id"])
    else:
        run_stage_command(stage, settings, candidate=candidate)
    return settings


def stage_task(stage: str, runner: str, cluster: ClusterParams | None, manifest_asset: Any = None):
    """The task of one (unmapped) stage: a KubernetesPodOperator, or a Python task on the worker.

    `manifest_asset`: the asset the stage updates with the path of the manifest it wrote (ingest).
    """
    outlets = [manifest_asset] if manifest_asset is not None else []
    if runner == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        container = pod_container(cluster, stage)
        return KubernetesPodOperator(task_id=stage, outlets=outlets, arguments=list(container.args),
                                     **pod_kwargs(container, stage, cluster))
    from airflow.sdk import task

    @task(task_id=stage, outlets=outlets, trigger_rule=STAGE_TRIGGER_RULE)
    def body(*, outlet_events: Any = None) -> None:
        settings = run_stage(stage, runner)
        if outlets:
            outlet_events[manifest_asset].extra = {"manifest": ingested_manifest_path(settings)}

    return body()


def alert_task(runner: str, cluster: ClusterParams | None):
    """`alert`: the monitor's verdict to `monitor.alert_webhook` when it is drift or degraded, once (its ledger
    makes a retry send nothing twice); skipped when nothing was sent. Retraining does not wait for it."""
    arguments = ["components.monitor.alert", "--run-label", POD_MESSAGE_TEMPLATE,
                 "--skip-exit-code", str(UNCHANGED_EXIT_CODE)]
    if runner == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        container = stage_container(cluster, "monitor", [*arguments, "--params", POD_PARAMS_TEMPLATE])
        return KubernetesPodOperator(task_id="alert", arguments=list(container.args),
                                     **{**pod_kwargs(container, "monitor", cluster), "trigger_rule": "all_success"})
    from airflow.sdk import get_current_context, task

    @task(task_id="alert")
    def alert() -> None:
        settings = current_settings()
        run_label = f"{DAG_ID} {get_current_context()['run_id']}"
        command = [sys.executable, "-m", *arguments[:2], run_label, *arguments[3:], "--params",
                   str(settings.params_file)]
        returncode, tail = _stream("alert", command, settings.project_dir)
        if returncode == UNCHANGED_EXIT_CODE:
            raise _skip("\n".join(tail[-1:]) or "no alert to send")
        _raise_on_failure("alert", returncode, tail)

    return alert()


def train_queue(environ: Mapping[str, str]) -> dict[str, str]:
    """`{"queue": NAME}` for the train tasks from env KIDNEY_CT_TRAIN_QUEUE (the Celery queue the GPU workers
    consume), else {}: the executor's default queue, where every worker takes it."""
    name = _first_set(environ.get(TRAIN_QUEUE_ENV))
    return {"queue": name.strip()} if name else {}


def changes_task(runners: Mapping[str, str]):
    """`changes`: one `dvc status` of every stage before any stage task starts, on a worker (which mounts the
    workspace). When nothing changed since dvc.lock it pushes every cached output and short-circuits: the
    scheduler marks every stage task skipped without starting it. None when a stage runs untracked (runner
    `local`: DVC cannot say whether it would change); runners `dvc` and `kubernetes` both run DVC's stages."""
    if "local" in runners.values():
        return None
    from airflow.sdk import task

    @task.short_circuit(task_id="changes")
    def changes() -> bool:
        settings = current_settings()
        command = [sys.executable, "-m", "components.common.dvc_run", "--status", "--params",
                   str(settings.params_file), "--skip-exit-code", str(UNCHANGED_EXIT_CODE)]
        returncode, tail = _stream("changes", command, settings.project_dir)
        if returncode == UNCHANGED_EXIT_CODE:
            log.info("nothing changed since dvc.lock: every stage is skipped")
            return False
        _raise_on_failure("changes", returncode, tail)
        return True

    return changes()


def train_tasks(runner: str, cluster: ClusterParams | None):
    """`list_candidates` and `train` mapped over the candidates it reads from the run's params file."""
    from airflow.sdk import get_current_context, task

    @task(trigger_rule=STAGE_TRIGGER_RULE)
    def list_candidates() -> list[str]:
        return read_candidate_names(current_settings().params_file)

    names = list_candidates()
    if runner == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        arguments = names.map(lambda name: list(pod_container(cluster, dvc_target("train", name)).args))
        kwargs = pod_kwargs(pod_container(cluster, "train"), "train", cluster)
        return names, KubernetesPodOperator.partial(task_id="train", **kwargs, **train_queue(os.environ)).expand(
            arguments=arguments)

    @task(map_index_template="{{ candidate_name }}", trigger_rule=STAGE_TRIGGER_RULE, **train_queue(os.environ))
    def train(candidate: str) -> None:
        get_current_context()["candidate_name"] = candidate  # type: ignore[typeddict-unknown-key]
        run_stage("train", runner, candidate)

    return names, train.expand(candidate=names)


def check_pacs_task(new_studies_asset: Any):
    """`check_pacs`: ask the PACS (ingest --check-new) for studies not pulled yet; update the asset with the
    count, or skip, emitting nothing, when there are none or no PACS is configured."""
    from airflow.sdk import task

    @task(outlets=[new_studies_asset])
    def check_pacs(*, outlet_events: Any = None) -> int:
        settings = current_settings()
        with tempfile.TemporaryDirectory() as folder:
            result_file = Path(folder) / "check.json"
            run_stage_command("ingest", settings, "--check-new", str(result_file))
            result = json.loads(result_file.read_text())
        if not result["new_studies"]:
            raise _skip(result.get("reason") or f"no new studies among {result['listed']}")
        outlet_events[new_studies_asset].extra = result
        return int(result["new_studies"])

    return check_pacs()

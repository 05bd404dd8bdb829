"""
### Kidney CT weekly retraining

Runs the stages of `dvc.yaml` in the order of its stage graph (what each stage reads from which other
stage's outputs, the graph Kubeflow Pipelines is built from too), weekly and whenever triggered:

`generate -> ingest -> validate -> preprocess -> [augment, backbone -> features -> leakage] -> train
(one mapped task per candidate) -> evaluate -> register -> package`, and `report`

`monitor` (after ingest, before register) compares the new data with the champion's and scores the champion on
the new labelled cases (`reports/monitor/monitor.json`); `alert` then POSTs a drift or degraded verdict to
`monitor.alert_webhook` once (skipped otherwise), and the run goes on to retrain (docs/monitoring.md).
`list_candidates` reads `params.train.candidates` at run time and `train` is mapped over the names it
returns: a candidate added to the params file is a training task; `evaluate` waits for every candidate.

**A run with nothing new costs one check**: the first task, `changes`, asks DVC once which stages changed since
`dvc.lock` (`dvc_run --status`); when none did, it pushes the cached outputs and every stage task is skipped
without starting (runner `dvc` everywhere; with another runner the task is not there).

**Each task runs one stage** (runner `dvc`, the default): `python -m components.common.dvc_run <stage>` in the
project directory, a git + DVC checkout: DVC runs the stage only when its deps or params changed, pushes its
outputs and commits `dvc.lock`. An **unchanged stage ends as `skipped`** and its dependents still run.
A stage that refuses its input or verdict (exit code 2: a failed data check, a failed gate) fails at once
without a retry; a crash is retried once. Retries are safe: every stage is idempotent.

**Where the project and its params are**, looked up when a task runs, first match wins: the DAG param
(trigger form / conf) `project_dir` / `params_file`, the Airflow Variable `kidney_ct_project_dir` /
`kidney_ct_params`, the env var `KIDNEY_CT_PROJECT_DIR` / `KIDNEY_CT_PARAMS`, else the project checkout
and its `params.yaml`. Every path the stages use comes from the params file's `paths`.

**When**: Mondays 00:00 UTC **or** when the asset `kidney_ct_new_studies` (the DAG `kidney_ct_pacs_watch`
found new PACS studies) or `kidney_ct_pacs_export` (a new folder export) is updated. `ingest` updates
`kidney_ct_ingested_manifest`.

**Where each stage runs**: env `KIDNEY_CT_RUNNERS` (JSON, e.g. `{"default": "dvc", "train": "kubernetes"}`):
`dvc`, `local` (the stage directly, untracked) or `kubernetes` (a pod, settings in env `KIDNEY_CT_KUBERNETES`).
Env `KIDNEY_CT_TRAIN_QUEUE` puts `train` on that executor queue (CeleryExecutor: the queue the GPU workers consume).

Reference (runners, settings, pods, how this DAG is built): docs/airflow.md. The runner code is
`components/common/airflow_runner.py`; this file only wires it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, dag

from components.common.airflow_runner import (
    DAG_ID,
    DEFAULT_ARGS,
    alert_task,
    changes_task,
    check_pacs_task,
    resolve_cluster,
    resolve_runners,
    run_params,
    stage_task,
    train_tasks,
)
from components.common.stage_graph import direct_upstream, project_stage_graph, topological

INGESTED_MANIFEST = Asset(name="kidney_ct_ingested_manifest", uri="x-kidney-ct://ingested/manifest.csv")
NEW_STUDIES = Asset(name="kidney_ct_new_studies", uri="x-kidney-ct://pacs/new-studies")
PACS_EXPORT = Asset(name="kidney_ct_pacs_export", uri="x-kidney-ct://pacs/export")
WEEKLY = CronTriggerTimetable("0 0 * * 1", timezone="UTC")
RETRAIN_SCHEDULE = AssetOrTimeSchedule(timetable=WEEKLY, assets=(NEW_STUDIES | PACS_EXPORT))
WATCH_DAG_ID = "kidney_ct_pacs_watch"

# dvc.yaml's stage graph (read when this file is parsed: the code's own dvc.yaml + params.yaml), each stage
# linked to the upstream stages it does not already reach through another (the transitive reduction).
STAGE_GRAPH = direct_upstream(project_stage_graph())


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
    params=run_params(),
)
def kidney_ct_retraining() -> None:
    """A task per stage of the graph, linked as the graph is; train is mapped over the candidates."""
    runners = resolve_runners(tuple(STAGE_GRAPH), os.environ)
    cluster = resolve_cluster(os.environ) if "kubernetes" in runners.values() else None
    task_of = {}
    changes = changes_task(runners)  # one `dvc status` first: nothing changed -> every stage skipped at once
    for stage in topological(STAGE_GRAPH):
        if stage == "train":
            names, task_of[stage] = train_tasks(runners[stage], cluster)
            task_of["preprocess"] >> names  # list_candidates: once the data is prepared
        else:
            task_of[stage] = stage_task(stage, runners[stage], cluster,
                                        manifest_asset=INGESTED_MANIFEST if stage == "ingest" else None)
        for upstream in sorted(STAGE_GRAPH[stage]):
            task_of[upstream] >> task_of[stage]
        if changes is not None and not STAGE_GRAPH[stage]:
            changes >> task_of[stage]
    task_of["monitor"] >> alert_task(runners["monitor"], cluster)  # retraining does not wait for the alert


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
    params=run_params(),
)
def kidney_ct_pacs_watch() -> None:
    """One task: count new studies; emit `kidney_ct_new_studies` only when there are some."""
    check_pacs_task(NEW_STUDIES)


kidney_ct_pacs_watch()

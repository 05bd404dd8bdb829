"""One MLflow parent run per pipeline run: every candidate's run nests under it; evaluate closes it."""

from __future__ import annotations

import os
import time

PARENT_TAG = "kidney_ct.pipeline_parent"
PARENT_ENV = "KIDNEY_CT_PARENT_RUN_ID"  # an orchestrator may create the parent itself and pass its id
PARENT_RUN_TAG = "mlflow.parentRunId"  # what nests a run under another in MLflow


def open_parent_run(client, experiment_id: str, data_version: str) -> str:
    """The id of the open parent run for this data version, created on first use.

    A pipeline run opens the parent at its first trained candidate and `evaluate` finishes it, so the next
    pipeline run gets a new one; a killed and re-run pipeline keeps adding to the same open parent.
    Candidates trained at once (Airflow's mapped tasks) may each find none and each create one: no store
    offers an atomic "create unless it exists", so `evaluate`, which runs once after every candidate, folds
    them into one (`merge_parent_runs`). An orchestrator may instead create the parent and pass PARENT_ENV.
    """
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    found = open_parents(client, experiment_id, data_version)
    if found:
        return found[0].info.run_id
    return client.create_run(experiment_id, run_name=f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}",
                             tags={PARENT_TAG: "true", "data_version": data_version, "stage": "pipeline"}).info.run_id


def open_parents(client, experiment_id: str, data_version: str) -> list:
    """Running parent runs of this data version, earliest first (ties broken by run id, the same for all)."""
    runs = client.search_runs(
        [experiment_id], max_results=100,
        filter_string=f"tags.`{PARENT_TAG}` = 'true' and attributes.status = 'RUNNING' "
                      f"and tags.data_version = '{data_version}'")
    return sorted(runs, key=earliest_first)


def earliest_first(run) -> tuple[int, str]:
    return run.info.start_time, run.info.run_id


def merge_parent_runs(client, child_run_ids: list[str]) -> str | None:
    """Nest every child (and every run nested under a sibling parent) under one parent; delete the others.

    Returns the parent kept (the earliest), or None when no child has a parent. Safe to run again.
    """
    named = {client.get_run(child).data.tags.get(PARENT_RUN_TAG) for child in child_run_ids} - {None}
    if len(named) <= 1:
        return next(iter(named), None)
    parents = sorted((client.get_run(parent) for parent in named), key=earliest_first)
    kept = parents[0].info.run_id
    for extra in parents[1:]:
        nested = client.search_runs([extra.info.experiment_id], max_results=1000,
                                    filter_string=f"tags.`{PARENT_RUN_TAG}` = '{extra.info.run_id}'")
        for run in nested:
            client.set_tag(run.info.run_id, PARENT_RUN_TAG, kept)
        client.delete_run(extra.info.run_id)
    return kept

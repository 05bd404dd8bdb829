"""One MLflow parent run per pipeline run: every candidate's run nests under it; evaluate closes it."""

from __future__ import annotations

import os
import time

PARENT_TAG = "kidney_ct.pipeline_parent"
PARENT_ENV = "KIDNEY_CT_PARENT_RUN_ID"  # an orchestrator may create the parent itself and pass its id


def open_parent_run(client, experiment_id: str, data_version: str) -> str:
    """The id of the open parent run for this data version, created on first use.

    A pipeline run opens the parent at its first trained candidate and `evaluate` finishes it, so the next
    pipeline run gets a new one; a killed and re-run pipeline keeps adding to the same open parent.
    Candidates trained at once (Airflow's mapped tasks) may each find none and create one: every creator then
    looks again and all keep the earliest, deleting their own if it lost, so the candidates share one parent.
    ("Earliest" is by client start time: two parents can only survive if the creators' clocks differ by more
    than the moment between one's create and re-check; an orchestrator can rule it out by passing PARENT_ENV.)
    """
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    found = open_parents(client, experiment_id, data_version)
    if found:
        return found[0].info.run_id
    ours = client.create_run(experiment_id, run_name=f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}",
                             tags={PARENT_TAG: "true", "data_version": data_version, "stage": "pipeline"})
    winner = open_parents(client, experiment_id, data_version)[0].info.run_id
    if winner != ours.info.run_id:
        client.delete_run(ours.info.run_id)  # a concurrent candidate created the parent first
    return winner


def open_parents(client, experiment_id: str, data_version: str) -> list:
    """Running parent runs of this data version, earliest first (ties broken by run id, the same for all)."""
    runs = client.search_runs(
        [experiment_id], max_results=100,
        filter_string=f"tags.`{PARENT_TAG}` = 'true' and attributes.status = 'RUNNING' "
                      f"and tags.data_version = '{data_version}'")
    return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))

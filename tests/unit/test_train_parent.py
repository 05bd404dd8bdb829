"""One MLflow parent run per pipeline run: reused while open, replaced once evaluate finishes it."""

from components.lib.parent_runs import PARENT_ENV, PARENT_RUN_TAG, merge_parent_runs, open_parent_run


def test_parent_run_is_reused_while_open_and_replaced_after_it_finishes(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv(PARENT_ENV, raising=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    first = open_parent_run(client, experiment, "data-v1")
    assert open_parent_run(client, experiment, "data-v1") == first  # the next candidate of the same run
    assert open_parent_run(client, experiment, "data-v2") != first  # other data: another pipeline run
    client.set_terminated(first, "FINISHED")  # what evaluate does
    assert open_parent_run(client, experiment, "data-v1") != first
    monkeypatch.setenv(PARENT_ENV, "given-by-airflow")
    assert open_parent_run(client, experiment, "data-v1") == "given-by-airflow"


def test_candidates_that_race_to_create_the_parent_end_up_under_one_after_evaluate_merges(tmp_path, monkeypatch):
    """Two mapped training tasks both find no parent and both create one: the merge leaves exactly one."""
    import threading

    from mlflow import MlflowClient

    monkeypatch.delenv(PARENT_ENV, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "a").as_uri())
    both_searched = threading.Barrier(2)

    class RacingClient(MlflowClient):
        """Holds each task's search until the other task has searched too: the race, made certain."""

        def search_runs(self, *args, **kwargs):
            runs = super().search_runs(*args, **kwargs)
            both_searched.wait(timeout=30)
            return runs

    children: dict[str, str] = {}

    def train_candidate(name: str) -> None:
        parent = open_parent_run(RacingClient(tracking_uri=uri), experiment, "data-v1")
        children[name] = client.create_run(experiment, tags={PARENT_RUN_TAG: parent}).info.run_id

    tasks = [threading.Thread(target=train_candidate, args=(name,)) for name in ("cnn", "vit")]
    for task in tasks:
        task.start()
    for task in tasks:
        task.join(timeout=60)
    parents_before = {client.get_run(child).data.tags[PARENT_RUN_TAG] for child in children.values()}
    assert len(parents_before) == 2, "the barrier should have made both tasks create a parent"
    earliest = min((client.get_run(p) for p in parents_before), key=lambda r: (r.info.start_time, r.info.run_id))
    (later,) = parents_before - {earliest.info.run_id}
    late_child = client.create_run(experiment, tags={PARENT_RUN_TAG: later}).info.run_id  # not one of the results

    kept = merge_parent_runs(client, list(children.values()))

    assert kept == earliest.info.run_id
    for child in [*children.values(), late_child]:
        assert client.get_run(child).data.tags[PARENT_RUN_TAG] == kept
    assert client.get_run(later).info.lifecycle_stage == "deleted"
    assert merge_parent_runs(client, list(children.values())) == kept  # running it again changes nothing


def test_merge_leaves_a_single_parent_alone_and_reports_none_without_one(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "a").as_uri())
    parent = open_parent_run(client, experiment, "data-v1")
    nested = [client.create_run(experiment, tags={PARENT_RUN_TAG: parent}).info.run_id for _ in range(2)]
    assert merge_parent_runs(client, nested) == parent
    assert client.get_run(parent).info.lifecycle_stage == "active"
    assert merge_parent_runs(client, [client.create_run(experiment).info.run_id]) is None

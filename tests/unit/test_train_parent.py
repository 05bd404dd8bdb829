"""One MLflow parent run per pipeline run: reused while open, replaced once evaluate finishes it."""

from components.train.parent import PARENT_ENV, open_parent_run


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


def test_candidates_that_race_to_create_the_parent_end_up_sharing_one(tmp_path, monkeypatch):
    """Two mapped training tasks both find no parent, both create one: both must then use the same one."""
    import threading

    from mlflow import MlflowClient

    monkeypatch.delenv(PARENT_ENV, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    experiment = MlflowClient(tracking_uri=uri).create_experiment("t", artifact_location=(tmp_path / "a").as_uri())
    both_searched = threading.Barrier(2)

    class RacingClient(MlflowClient):
        """Holds each task's first search until the other task has searched too: the race, made certain."""

        searches = 0

        def search_runs(self, *args, **kwargs):
            runs = super().search_runs(*args, **kwargs)
            self.searches += 1
            if self.searches == 1:
                both_searched.wait(timeout=30)
            return runs

    chosen: dict[str, str] = {}

    def train_candidate(name: str) -> None:
        chosen[name] = open_parent_run(RacingClient(tracking_uri=uri), experiment, "data-v1")

    tasks = [threading.Thread(target=train_candidate, args=(name,)) for name in ("cnn", "vit")]
    for task in tasks:
        task.start()
    for task in tasks:
        task.join(timeout=60)
    assert chosen["cnn"] == chosen["vit"]
    client = MlflowClient(tracking_uri=uri)
    alive = client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'")
    assert [run.info.run_id for run in alive] == [chosen["cnn"]]  # the loser's parent is gone

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

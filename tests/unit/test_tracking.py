"""The MLflow tracking URI: env wins; a relative sqlite store is the project's, also from a DVC temp copy."""

from components.common.params import MlflowParams
from components.common.tracking import tracking_uri


def test_relative_sqlite_store_resolves_against_dvc_root_when_dvc_runs_the_stage(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project, temp_copy = tmp_path / "project", tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc"
    temp_copy.mkdir(parents=True)
    monkeypatch.chdir(temp_copy)
    params = MlflowParams(tracking_uri="sqlite:///mlruns.db")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking_uri(params) == f"sqlite:///{temp_copy / 'mlruns.db'}"  # no DVC: the working directory
    monkeypatch.setenv("DVC_ROOT", str(project))  # what a queued `dvc exp run` sets
    assert tracking_uri(params) == f"sqlite:///{project / 'mlruns.db'}"
    assert tracking_uri(MlflowParams(tracking_uri="http://mlflow:5000")) == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////abs/store.db")
    assert tracking_uri(params) == "sqlite:////abs/store.db"

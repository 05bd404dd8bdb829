"""Registration is idempotent on the run and on the data + params fingerprint (retries add no version)."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import pytest

from components.register.__main__ import FINGERPRINT_TAG, find_or_register, run_fingerprint


class FakeRegistry:
    """Just enough of MlflowClient for find_or_register / run_fingerprint."""

    def __init__(self, runs: dict):
        self.runs, self.versions = runs, []

    def search_registered_models(self, filter_string):
        return [True]

    def search_model_versions(self, _):
        return list(self.versions)

    def set_model_version_tag(self, name, version, key, value):
        self.versions[int(version) - 1].tags[key] = value

    def get_run(self, run_id):
        tags, params = self.runs[run_id]
        return SimpleNamespace(data=SimpleNamespace(tags=tags, params=params))


@pytest.fixture
def registry(monkeypatch):
    fake = FakeRegistry({"run-a": ({"data_version": "d1"}, {"lr": "0.001", "epochs": "3"}),
                         "run-a-retry": ({"data_version": "d1"}, {"epochs": "3", "lr": "0.001"}),
                         "run-new-data": ({"data_version": "d2"}, {"lr": "0.001", "epochs": "3"})})

    def register_model(uri, name):
        version = SimpleNamespace(version=str(len(fake.versions) + 1), run_id=uri.split("/")[1], tags={})
        fake.versions.append(version)
        return version

    monkeypatch.setattr(mlflow, "register_model", register_model)
    return fake


def register(registry, run_id):
    return find_or_register(registry, "m", f"runs:/{run_id}/model", run_id, run_fingerprint(registry, run_id))


def test_same_run_or_same_data_and_params_reuse_the_version(registry):
    first = register(registry, "run-a")
    assert registry.versions[0].tags[FINGERPRINT_TAG] == run_fingerprint(registry, "run-a")
    assert register(registry, "run-a").version == first.version  # register re-run
    assert register(registry, "run-a-retry").version == first.version  # retried training, same data + params
    assert len(registry.versions) == 1


def test_new_data_gets_a_new_version(registry):
    register(registry, "run-a")
    assert register(registry, "run-new-data").version == "2" and len(registry.versions) == 2

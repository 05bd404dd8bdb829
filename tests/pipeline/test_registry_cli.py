"""`python -m components.registry` against the default SQLite registry and a real `mlflow server` over HTTP."""

from __future__ import annotations

import json
import re

import pytest

from tests.package_support import MODEL_NAME, write_project
from tests.registry_support import mlflow_server, register_version, run_registry


def champion_and_history(uri: str) -> tuple[str, list[str]]:
    from mlflow import MlflowClient

    model = MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model(MODEL_NAME)
    champion = model.aliases.get("champion")
    return (None if champion is None else str(champion)), json.loads(model.tags.get("champion_history", "[]"))


def promote_refuse_force_rollback(root, uri: str, cli_uri: str | None) -> None:
    """The whole operator story on one registry: v1 passed, v2 passed, v3 failed the gates."""
    good, better, failed = (register_version(uri, True, root / "mlartifacts"),
                            register_version(uri, True, root / "mlartifacts"),
                            register_version(uri, False, root / "mlartifacts"))
    assert run_registry(root, "promote", good, uri=cli_uri).returncode == 0
    assert run_registry(root, "promote", better, uri=cli_uri).returncode == 0
    assert champion_and_history(uri) == (better, [good, better])

    refused = run_registry(root, "promote", failed, uri=cli_uri)
    assert refused.returncode == 2 and "did not pass the evaluation gates" in refused.stderr
    assert champion_and_history(uri)[0] == better

    forced = run_registry(root, "promote", failed, "--force", "--reason", "signed off by Dr. X", uri=cli_uri)
    assert forced.returncode == 0, forced.stderr
    listing = run_registry(root, "list", uri=cli_uri)
    assert f"v{failed}" in listing.stdout and "forced: signed off by Dr. X" in listing.stdout
    assert "FAILED" in listing.stdout and "champion" in listing.stdout

    assert run_registry(root, "rollback", "--reason", "drift", uri=cli_uri).returncode == 0
    assert champion_and_history(uri) == (better, [good, better])
    assert run_registry(root, "rollback", uri=cli_uri).returncode == 0
    assert champion_and_history(uri) == (good, [good])
    last = run_registry(root, "rollback", uri=cli_uri)
    assert last.returncode == 2 and "no previous one" in last.stderr


def test_registry_cli_on_the_default_sqlite_store(tmp_path):
    write_project(tmp_path, "1")
    (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text().replace(
        "sqlite:///mlruns.db", f"sqlite:///{tmp_path / 'mlruns.db'}"))
    promote_refuse_force_rollback(tmp_path, f"sqlite:///{tmp_path / 'mlruns.db'}", None)


def test_list_shows_every_alias_of_every_version(tmp_path):
    """search_model_versions fills no aliases: the listing must read them from the registered model."""
    from components.lib import registry_store

    write_project(tmp_path, "1")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text().replace("sqlite:///mlruns.db", uri))
    first, second = (register_version(uri, True, tmp_path / "mlartifacts", seed=seed) for seed in (0, 1))
    client = registry_store.client_for(uri)
    registry_store.promote(client, MODEL_NAME, first)
    registry_store.promote(client, MODEL_NAME, second)  # champion moves from the first version to the second
    client.set_registered_model_alias(MODEL_NAME, "challenger", first)
    client.set_registered_model_alias(MODEL_NAME, "shadow", second)

    listing = run_registry(tmp_path, "list")
    assert listing.returncode == 0, listing.stderr
    aliases = {line.split()[0]: line.split()[1] for line in listing.stdout.splitlines() if re.match(r"v\d+ ", line)}
    assert aliases == {f"v{second}": "champion,shadow", f"v{first}": "challenger"}
    assert f"champion: v{second}; history: v{first} -> v{second}" in listing.stdout


def test_missing_registry_is_a_clear_error_not_a_new_database(tmp_path):
    write_project(tmp_path, "1")
    result = run_registry(tmp_path, "list")
    assert result.returncode == 2 and "no MLflow registry" in result.stderr
    assert not (tmp_path / "mlruns.db").exists()


@pytest.mark.slow
def test_registry_cli_through_a_real_mlflow_server(tmp_path):
    write_project(tmp_path, "1")
    with mlflow_server(tmp_path) as url:
        promote_refuse_force_rollback(tmp_path, url, url)

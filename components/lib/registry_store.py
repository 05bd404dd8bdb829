"""components.lib.promotion applied to a real MLflow registry (SQLite file or `mlflow server` over HTTP)."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime

from components.common.cli import StageError
from components.lib.promotion import (
    CHAMPION,
    HISTORY_TAG,
    Plan,
    VersionRow,
    aliases_by_version,
    parse_history,
    plan_promotion,
    plan_rollback,
)


def client_for(uri: str):
    """An MlflowClient whose tracking and registry both point at `uri`."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise StageError(f"no registered model named {name!r}: run the register stage first") from None
        raise StageError(f"cannot read the MLflow registry: {exc.message}") from None


def state(client, name: str) -> tuple[str | None, list[str]]:
    """(current champion version or None, champion history oldest first)."""
    model = _model(client, name)
    current = model.aliases.get(CHAMPION)  # an int from a SQLite store, a str over HTTP
    return (None if current is None else str(current)), parse_history((model.tags or {}).get(HISTORY_TAG))


def rows(client, name: str) -> list[VersionRow]:
    """Every version with its aliases (read from the registered model) and tags."""
    aliases = aliases_by_version(_model(client, name).aliases or {})
    found = client.search_model_versions(f"name = '{name}'")
    return [VersionRow(str(v.version), aliases.get(str(v.version), ()), dict(v.tags or {}),
                       datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"))
            for v in found]


def apply(client, name: str, plan: Plan) -> None:
    """Write a plan: version tags first, then the history, then move the alias (the switch itself)."""
    import json

    for version, tags in plan.version_tags.items():
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(plan.history))
    client.set_registered_model_alias(name, CHAMPION, plan.champion)


def _who_when() -> tuple[str, str]:
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return who, datetime.now(UTC).isoformat(timespec="seconds")


def version_tags(client, name: str, version: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_model_version(name, version).tags or {})
    except MlflowException:
        raise StageError(f"{name!r} has no version {version}") from None


def promote(client, name: str, version: str, force: bool = False, reason: str = "") -> Plan:
    """Move `champion` to `version` under the gate rule; returns the applied plan."""
    current, history = state(client, name)
    plan = plan_promotion(version, version_tags(client, name, version), current, history, force, reason, *_who_when())
    apply(client, name, plan)
    return plan


def rollback(client, name: str, reason: str = "") -> Plan:
    """Give `champion` back to the previous champion; returns the applied plan."""
    current, history = state(client, name)
    plan = plan_rollback(current, history, *_who_when(), reason=reason)
    apply(client, name, plan)
    return plan

"""The registry's promotions (the registry CLI, register): promotion rules, the champion history, and the listing table.

The alias history is a JSON list of versions, oldest first, kept in the registered-model tag
`champion_history`; every promotion appends, every rollback pops, so rollback walks back in order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from components.common.tables import text_table

CHAMPION = "champion"
HISTORY_TAG = "champion_history"


class RegistryRefusal(Exception):
    """A promotion or rollback that must not happen; the message says why and what to do."""


@dataclass(frozen=True)
class VersionRow:
    """What `list` shows for one registered version."""

    version: str
    aliases: tuple[str, ...]
    tags: Mapping[str, str]
    created: str = ""


@dataclass(frozen=True)
class Plan:
    """What to write to the registry: the alias target, the new history, tags per version, and a message."""

    champion: str
    history: list[str]
    version_tags: dict[str, dict[str, str]] = field(default_factory=dict)
    message: str = ""


def parse_history(raw: str | None) -> list[str]:
    """The history tag as a list of version strings (empty or unreadable -> [])."""
    try:
        value = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def gate_passed(tags: Mapping[str, str]) -> bool:
    return str(tags.get("gate_passed", "")).lower() == "true"


def plan_promotion(version: str, tags: Mapping[str, str], current: str | None, history: list[str],
                   force: bool, reason: str, who: str, when: str) -> Plan:
    """Promote `version` to champion; refuse a gate failure unless forced with a written reason."""
    if current == version:
        raise RegistryRefusal(f"v{version} is already the champion; nothing to do")
    forced = not gate_passed(tags)
    if forced and not force:
        why = tags.get("gate_reasons") or "it carries no gate_passed=true tag"
        raise RegistryRefusal(f"v{version} did not pass the evaluation gates ({why}); promote it anyway only with "
                              "--force --reason \"<why this is safe>\"")
    if force and not reason.strip():
        raise RegistryRefusal("--force needs --reason \"<justification>\": it is recorded on the version")
    base = history if (not current or (history and history[-1] == current)) else [*history, current]
    note = {"promoted_at": when, "promoted_by": who, "promotion_forced": str(forced).lower()}
    if reason.strip():
        note["promotion_reason"] = reason.strip()
    previous = f" (was v{current})" if current else ""
    warning = " — FORCED past a failed gate" if forced else ""
    return Plan(version, [*base, version], {version: note}, f"v{version} is now the champion{previous}{warning}")


def plan_rollback(current: str | None, history: list[str], who: str, when: str, reason: str = "") -> Plan:
    """Give the champion alias back to the version that held it before the current one."""
    if not current:
        raise RegistryRefusal("there is no champion to roll back")
    trail = list(history)
    while trail and trail[-1] == current:
        trail.pop()
    if not trail:
        raise RegistryRefusal(f"v{current} is the first champion on record; there is no previous one to roll back to")
    target = trail[-1]
    note = {"rolled_back_at": when, "rolled_back_by": who}
    if reason.strip():
        note["rollback_reason"] = reason.strip()
    return Plan(target, trail, {current: note}, f"rolled back: v{target} is the champion again (v{current} withdrawn)")


def aliases_by_version(aliases: Mapping[str, object]) -> dict[str, tuple[str, ...]]:
    """Invert the registered model's alias -> version map: version -> its aliases, sorted.

    The versions `search_model_versions` returns carry no aliases, so the listing reads them here.
    """
    inverted: dict[str, list[str]] = {}
    for alias, version in aliases.items():  # a version is an int from a SQLite store, a str over HTTP
        inverted.setdefault(str(version), []).append(alias)
    return {version: tuple(sorted(names)) for version, names in inverted.items()}


def metric_columns(rows: list[VersionRow]) -> list[str]:
    """Tag names holding test metrics, in a stable order."""
    return sorted({k for row in rows for k in row.tags if k.startswith("test_")})


def format_table(rows: list[VersionRow]) -> str:
    """A plain-text table: version, aliases, gate, metrics, candidate, notes."""
    metrics = metric_columns(rows)
    header = ["version", "aliases", "gate", *metrics, "candidate", "notes"]
    body = []
    for row in sorted(rows, key=lambda r: int(r.version) if r.version.isdigit() else r.version, reverse=True):
        gate = "passed" if gate_passed(row.tags) else ("FAILED" if "gate_passed" in row.tags else "unknown")
        notes = []
        if row.tags.get("promotion_forced") == "true":
            notes.append(f"forced: {row.tags.get('promotion_reason', '')}")
        if "rolled_back_at" in row.tags:
            notes.append(f"rolled back {row.tags['rolled_back_at']}")
        body.append([f"v{row.version}", ",".join(row.aliases) or "-", gate,
                     *[row.tags.get(m, "-") for m in metrics], row.tags.get("candidate", "-"), "; ".join(notes) or "-"])
    return text_table(header, body, style="plain")

"""Registry core: the gate rule for promotion, forced promotions, the champion history and rollback."""

from __future__ import annotations

import pytest

from components.lib.promotion import (
    RegistryRefusal,
    VersionRow,
    aliases_by_version,
    format_table,
    parse_history,
    plan_promotion,
    plan_rollback,
)

PASSED = {"gate_passed": "true", "test_macro_f1": "0.81"}
FAILED = {"gate_passed": "false", "gate_reasons": "macro-F1 0.400 is below the minimum 0.550"}


def promote(version, tags, current, history, force=False, reason=""):
    return plan_promotion(version, tags, current, history, force, reason, "ana", "2026-11-22T10:00:00+00:00")


def test_first_promotion_starts_the_history():
    plan = promote("1", PASSED, None, [])
    assert plan.champion == "1" and plan.history == ["1"]
    assert plan.version_tags["1"]["promotion_forced"] == "false" and plan.version_tags["1"]["promoted_by"] == "ana"


def test_failed_gate_is_refused_with_its_reason():
    with pytest.raises(RegistryRefusal, match="did not pass the evaluation gates.*macro-F1 0.400.*--force"):
        promote("2", FAILED, "1", ["1"])


def test_forcing_needs_a_written_reason_which_is_recorded():
    with pytest.raises(RegistryRefusal, match="--reason"):
        promote("2", FAILED, "1", ["1"], force=True, reason="  ")
    plan = promote("2", FAILED, "1", ["1"], force=True, reason="radiology lead signed off, ticket 42")
    assert plan.champion == "2" and plan.history == ["1", "2"]
    assert plan.version_tags["2"] == {"promoted_at": "2026-11-22T10:00:00+00:00", "promoted_by": "ana",
                                      "promotion_forced": "true", "promotion_reason": "radiology lead signed off, ticket 42"}
    assert "FORCED" in plan.message


def test_untagged_version_counts_as_not_passed():
    with pytest.raises(RegistryRefusal, match="no gate_passed=true tag"):
        promote("3", {}, "1", ["1"])


def test_promoting_the_champion_again_is_refused():
    with pytest.raises(RegistryRefusal, match="already the champion"):
        promote("1", PASSED, "1", ["1"])


def test_champion_set_outside_the_cli_joins_the_history():
    assert promote("2", PASSED, "1", []).history == ["1", "2"]


def test_rollback_walks_back_one_champion_at_a_time():
    first = plan_rollback("3", ["1", "2", "3"], "ana", "t", reason="bad calibration")
    assert first.champion == "2" and first.history == ["1", "2"]
    assert first.version_tags == {"3": {"rolled_back_at": "t", "rolled_back_by": "ana", "rollback_reason": "bad calibration"}}
    assert plan_rollback("2", first.history, "ana", "t").champion == "1"


def test_rollback_without_a_previous_champion_is_refused():
    with pytest.raises(RegistryRefusal, match="first champion"):
        plan_rollback("1", ["1"], "ana", "t")
    with pytest.raises(RegistryRefusal, match="no champion"):
        plan_rollback(None, [], "ana", "t")


def test_history_tag_parsing_tolerates_garbage():
    assert parse_history('["1", 2]') == ["1", "2"]
    assert parse_history("not json") == [] and parse_history(None) == [] and parse_history('{"a": 1}') == []


def test_table_shows_aliases_gate_metrics_and_forced_notes():
    rows = [VersionRow("1", ("champion",), PASSED),
            VersionRow("2", ("challenger",), {**FAILED, "promotion_forced": "true", "promotion_reason": "ticket 42"})]
    table = format_table(rows).splitlines()
    assert table[0].split() == ["version", "aliases", "gate", "test_macro_f1", "candidate", "notes"]
    assert table[1].startswith("v2") and "FAILED" in table[1] and "forced: ticket 42" in table[1]
    assert table[2].split()[:4] == ["v1", "champion", "passed", "0.81"]


def test_aliases_are_grouped_by_version_whatever_type_the_store_gives():
    aliases = {"champion": 2, "shadow": "2", "challenger": "1"}  # SQLite gives ints, HTTP gives strings
    assert aliases_by_version(aliases) == {"2": ("champion", "shadow"), "1": ("challenger",)}
    assert aliases_by_version({}) == {}

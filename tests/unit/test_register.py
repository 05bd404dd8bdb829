"""Only a gated model is registered; the champion changes only when beaten by the margin."""

import pytest

from components.register.core import (
    GateRefusal,
    comparison_cases,
    decide_champion,
    decide_paired,
    heldout_predictions,
    reference_record,
    registrable_winner,
)

ANY_NEW = "the new held-out cases (ingested after the champion's data)"


def test_failed_gate_is_never_registrable():
    verdict = {"winner": None, "candidates": {"cnn": {"passed": False, "reasons": ["macro-F1 0.400 is below the minimum 0.550"]}}}
    with pytest.raises(GateRefusal, match="cnn: macro-F1 0.400 is below"):
        registrable_winner(verdict)


def test_winner_must_be_marked_passed():
    with pytest.raises(GateRefusal, match="not marked"):
        registrable_winner({"winner": "cnn", "candidates": {"cnn": {"passed": False, "reasons": []}}})
    assert registrable_winner({"winner": "cnn", "candidates": {"cnn": {"passed": True, "reasons": []}}}) == "cnn"


def test_first_model_becomes_champion():
    assert decide_champion(0.6, None, 0.02, "macro_f1").promote


@pytest.mark.parametrize("challenger, champion, promote", [(0.80, 0.70, True), (0.69, 0.70, True), (0.67, 0.70, False)])
def test_a_challenger_not_worse_than_the_champion_beyond_the_margin_is_promoted(challenger, champion, promote):
    decision = decide_champion(challenger, champion, 0.02, "macro_f1")
    assert decision.promote is promote
    assert "macro_f1" in decision.reason


@pytest.mark.parametrize("low, promote", [(-0.01, True), (-0.02, True), (-0.05, False)])
def test_the_paired_decision_reads_the_lower_bound_of_the_difference(low, promote):
    comparison = {"on": "the new held-out cases", "cases": 40, "groups": 10, "challenger": 0.8, "champion": 0.78,
                  "difference": 0.02, "low": low, "high": 0.06}
    decision = decide_paired(comparison, 0.02, "macro_f1")
    assert decision.promote is promote and "[95% CI" in decision.reason and "10 series" in decision.reason


def test_comparison_cases_are_the_new_held_out_ones_when_there_are_enough():
    keys, series = ["a1", "a2", "b1", "c1", "d1"], ["a", "a", "b", "c", "d"]
    assert comparison_cases(keys, series, {"a1", "a2"}, min_series=3) == ([2, 3, 4], ANY_NEW)
    cases, why = comparison_cases(keys, series, {"a1", "a2", "b1"}, min_series=3)
    assert cases == [0, 1, 2, 3, 4] and "only 2 new held-out series" in why
    assert comparison_cases(keys, series, None, 3)[0] == [0, 1, 2, 3, 4]


def test_the_reference_record_marks_what_the_model_was_fitted_on():
    split = [{"key": "k1", "split": "train", "group": "g1"}, {"key": "k2", "split": "test", "group": "g2"}]
    manifest = {"k1": {"label": "Cyst", "series": "s1"}, "k2": {"label": "Stone", "series": ""}}
    record = reference_record(split, manifest, {"train", "val"})
    assert record == [{"key": "k1", "split": "train", "group": "g1", "series": "s1", "label": "Cyst", "fitted": "true"},
                      {"key": "k2", "split": "test", "group": "g2", "series": "g2", "label": "Stone",
                       "fitted": "false"}]


def test_model_card_says_what_a_clinician_must_know():
    from components.register.card import CI_PENDING, model_card, provenance_tags

    metrics = {"accuracy": 0.8, "macro_f1": 0.75, "macro_f1_ci": [0.7, 0.8], "test_images": 40,
               "per_class": {"Cyst": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10}}}
    tags = provenance_tags("abc123", "f00d", "beef", "cafe", {"passed": True, "reasons": []}, metrics)
    assert tags["gate_passed"] == "true" and tags["test_macro_f1"] == "0.7500" and tags["git_commit"] == "abc123"
    card = model_card("kidney-ct-classifier", "3", "paper_cnn", ["Normal", "Cyst"], 180, (40, 400), metrics, tags)
    for words in ("Not a substitute for a radiologist", "## Intended use", "## Data", "## Limitations",
                  "0.750 (95% CI 0.700-0.800)", f"0.800 (CI {CI_PENDING})", "| Cyst | 0.900", "`abc123`", "`beef`"):
        assert words in card, words


def test_dvc_data_version_reads_the_manifest_md5_from_dvc_lock():
    from components.register.card import dvc_data_version

    lock = "schema: '2.0'\nstages:\n  ingest:\n    outs:\n    - path: data/ingested/manifest.csv\n      md5: 1a2b\n"
    assert dvc_data_version(lock, "data/ingested/manifest.csv") == "1a2b"
    assert dvc_data_version(lock, "elsewhere.csv") == "not in dvc.lock"
    assert dvc_data_version(None, "data/ingested/manifest.csv") == "no dvc.lock"


def test_held_out_predictions_are_the_winners_out_of_fold_or_test_rows_only():
    rows = [{"candidate": c, "split": split, "key": f"{c}-{split}-{i}", "series": f"s{i}", "label": "Cyst", "fold": 0,
             "p_Cyst": 0.6, "p_Stone": 0.4} for c in ("cnn", "other") for split in ("val", "test", "cv")
            for i in range(2)]
    assert [r["key"] for r in heldout_predictions(rows, "cnn", "test", ["Cyst", "Stone"])] == ["cnn-test-0",
                                                                                             "cnn-test-1"]
    oof = heldout_predictions(rows, "cnn", "cv", ["Cyst", "Stone"])
    assert [set(r) for r in oof] == [{"key", "series", "label", "p_Cyst", "p_Stone"}] * 2
    assert heldout_predictions(rows, "absent", "cv", ["Cyst", "Stone"]) == []
    with pytest.raises(ValueError, match="lack"):
        heldout_predictions(rows, "cnn", "cv", ["Cyst", "Tumor"])

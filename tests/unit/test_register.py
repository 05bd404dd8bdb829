"""Only a gated model is registered; the champion changes only when beaten by the margin."""

import pytest

from components.register.core import GateRefusal, decide_champion, registrable_winner


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


@pytest.mark.parametrize("challenger, champion, promote", [(0.80, 0.70, True), (0.71, 0.70, False), (0.70, 0.70, False)])
def test_challenger_must_beat_champion_by_margin(challenger, champion, promote):
    decision = decide_champion(challenger, champion, 0.02, "macro_f1")
    assert decision.promote is promote
    assert "macro_f1" in decision.reason


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

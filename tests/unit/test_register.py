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

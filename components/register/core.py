"""Pure core of register: which candidate may be registered, and whether it becomes champion."""

from __future__ import annotations

from dataclasses import dataclass


class GateRefusal(Exception):
    """No candidate may be registered; the message lists each candidate's failed gates."""


def registrable_winner(verdict: dict) -> str:
    """The evaluate stage's winner, which by construction passed the gates; refuse otherwise."""
    winner = verdict.get("winner")
    candidates = verdict.get("candidates", {})
    if winner is None:
        misses = [f"{name}: {'; '.join(c['reasons'])}" for name, c in candidates.items()]
        raise GateRefusal("no candidate passed the evaluation gates, nothing registered — " + " | ".join(misses))
    if not candidates.get(winner, {}).get("passed"):
        raise GateRefusal(f"winner {winner!r} is not marked as having passed the gates")
    return winner


@dataclass(frozen=True)
class ChampionDecision:
    promote: bool
    reason: str


def decide_champion(challenger: float, champion: float | None, margin: float, metric: str) -> ChampionDecision:
    """Promote when there is no champion, or the challenger beats it by more than `margin`."""
    if champion is None:
        return ChampionDecision(True, "no champion yet: the challenger becomes champion")
    if challenger > champion + margin:
        return ChampionDecision(True, f"challenger {metric} {challenger:.4f} beats champion {champion:.4f} by more than {margin}")
    return ChampionDecision(False, f"challenger {metric} {challenger:.4f} does not beat champion {champion:.4f} by more than {margin}")  # noqa: E501

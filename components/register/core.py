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


def cv_champion_score(champion_tags: dict, folds_fingerprint: str | None, metric: str) -> tuple[float | None, str]:
    """The champion's certified `metric` when it can be compared with a cv_refit challenger, else why not.

    A refitted challenger has trained on every labelled series, so the champion cannot be re-scored on a
    held-out split against it; the two compare only by their grouped CVs on the same folds (same images, same
    fold of each), which the folds fingerprint of both certificates tells.
    """
    if champion_tags.get("protocol") != "cv_refit":
        return None, ("the champion was certified on a held-out split the refitted challenger has trained on: "
                      "no fair comparison, compare and promote by hand (python -m components.registry promote)")
    if not folds_fingerprint or champion_tags.get("folds_fingerprint") != folds_fingerprint:
        return None, ("the champion's grouped CV ran on other folds or data (folds fingerprint "
                      f"{champion_tags.get('folds_fingerprint', 'none')} vs {folds_fingerprint}): no fair "
                      "comparison, compare and promote by hand (python -m components.registry promote)")
    value = champion_tags.get(f"certified_{metric}")
    if value is None:
        return None, f"the champion carries no certified_{metric} tag: compare and promote by hand"
    return float(value), ""

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
    """Promote when there is no champion, or the challenger is not worse than it by more than `margin`.

    For certificates that cannot be paired case by case (grouped CVs on the same folds); a held-out
    comparison goes through `decide_paired`.
    """
    if champion is None:
        return ChampionDecision(True, "no champion yet: the challenger becomes champion")
    if challenger >= champion - margin:
        return ChampionDecision(True, f"challenger {metric} {challenger:.4f} is not worse than champion "
                                      f"{champion:.4f} by more than {margin}")
    return ChampionDecision(False, f"challenger {metric} {challenger:.4f} is worse than champion {champion:.4f} "
                                   f"by more than {margin}")


def decide_paired(comparison: dict, margin: float, metric: str) -> ChampionDecision:
    """Promote unless the lower 95% bound of (challenger - champion) on the same cases is below -margin.

    `comparison` is components.common.bootstrap.paired_group_bootstrap's result plus `on` (which cases).
    """
    words = (f"on {comparison['on']} ({comparison['cases']} slices, {comparison['groups']} series) challenger "
             f"{metric} {comparison['challenger']:.4f} vs champion {comparison['champion']:.4f}, difference "
             f"{comparison['difference']:+.4f} [95% CI {comparison['low']:+.4f}, {comparison['high']:+.4f}]")
    if comparison["low"] >= -margin:
        return ChampionDecision(True, f"{words}: not worse by more than {margin}")
    return ChampionDecision(False, f"{words}: may be worse by more than {margin}, the champion stays")


def comparison_cases(test_keys: list[str], test_series: list[str], champion_keys: set[str] | None,
                     min_series: int) -> tuple[list[int], str]:
    """Indices of the held-out cases both models are scored on, and what they are.

    The new cases (not in the champion's data record) when there are at least `min_series` series of them,
    else every held-out test case (the champion never trained on the test split either).
    """
    everything = list(range(len(test_keys)))
    if champion_keys is None:
        return everything, "every held-out test case (the champion has no record of its data)"
    new = [i for i, key in enumerate(test_keys) if key not in champion_keys]
    new_series = len({test_series[i] for i in new})
    if new_series >= min_series:
        return new, "the new held-out cases (ingested after the champion's data)"
    return everything, (f"every held-out test case (only {new_series} new held-out series, fewer than "
                        f"register.min_comparison_series {min_series})")


def reference_record(split: list[dict], manifest: dict[str, dict], fitted_splits: set[str]) -> list[dict]:
    """The data a registered model was developed on: every prepared image's key, split, group, series (its
    group where the manifest has none), label and whether the model was fitted on it (its `fitted_on` splits
    and the validation split that picked its epoch)."""
    return [{"key": row["key"], "split": row["split"], "group": row["group"],
             "series": manifest.get(row["key"], {}).get("series") or row["group"],
             "label": manifest.get(row["key"], {}).get("label", ""),
             "fitted": str(row["split"] in fitted_splits).lower()} for row in split]


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


def heldout_predictions(rows: list[dict], candidate: str, split: str, classes: list[str]) -> list[dict]:
    """The winner's predictions on slices it was not fitted on (key, series, label, p_<class>): its out-of-fold
    ones under cv_refit (split "cv"), the test split's under holdout. The monitor's reference for the champion's
    outputs: a model's own training slices would make a same-distribution week look like drift."""
    columns = ["key", "series", "label", *[f"p_{c}" for c in classes]]
    chosen = [row for row in rows if row.get("candidate") == candidate and row.get("split") == split]
    missing = [c for c in columns if chosen and c not in chosen[0]]
    if missing:
        raise ValueError(f"the {split} predictions of {candidate} lack {missing}")
    return [{c: row[c] for c in columns} for row in chosen]

"""Pure core of leakage: the random image split and fit-and-score of one recipe (grouped folds: components.lib.folds)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.model_selection import train_test_split

from components.common.params import AugmentParams, CandidateParams
from components.lib.folds import IndexSplit
from components.lib.metrics import classification_metrics, series_metrics


def random_image_split(labels: np.ndarray, test_fraction: float, val_fraction: float, seed: int) -> IndexSplit:
    """The leaky split the literature uses: images shuffled one by one, stratified by class."""
    index = np.arange(len(labels))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction, stratify=labels[rest], random_state=seed)
    return IndexSplit(np.sort(train), np.sort(val), np.sort(test))


def groups_overlap(split: IndexSplit, groups: np.ndarray) -> set[str]:
    """Groups found on more than one side of a split (empty for a grouped split)."""
    sides = [set(groups[split.train]), set(groups[split.val]), set(groups[split.test])]
    return (sides[0] & sides[1]) | (sides[0] & sides[2]) | (sides[1] & sides[2])


Fit = Callable[[IndexSplit], dict[str, np.ndarray]]  # trains on split.train/val; test probabilities by variant
PLAIN = "plain"  # the variant every fit returns: one prediction per image; others (e.g. "tta") ride along
SHIFT = "shift"  # a frozen head's test series as a sharper kernel shows them (backbone.copies: shift)


def score_split(fit: Fit, split: IndexSplit, labels: np.ndarray, classes: list[str],
                series: np.ndarray | None = None, pooling: str = "mean") -> dict:
    """Train through `fit` and score each variant of its test probabilities (the plain one at the top level).

    With `series` (one id per image), each variant also gets the study-level `series_accuracy` and
    `series_macro_f1`: the `pooling` of every test series' slice probabilities, as evaluate scores them.
    """
    variants = fit(split)
    test_series = None if series is None else np.asarray(series)[split.test]
    scored = {name: _scores(labels[split.test], probabilities, classes, test_series, pooling)
              for name, probabilities in variants.items()}
    plain = scored.pop(PLAIN)
    return {**plain, "variants": scored} if scored else plain


def _scores(y_true: np.ndarray, probabilities: np.ndarray, classes: list[str], series: np.ndarray | None = None,
            pooling: str = "mean") -> dict:
    metrics = classification_metrics(y_true, probabilities, classes)
    scores = {k: v for k, v in metrics.items() if k != "confusion_matrix"}
    if series is not None:
        study = series_metrics(y_true, probabilities, list(series), classes, pooling)
        scores |= {"series_accuracy": study["accuracy"], "series_macro_f1": study["macro_f1"],
                   "series_count": study["series"]}
    return scores


def fold_variants(members: list[tuple[np.ndarray, np.ndarray]], tta: bool) -> dict[str, np.ndarray]:
    """Test probabilities by variant from each ensemble member's (plain, TTA) pair.

    The plain variant is the first member alone, so a trial's plain score does not depend on its ensemble size;
    "tta" is that member with test-time augmentation; "ensemble" (and "ensemble_tta") average every member.
    """
    variants = {PLAIN: members[0][0], **({"tta": members[0][1]} if tta else {})}
    if len(members) > 1:
        variants["ensemble"] = np.mean([plain for plain, _ in members], axis=0)
        if tta:
            variants["ensemble_tta"] = np.mean([averaged for _, averaged in members], axis=0)
    return variants


VARIANTS = ("tta", "ensemble", "ensemble_tta")  # scored beside the plain variant, in this order


def variant_label(variant: str, tta: str, ensemble: int | str) -> str:
    """How a variant reads in logs and tables, e.g. "ensemble of 3 + TTA (flip+shift)"."""
    parts = ([f"ensemble of {ensemble}"] if variant.startswith("ensemble") else []) + \
            ([f"TTA ({tta})"] if variant.endswith("tta") else [])
    return " + ".join(parts) or variant


def summarise_folds(fold_metrics: list[dict], classes: list[str]) -> dict:
    """Mean and standard deviation over folds of accuracy, macro-F1 and each class's recall."""
    table = {"accuracy": [m["accuracy"] for m in fold_metrics], "macro_f1": [m["macro_f1"] for m in fold_metrics]}
    for c in classes:
        table[f"recall_{c}"] = [m["per_class"][c]["recall"] for m in fold_metrics]
    for name in ("series_accuracy", "series_macro_f1"):  # study verdicts, where the folds scored them
        if fold_metrics and all(name in m for m in fold_metrics):
            table[name] = [m[name] for m in fold_metrics]
    return {name: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
            for name, v in table.items()}


def summarise_variants(fold_metrics: list[dict], classes: list[str]) -> dict:
    """summarise_folds for each extra variant (e.g. test-time augmentation) scored on every fold."""
    names = set.intersection(*[set(m.get("variants", {})) for m in fold_metrics]) if fold_metrics else set()
    return {name: summarise_folds([m["variants"][name] for m in fold_metrics], classes) for name in sorted(names)}


def folds_fingerprint(keys: list[str], fold_of: np.ndarray) -> str:
    """sha256 (16 hex) of which image sat in which test fold: two CVs with equal prints saw the same folds."""
    import hashlib

    lines = sorted(f"{key}\t{int(fold)}" for key, fold in zip(keys, fold_of))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def knob_defaults() -> dict[str, object]:
    """Each recipe knob's default: what a trial logged before the knob existed was trained with (a knob without
    a default, one every params file states, has always been logged)."""
    flat: dict[str, object] = {f"candidate.{k}": f.default for k, f in CandidateParams.model_fields.items()
                               if not f.is_required()}
    flat.update({f"augment.{k}": f.default for k, f in AugmentParams.model_fields.items() if not f.is_required()})
    return flat

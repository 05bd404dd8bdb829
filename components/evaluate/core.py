"""Pure core of evaluate: the scores with their bootstrap CIs, the gate and the winner (the metrics themselves:
components.lib.metrics)."""

from __future__ import annotations

import numpy as np

from components.common.bootstrap import group_bootstrap
from components.common.params import EvaluateParams
from components.common.pooling import pool_by_series, series_labels
from components.lib.metrics import metric_functions, verdict_metrics

GATED_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


COST_KEYS = ("parameters", "training_seconds", "inference_ms_per_image")  # reported beside the test metrics


def bootstrap_cis(y_true: np.ndarray, y_pred: np.ndarray, groups: list[str], classes: list[str],
                  resamples: int) -> dict:
    """95% CIs of accuracy, macro-F1 and each class's recall by bootstrap over `groups`."""
    return group_bootstrap(y_true, y_pred, groups, metric_functions(len(classes), classes), resamples=resamples)


def ci_keys(cis: dict) -> dict:
    """metrics.json's `<metric>_ci` pairs from a group_bootstrap result."""
    return {f"{k}_ci": [round(cis[k]["low"], 4), round(cis[k]["high"], 4)] for k in ("accuracy", "macro_f1")}


def series_scores(y_test: np.ndarray, probabilities: np.ndarray, series: list[str], classes: list[str],
                  pooling: str, resamples: int) -> tuple[dict, dict]:
    """Study-level metrics (with CIs, bootstrap over series, slices pooled as `pooling` says) and their full CIs."""
    order, pooled = pool_by_series(probabilities, series, pooling)
    return verdict_scores(order, pooled, series_labels(y_test, series, order), classes, pooling, resamples)


def verdict_scores(order: list[str], pooled: np.ndarray, truth: np.ndarray, classes: list[str], pooling: str,
                   resamples: int) -> tuple[dict, dict]:
    """Study-level metrics of given series verdicts ((series, K) probabilities against `truth`), with bootstrap CIs
    over series, and their full CIs."""
    scores = verdict_metrics(truth, pooled, classes, pooling)
    cis = bootstrap_cis(truth, pooled.argmax(axis=1), order, classes, resamples)
    recall_ci = {c: [round(cis[f"recall_{c}"]["low"], 4), round(cis[f"recall_{c}"]["high"], 4)] for c in classes}
    scores |= ci_keys(cis) | {"recall_ci": recall_ci}
    return scores, cis


def protocol_entry(cv: dict | None) -> dict:
    """How the figures were obtained: metrics.json's `protocol` block (the model card and report show it)."""
    if cv is None:
        return {"protocol": {"name": "holdout", "certified_on": "the group-aware test split"}}
    return {"protocol": {"name": "cv_refit", "certified_on": f"grouped {cv['folds']}-fold CV out-of-fold predictions",
                         "folds": cv["folds"], "folds_fingerprint": cv.get("folds_fingerprint"),
                         "fold_macro_f1": cv["macro_f1"], "fold_series_macro_f1": cv.get("series_macro_f1"),
                         "deployed_model": "refitted on every labelled series (the validation split still picks "
                                           "the head's C or the epoch)"}}


def metrics_entry(r: dict) -> dict:
    """One candidate's metrics.json entry: scores and costs, without the confusion matrices."""
    series = {k: v for k, v in r["metrics"]["series"].items() if k != "confusion_matrix"}
    return ({k: v for k, v in r["metrics"].items() if k not in ("confusion_matrix", "series")}
            | {"series": series} | {k: r[k] for k in COST_KEYS})


def gated_value(metrics: dict, key: str, bound: str) -> tuple[float, str]:
    """The value the gate compares for `key` and how it reads: the estimate, or with `ci_low` its lower 95% bound."""
    interval, label = metrics.get(f"{key}_ci"), GATED_LABELS[key]
    if bound == "ci_low":
        if not interval:
            raise ValueError(f"evaluate.gate_bound ci_low needs a confidence interval of {key}; none was computed")
        return float(interval[0]), f"{label} lower 95% bound {interval[0]:.3f} (estimate {metrics[key]:.3f})"
    return float(metrics[key]), f"{label} {metrics[key]:.3f}"


def gate_verdict(metrics: dict, gate: EvaluateParams) -> tuple[bool, list[str]]:
    """Whether metrics clear the minimums in params, with a plain reason for each miss.

    Accuracy and macro-F1 (slice and series) are compared as `gate.gate_bound` says: the estimate, or the lower
    bound of its 95% CI; per-class recall by its estimate.
    """
    reasons = []
    series = metrics.get("series")
    if gate.min_series_macro_f1 > 0 and series is None:
        reasons.append("no series-level scores to check evaluate.min_series_macro_f1 against")
    elif series is not None:
        value, text = gated_value(series, "macro_f1", gate.gate_bound)
        if value < gate.min_series_macro_f1:
            reasons.append(f"series-level {text} ({series['pooling']} of the slice probabilities over "
                           f"{series['series']} series) is below the minimum {gate.min_series_macro_f1:.3f}")
    for key, minimum in (("accuracy", gate.min_accuracy), ("macro_f1", gate.min_macro_f1)):
        value, text = gated_value(metrics, key, gate.gate_bound)
        if value < minimum:
            reasons.append(f"{text} is below the minimum {minimum:.3f}")
    for name, scores in metrics.get("per_class", {}).items():
        if scores["recall"] < gate.min_class_recall:
            reasons.append(f"{name} recall {scores['recall']:.3f} is below the minimum per-class recall "
                           f"{gate.min_class_recall:.3f}")
    return not reasons, reasons


def pick_winner(results: dict[str, dict], gate_metric: str) -> str | None:
    """Best candidate that passed the gate by `gate_metric`; ties go to the cheaper inference, then fewer parameters."""
    passed = {name: r for name, r in results.items() if r["passed"]}
    if not passed:
        return None
    return min(passed, key=lambda n: (-passed[n]["metrics"][gate_metric],
                                      passed[n].get("inference_ms_per_image", float("inf")),
                                      passed[n].get("parameters", 0), n))

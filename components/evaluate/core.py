"""Pure core of evaluate: the gate and the winner (the metrics: components.lib.metrics)."""

from __future__ import annotations

from components.common.params import EvaluateParams

GATED_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


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

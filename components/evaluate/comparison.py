"""The candidate comparison: one row per candidate, as CSV, Markdown and a bar chart."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from components.common.tables import text_table

COLUMNS = ["candidate", "architecture", "passed", "winner", "accuracy", "macro_precision", "macro_recall",
           "macro_f1", "test_loss", "series_accuracy", "series_macro_f1", "parameters", "training_seconds",
           "inference_ms_per_image"]
CHART_METRICS = ["accuracy", "macro_precision", "macro_recall", "macro_f1"]


def inference_ms_per_image(predict_one: Callable[[np.ndarray], object], images: np.ndarray, samples: int = 16,
                           warmup: int = 2) -> float:
    """Median wall time of single-image predictions (serving-like latency), in milliseconds."""
    if len(images) == 0:
        raise ValueError("no images to time inference on")
    picks = [np.asarray(images[i % len(images)][None], dtype="float32") for i in range(warmup + samples)]
    for image in picks[:warmup]:
        predict_one(image)
    times = []
    for image in picks[warmup:]:
        started = time.perf_counter()
        predict_one(image)
        times.append((time.perf_counter() - started) * 1000)
    return float(statistics.median(times))


def comparison_rows(results: dict[str, dict], winner: str | None) -> list[dict]:
    """One row per candidate (in params order) with the metrics, size and costs the comparison shows."""
    rows = []
    for name, r in results.items():
        m = r["metrics"]
        rows.append({"candidate": name, "architecture": r.get("architecture", ""), "passed": r["passed"],
                     "winner": name == winner, **{k: m[k] for k in ("accuracy", "macro_precision", "macro_recall",
                                                                     "macro_f1", "test_loss")},
                     "series_accuracy": m.get("series", {}).get("accuracy"),
                     "series_macro_f1": m.get("series", {}).get("macro_f1"),
                     "parameters": r["parameters"], "training_seconds": r.get("training_seconds"),
                     "inference_ms_per_image": r.get("inference_ms_per_image")})
    return rows


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def comparison_markdown(rows: list[dict], gate_metric: str, pooling: str | None = None) -> str:
    """A Markdown table of every candidate, with the winner named and the tie-break rule stated."""
    table = text_table(COLUMNS, [[_cell(row[c]) for c in COLUMNS] for row in rows])
    winner = next((row["candidate"] for row in rows if row["winner"]), None)
    note = (f"\nWinner: **{winner}** (highest test {gate_metric} among candidates that passed the gates; "
            "ties go to the lower inference ms per image)." if winner else "\nNo candidate passed the gates.")
    if pooling:
        note += (f"\n\nseries_*: one verdict per scan series, the {pooling} of its slices' probabilities "
                 "(evaluate.series_pooling), against the series' majority label.")
    return "# Candidate comparison (group-aware test split)\n\n" + table + "\n" + note + "\n"


def save_comparison_chart(rows: list[dict], path: Path) -> None:
    """Grouped bars: test metrics per candidate, plus inference ms per image on a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["candidate"] + (" *" if row["winner"] else "") for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(4 + 1.6 * len(rows), 4.2),
                                      gridspec_kw={"width_ratios": [3, 1.4]})
    width = 0.8 / len(CHART_METRICS)
    for i, metric in enumerate(CHART_METRICS):
        left.bar(np.arange(len(rows)) + i * width, [row[metric] for row in rows], width, label=metric)
    left.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, names, rotation=20, ha="right")
    left.set_ylim(0, 1.05)
    left.set_title("test metrics (* = winner)")
    left.legend(fontsize=8, loc="lower right")
    right.bar(names, [row["inference_ms_per_image"] or 0 for row in rows], color="grey")
    right.set_title("inference ms / image")
    right.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)

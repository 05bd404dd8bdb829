"""Figures of the run report (matplotlib, headless). Each returns nothing and writes one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.common.calibration import Reliability
from components.common.plots import _pyplot


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)


def class_counts(per_split: dict[str, dict[str, int]], classes: list[str], path: Path) -> None:
    """Stacked bars of images per class and split (the paper's class-count chart)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bottom = np.zeros(len(classes))
    for split, counts in per_split.items():
        values = np.array([counts.get(c, 0) for c in classes])
        ax.bar(classes, values, bottom=bottom, label=split)
        bottom += values
    for i, total in enumerate(bottom):
        ax.text(i, total, str(int(total)), ha="center", va="bottom")
    ax.set_ylabel("images")
    ax.set_title("Images per class and split")
    ax.legend()
    _save(fig, path)


def group_sizes(sizes: list[int], path: Path) -> None:
    """Histogram of group sizes (slices per patient / near-duplicate series)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(sizes, bins=min(30, max(5, len(set(sizes)))), color="tab:purple")
    ax.set_xlabel("images in group")
    ax.set_ylabel("groups")
    ax.set_title(f"{len(sizes)} groups kept whole by every split")
    _save(fig, path)


def samples_per_class(images: dict[str, list[np.ndarray]], path: Path) -> None:
    """A row of sample test images per class (the paper's sample figure)."""
    plt = _pyplot()
    n_cols = max(1, max(len(v) for v in images.values()))
    fig, axes = plt.subplots(len(images), n_cols, figsize=(2 * n_cols, 2 * len(images)), squeeze=False)
    for r, (label, row) in enumerate(images.items()):
        for c in range(n_cols):
            axes[r][c].axis("off")
            if c < len(row):
                axes[r][c].imshow(row[c], cmap="gray")
        axes[r][0].set_title(label, loc="left", fontsize=10)
    _save(fig, path)


def metrics_with_ci(rows: dict[str, dict[str, dict[str, float]]], path: Path, title: str) -> None:
    """Bars of metric estimates with 95% CI whiskers; rows: name -> metric -> {estimate, low, high}."""
    plt = _pyplot()
    names = list(rows)
    metrics = list(next(iter(rows.values())))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(metrics)), 3.8))
    for i, name in enumerate(names):
        est = np.array([rows[name][m]["estimate"] for m in metrics])
        low = np.array([rows[name][m]["low"] for m in metrics])
        high = np.array([rows[name][m]["high"] for m in metrics])
        xs = np.arange(len(metrics)) + i * width
        ax.bar(xs, est, width, label=name, yerr=[est - low, high - est], capsize=3)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(names) - 1) / 2, metrics, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


def leakage_bars(grouped: dict[str, float], random: dict[str, float], path: Path) -> None:
    """Group-aware vs random-split accuracy and macro-F1, side by side."""
    plt = _pyplot()
    metrics = ["accuracy", "macro_f1"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = np.arange(len(metrics))
    ax.bar(xs - 0.2, [grouped[m] for m in metrics], 0.4, label="unseen groups (honest)")
    ax.bar(xs + 0.2, [random[m] for m in metrics], 0.4, label="random image split (leaky)", color="tab:red")
    for x, m in zip(xs, metrics):
        ax.text(x - 0.2, grouped[m], f"{grouped[m]:.2f}", ha="center", va="bottom")
        ax.text(x + 0.2, random[m], f"{random[m]:.2f}", ha="center", va="bottom")
    ax.set_xticks(xs, metrics)
    ax.set_ylim(0, 1.1)
    ax.set_title("Same recipe, two splits")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def reliability_diagram(before: Reliability, after: Reliability, ece: tuple[float, float], path: Path) -> None:
    """Accuracy vs confidence per bin, before and after temperature scaling."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot(before.confidence, before.accuracy, "o-", label=f"raw (ECE {ece[0]:.3f})")
    ax.plot(after.confidence, after.accuracy, "s-", label=f"temperature-scaled (ECE {ece[1]:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Reliability on the test split")
    _save(fig, path)


def gradcam_grid(rows: list[tuple[str, list[tuple[np.ndarray, str]]]], path: Path, title: str) -> None:
    """Rows of (label, [(overlay RGB, caption)]) — Grad-CAM overlays, correct and wrong."""
    plt = _pyplot()
    n_cols = max(1, max((len(r[1]) for r in rows), default=1))
    fig, axes = plt.subplots(max(1, len(rows)), n_cols, figsize=(2.3 * n_cols, 2.5 * max(1, len(rows))), squeeze=False)
    for r, (label, cells) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(cells):
                ax.imshow(cells[c][0])
                ax.set_title(cells[c][1], fontsize=8, color="green" if cells[c][1].startswith("✓") else "red")
        axes[r][0].text(-0.1, 0.5, label, transform=axes[r][0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle(title)
    _save(fig, path)


def coverage_curve(curve: list[dict], path: Path, title: str) -> None:
    """Conformal sets: empirical coverage against the target (the diagonal is the guarantee) and the mean set size
    it costs, over target coverages (cross-fitted over the grouped folds)."""
    plt = _pyplot()
    targets = [row["target"] for row in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4))
    left.plot(targets, [row["coverage"] for row in curve], "o-", label="measured")
    left.plot([0, 1], [0, 1], "--", color="grey", label="target")
    left.set_xlim(min(targets) - 0.05, 1.0)
    left.set_ylim(min(targets) - 0.05, 1.02)
    left.set_xlabel("target coverage")
    left.set_ylabel("coverage on held-out series")
    left.legend()
    right.plot(targets, [row["mean_set_size"] for row in curve], "o-", color="#b5402f")
    right.set_xlabel("target coverage")
    right.set_ylabel("mean classes per set")
    fig.suptitle(title)
    _save(fig, path)

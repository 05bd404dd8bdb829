"""Figures shared by stages (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_image_grid(rows: list[list[np.ndarray]], row_titles: list[str], col_titles: list[str], path: Path,
                    title: str) -> None:
    """Save a grid of grayscale images (rows x columns) with titles."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.2 * n_rows + 0.6), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                ax.imshow(row[c], cmap="gray", vmin=0, vmax=1)
            if r == 0 and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=9)
            if c == 0:
                ax.text(-0.08, 0.5, row_titles[r], transform=ax.transAxes, rotation=90, va="center", ha="right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_confusion_matrix(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Heatmap of a confusion matrix with counts in the cells (rows: true, columns: predicted)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    high = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > high / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_training_curves(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Loss, accuracy, precision, recall and F1 per epoch, train vs validation, best epochs marked."""
    plt = _pyplot()
    metrics = [m for m in ("loss", "accuracy", "precision", "recall", "f1") if m in history]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        train, val = history[metric], history.get(f"val_{metric}", [])
        epochs = range(1, len(train) + 1)
        ax.plot(epochs, train, label="train")
        if val:
            ax.plot(epochs, val, label="validation")
            best = int(np.argmin(val) if metric == "loss" else np.argmax(val))
            ax.scatter([best + 1], [val[best]], s=60, color="red", zorder=3, label=f"best epoch {best + 1}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)

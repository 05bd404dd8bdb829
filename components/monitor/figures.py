"""The monitor's figure: each summary's reference vs new distribution (drifted ones in red), class mixes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from components.monitor.core import Finding
from components.monitor.summaries import NUMERIC_SUMMARIES


def drift_figure(reference: pd.DataFrame, current: pd.DataFrame, findings: Sequence[Finding], classes: Sequence[str],
                 path: Path) -> None:
    """A grid of per-series histograms (reference grey, new blue) plus label and verdict shares."""
    from components.common.plots import _pyplot

    plt = _pyplot()
    verdicts = {f.column: f for f in findings}
    numeric = [c for c in (*NUMERIC_SUMMARIES, "confidence") if c in verdicts]
    shares = [c for c in ("label", "series_verdict", "kernel", "manufacturer") if c in verdicts]
    panels = len(numeric) + len(shares)
    cols = 4
    rows = max(1, -(-panels // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, column in zip(axes.flat, numeric):
        values = np.concatenate([reference[column].dropna(), current[column].dropna()])
        bins = np.histogram_bin_edges(values, bins=20) if len(values) else 10
        ax.hist(reference[column].dropna(), bins=bins, density=True, alpha=0.5, color="grey", label="reference")
        ax.hist(current[column].dropna(), bins=bins, density=True, alpha=0.5, color="tab:blue", label="new")
        _title(ax, verdicts[column])
    for ax, column in zip(list(axes.flat)[len(numeric):], shares):
        order = list(classes) if column in ("label", "series_verdict") else sorted(
            set(reference[column].dropna()) | set(current[column].dropna()))
        x = np.arange(len(order))
        for offset, (frame, colour, name) in enumerate(((reference, "grey", "reference"), (current, "tab:blue", "new"))):
            share = frame[column].value_counts(normalize=True).reindex(order, fill_value=0)
            ax.bar(x + 0.4 * offset, share.to_numpy(), width=0.4, color=colour, alpha=0.7, label=name)
        ax.set_xticks(x + 0.2, [str(o)[:12] for o in order], rotation=30, fontsize=7)
        _title(ax, verdicts[column])
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    if panels:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle("Monitor: per-series distributions, champion's training data (grey) vs new data (blue)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _title(ax, finding: Finding) -> None:
    colour = "tab:red" if finding.drifted else "black"
    ax.set_title(f"{finding.column}\n{finding.distance_name} {finding.distance:.3f}"
                 + ("" if finding.p_value != finding.p_value else f", p {finding.p_value:.2g}")
                 + (" DRIFT" if finding.drifted else ""), fontsize=8, color=colour)

"""Drift tests by Evidently (docs/monitoring.md says why Evidently): one report over the series tables.

Evidently 0.7.23 imports a helper pandas 3 removed (`infer_dtype_from_object`, used only by a legacy
column-type test this stage never runs); `import_evidently` restores it before the import.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.common.params import MonitorParams
from components.monitor.core import EMBEDDING_PREFIX, Finding

EMBEDDING_NAME = "champion_embeddings"
DEFAULT_EMBEDDING_THRESHOLD = {"model": 0.55, "mmd": 0.015}


def import_evidently():
    """The evidently module, importable under pandas 3 (see the module docstring)."""
    import pandas.core.dtypes.common as dtypes

    if not hasattr(dtypes, "infer_dtype_from_object"):
        dtypes.infer_dtype_from_object = lambda dtype: np.dtype(dtype).type
    import evidently

    return evidently


def testable_columns(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Columns present and not empty on both sides (a raster export has no kernel, a DICOM one no NaN spacing)."""
    return [c for c in columns if c in reference.columns and c in current.columns
            and reference[c].notna().any() and current[c].notna().any()]


def embedding_method(settings: MonitorParams):
    """Evidently's embedding drift method named in params, with its threshold."""
    from evidently.metrics.embeddings import MMDDriftMethod, ModelDriftMethod

    threshold = settings.embedding_threshold or DEFAULT_EMBEDDING_THRESHOLD[settings.embedding_method]
    if settings.embedding_method == "mmd":
        return MMDDriftMethod(threshold=threshold), threshold
    return ModelDriftMethod(threshold=threshold), threshold


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str],
                 settings: MonitorParams):
    """(findings, Evidently snapshot) of reference vs current series tables."""
    import_evidently()
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift, ValueDrift

    numeric = testable_columns(reference, current, numeric)
    categorical = testable_columns(reference, current, categorical)
    embeddings = [c for c in reference.columns if c.startswith(EMBEDDING_PREFIX) and c in current.columns]
    definition = DataDefinition(numerical_columns=[*numeric, *embeddings], categorical_columns=list(categorical),
                                embeddings={EMBEDDING_NAME: embeddings} if embeddings else None)
    metrics: list[Any] = [ValueDrift(column=c, method=settings.numeric_method, threshold=settings.numeric_threshold)
                          for c in numeric]
    metrics += [ValueDrift(column=c, method=settings.categorical_method, threshold=settings.categorical_threshold)
                for c in categorical]
    threshold = None
    if embeddings:
        method, threshold = embedding_method(settings)
        metrics.append(EmbeddingsDrift(embeddings_name=EMBEDDING_NAME, drift_method=method))
    columns = [*numeric, *categorical, *embeddings]
    snapshot = Report(metrics).run(Dataset.from_pandas(current[columns].copy(), data_definition=definition),
                                   Dataset.from_pandas(reference[columns].copy(), data_definition=definition))
    return findings_of(snapshot.dict(), settings, threshold), snapshot


def findings_of(result: dict, settings: MonitorParams, embedding_threshold: float | None) -> list[Finding]:
    """Evidently's metric values as findings; a p-value drifts below its threshold, a distance or score above."""
    findings = []
    for metric in result["metrics"]:
        config, value = metric["config"], metric["value"]
        if config.get("type", "").endswith("ValueDrift"):
            method, threshold = str(config["method"]), float(config["threshold"])
            drifted = value < threshold if "p_value" in method else value >= threshold
            findings.append(Finding(config["column"], method, threshold, float(value), bool(drifted)))
        elif config.get("type", "").endswith("EmbeddingsDrift") and embedding_threshold is not None:
            method = f"embeddings ({settings.embedding_method})"
            findings.append(Finding("embeddings", method, embedding_threshold, float(value),
                                    bool(value > embedding_threshold)))
    return findings


def save_html(snapshot, path: Path) -> None:
    """Evidently's own interactive report (self-contained HTML)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))

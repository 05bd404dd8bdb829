"""Drift tests by Evidently (docs/monitoring.md says why Evidently): one report over the series tables.

Each column gets two of Evidently's tests: a p-value (K-S for numbers; for categories a chi-square test of
homogeneity by permutation, `core.homogeneity_p_value`, registered with Evidently as `homogeneity`) that must
fall below the pass's share of `monitor.alpha` (Bonferroni over every test), and a distance (normed
Wasserstein, Jensen-Shannon) that must reach `monitor.min_distance`: a shift that is real and big enough
to matter. The champion's embeddings get Evidently's domain classifier: drift when its ROC AUC beats what
chance gives on the same cases (bootstrap) and reaches 0.55.

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
from components.monitor.core import EMBEDDING_PREFIX, Finding, homogeneity_p_value

EMBEDDING_NAME = "champion_embeddings"
MIN_EMBEDDING_AUC = 0.55  # Evidently's own threshold for its domain classifier
MIN_SERIES_FOR_EMBEDDING_PLOT = 30  # Evidently draws embeddings with t-SNE (perplexity 30): fewer rows fail; the
#                                     test itself (embedding_finding) runs at any size
HOMOGENEITY = "homogeneity"
TESTS = {"numeric": ("ks", "K-S p_value", "wasserstein", "normed Wasserstein"),
         "categorical": (HOMOGENEITY, "chi-square homogeneity p_value (permutation)", "jensenshannon",
                         "Jensen-Shannon")}


def import_evidently():
    """The evidently module, importable under pandas 3 (see the module docstring)."""
    import pandas.core.dtypes.common as dtypes

    if not hasattr(dtypes, "infer_dtype_from_object"):
        dtypes.infer_dtype_from_object = lambda dtype: np.dtype(dtype).type
    import evidently

    register_homogeneity()
    return evidently


def register_homogeneity() -> None:
    """The categorical test as an Evidently stat test, so that its report shows the p-value the verdict used."""
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    def test(reference: pd.Series, current: pd.Series, feature_type, threshold: float) -> tuple[float, bool]:
        p_value = homogeneity_p_value(reference, current, alpha=threshold)
        return p_value, p_value < threshold

    register_stattest(StatTest(name=HOMOGENEITY, display_name=TESTS["categorical"][1],
                               allowed_feature_types=[ColumnType.Categorical]), default_impl=test)


def testable_columns(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Columns present and not empty on both sides (a raster export has no kernel, a DICOM one no NaN spacing)."""
    return [c for c in columns if c in reference.columns and c in current.columns
            and reference[c].notna().any() and current[c].notna().any()]


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str],
                 settings: MonitorParams):
    """(findings, Evidently snapshot) of reference vs current series tables."""
    import_evidently()
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift, ValueDrift
    from evidently.metrics.embeddings import ModelDriftMethod

    reference, current = standardised_embeddings(reference, current)
    kinds = {"numeric": testable_columns(reference, current, numeric),
             "categorical": testable_columns(reference, current, categorical)}
    embeddings = [c for c in reference.columns if c.startswith(EMBEDDING_PREFIX) and c in current.columns
                  and reference[c].notna().all() and current[c].notna().all()]  # none from predict's CSV
    alpha = settings.alpha / max(1, len(kinds["numeric"]) + len(kinds["categorical"]) + bool(embeddings))
    metrics: list[Any] = []
    for kind, columns in kinds.items():
        p_method, _, d_method, _ = TESTS[kind]
        for column in columns:
            metrics += [ValueDrift(column=column, method=p_method, threshold=alpha),
                        ValueDrift(column=column, method=d_method, threshold=settings.min_distance)]
    method = ModelDriftMethod(bootstrap=True, quantile_probability=1 - alpha, threshold=MIN_EMBEDDING_AUC)
    if embeddings and min(len(reference), len(current)) > MIN_SERIES_FOR_EMBEDDING_PLOT:
        metrics.append(EmbeddingsDrift(embeddings_name=EMBEDDING_NAME, drift_method=method))
    columns = [*kinds["numeric"], *kinds["categorical"], *embeddings]
    definition = DataDefinition(numerical_columns=[*kinds["numeric"], *embeddings],
                                categorical_columns=kinds["categorical"],
                                embeddings={EMBEDDING_NAME: embeddings} if embeddings else None)
    snapshot = Report(metrics).run(Dataset.from_pandas(current[columns].copy(), data_definition=definition),
                                   Dataset.from_pandas(reference[columns].copy(), data_definition=definition))
    findings = column_findings(snapshot.dict(), kinds, alpha, settings.min_distance)
    if embeddings:
        findings.append(embedding_finding(method, reference[embeddings], current[embeddings], alpha))
    return findings, snapshot


def standardised_embeddings(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Embedding columns in reference standard deviations: Evidently's domain classifier (plain SGD) fits
    nothing on raw activations of very different scales (ROC AUC 0.5 on a week of another kernel)."""
    columns = [c for c in reference.columns if c.startswith(EMBEDDING_PREFIX) and c in current.columns]
    if not columns:
        return reference, current
    mean, std = reference[columns].mean(), reference[columns].std().replace(0, 1).fillna(1)
    return (reference.assign(**((reference[columns] - mean) / std)),
            current.assign(**((current[columns] - mean) / std)))


def column_findings(result: dict, kinds: dict[str, list[str]], alpha: float, min_distance: float) -> list[Finding]:
    """Pair each column's p-value and distance from Evidently's ValueDrift results."""
    values: dict[tuple[str, str], float] = {}
    for metric in result["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("ValueDrift"):
            values[(config["column"], config["method"])] = float(metric["value"])
    findings = []
    for kind, columns in kinds.items():
        p_method, p_name, d_method, d_name = TESTS[kind]
        for column in columns:
            p_value, distance = values[(column, p_method)], values[(column, d_method)]
            findings.append(Finding(column, p_name, p_value, alpha, d_name, distance, min_distance,
                                    bool(p_value < alpha)))
    return findings


def embedding_finding(method, reference: pd.DataFrame, current: pd.DataFrame, alpha: float) -> Finding:
    """Evidently's domain classifier on the series' mean embeddings (the call the report shows)."""
    auc, beats_chance, _ = method(current.copy(), reference.copy())
    return Finding("embeddings", "domain classifier ROC AUC above the chance quantile (no p-value)", float("nan"),
                   alpha, "ROC AUC", float(auc), MIN_EMBEDDING_AUC, bool(beats_chance))


def save_html(snapshot, path: Path) -> None:
    """Evidently's own interactive report (self-contained HTML)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))

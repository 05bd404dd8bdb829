"""Study verdicts: pooling slice probabilities per series, series-level scores and the gate."""

import numpy as np
import pandas as pd
import pytest

from components.common.params import EvaluateParams
from components.common.pooling import POOLINGS, pool, pool_by_series, series_ids, series_labels, top_slices
from components.evaluate.core import gate_verdict
from components.lib.metrics import series_metrics
from components.lib.predictions import SplitPredictions, probability_rows, read_split

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]
# A Tumor series: most slices look Normal-ish, one slice shows the lesion with high confidence.
TUMOR_SERIES = np.array([[0.65, 0.05, 0.25, 0.05]] * 5 + [[0.02, 0.02, 0.94, 0.02]])


@pytest.mark.parametrize("method", POOLINGS)
def test_every_pooling_gives_a_distribution(method):
    pooled = pool(TUMOR_SERIES, method)
    assert pooled.shape == (4,) and pooled.sum() == pytest.approx(1.0) and np.all(pooled >= 0)


def test_max_lets_one_confident_slice_carry_the_study_where_mean_and_vote_do_not():
    assert pool(TUMOR_SERIES, "max").argmax() == 2
    assert pool(TUMOR_SERIES, "mean").argmax() == 0
    assert pool(TUMOR_SERIES, "vote").argmax() == 0
    assert pool(TUMOR_SERIES, "mean") == pytest.approx(TUMOR_SERIES.mean(axis=0))


def test_pooling_refuses_empty_series_and_unknown_methods():
    with pytest.raises(ValueError, match="at least one slice"):
        pool(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="unknown series pooling 'median'"):
        pool(TUMOR_SERIES, "median")


def test_pool_by_series_groups_slices_and_takes_majority_labels():
    probs = np.vstack([TUMOR_SERIES[2:], [[0.9, 0.05, 0.03, 0.02]] * 2])
    series = ["b"] * 4 + ["a"] * 2
    order, pooled = pool_by_series(probs, series, "max")
    assert order == ["a", "b"] and pooled.argmax(axis=1).tolist() == [0, 2]
    assert series_labels(np.array([2, 2, 0, 2, 0, 0]), series, order).tolist() == [0, 2]
    with pytest.raises(ValueError, match="5 series ids for 6 slices"):
        pool_by_series(probs, series[:5])


def test_series_ids_prefer_the_dicom_series_and_fall_back_to_the_group():
    assert series_ids(["p1", "p1", "dup-1"], ["s-a", "s-b", ""]) == ["s-a", "s-b", "dup-1"]
    assert series_ids(["g1", "g2"], [float("nan"), "nan"]) == ["g1", "g2"]
    assert series_ids(["g1"]) == ["g1"]


def test_top_slices_rank_by_the_verdict_class():
    assert top_slices(TUMOR_SERIES, 2, 2) == [5, 0]
    assert top_slices(TUMOR_SERIES, 2, 10) == [5, 0, 1, 2, 3, 4]


def test_series_metrics_score_one_verdict_per_series():
    # two series per class; slices mostly right, so series verdicts are right even where a slice is wrong
    y, probs, series = [], [], []
    for c in range(4):
        for s in range(2):
            for k in range(3):
                p = np.full(4, 0.1)
                p[c if k else (c + 1) % 4] = 0.7
                y.append(c), probs.append(p), series.append(f"{c}-{s}")
    y, probs = np.array(y), np.array(probs)
    slice_acc = np.mean(probs.argmax(1) == y)
    scores = series_metrics(y, probs, series, CLASSES, "mean")
    assert slice_acc == pytest.approx(2 / 3)
    assert scores["accuracy"] == 1.0 and scores["macro_f1"] == 1.0 and scores["series"] == 8
    assert scores["per_class"]["Stone"]["support"] == 2 and scores["pooling"] == "mean"


def test_the_gate_checks_series_macro_f1_only_when_set():
    metrics = {"accuracy": 0.9, "macro_f1": 0.9, "per_class": {},
               "series": {"macro_f1": 0.5, "pooling": "mean", "series": 12}}
    assert gate_verdict(metrics, EvaluateParams(min_accuracy=0, min_macro_f1=0, min_class_recall=0,
                                                    min_series_macro_f1=0)) == (True, [])
    passed, reasons = gate_verdict(metrics, EvaluateParams(min_accuracy=0, min_macro_f1=0, min_class_recall=0,
                                                           min_series_macro_f1=0.8))
    assert not passed
    assert reasons == ["series-level macro-F1 0.500 (mean of the slice probabilities over 12 series) is below "
                       "the minimum 0.800"]
    old = {k: v for k, v in metrics.items() if k != "series"}
    assert not gate_verdict(old, EvaluateParams(min_accuracy=0, min_macro_f1=0, min_class_recall=0, min_series_macro_f1=0.8))[0]


def test_saved_probabilities_read_back_in_array_order(tmp_path):
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.25, 0.25, 0.25, 0.25]])
    saved = SplitPredictions(np.array([0, 3, 1]), probs, ["g1", "g1", "g2"], ["s1", "s1", "g2"], ["a", "b", "c"])
    frame = pd.concat([probability_rows("cnn", "test", saved, CLASSES).iloc[::-1],
                       probability_rows("other", "test", saved, CLASSES)])
    frame.to_csv(tmp_path / "p.csv", index=False)
    back = read_split(pd.read_csv(tmp_path / "p.csv", dtype=str).astype({f"p_{c}": float for c in CLASSES}),
                      "cnn", "test", CLASSES)
    assert back.labels.tolist() == [0, 3, 1] and back.keys == ["a", "b", "c"] and back.series == ["s1", "s1", "g2"]
    np.testing.assert_allclose(back.probabilities, probs)
    with pytest.raises(KeyError, match="no val probabilities for candidate 'cnn'"):
        read_split(frame, "cnn", "val", CLASSES)


def test_series_key_reads_the_dicom_uid_else_the_folder():
    from components.common.study import series_key
    from tests.fixtures import ct_dicom_bytes, png_bytes

    assert series_key("exports/patient 1/a.png", png_bytes(np.zeros((4, 4)))) == "exports/patient 1"
    assert series_key("a.png", png_bytes(np.zeros((4, 4)))) == "."
    assert series_key("x/a.dcm", ct_dicom_bytes(np.zeros((4, 4)))) == "x"  # a DICOM without a SeriesInstanceUID


def test_zip_members_skip_folders_and_resource_files_and_enforce_bounds():
    import io
    import zipfile

    from components.common.study import ArchiveError, zip_members

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("s/a.png", b"a" * 10)
        archive.writestr("s/.DS_Store", b"x")
        archive.writestr("__MACOSX/s/._a.png", b"x")
        archive.writestr("s/b.png", b"b" * 10)
    data = buffer.getvalue()
    assert zip_members(data, 5, 100) == [("s/a.png", b"a" * 10), ("s/b.png", b"b" * 10)]
    with pytest.raises(ArchiveError, match="holds 2 files; at most 1"):
        zip_members(data, 1, 100)
    with pytest.raises(ArchiveError, match="unpacks to more than"):
        zip_members(data, 5, 15)
    with pytest.raises(ArchiveError, match="not a readable zip"):
        zip_members(b"PK\x03\x04 junk", 5, 100)


def test_study_verdict_names_the_pooled_class_and_its_top_slices():
    from components.common.study import study_verdict

    verdict = study_verdict(TUMOR_SERIES, CLASSES, "max", top_k=2)
    assert verdict.label == "Tumor" and verdict.slices == 6 and verdict.top == [5, 0]
    assert sum(verdict.probabilities.values()) == pytest.approx(1.0)


def test_the_gate_has_no_default_and_an_unknown_pooling_is_refused():
    from pydantic import ValidationError

    stated = dict(min_accuracy=0.9, min_macro_f1=0.9, min_class_recall=0.85, min_series_macro_f1=0.0)
    assert EvaluateParams(**stated).series_pooling == "mean"
    with pytest.raises(ValidationError, match="min_macro_f1\n  Field required"):
        EvaluateParams(**{k: v for k, v in stated.items() if k != "min_macro_f1"})
    with pytest.raises(ValidationError, match="series_pooling"):
        EvaluateParams(**stated, series_pooling="median")
    with pytest.raises(ValidationError, match="min_series_macro_f1"):
        EvaluateParams(**{**stated, "min_series_macro_f1": 1.5})


def test_a_params_file_without_the_gate_is_refused(tmp_path):
    import yaml

    from components.common.params import ParamsError, load_params
    from tests.tiny import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["evaluate"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="evaluate: Field required"):
        load_params(tmp_path / "params.yaml")


def test_gem_sits_between_mean_and_max_and_leans_to_the_confident_slice():
    mean, gem, top = (pool(TUMOR_SERIES, m) for m in ("mean", "gem", "max"))
    assert mean[2] < gem[2] < top[2]
    raw = np.mean(TUMOR_SERIES ** 3, axis=0) ** (1 / 3)
    assert gem == pytest.approx(raw / raw.sum())

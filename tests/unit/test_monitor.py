"""The monitor's pure pieces: summaries, series tables, drift findings, the verdict, the alert's ledger."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from components.common.imaging import LoadedImage
from components.common.params import MonitorParams
from components.monitor.alert import alert_body, alert_id, deliver, send_once
from components.monitor.core import (
    Finding,
    Performance,
    decide,
    homogeneity_p_value,
    new_keys,
    reference_rows,
    sample_by_series,
    series_table,
    series_where_unknown,
    with_heldout_outputs,
)
from components.monitor.summaries import image_summary, texture
from tests.fixtures import ct_dicom_bytes

SETTINGS = MonitorParams(alert_webhook="http://127.0.0.1:9/hook", alert_attempts=3)


def finding(column: str, p: float, distance: float) -> Finding:
    return Finding(column, "K-S p_value", p, 0.001, "normed Wasserstein", distance, 0.1, p < 0.001)


def test_a_column_drifts_only_when_the_shift_is_significant_and_large_enough():
    assert finding("texture", 1e-6, 2.0).drifted
    assert not finding("texture", 0.2, 2.0).drifted  # large but not significant: chance on few series
    assert not finding("texture", 1e-9, 0.01).drifted  # significant but too small to matter
    assert "DRIFT" in finding("texture", 1e-6, 2.0).line() and "ok" in finding("rows", 1.0, 0.0).line()


def test_degraded_beats_drift_and_names_the_numbers():
    performance = Performance("macro_f1", 0.60, 0.52, 0.68, 0.6, certified=0.80, max_drop=0.05, cases=90,
                              series=30)
    verdict = decide([finding("kernel", 0.0, 0.8)], performance)
    assert verdict.status == "degraded" and verdict.alert
    assert "0.600 [0.520, 0.680]" in verdict.reasons[0] and "certified 0.800" in verdict.reasons[0]
    assert decide([finding("kernel", 0.0, 0.8)], None).status == "drift"
    assert decide([finding("rows", 1.0, 0.0)], None) .status == "no drift"


@pytest.mark.parametrize("score, high, degraded", [(0.70, 0.78, True), (0.70, 0.85, False), (0.77, 0.74, False)])
def test_degraded_needs_a_drop_beyond_the_margin_that_the_interval_confirms(score, high, degraded):
    performance = Performance("macro_f1", score, score - 0.1, high, score, 0.80, 0.05, 50, 20)
    assert performance.degraded is degraded


def test_new_keys_and_series_sampling_keep_whole_series():
    assert new_keys(["a", "b", "c"], ["b"]) == ["a", "c"]
    rows = pd.DataFrame({"key": [f"k{i}" for i in range(12)], "series": [f"s{i // 3}" for i in range(12)]})
    sample = sample_by_series(rows, max_images=7, seed=1)
    assert len(sample) == 6 and sample.groupby("series").size().eq(3).all()  # two whole series of three
    assert len(sample_by_series(rows, 100)) == 12


def test_series_table_averages_numbers_and_takes_the_majority_label():
    images = pd.DataFrame({"series": ["a", "a", "a", "b"], "texture": [1.0, 2.0, 3.0, 5.0],
                           "emb_0": [0.0, 1.0, 2.0, 4.0], "kernel": ["B30f"] * 3 + ["B70f"],
                           "label": ["Cyst", "Cyst", "Tumor", "Stone"], "series_verdict": ["Cyst"] * 3 + ["Stone"]})
    table = series_table(images).set_index("series")
    assert table.loc["a", "texture"] == 2.0 and table.loc["a", "emb_0"] == 1.0
    assert table.loc["a", "label"] == "Cyst" and table.loc["b", "kernel"] == "B70f"


def test_image_summary_reads_air_bone_and_texture_through_the_window():
    hu = np.full((32, 32), 40.0, dtype=np.float32)
    hu[:8] = -1000.0  # air
    hu[-4:] = 1200.0  # bone
    summary = image_summary(LoadedImage(hu, "dicom", "int16"), center=40, width=400)
    assert summary["air_fraction"] == pytest.approx(8 / 32) and summary["bone_fraction"] == pytest.approx(4 / 32)
    noisy = hu + np.random.default_rng(0).normal(0, 30, hu.shape).astype(np.float32)
    assert texture(np.clip((noisy - (40 - 200)) / 400, 0, 1)) > texture(np.clip((hu + 160) / 400, 0, 1))


def test_the_drift_report_flags_the_shifted_columns_not_the_others():
    from components.monitor.drift import drift_report

    rng = np.random.default_rng(0)

    def series(n: int, texture_mean: float, kernel: str) -> pd.DataFrame:
        return pd.DataFrame({"texture": rng.normal(texture_mean, 1, n), "intensity_mean": rng.normal(0, 1, n),
                             "kernel": [kernel] * n, "label": rng.choice(["Cyst", "Tumor"], n),
                             **{f"emb_{i}": rng.normal(0, 1, n) for i in range(4)}})

    reference = series(150, 0.0, "B30f")
    same, _ = drift_report(reference, series(60, 0.0, "B30f"), ["texture", "intensity_mean"], ["kernel", "label"],
                           MonitorParams())
    assert not [f.column for f in same if f.drifted]
    shifted, snapshot = drift_report(reference, series(60, 3.0, "B70f"), ["texture", "intensity_mean"],
                                     ["kernel", "label"], MonitorParams())
    assert {f.column for f in shifted if f.drifted} == {"texture", "kernel"}
    assert {f.column for f in shifted} == {"texture", "intensity_mean", "kernel", "label", "embeddings"}
    assert shifted[0].alpha == pytest.approx(0.01 / 5)  # Bonferroni over the pass's five tests
    assert snapshot.dict()["metrics"]
    few, _ = drift_report(series(9, 0.0, "B30f"), series(12, 0.0, "B30f"), ["texture"], ["kernel"], MonitorParams())
    assert "embeddings" in {f.column for f in few}  # tested at any size; Evidently's t-SNE plot needs 30+


def test_a_category_only_the_new_week_shows_is_evidence_not_a_certain_drift():
    reference = ["Normal"] * 3 + ["Tumor"] * 2 + [None] * 16  # 16 series without held-out outputs
    current = ["Tumor"] * 25 + ["Normal"] * 5 + ["Cyst"] * 2
    p_value = homogeneity_p_value(reference, current, alpha=0.01 / 14)
    assert 0.001 < p_value < 0.5  # some evidence from 5 reference series, far from certain (goodness-of-fit: p 0)
    assert p_value == homogeneity_p_value([v for v in reference if v], current, alpha=0.01 / 14)  # None left out


def test_slices_without_a_series_get_their_near_duplicate_group_named_apart_from_the_reference():
    rng = np.random.default_rng(1)
    patterns = rng.normal(0, 1, (2, 8, 8))
    thumbnails = np.stack([patterns[i % 2] + rng.normal(0, 0.05, (8, 8)) for i in range(6)] + [patterns[0]])
    series = series_where_unknown(["", ".", "", "", "", "", "1.2.840.99"], thumbnails, threshold=0.92)
    assert series[6] == "1.2.840.99"  # a DICOM series stays what its header says
    assert len(set(series[:6:2])) == 1 and len(set(series[1:6:2])) == 1 and series[0] != series[1]
    assert all(s.startswith("new-dup-") for s in series[:6])  # never pooled with a reference group "dup-..."
    assert series_where_unknown(["a", "b"], thumbnails[:2], 0.92) == ["a", "b"]


def test_homogeneity_tells_a_changed_mix_from_the_same_one():
    rng = np.random.default_rng(3)
    mix = rng.choice(["Normal", "Cyst", "Tumor", "Stone"], 120, p=[0.4, 0.3, 0.2, 0.1])
    again = rng.choice(["Normal", "Cyst", "Tumor", "Stone"], 40, p=[0.4, 0.3, 0.2, 0.1])
    assert homogeneity_p_value(mix, again, alpha=0.001) > 0.05
    changed = rng.choice(["Normal", "Cyst", "Tumor", "Stone"], 40, p=[0.1, 0.1, 0.7, 0.1])
    p_value = homogeneity_p_value(mix, changed, alpha=0.001)
    assert p_value < 0.001 and p_value >= 1 / 20_001  # reachable under alpha: 20 / alpha permutations
    assert homogeneity_p_value(["B30f"] * 5, ["B30f"] * 5) == 1.0 and homogeneity_p_value([], ["B30f"]) == 1.0


def report(status: str = "drift") -> dict:
    return {"status": status, "reasons": ["kernel: p 0, Jensen-Shannon 0.833 (min 0.1) DRIFT"],
            "champion": {"model_name": "kidney-ct-classifier", "version": "3"}, "new_data_fingerprint": "abc"}


def test_an_alert_is_sent_once_per_verdict_and_data(tmp_path):
    posts = []

    def post(url, body, timeout):
        posts.append(json.loads(body))
        return 200

    ledger = tmp_path / "alerts_sent.json"
    assert send_once(report(), SETTINGS, ledger, "run 1", post)[0] is True
    sent, why = send_once(report(), SETTINGS, ledger, "run 1 (retry)", post)
    assert sent is False and "already delivered" in why and len(posts) == 1
    assert posts[0]["text"].startswith("kidney-ct monitor: DRIFT in run 1") and "v3" in posts[0]["text"]
    changed = {**report(), "new_data_fingerprint": "def"}  # next week's data: a new alert
    assert send_once(changed, SETTINGS, ledger, "run 2", post)[0] is True and len(posts) == 2
    assert alert_id(changed) != alert_id(report()) and alert_body(report(), "x")["id"] == alert_id(report())


def test_no_alert_without_drift_or_without_a_webhook(tmp_path):
    post = pytest.fail  # must not be called
    assert send_once(report("no drift"), SETTINGS, tmp_path / "l.json", "r", post) == (
        False, "no alert: the verdict is 'no drift'")
    sent, why = send_once(report(), MonitorParams(), tmp_path / "l.json", "r", post)
    assert sent is False and "alert_webhook is not set" in why


def test_delivery_retries_then_fails_clearly():
    from components.common.cli import StageError

    answers = iter([503, OSError("connection refused"), 200])
    assert deliver("http://x", {}, SETTINGS, lambda *a: _answer(next(answers)), pause_s=0) == 3
    with pytest.raises(StageError, match="after 3 attempt.*HTTP 500"):
        deliver("http://x", {}, SETTINGS, lambda *a: 500, pause_s=0)


def _answer(value):
    if isinstance(value, Exception):
        raise value
    return value


def test_headers_come_from_the_de_identified_dicom():
    from components.monitor.summaries import dicom_header

    header = dicom_header(ct_dicom_bytes(np.zeros((16, 16), dtype=np.int16)))
    assert set(header) == {"manufacturer", "kernel", "pixel_spacing_mm", "slice_thickness_mm"}
    assert dicom_header(b"not a dicom")["kernel"] == "unknown"


def test_conformal_sets_that_stop_covering_the_new_labelled_series_make_the_champion_degraded():
    """Issue 34: coverage on new labelled cases is a performance-drift signal (a binomial test against the
    certified coverage); the same sets covering as certified raise nothing."""
    from components.common.conformal import ConformalCalibration
    from components.common.params import load_params
    from components.common.study_model import StudyModel
    from components.monitor.performance import champion_performance

    classes = ["Normal", "Cyst", "Tumor", "Stone"]
    tight = ConformalCalibration("lac", 0.9, False, (0.5,) * 4, (100,) * 4)   # a set holds classes with p >= 0.5
    study = StudyModel("mean", conformal=tight)
    params = load_params("params.yaml")
    rows = []
    for s in range(30):                        # 30 Tumor series the champion calls Normal with p 0.8
        for _ in range(3):
            rows.append({"series": f"s{s}", "label": "Tumor", "p_Normal": 0.8, "p_Cyst": 0.05, "p_Tumor": 0.1,
                         "p_Stone": 0.05})
    wrong = champion_performance(pd.DataFrame(rows), classes, None, params, study)
    assert wrong.set_coverage == 0.0 and wrong.coverage_broken and wrong.degraded
    verdict = decide([], wrong)
    assert verdict.status == "degraded" and "conformal sets hold the label of 0%" in verdict.reasons[0]
    right = pd.DataFrame(rows).assign(label="Normal")
    fine = champion_performance(right, classes, None, params, study)
    assert fine.set_coverage == 1.0 and not fine.coverage_broken and not fine.degraded


def test_the_reference_outputs_are_the_held_out_predictions_and_none_for_fitted_slices():
    images = pd.DataFrame({"key": ["fit-1", "held-1", "held-2"], "series": ["a", "b", "c"],
                           "p_Cyst": [0.99, 0.6, 0.2], "p_Stone": [0.01, 0.4, 0.8], "emb_0": [1.0, 2.0, 3.0]})
    heldout = pd.DataFrame({"key": ["held-1", "held-2", "elsewhere"], "series": ["b", "c", "d"],
                            "label": ["Cyst", "Stone", "Cyst"], "p_Cyst": [0.3, 0.45, 0.5], "p_Stone": [0.7, 0.55, 0.5]})
    out = with_heldout_outputs(images, heldout, ["Cyst", "Stone"])
    assert out["p_Cyst"].isna().tolist() == [True, False, False]  # the fitted slice's in-sample 0.99 is gone
    assert out["predicted"].tolist() == [None, "Stone", "Stone"]
    assert out["confidence"].round(2).tolist()[1:] == [0.7, 0.55] and np.isnan(out["confidence"].iat[0])
    assert out["emb_0"].tolist() == [1.0, 2.0, 3.0]  # summaries and embeddings stay for every slice


def test_reference_rows_take_every_labelled_image_up_to_the_cap_by_whole_series():
    reference = pd.DataFrame({"key": [f"k{i}" for i in range(12)], "label": "Cyst", "fitted": ["true", "false"] * 6,
                              "series": [f"s{i // 3}" for i in range(12)], "split": "train"})
    assert len(reference_rows(reference, 100)) == 12  # fitted or held out: all of them
    capped = reference_rows(reference, 7)
    assert len(capped) == 6 and capped.groupby("series").size().eq(3).all()


def test_a_test_without_a_p_value_records_none_not_nan():
    finding = Finding("embeddings", "domain classifier", float("nan"), 0.01, "ROC AUC", 0.7, 0.55, True)
    assert finding.record()["p_value"] is None and finding.drifted
    assert "p " not in finding.line()


def test_the_real_week_bench_cuts_numbered_files_into_series_and_draws_whole_ones(tmp_path):
    from PIL import Image

    from components.monitor.bench import class_series, draw_week, lay_out_week
    from components.monitor.summaries import texture

    rng = np.random.default_rng(0)
    patterns = [rng.integers(0, 255, (8, 8)).repeat(8, 0).repeat(8, 1) for _ in range(2)]  # two unlike series
    folder = tmp_path / "data" / "Cyst"
    folder.mkdir(parents=True)
    for number in range(1, 11):  # files 1-4 one series, 5-10 the other; numbered like the public files
        pixels = np.clip(patterns[number > 4] + rng.normal(0, 3, (64, 64)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"Cyst- ({number}).png")
    series = class_series(folder)
    assert [[int(p.stem.split("(")[1][:-1]) for p in s] for s in series] == [[1, 2, 3, 4], [5, 6, 7, 8, 9, 10]]
    week = draw_week(tmp_path / "data", slices=5, seed=0)
    assert len(week) in (1, 2) and sum(len(files) for _, files in week) >= 5  # whole series until there are 5
    plain, shifted = tmp_path / "week", tmp_path / "shifted"
    assert lay_out_week(week, plain) == lay_out_week(week, shifted, shifted=True)
    name, files = week[0]
    grey = lambda path: np.asarray(Image.open(path).convert("L"), dtype=float) / 255  # noqa: E731
    assert texture(grey(shifted / name / files[0].name)) > 1.5 * texture(grey(plain / name / files[0].name))


def test_a_reference_described_by_one_runtime_is_not_read_back_for_another():
    from types import SimpleNamespace

    from components.monitor.__main__ import reference_digest

    champion = SimpleNamespace(version="3", image_size=224, window_center=40, window_width=400, body_crop=True)
    rows = pd.DataFrame({"key": ["b.dcm", "a.dcm"]})
    f32, int8 = reference_digest(rows, champion, "openvino-f32"), reference_digest(rows, champion, "openvino-int8")
    assert f32 != int8 and f32 == reference_digest(rows.iloc[::-1], champion, "openvino-f32")  # order-free

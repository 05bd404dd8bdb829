"""`python -m components` summary lines for the leakage stage and a refused registration."""

from components.__main__ import leakage_lines


def test_leakage_lines_show_the_leaky_number_and_the_grouped_cv_with_recalls():
    leakage = {"candidate": "compact_cnn", "random_split": {"accuracy": 0.997, "macro_f1": 0.996},
               "grouped_cv": {"folds": 5, "macro_f1": {"mean": 0.61, "std": 0.08},
                              "recall_Stone": {"mean": 0.42, "std": 0.2}, "recall_Cyst": {"mean": 0.9, "std": 0.1}}}
    lines = leakage_lines(leakage)
    assert "random image-level split (leaky): accuracy 0.997, macro-F1 0.996" in lines[0]
    assert "grouped 5-fold CV of compact_cnn: macro-F1 0.610 ± 0.080; recall Stone 0.42, Cyst 0.90" in lines[1]
    assert leakage_lines(None) == [] and leakage_lines({"candidate": "c"}) == []
    leakage["grouped_cv"]["series_macro_f1"] = {"mean": 0.7, "std": 0.05}
    assert leakage_lines(leakage)[1].endswith("Cyst 0.90; per series macro-F1 0.700 ± 0.050")


def test_champion_line_names_the_champions_test_macro_f1_with_its_ci():
    from components.__main__ import champion_lines, ci_text

    metrics = {"compact_cnn": {"macro_f1": 0.968, "macro_f1_ci": [0.931, 0.992]}}
    promoted = {"version": 3, "champion_version": 3, "candidate": "compact_cnn"}
    assert champion_lines(promoted, metrics) == [
        "champion   v3 (compact_cnn): test macro-F1 0.968 [95% CI 0.931, 0.992] on unseen patients"]
    kept = {"version": 4, "champion_version": 3, "candidate": "compact_cnn"}
    assert "v3 kept" in champion_lines(kept, metrics)[0]
    assert ci_text({"macro_f1": 0.5}) == ""
    metrics["compact_cnn"]["protocol"] = {"name": "cv_refit"}
    assert champion_lines(promoted, metrics) == [
        "champion   v3 (compact_cnn, refitted on every labelled series): out-of-fold macro-F1 0.968 "
        "[95% CI 0.931, 0.992] by grouped CV of its recipe"]


def test_summary_points_at_the_page_not_only_the_api_root(tmp_path):
    from components.__main__ import summary_lines
    from tests.tiny import tiny_params, write_params

    lines = summary_lines(str(write_params(tiny_params(tmp_path), tmp_path / "params.yaml")))
    assert any("http://127.0.0.1:3000/ui/" in line for line in lines)


def test_monitor_and_comparison_lines_say_the_verdict_and_the_paired_difference():
    from components.__main__ import comparison_line, monitor_lines

    report = {"status": "drift", "reasons": ["kernel: p 0, Jensen-Shannon 0.833 (min 0.1) DRIFT"], "tests": [],
              "performance": {"metric": "macro_f1", "score": 0.71, "low": 0.62, "high": 0.79, "certified": 0.95,
                              "cases": 480}}
    lines = monitor_lines(report, "reports/monitor")
    assert lines[0] == "monitor    DRIFT: kernel: p 0, Jensen-Shannon 0.833 (min 0.1) DRIFT"
    assert "480 new labelled slices: macro_f1 0.710 [0.620, 0.790] (certified 0.950)" in lines[1]
    assert "reports/monitor/drift.png" in lines[2]
    assert monitor_lines({"status": "no champion", "reasons": ["first run"]}, "m") == ["monitor    NO CHAMPION: first run"]
    comparison = {"on": "the new held-out cases", "difference": 0.04, "low": -0.01, "high": 0.09, "groups": 40}
    assert comparison_line(comparison) == [
        "           challenger - champion on the new held-out cases: +0.040 [95% CI -0.010, +0.090] over 40 series"]
    assert comparison_line(None) == [] and comparison_line({"champion": 0.7}) == []

"""Report page: the Jinja2 template escapes every value it is given and embeds the figures."""

import base64

from components.report.html import figure, page

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def ci(value: float) -> dict:
    return {"estimate": value, "low": value - 0.1, "high": value + 0.05, "groups": 4}


def context(tmp_path, monkeypatch, name: str) -> dict:
    """What run() hands the page, built by the real section functions (figure drawing stubbed out)."""
    from types import SimpleNamespace

    from components.report import __main__ as report
    from components.report import figures

    for drawn in ("metrics_with_ci", "reliability_diagram", "gradcam_grid", "leakage_bars"):
        monkeypatch.setattr(figures, drawn, lambda *args: None)
    params = SimpleNamespace(paths=SimpleNamespace(evaluation=str(tmp_path)))
    metrics = {"per_class": {"Stone": {"precision": 0.8, "recall": 0.9, "f1": 0.85, "support": 2}},
               "accuracy": 0.8, "macro_precision": 0.7, "macro_recall": 0.75, "macro_f1": 0.72, "test_loss": 0.5}
    cis = {"accuracy": ci(0.8), "macro_f1": ci(0.72), "recall_Stone": ci(0.9)}
    analysis = {"ci95": cis, "reliability_before": None, "reliability_after": None, "ece_before": 0.1,
                "ece_after": 0.05, "temperature": 1.5, "temperature_fitted_on": "validation"}
    leakage = {"candidate": name, "random_split": {"accuracy": 0.99, "macro_f1": 0.98, "groups_shared_with_test": 3}}
    prepared = {"images": 12, "groups": 4, "group_source": "patient", "group_size": {"min": 1, "median": 3, "max": 5}}
    return {"data": {"prepared": prepared, "figures": []},
            "comparison": report.comparison_section({name: metrics}, tmp_path),
            "candidates": [report.candidate_section(name, metrics, analysis, params, tmp_path, [])],
            "leakage": report.leakage_section(leakage, metrics, tmp_path)}


def test_a_candidate_name_with_markup_appears_escaped_everywhere_on_the_page(tmp_path, monkeypatch):
    html = page(f"report {EVIL}", context(tmp_path, monkeypatch, EVIL))
    assert "<script" not in html
    assert f"<h3>{ESCAPED}</h3>" in html and f"<td>{ESCAPED}</td>" in html
    assert f"<title>report {ESCAPED}</title>" in html and f"The same recipe ({ESCAPED})" in html
    assert f'alt="{ESCAPED}: confusion matrix"' not in html  # that figure is missing here: said so, path escaped
    assert html.count("figure missing:") == 5 and f"confusion_{ESCAPED}" in html


def test_the_page_embeds_figures_and_keeps_its_numbers(tmp_path, monkeypatch):
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    (tmp_path / "comparison.png").write_bytes(png)
    html = page("run", context(tmp_path, monkeypatch, "cnn"))
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in html
    assert "<figcaption>Metrics per candidate</figcaption>" in html
    assert ("<tr><td>cnn</td><td>0.800</td><td>0.700</td><td>0.750</td><td>0.720</td><td>0.500</td><td></td>"
            "<td></td></tr>") in html
    assert "Accuracy 0.800 [0.700, 0.850], macro-F1 0.720 [0.620, 0.770]" in html and "(T = 1.50," in html
    assert "<td>gap</td><td>0.190</td><td>0.260</td>" in html
    assert "No series-level scores in this evaluation" in html


def test_a_missing_figure_is_named_not_embedded(tmp_path):
    assert figure(tmp_path / "absent.png", "x") == {"caption": "x", "src": None, "path": str(tmp_path / "absent.png")}
    no_leak = page("run", {"data": {"prepared": {"images": 1, "groups": 1, "group_source": "patient",
                                                 "group_size": {"min": 1, "median": 1, "max": 1}},
                                    "figures": [figure(tmp_path / "absent.png", "x")]},
                           "comparison": {"extra": [], "rows": [], "chart": None}, "candidates": [], "leakage": None})
    assert f"<p class=\"bad\">figure missing: {tmp_path / 'absent.png'}</p>" in no_leak
    assert "No random-split comparison in this run" in no_leak


def test_the_drift_section_shows_the_verdict_every_test_and_the_figure(tmp_path, monkeypatch):
    from components.report import __main__ as report

    png = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
    (tmp_path / "drift.png").write_bytes(png)
    monitor = {"status": "drift", "reasons": ["kernel: p 0, Jensen-Shannon 0.833 (min 0.1) DRIFT"],
               "tests": [{"column": "kernel", "test": "chi-square p_value", "p_value": 0.0, "alpha": 0.001,
                          "distance_name": "Jensen-Shannon", "distance": 0.833, "min_distance": 0.1, "drifted": True},
                         {"column": "rows", "test": "K-S p_value", "p_value": 1.0, "alpha": 0.001,
                          "distance_name": "normed Wasserstein", "distance": 0.0, "min_distance": 0.1,
                          "drifted": False}],
               "performance": {"metric": "macro_f1", "score": 0.905, "low": 0.857, "high": 0.945, "certified": 0.952,
                               "cases": 480, "series": 160}}
    html = page("run", {**context(tmp_path, monkeypatch, "cnn"), "drift": report.drift_section(monitor, tmp_path)})
    assert "Monitor verdict: <b>drift</b>" in html and "macro_f1 0.905\n[0.857, 0.945]" in html
    assert "<td>kernel</td><td>chi-square p_value</td><td>0.000</td>" in html and "<td>DRIFT</td>" in html
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in html
    first_run = page("run", {**context(tmp_path, monkeypatch, "cnn"), "drift": report.drift_section(
        {"status": "no champion", "reasons": ["the first run"]}, tmp_path)})
    assert "Monitor verdict: <b>no champion</b>. the first run" in first_run and "<td>DRIFT</td>" not in first_run
    assert "No monitor verdict in this run" in page("run", context(tmp_path, monkeypatch, "cnn"))

"""python -m components — where the last pipeline run put its results, and how to look at them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from components.common.params import ParamsError, load_params
from components.common.tracking import tracking_uri


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def leakage_lines(leakage: dict | None) -> list[str]:
    """The leaky random-split score and the grouped CV, when the leakage stage produced them."""
    if not leakage:
        return []
    lines = []
    if "random_split" in leakage:
        r = leakage["random_split"]
        lines.append(f"leakage    random image-level split (leaky): accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}")
    if "grouped_cv" in leakage:
        cv = leakage["grouped_cv"]
        recalls = ", ".join(f"{k[len('recall_'):]} {v['mean']:.2f}" for k, v in cv.items() if k.startswith("recall_"))
        lines.append(f"leakage    grouped {cv['folds']}-fold CV of {leakage['candidate']}: macro-F1 "
                     f"{cv['macro_f1']['mean']:.3f} ± {cv['macro_f1']['std']:.3f}; recall {recalls}"
                     + (f"; per series macro-F1 {cv['series_macro_f1']['mean']:.3f} ± {cv['series_macro_f1']['std']:.3f}"
                        if "series_macro_f1" in cv else ""))
    return lines


def ci_text(metrics: dict, key: str = "macro_f1") -> str:
    """` [95% CI low, high]` when evaluate recorded the bootstrap interval of `key`, else nothing."""
    ci = metrics.get(f"{key}_ci")
    return f" [95% CI {ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def champion_lines(registration: dict, metrics: dict) -> list[str]:
    """The champion's test macro-F1 with its CI when this run's candidate is the champion."""
    if registration.get("champion_version") != registration.get("version"):
        return [f"champion   v{registration.get('champion_version')} kept: this run's challenger may be worse on the "
                "same held-out cases"]
    m = metrics.get(registration.get("candidate"), {})
    if "macro_f1" not in m:
        return []
    if (m.get("protocol") or {}).get("name") == "cv_refit":
        return [f"champion   v{registration['version']} ({registration['candidate']}, refitted on every labelled "
                f"series): out-of-fold macro-F1 {m['macro_f1']:.3f}{ci_text(m)} by grouped CV of its recipe"]
    return [f"champion   v{registration['version']} ({registration['candidate']}): test macro-F1 {m['macro_f1']:.3f}"
            f"{ci_text(m)} on unseen patients"]


def monitor_lines(report: dict | None, folder: str) -> list[str]:
    """The monitor's verdict, what drifted, the champion on the new cases (docs/monitoring.md)."""
    if not report:
        return []
    lines = [f"monitor    {report['status'].upper()}: " + "; ".join(report.get("reasons", [])[:3])]
    performance = report.get("performance")
    if performance:
        certified = performance.get("certified")
        lines.append(f"           champion on {performance['cases']} new labelled slices: {performance['metric']} "
                     f"{performance['score']:.3f} [{performance['low']:.3f}, {performance['high']:.3f}]"
                     + (f" (certified {certified:.3f})" if certified is not None else ""))
    if "tests" in report:
        lines.append(f"           figures: {Path(folder) / 'drift.png'}, {Path(folder) / 'evidently.html'}")
    return lines


def comparison_line(comparison: dict | None) -> list[str]:
    """register's paired comparison of challenger and champion, when it ran."""
    if not comparison or "difference" not in comparison:
        return []
    return [f"           challenger - champion on {comparison['on']}: {comparison['difference']:+.3f} "
            f"[95% CI {comparison['low']:+.3f}, {comparison['high']:+.3f}] over {comparison['groups']} series"]


def summary_lines(params_path: str = "params.yaml") -> list[str]:
    """Human-readable lines about each stage's outputs."""
    p = load_params(params_path)
    paths = p.paths
    lines = ["Kidney CT pipeline — results of the last run", ""]
    ingest = _read(Path(paths.ingested) / "ingest.json")
    if ingest:
        lines.append(f"ingest     {ingest.get('files_seen')} files seen, {ingest.get('ingested_new')} new, "
                     f"{ingest.get('already_present')} already stored, {ingest.get('quarantined')} quarantined -> {paths.store}")
    validation = _read(Path(paths.validation) / "result.json")
    if validation:
        lines.append(f"validate   suite {'PASSED' if validation.get('success') else 'FAILED'}; "
                     f"Data Docs: {Path(paths.validation) / 'data_docs' / 'index.html'}")
    prepared = _read(Path(paths.prepared) / "preprocess.json")
    if prepared:
        lines.append(f"preprocess {prepared['images']} images in {prepared['groups']} {prepared['group_source']} groups; "
                     f"split: {prepared['per_split']}")
    lines += monitor_lines(_read(Path(paths.monitor) / "monitor.json"), paths.monitor)
    lines.append(f"augment    preview grid: {Path(paths.augment_preview) / 'preview.png'}")
    metrics = _read(Path(paths.evaluation) / "metrics.json") or {}
    for name, m in metrics.items():
        series = m.get("series")
        per_series = (f"; per series ({series['pooling']} pooling) macro-F1 {series['macro_f1']:.3f} on "
                      f"{series['series']} series") if series else ""
        where = ("out-of-fold images of the grouped CV (cv_refit)" if (m.get("protocol") or {}).get("name") ==
                 "cv_refit" else "held-out images (group-aware split)")
        lines.append(f"evaluate   {name}: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}{ci_text(m)} on "
                     f"{m['test_images']} {where}{per_series}")
    lines.append(f"           plots: {Path(paths.evaluation) / 'plots'}")
    lines += leakage_lines(_read(Path(paths.leakage) / "leakage.json"))
    registration = _read(Path(paths.registration) / "registration.json")
    if registration and not registration.get("registered", True):
        lines.append(f"register   nothing registered: {registration.get('reason')}")
    elif registration:
        lines.append(f"register   {registration.get('model_name', p.register.model_name)} v{registration.get('version')}: "
                     f"{registration.get('reason')}; champion is v{registration.get('champion_version')}")
        lines += comparison_line(registration.get("comparison"))
        lines += champion_lines(registration, metrics)
    if (Path(paths.report) / "report.html").is_file():
        lines.append(f"report     {Path(paths.report) / 'report.html'} (every figure, CIs, calibration, Grad-CAM, leakage)")
    bento = _read(Path(paths.package) / "bento.json")
    if bento:
        lines.append(f"package    Bento {bento.get('bento_tag')} (model {bento.get('bento_model_tag')})")
    lines += ["", "Look closer:",
              f"  MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {tracking_uri(p.mlflow)} --host 127.0.0.1",
              "  Serve:      make serve   (then open http://127.0.0.1:3000/ui/ for the page; "
              "http://127.0.0.1:3000 is BentoML's API page)",
              "  Metrics:    .venv/bin/dvc metrics show"]
    return lines


def main() -> int:
    try:
        print("\n".join(summary_lines(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")))
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

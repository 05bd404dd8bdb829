"""CLI: python -m components.monitor — the new data against the champion's training data, and the champion on it.

Reads the registry's champion (its serving contract, `registration/reference.csv`: the keys of the data it was
developed on, and `registration/heldout_predictions.csv`: its predictions on the slices it was not fitted on,
both logged by the register stage) and the ingest manifest. The champion's reference images are read and scored
once per registered version (one forward pass gives probabilities and embeddings) and logged to its run
(`monitor/reference.csv.gz`); every later pass reads them. The reference for the champion's outputs is the
held-out predictions (out-of-fold under cv_refit, the test split's under holdout), never its own training slices.
What was ingested since is the new export; with `--source DIR` an unlabelled folder (shadow mode: what
`components.predict` or the service is given) stands in for it. Writes `<paths.monitor>/monitor.json` (the
verdict: no champion | no new data | too few new series | no drift | drift | degraded, with every test's numbers
and where the reference came from), `summaries.csv` (one row per image), `series.csv`, `drift.png`, Evidently's
own `evidently.html`, and an MLflow run. Exit 0 whatever the verdict: the DAG's alert task acts on it
(`python -m components.monitor.alert`).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components.common.champion import Champion, resolve_champion
from components.common.cli import StageError, log, run_stage, stage_parser, write_json
from components.common.console import progress
from components.common.imaging import ImageDecodeError, decode_image, prepare_for_model, resize, window_unit
from components.common.params import Params
from components.common.pooling import fixed_pooling
from components.common.storage import open_store
from components.common.study import series_key
from components.common.study_model import StudyModel
from components.monitor.core import (
    EMBEDDING_PREFIX,
    UNKNOWN_SERIES,
    Verdict,
    class_counts,
    decide,
    new_keys,
    reference_rows,
    series_table,
    series_where_unknown,
    with_heldout_outputs,
)
from components.monitor.performance import champion_performance
from components.monitor.summaries import CATEGORICAL_SUMMARIES, NUMERIC_SUMMARIES, dicom_header, image_summary

BATCH = 32
LABELLED = "new labelled export"
REFERENCE_FORMAT = 1  # the cached reference's columns; bump when describe() changes what it writes


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Compare what arrived since the champion was registered with the data it was trained on "
                          "(image summaries, scanner headers, class mix, the champion's embeddings, verdicts and "
                          "confidence) and score the champion on the new labelled cases; write the verdict.")
    parser.add_argument("--predictions", type=Path, default=None,
                        help="components.predict's predictions.csv (shadow mode on its output): verdict-share and "
                             "confidence drift against the champion's own training data, no pixels read")
    parser.add_argument("--source", type=Path, default=None,
                        help="an unlabelled folder of DICOM/PNG/JPEG files to judge instead of the newly ingested "
                             "export (shadow mode: no labels, so no performance check)")
    return run_stage("monitor", run, parser, argv)


def run(params: Params, args: argparse.Namespace) -> None:
    started = time.monotonic()
    folder = Path(params.paths.monitor)
    folder.mkdir(parents=True, exist_ok=True)
    found = champion_and_reference(params)
    if isinstance(found, Verdict):
        return finish(params, folder, {"status": found.status, "reasons": found.reasons}, started)
    champion, reference, certified, heldout = found
    manifest = read_manifest(params)
    current = current_rows(args, manifest, reference)
    report = {"champion": {"model_name": champion.model_name, "version": champion.version}, "mode": mode_of(args),
              "new_data_fingerprint": hashlib.sha256("\n".join(sorted(current["key"])).encode()).hexdigest()[:16]}
    new_series = current["series"].nunique() if len(current) else 0
    if new_series == 0:
        return finish(params, folder, {**report, "status": "no new data",
                                       "reasons": ["nothing was ingested since the champion's data was recorded"]},
                      started)
    unknown = current["series"].fillna("").astype(str).isin(UNKNOWN_SERIES).any()  # counted once read (describe)
    if new_series < params.monitor.min_new_series and not unknown:
        return too_few_series(params, folder, report, new_series, started)
    model = functools.cache(lambda: load_champion_model(champion))  # not loaded when nothing is left to score
    store = open_store(params.paths.store, params.storage)
    read = (lambda key: (args.source / key).read_bytes()) if args.source else store.get
    reference_images, report["reference"] = champion_reference(champion, reference, heldout, model, store, params)
    scored = (scored_rows(current, champion) if args.predictions else
              describe(current.assign(side="current"), read, model(), champion, params))
    if scored["series"].nunique() < params.monitor.min_new_series:
        return too_few_series(params, folder, report, scored["series"].nunique(), started)
    images = pd.concat([reference_images, scored], ignore_index=True)
    report |= judge(images, champion, certified, params, labelled=mode_of(args) == LABELLED)
    report["counts"] |= {"reference_images": int((images["side"] == "reference").sum()),
                         "current_images": int((images["side"] == "current").sum()),
                         "unreadable": int(images["unreadable"].sum())}
    images.drop(columns=[c for c in images.columns if c.startswith(EMBEDDING_PREFIX)]).to_csv(
        folder / "summaries.csv", index=False)
    finish(params, folder, report, started)


def too_few_series(params: Params, folder: Path, report: dict, new_series: int, started: float) -> None:
    finish(params, folder, {**report, "status": "too few new series", "reasons": [
        f"{new_series} new series (fewer than monitor.min_new_series {params.monitor.min_new_series})"]}, started)


def mode_of(args: argparse.Namespace) -> str:
    if args.predictions:
        return "shadow (components.predict's predictions: verdict shares and confidence only)"
    return "shadow (unlabelled folder)" if args.source else LABELLED


def current_rows(args: argparse.Namespace, manifest: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """What is judged: predict's scored slices, an unlabelled folder, or what was ingested since the champion."""
    if args.predictions:
        if not args.predictions.is_file():
            raise StageError(f"--predictions {args.predictions} not found (components.predict writes it with --out)")
        rows = pd.read_csv(args.predictions, dtype={"file": str, "series": str})
        return rows.rename(columns={"file": "key"}).assign(label=None)
    if args.source:
        return folder_rows(args.source)
    return manifest[manifest["key"].isin(new_keys(manifest["key"], reference["key"]))]


def scored_rows(rows: pd.DataFrame, champion: Champion) -> pd.DataFrame:
    """predict's slices as the monitor's current images: its probabilities and confidence, no pixels read."""
    missing = [f"p_{c}" for c in champion.classes if f"p_{c}" not in rows.columns]
    if missing or "confidence" not in rows.columns:
        raise StageError(f"the predictions lack {missing or ['confidence']}: score them with the champion "
                         f"({champion.model_name} v{champion.version}) through components.predict")
    return rows.assign(side="current", unreadable=False)


def champion_and_reference(params: Params) -> tuple[Champion, pd.DataFrame, float | None, pd.DataFrame | None] | Verdict:
    """The champion, the record of its data, its certified gate metric and its held-out predictions (None for a
    version registered before register logged them), or why there is nothing to compare with yet."""
    import mlflow

    from components.common.registry import (
        HELDOUT_ARTIFACT,
        REFERENCE_ARTIFACT,
        connect_mlflow,
        existing_registry_uri,
        mlflow_alias_lookup,
        version_reference,
        version_table,
    )

    try:
        uri = existing_registry_uri(params)
    except StageError as exc:
        return Verdict("no champion", [f"{exc} (the first run has nothing to compare with)"])
    connect_mlflow(uri)
    try:
        champion = resolve_champion(mlflow_alias_lookup(uri), params.register.model_name)
    except StageError:
        return Verdict("no champion", [f"registered model '{params.register.model_name}' has no champion yet: "
                                       "nothing to compare with (the first run)"])
    reference = version_reference(champion.run_id)
    if reference is None:
        return Verdict("no champion", [f"champion v{champion.version} was registered without {REFERENCE_ARTIFACT} "
                                       "(the record of its data): re-run register"])
    tags = mlflow.MlflowClient().get_model_version(champion.model_name, champion.version).tags or {}
    metric = params.evaluate.gate_metric
    certified = tags.get(f"certified_{metric}") or tags.get(f"test_{metric}")
    heldout = version_table(champion.run_id, HELDOUT_ARTIFACT, dtype={"key": str, "series": str, "label": str})
    return champion, reference, float(certified) if certified else None, heldout


def champion_reference(champion: Champion, reference: pd.DataFrame, heldout: pd.DataFrame | None, model,
                       store, params: Params) -> tuple[pd.DataFrame, dict]:
    """The champion's reference images, described once per registered version: read from its run where an earlier
    pass logged them, else read from the store and scored in one pass (progress shown) and logged there for every
    later pass; their outputs are the held-out predictions (`with_heldout_outputs`). And what the report says."""
    from components.common.inference import scorer_form
    from components.common.registry import MONITOR_REFERENCE_ARTIFACT, version_table

    started = time.monotonic()
    rows = reference_rows(reference, params.monitor.max_reference_images)
    digest = reference_digest(rows, champion, scorer_form(champion.run_id))
    cached = version_table(champion.run_id, MONITOR_REFERENCE_ARTIFACT, dtype={"key": str, "series": str,
                                                                               "label": str, "digest": str})
    hit = cached is not None and len(cached) and (cached["digest"] == digest).all()
    if hit:
        images = cached.drop(columns=["digest"])
    else:
        images = describe(rows.assign(side="reference"), store.get, model(), champion, params)
        log_reference_cache(champion.run_id, images.assign(digest=digest), MONITOR_REFERENCE_ARTIFACT)
    outputs = "in-sample: the champion's own outputs on its training slices (re-register it to log held-out ones)"
    if heldout is not None:
        images = with_heldout_outputs(images, heldout, champion.classes)
        outputs = f"held out: {int(images['confidence'].notna().sum())} of {len(images)} images"
    return images, {"images": len(images), "series": int(images["series"].nunique()), "cached": bool(hit),
                    "seconds": round(time.monotonic() - started, 1), "outputs": outputs}


def reference_digest(rows: pd.DataFrame, champion: Champion, form: str) -> str:
    """What a cached reference must match: its images, the champion's input contract and what scored them (a
    version packaged again at another precision describes its reference again: like with like)."""
    contract = f"{champion.version}|{champion.image_size}|{champion.window_center}|{champion.window_width}|" \
               f"{champion.body_crop}|{REFERENCE_FORMAT}|{form}"
    return hashlib.sha256("\n".join([contract, *sorted(rows["key"])]).encode()).hexdigest()[:20]


def log_reference_cache(run_id: str, images: pd.DataFrame, artifact: str) -> None:
    """The described reference as a gzipped CSV artifact of the champion's run (float32 precision is plenty)."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="kidney-ct-monitor-") as tmp:
        path = Path(tmp) / Path(artifact).name
        images.to_csv(path, index=False, float_format="%.6g", compression="gzip")
        mlflow.MlflowClient().log_artifact(run_id, str(path), str(Path(artifact).parent))


def read_manifest(params: Params) -> pd.DataFrame:
    """The ingest manifest (key, label, group, series), one row per stored image."""
    path = Path(params.paths.ingested) / "manifest.csv"
    if not path.is_file():
        raise StageError(f"{path} not found: run the ingest stage first")
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    manifest["series"] = [s or g for s, g in zip(manifest["series"], manifest["group"])]
    return manifest


def folder_rows(source: Path) -> pd.DataFrame:
    """Every file under an unlabelled folder, keyed by its relative path, series from its DICOM header."""
    if not source.is_dir():
        raise StageError(f"--source {source} is not a folder")
    files = sorted(p for p in source.rglob("*") if p.is_file())
    return pd.DataFrame({"key": [str(p.relative_to(source)) for p in files], "label": None,
                         "series": [series_key(str(p.relative_to(source)), p.read_bytes()) for p in files]})


def load_champion_model(champion: Champion):
    """The champion's scorer: one pass gives its probabilities and its penultimate layer (the embedding); its
    converted form where package logged one to its run (components.common.inference), else its Keras model."""
    from components.common.inference import load_scorer

    return load_scorer(champion.model_uri, champion.run_id)


def describe(rows: pd.DataFrame, read, model, champion: Champion, params: Params) -> pd.DataFrame:
    """Each row's summaries, headers, champion probabilities and embedding; unreadable files flagged; a slice
    without a series (a flat raster export) gets its near-duplicate group (`series_where_unknown`)."""
    records, inputs = [], []
    size = params.preprocess.duplicate_size
    thumbnails = np.zeros((len(rows), size, size), dtype=np.float32)  # an unreadable file: a group of its own
    for i, row in enumerate(progress(rows.itertuples(index=False), total=len(rows),
                                     desc=f"monitor {rows['side'].iat[0]}", unit="img")):
        record = {"key": row.key, "series": row.series, "label": getattr(row, "label", None) or None,
                  "side": row.side, "unreadable": False}
        try:
            data = read(row.key)
            image = decode_image(data)
        except (ImageDecodeError, OSError, KeyError, StageError) as exc:
            log.warning("monitor: %s unreadable (%s): left out", row.key, exc)
            records.append(record | {"unreadable": True})
            continue
        record |= image_summary(image, champion.window_center, champion.window_width) | dicom_header(data)
        thumbnails[i] = resize(window_unit(image, champion.window_center, champion.window_width), size)
        records.append(record)
        inputs.append(prepare_for_model(image, champion.image_size, champion.window_center, champion.window_width,
                                        champion.body_crop))
    frame = pd.DataFrame(records)
    frame["series"] = series_where_unknown(frame["series"].fillna("").astype(str).tolist(), thumbnails,
                                           params.preprocess.duplicate_threshold)
    readable = ~frame["unreadable"]
    probabilities, embeddings = predict(model, inputs, str(rows["side"].iat[0]))
    for i, name in enumerate(champion.classes):
        frame.loc[readable, f"p_{name}"] = probabilities[:, i]
    frame.loc[readable, "predicted"] = [champion.classes[i] for i in probabilities.argmax(axis=1)]
    frame.loc[readable, "confidence"] = probabilities.max(axis=1)
    frame = pd.concat([frame, pd.DataFrame(np.full((len(frame), embeddings.shape[1]), np.nan), index=frame.index,
                                           columns=[f"{EMBEDDING_PREFIX}{i}" for i in range(embeddings.shape[1])])],
                      axis=1)
    frame.loc[readable, frame.columns.str.startswith(EMBEDDING_PREFIX)] = embeddings
    return frame


def predict(model, inputs: list[np.ndarray], side: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Champion probabilities and penultimate-layer embeddings of prepared uint8 images: one forward pass a batch."""
    if not inputs:
        raise StageError("no image could be read: nothing to compare (the log names each unreadable file)")
    probabilities, embeddings = [], []
    for start in progress(range(0, len(inputs), BATCH), total=-(-len(inputs) // BATCH),
                          desc=f"monitor {side} scoring".strip(), unit="batch"):
        x = np.stack(inputs[start:start + BATCH])[..., None].astype("float32")
        p, e = model(x)
        probabilities.append(np.asarray(p))
        embeddings.append(np.asarray(e).reshape(len(x), -1))
    return np.concatenate(probabilities), np.concatenate(embeddings)


def judge(images: pd.DataFrame, champion: Champion, certified: float | None, params: Params,
          labelled: bool) -> dict:
    """Series tables, Evidently's drift tests, the champion's performance, the verdict and its figures."""
    from components.monitor.drift import drift_report, save_html
    from components.monitor.figures import drift_figure

    images = images[~images["unreadable"].astype(bool)].copy()
    probabilities = images[[f"p_{c}" for c in champion.classes]].to_numpy(dtype=float)
    scored = ~np.isnan(probabilities).any(axis=1)  # a reference slice the champion was fitted on has no outputs
    study = champion.study or StudyModel(fixed_pooling(champion.series_pooling))
    order, pooled, sets = study.by_series(probabilities[scored], images.loc[scored, "series"].tolist())
    images["series_verdict"] = images["series"].map(dict(zip(order, (champion.classes[i] for i in
                                                                      pooled.argmax(axis=1)))))
    with_sets = study.conformal is not None  # a set-size shift is a drift signal that needs no label
    if with_sets:
        images["set_size"] = images["series"].map(dict(zip(order, sets.sum(axis=1).astype(float))))
    reference, current = (series_table(images[images["side"] == side]) for side in ("reference", "current"))
    categorical = [*CATEGORICAL_SUMMARIES, "series_verdict", *(["label"] if labelled else [])]
    findings, snapshot = drift_report(reference, current, [*NUMERIC_SUMMARIES, "confidence",
                                                           *(["set_size"] if with_sets else [])],
                                      categorical, params.monitor)
    folder = Path(params.paths.monitor)
    save_html(snapshot, folder / "evidently.html")
    performance = (champion_performance(images[images["side"] == "current"], champion.classes, certified, params,
                                        study) if labelled else None)
    verdict = decide(findings, performance)
    pd.concat([reference.assign(side="reference"), current.assign(side="current")]).drop(
        columns=[c for c in reference.columns if c.startswith(EMBEDDING_PREFIX)]).to_csv(folder / "series.csv",
                                                                                          index=False)
    drift_figure(reference, current, findings, champion.classes, folder / "drift.png")
    classes = list(champion.classes)
    return {"status": verdict.status, "reasons": verdict.reasons, "tests": [f.record() for f in findings],
            "drifted": [f.column for f in findings if f.drifted],
            "performance": None if performance is None else {**vars(performance), "degraded": performance.degraded},
            "counts": {"reference_series": len(reference), "current_series": len(current),
                       "current_series_per_class": class_counts(current, "label", classes) if labelled else None,
                       "reference_series_per_class": class_counts(reference, "label", classes),
                       "current_verdicts_per_class": class_counts(current, "series_verdict", classes),
                       "reference_verdicts_per_class": class_counts(reference, "series_verdict", classes)},
            "outputs": {name: str(folder / name) for name in ("evidently.html", "drift.png", "series.csv",
                                                              "summaries.csv")}}


def finish(params: Params, folder: Path, report: dict, started: float) -> None:
    """monitor.json, the MLflow run, one summary line; without a comparison, every other output says why."""
    report["seconds"] = round(time.monotonic() - started, 1)
    if "tests" not in report:
        write_no_comparison(folder, f"{report['status']}: " + "; ".join(report.get("reasons", [])))
    write_json(folder / "monitor.json", report)
    log_to_mlflow(params, report)
    print(f"monitor: {report['status'].upper()} — " + "; ".join(report.get("reasons", [])[:6]))


def write_no_comparison(folder: Path, why: str) -> None:
    """Outputs of a pass that compared nothing (first run, no new data): empty tables, a page and a figure
    that say why, so no stale drift report of an earlier pass is left beside the new verdict."""
    from html import escape

    from components.common.plots import _pyplot

    for name in ("series.csv", "summaries.csv"):
        (folder / name).write_text("series,side\n")
    (folder / "evidently.html").write_text(f"<!doctype html><title>monitor</title><p>No drift report: "
                                           f"{escape(why)}</p>\n")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.5))
    ax.axis("off")
    ax.text(0.01, 0.5, f"No drift comparison — {why}"[:160], va="center", fontsize=9, wrap=True)
    fig.savefig(folder / "drift.png", dpi=90)
    plt.close(fig)


def log_to_mlflow(params: Params, report: dict) -> None:
    """One run per monitor pass: the verdict as tags, every test's value and the performance as metrics."""
    import mlflow

    from components.common.tracking import configure_mlflow

    configure_mlflow(params.mlflow)
    with mlflow.start_run(run_name=f"monitor: {report['status']}"):
        champion = report.get("champion") or {}
        mlflow.set_tags({"stage": "monitor", "verdict": report["status"], "alert": str(
            report["status"] in ("drift", "degraded")).lower(), "champion_version": str(champion.get("version", "")),
            "drifted": ",".join(report.get("drifted", [])), "reasons": " | ".join(report.get("reasons", []))[:5000]})
        metrics = {f"drift_{t['column']}": t["distance"] for t in report.get("tests", [])}
        performance = report.get("performance") or {}
        metrics |= {f"new_{k}": v for k, v in performance.items() if isinstance(v, float) and k != "max_drop"}
        metrics |= {k: float(v) for k, v in (report.get("counts") or {}).items() if isinstance(v, (int, float))}
        metrics["monitor_seconds"] = report["seconds"]
        mlflow.log_metrics({k.replace(" ", "_"): v for k, v in metrics.items() if v == v})


if __name__ == "__main__":
    raise SystemExit(main())

"""CLI: python -m components.predict SOURCE --out predictions.csv — score an export in shadow mode."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from components.common.cli import StageError, log, write_json
from components.common.console import quiet_runtime
from components.common.params import Params, ParamsError, load_params
from components.common.pooling import POOLINGS
from components.common.study_model import StudyModel
from components.lib.structured_report import Algorithm, export_reports
from components.predict.core import Contract, Predict, score_export
from components.predict.sr_io import pacs_url, read_headers, store_reports, write_reports

DESCRIPTION = """Score every slice of an export with a trained model, in shadow mode (nothing is sent anywhere,
the source is only read). SOURCE is a folder (searched recursively) or a .zip of PNG, JPEG or DICOM slices.
Slices are grouped into series by their DICOM SeriesInstanceUID, else by the folder they lie in, and each
series gets a verdict through the model's study model (evaluate fitted it: the pooling or series head, the
decision rule) and its conformal set: the classes that hold the truth with the certified probability (e.g.
`Tumor|Normal`; more than one class = refer to a radiologist). Preprocessing is the service's
(components.common.imaging.prepare_for_model). Files that cannot be read are listed with a reason.

Writes: OUT (one row per slice: probabilities, predicted class, its series' verdict and set), OUT's stem +
.series.csv (one row per series: verdict, set, refer, coverage), .quarantine.csv (file, reason) and
.summary.json (counts).

With --sr DIR, each DICOM series' verdict also becomes a DICOM Structured Report (TID 1500) in DIR, and with
--store-to-pacs it is stored back (STOW-RS) to the PACS the export came from, filed with the study it read. The
SR carries the patient's identifiers: it stays inside the hospital (DIR and the PACS; never logged). It is
marked INVESTIGATIONAL, not for diagnosis, unless predict.clinical_use is true (docs/structured-report.md)."""

EPILOG = """examples:
  python -m components.predict ../shared/data/kidney-ct --out scored/predictions.csv
  python -m components.predict export.zip --out p.csv --model models/paper_cnn
  python -m components.predict export/ --out p.csv --model models:/kidney-ct-classifier/3
  python -m components.predict pacs-export/ --out p.csv --sr sr/ --store-to-pacs
exit status: 0 scored, 2 refused (bad arguments, no model, no readable slice)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m components.predict", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="export folder or .zip of PNG/JPEG/DICOM slices (read only)")
    p.add_argument("--out", required=True, help="predictions CSV to write (one row per slice)")
    p.add_argument("--model", help="a model.keras file, a folder holding one (e.g. models/paper_cnn), or an MLflow "
                   "URI (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/model); default: the registry's "
                   "champion of register.model_name")
    p.add_argument("--params", default="params.yaml", help="params file: classes, preprocessing, pooling, MLflow "
                   "store (default: params.yaml)")
    p.add_argument("--pooling", choices=POOLINGS,
                   help="series pooling of a model file (default: evaluate.series_pooling); a registered model "
                   "uses the pooling it was certified with")
    p.add_argument("--sr", metavar="DIR", help="write a DICOM Structured Report per scored DICOM series into DIR "
                   "(it carries patient identifiers: keep DIR inside the hospital)")
    p.add_argument("--store-to-pacs", action="store_true", help="store the SRs to the PACS by STOW-RS (needs --sr)")
    p.add_argument("--pacs-url", help="DICOMweb root to store to (default: ingest.dicomweb_url, the PACS pulled "
                   "from); credentials: ingest.dicomweb_user and the env var ingest.dicomweb_password_env names")
    p.add_argument("--batch-size", type=int, default=64, help="slices per model call (default: 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def source_items(source: Path) -> tuple[list[tuple[str, Callable[[], bytes]]], Callable[[], None]]:
    """(relative name, reader) per file of a folder or zip, sorted; and a close function."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(source).parts))
        return [(p.relative_to(source).as_posix(), p.read_bytes) for p in files], lambda: None
    if source.is_file() and zipfile.is_zipfile(source):
        archive = zipfile.ZipFile(source)
        infos = sorted((i for i in archive.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")
                        and not Path(i.filename).name.startswith(".")), key=lambda i: i.filename)
        return [(i.filename, (lambda info: lambda: archive.read(info))(i)) for i in infos], archive.close
    raise StageError(f"{source} is neither a folder nor a zip archive")


class Loaded(NamedTuple):
    """A model to score with, its preprocessing contract, and where it came from."""

    model: object  # a scorer (components.common.inference): batch -> (probabilities, embeddings)
    contract: Contract
    described: str  # the file or URI it was loaded from
    certified: str | None  # the series pooling a registry version was certified with (None for a file)
    name: str  # registered model name (a file: its folder or stem)
    version: str  # registry version ("unregistered" for a file or a run URI)
    study: StudyModel | None = None  # the registry version's study model: series head, rule, conformal sets


def scorer_predict(scorer) -> Predict:
    """The probabilities of a scorer: the registered version's converted form, or its Keras model."""
    return lambda batch: scorer(batch)[0]


def contract_from_params(params: Params) -> Contract:
    pre = params.preprocess
    return Contract(list(params.classes), pre.image_size, pre.window_center, pre.window_width, pre.body_crop)


def load_local(path: Path, params: Params):
    """A model.keras file (or a folder holding one) with the preprocessing of the params file."""
    import keras

    file = path / "model.keras" if path.is_dir() else path
    if not file.is_file():
        raise StageError(f"{file} not found: pass a model.keras file, a folder holding one, or an MLflow URI")
    try:
        model = keras.saving.load_model(file, compile=False)
    except Exception as exc:  # keras raises many types for a broken file
        raise StageError(f"cannot load {file} as a Keras model: {exc}") from None
    from components.common.inference import KerasScorer

    name = file.parent.name if file.name == "model.keras" else file.stem
    study_file = Path(params.paths.evaluation) / "study" / f"{name}.json"  # evaluate's fit for this candidate
    study = StudyModel.from_dict(json.loads(study_file.read_text())) if study_file.is_file() else None
    return Loaded(KerasScorer(model), contract_from_params(params), str(file), None, name, "unregistered", study)


def champion_contract(champion) -> Contract:
    """The preprocessing a registry version was tagged with, as the predict core's contract."""
    return Contract(list(champion.classes), champion.image_size, champion.window_center, champion.window_width,
                    champion.body_crop)


def load_registered(uri: str | None, params: Params):
    """The champion (or an MLflow URI) with the preprocessing its registry version was tagged with."""
    from components.common.champion import Champion, champion_from_version, resolve_champion
    from components.common.inference import KerasScorer, load_scorer
    from components.common.registry import connect_mlflow, existing_registry_uri, load_registered_keras, mlflow_alias_lookup

    registry = existing_registry_uri(params)
    connect_mlflow(registry)
    name = params.register.model_name
    if uri is None:
        champion = resolve_champion(mlflow_alias_lookup(registry), name)
        contract = champion_contract(champion)
        return Loaded(load_scorer(champion.model_uri, champion.run_id), contract, champion.model_uri,
                      champion.series_pooling, champion.model_name, champion.version, champion.study)
    contract, certified, name, version, study = contract_from_params(params), None, uri, "unregistered", None
    if uri.startswith("models:/"):
        from mlflow import MlflowClient

        ref = uri.removeprefix("models:/")
        model, _, alias = ref.partition("@")
        model, _, version = model.partition("/")
        client = MlflowClient()
        try:
            found = (client.get_model_version_by_alias(model, alias) if alias
                     else client.get_model_version(model, version))
        except Exception as exc:
            raise StageError(f"cannot find {uri} in the registry at {registry}: {exc}") from None
        champion: Champion = champion_from_version(model, found)
        contract, certified = champion_contract(champion), champion.series_pooling
        name, version, study = champion.model_name, champion.version, champion.study
        return Loaded(load_scorer(uri, found.run_id), contract, uri, certified, name, version, study)
    return Loaded(KerasScorer(load_registered_keras(uri)), contract, uri, certified, name, version, study)


def load_model(spec: str | None, params: Params) -> Loaded:
    """The model of --model, or the registry's champion when it is not given."""
    if spec and ":/" not in spec:
        return load_local(Path(spec), params)
    return load_registered(spec, params)


def series_pooling(asked: str | None, certified: str | None, params: Params) -> str:
    """A registered model's certified pooling (--pooling may only repeat it); a model file's: --pooling, else
    evaluate.series_pooling."""
    if certified is None:
        return asked or params.evaluate.series_pooling
    if asked is not None and asked != certified:
        raise StageError(f"--pooling {asked}: the registered model was certified with {certified!r} study verdicts, "
                         "and the pooling is part of its contract")
    return certified


def output_paths(out: Path) -> dict[str, Path]:
    stem = out.with_suffix("")
    return {"slices": out, "series": Path(f"{stem}.series.csv"), "quarantine": Path(f"{stem}.quarantine.csv"),
            "summary": Path(f"{stem}.summary.json")}


def check_outside(source: Path, out: Path) -> None:
    """The source stays untouched: refuse to write into it."""
    if source.is_dir() and out.resolve().is_relative_to(source.resolve()):
        raise StageError(f"--out {out} lies inside SOURCE {source}; write the predictions elsewhere "
                         "(the export is only read)")


def check_args(args: argparse.Namespace, params: Params, source: Path, out: Path) -> None:
    if not source.exists():
        raise StageError(f"{source} does not exist")
    if args.batch_size < 1:
        raise StageError("--batch-size must be at least 1")
    check_outside(source, out)
    if args.sr:
        check_outside(source, Path(args.sr))
    if (args.store_to_pacs or args.pacs_url) and not args.sr:
        raise StageError("--store-to-pacs stores the structured reports --sr DIR writes: pass --sr too")
    if args.store_to_pacs:
        pacs_url(args.pacs_url, params)


def write_tables(scored, classes: list[str], paths: dict[str, Path]) -> None:
    paths["slices"].parent.mkdir(parents=True, exist_ok=True)
    probs = [f"p_{c}" for c in classes]
    pd.DataFrame(scored.slices, columns=["file", "series", "predicted", "confidence", *probs, "slice_set",
                                         "series_verdict", "series_set"]).to_csv(paths["slices"], index=False)
    pd.DataFrame(scored.series, columns=["series", "slices", "verdict", "set", "refer", "coverage", "pooling", *probs,
                                         "top_slice"]).to_csv(paths["series"], index=False)
    pd.DataFrame(scored.quarantine, columns=["file", "reason"]).to_csv(paths["quarantine"], index=False)


def structured_reports(args: argparse.Namespace, params: Params, scored, headers: dict, loaded: Loaded) -> dict:
    """--sr / --store-to-pacs: an SR per DICOM series into the SR folder and the PACS; counts only (no UIDs)."""
    c = loaded.contract
    algorithm = Algorithm(loaded.name, loaded.version, {
        "classes": ",".join(c.classes), "image_size": str(c.image_size), "window_center": f"{c.window_center:g}",
        "window_width": f"{c.window_width:g}"})
    settings = params.predict
    reports, refused = export_reports(scored.slices, scored.series, headers, c.classes, algorithm,
                                      settings.clinical_use, settings.sr_top_slices)
    written = write_reports(reports, Path(args.sr))
    stored = store_reports(reports, pacs_url(args.pacs_url, params), params) if args.store_to_pacs else 0
    return {"folder": args.sr, "written": len(written), "stored": stored,
            "marking": "clinical decision support" if settings.clinical_use else "investigational, not for diagnosis",
            "refused": dict(Counter(r["reason"] for r in refused))}


def run(args: argparse.Namespace) -> dict:
    params = load_params(args.params)
    source, out = Path(args.source), Path(args.out)
    check_args(args, params, source, out)
    items, close = source_items(source)
    if not items:
        raise StageError(f"{source} holds no files")
    loaded = load_model(args.model, params)
    pooling = series_pooling(args.pooling, loaded.certified, params)
    try:
        scored = score_export(items, scorer_predict(loaded.model), loaded.contract, pooling, total=len(items),
                              batch_size=args.batch_size, progress=not args.no_progress, study=loaded.study)
        headers = read_headers(items, {row["file"] for row in scored.slices}) if args.sr else {}
    except ValueError as exc:
        raise StageError(str(exc)) from None
    finally:
        close()
    paths = output_paths(out)
    write_tables(scored, loaded.contract.classes, paths)
    summary = {"source": str(source), "model": loaded.described, "classes": loaded.contract.classes,
               "image_size": loaded.contract.image_size, **scored.summary,
               "outputs": {k: str(v) for k, v in paths.items()}}
    if args.sr and scored.slices:
        summary["structured_reports"] = structured_reports(args, params, scored, headers, loaded)
    write_json(paths["summary"], summary)
    if not scored.slices:
        raise StageError(f"no readable slice in {source}: {len(scored.quarantine)} file(s) quarantined, "
                         f"reasons in {paths['quarantine']}")
    if args.sr and not summary["structured_reports"]["written"]:
        refused = summary["structured_reports"]["refused"]
        raise StageError(f"--sr: no series could get a DICOM structured report: {'; '.join(refused)}")
    return summary


def main(argv: list[str] | None = None) -> int:
    quiet_runtime()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [predict] %(message)s", datefmt="%H:%M:%S")
    args = parser().parse_args(argv)
    try:
        s = run(args)
    except (ParamsError, StageError) as exc:
        log.error("predict failed: %s", exc)
        return 2
    log.info("%d files: %d slices scored in %d series, %d quarantined -> %s", s["files_seen"], s["slices_scored"],
             s["series"], s["quarantined"], s["outputs"]["slices"])
    if s["quarantined"]:
        log.info("quarantined with reasons: %s", s["outputs"]["quarantine"])
    if "structured_reports" in s:
        sr = s["structured_reports"]
        log.info("%d DICOM structured report(s) (%s) -> %s; %d stored to the PACS", sr["written"], sr["marking"],
                 sr["folder"], sr["stored"])
        for reason, count in sr["refused"].items():
            log.info("no structured report for %d series: %s", count, reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CLI: python -m components.predict SOURCE --out predictions.csv — score an export in shadow mode."""

from __future__ import annotations

import argparse
import logging
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from components.common.cli import StageError, log, write_json
from components.common.console import quiet_runtime
from components.common.params import Params, ParamsError, load_params
from components.common.pooling import POOLINGS
from components.predict.core import Contract, Predict, score_export

DESCRIPTION = """Score every slice of an export with a trained model, in shadow mode (nothing is sent anywhere,
the source is only read). SOURCE is a folder (searched recursively) or a .zip of PNG, JPEG or DICOM slices.
Slices are grouped into series by their DICOM SeriesInstanceUID, else by the folder they lie in, and each
series gets a verdict: its slices' probabilities pooled as evaluate.series_pooling says. Preprocessing is the
service's (components.common.imaging.prepare_for_model). Files that cannot be read are listed with a reason.

Writes: OUT (one row per slice: probabilities, predicted class, series verdict), OUT's stem + .series.csv
(one row per series), .quarantine.csv (file, reason) and .summary.json (counts)."""

EPILOG = """examples:
  python -m components.predict ../shared/data/kidney-ct --out scored/predictions.csv
  python -m components.predict export.zip --out p.csv --model models/paper_cnn
  python -m components.predict export/ --out p.csv --model models:/kidney-ct-classifier/3
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


def keras_predict(model) -> Predict:
    return lambda batch: model.predict(batch, batch_size=len(batch), verbose=0)


def contract_from_params(params: Params) -> Contract:
    pre = params.preprocess
    return Contract(list(params.classes), pre.image_size, pre.window_center, pre.window_width)


def load_local(path: Path, params: Params):
    """A model.keras file (or a folder holding one) with the preprocessing of the params file."""
    import keras

    file = path / "model.keras" if path.is_dir() else path
    if not file.is_file():
        raise StageError(f"{file} not found: pass a model.keras file, a folder holding one, or an MLflow URI")
    try:
        return keras.saving.load_model(file, compile=False), contract_from_params(params), str(file), None
    except Exception as exc:  # keras raises many types for a broken file
        raise StageError(f"cannot load {file} as a Keras model: {exc}") from None


def champion_contract(champion) -> Contract:
    """The preprocessing a registry version was tagged with, as the predict core's contract."""
    return Contract(list(champion.classes), champion.image_size, champion.window_center, champion.window_width)


def load_registered(uri: str | None, params: Params):
    """The champion (or an MLflow URI) with the preprocessing its registry version was tagged with."""
    from components.common.champion import Champion, champion_from_version, resolve_champion
    from components.common.registry import connect_mlflow, existing_registry_uri, load_registered_keras, mlflow_alias_lookup

    registry = existing_registry_uri(params)
    connect_mlflow(registry)
    name = params.register.model_name
    if uri is None:
        champion = resolve_champion(mlflow_alias_lookup(registry), name)
        contract = champion_contract(champion)
        return load_registered_keras(champion.model_uri), contract, champion.model_uri, champion.series_pooling
    contract, certified = contract_from_params(params), None
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
    return load_registered_keras(uri), contract, uri, certified


def load_model(spec: str | None, params: Params):
    """(model, contract, description, certified series pooling or None) for --model, or the registry's champion
    when it is not given."""
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


def run(args: argparse.Namespace) -> dict:
    params = load_params(args.params)
    source, out = Path(args.source), Path(args.out)
    if not source.exists():
        raise StageError(f"{source} does not exist")
    if args.batch_size < 1:
        raise StageError("--batch-size must be at least 1")
    check_outside(source, out)
    items, close = source_items(source)
    if not items:
        raise StageError(f"{source} holds no files")
    model, contract, described, certified = load_model(args.model, params)
    pooling = series_pooling(args.pooling, certified, params)
    try:
        scored = score_export(items, keras_predict(model), contract, pooling, total=len(items),
                              batch_size=args.batch_size, progress=not args.no_progress)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    finally:
        close()
    paths = output_paths(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    probs = [f"p_{c}" for c in contract.classes]
    pd.DataFrame(scored.slices, columns=["file", "series", "predicted", "confidence", *probs, "series_verdict"]
                 ).to_csv(paths["slices"], index=False)
    pd.DataFrame(scored.series, columns=["series", "slices", "verdict", "pooling", *probs, "top_slice"]
                 ).to_csv(paths["series"], index=False)
    pd.DataFrame(scored.quarantine, columns=["file", "reason"]).to_csv(paths["quarantine"], index=False)
    summary = {"source": str(source), "model": described, "classes": contract.classes,
               "image_size": contract.image_size, **scored.summary, "outputs": {k: str(v) for k, v in paths.items()}}
    write_json(paths["summary"], summary)
    if not scored.slices:
        raise StageError(f"no readable slice in {source}: {len(scored.quarantine)} file(s) quarantined, "
                         f"reasons in {paths['quarantine']}")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

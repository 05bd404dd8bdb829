"""CLI edge of the package stage: `python -m components.package`.

Resolves the registry's champion, copies its Keras model into the BentoML model store (once per
registry version), builds a Bento from serving/bentofile.yaml pinned to that model, writes bento.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import yaml

from components.common.cli import StageError, log, read_json, run_stage, stage_parser, write_json
from components.common.params import Params
from components.common.registry import connect_mlflow, existing_registry_uri, load_registered_keras, mlflow_alias_lookup
from components.package.core import (
    CHAMPION_ALIAS,
    MODEL_FILE,
    Champion,
    bento_model_labels,
    bento_model_metadata,
    bento_record,
    check_model_shapes,
    check_registration,
    find_packaged,
    pin_packages,
    resolve_champion,
)

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the code (build context), not the data (cwd)
BENTOFILE = SOURCE_ROOT / "serving" / "bentofile.yaml"
CONSTRAINTS = SOURCE_ROOT / "requirements" / "constraints.txt"


def configure_bentoml_env(params: Params) -> str:
    """Point BentoML at its store; must run before `bentoml` is first imported in this process."""
    home = os.environ.get("BENTOML_HOME") or str(Path(params.package.bentoml_home).resolve())
    os.environ["BENTOML_HOME"] = home
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")  # no usage telemetry from a pipeline
    return home


def ensure_bento_model(champion: Champion, name: str) -> tuple[str, bool]:
    """Tag of the BentoML model for this registry version, which afterwards is `<name>:latest`.

    serving/bentofile.yaml declares `<name>:latest`, so a plain `bentoml build` pins the champion:
    a version packaged before is reused while it is the newest, and saved again (a copy, now the
    newest) when the champion moved back to it (a rollback or a re-promotion).
    """
    import bentoml

    stored = [(str(m.tag), m.info.labels) for m in bentoml.models.list()]
    existing = find_packaged(stored, name, champion)
    if existing and str(bentoml.models.get(f"{name}:latest").tag) == existing:
        log.info("reusing BentoML model %s (already packaged from %s)", existing, champion.model_uri)
        return existing, True
    if existing:
        return _resave_as_latest(bentoml.models.get(existing), name, champion), False
    keras_model = load_registered_keras(champion.model_uri)
    check_model_shapes(keras_model.input_shape, keras_model.output_shape, champion)
    with bentoml.models.create(name, labels=bento_model_labels(champion),
                               metadata=bento_model_metadata(champion)) as bento_model:
        keras_model.save(bento_model.path_of(MODEL_FILE))
    log.info("saved %s into the BentoML model store as %s", champion.model_uri, bento_model.tag)
    return str(bento_model.tag), False


def _resave_as_latest(stored, name: str, champion: Champion) -> str:
    """A copy of an older BentoML model of the champion, so that `<name>:latest` is the champion again."""
    import shutil

    import bentoml

    with bentoml.models.create(name, labels=bento_model_labels(champion),
                               metadata=bento_model_metadata(champion)) as bento_model:
        shutil.copy2(stored.path_of(MODEL_FILE), bento_model.path_of(MODEL_FILE))
    log.info("champion %s was packaged before as %s: saved again as %s, now %s:latest", champion.model_uri,
             stored.tag, bento_model.tag, name)
    return str(bento_model.tag)


def staged_context(include: list[str], folder: Path) -> Path:
    """Copy the bentofile's `include` files (paths or globs under SOURCE_ROOT) into `folder`, the build context.

    BentoML walks its whole build context and only then filters by `include`: from the project root that is
    every file of .venv, data and the MLflow store (~8 s); from here, a dozen files. The Bento is the same.
    """
    for pattern in include:
        matches = [path for path in SOURCE_ROOT.glob(pattern) if path.is_file()]
        if not matches:
            raise StageError(f"{BENTOFILE} includes {pattern}, which matches no file under {SOURCE_ROOT}")
        for source in matches:
            target = folder / source.relative_to(SOURCE_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return folder


def build_bento(name: str, model_tag: str, champion: Champion) -> str:
    """Build the Bento from serving/bentofile.yaml, pinning the model as alias `champion`."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    config = yaml.safe_load(BENTOFILE.read_text()) or {}
    python = dict(config.get("python") or {})
    constraints = CONSTRAINTS.read_text() if CONSTRAINTS.is_file() else ""
    python["packages"] = pin_packages(python.get("packages") or [], constraints)
    labels = {**(config.get("labels") or {}), **bento_model_labels(champion), "bento_model": model_tag}
    options = {**config, "python": python, "labels": labels, "name": name,
               "models": [{"tag": model_tag, "alias": CHAMPION_ALIAS}]}
    try:
        with tempfile.TemporaryDirectory(prefix="bento-context-") as context:
            bento = bentoml.build(**options, build_ctx=str(staged_context(config.get("include") or [], Path(context))))
    except (BentoMLException, ImportError) as exc:
        raise StageError(f"building the Bento from {BENTOFILE} failed: {exc}") from None
    log.info("built Bento %s serving %s", bento.tag, model_tag)
    return str(bento.tag)


def package(params: Params, args: argparse.Namespace) -> None:
    """Stage body: champion -> BentoML model -> Bento -> bento.json."""
    configure_bentoml_env(params)
    uri = existing_registry_uri(params)
    connect_mlflow(uri)
    champion = resolve_champion(mlflow_alias_lookup(uri), params.register.model_name)
    check_registration(read_json(Path(params.paths.registration) / "registration.json"), champion)
    log.info("champion is %s", champion.model_uri)
    model_tag, reused = ensure_bento_model(champion, params.package.bento_name)
    bento_tag = build_bento(params.package.bento_name, model_tag, champion)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    out = Path(params.paths.package) / "bento.json"
    write_json(out, bento_record(champion, bento_tag, model_tag, reused, created))
    log.info("wrote %s", out)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Package the registry's champion model as a BentoML Bento.")
    return run_stage("package", package, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())

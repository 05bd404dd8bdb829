"""CLI: ingest the export at `params.paths.source` into the object store `params.paths.store`, or, when
`params.ingest.dicomweb_url` is set, pull the studies that are new on that DICOMweb PACS.

Writes `<ingested>/manifest.csv` (also copied to the store), `<ingested>/quarantine.csv` and
`<ingested>/ingest.json`. The source folder is only read.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from components.common.cli import StageError, log, run_stage, stage_parser, worker_processes, write_json
from components.common.console import progress
from components.common.export_layout import GENERATED_FILE
from components.common.params import Params
from components.common.storage import StorageError, open_store
from components.ingest.core import (
    MANIFEST_COLUMNS,
    QUARANTINE_COLUMNS,
    ImageLimits,
    IngestResult,
    SaltRequired,
    SourceFile,
    ingest,
    merge_manifests,
    read_manifest,
    resolve_salt,
    rows_to_csv,
    summary,
)
from components.ingest.dicomweb import STATE_KEY, new_studies, pulled_files, read_state, state_bytes, study_key
from components.lib.pacs import PacsClient, PacsError, retrying_session


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Ingest a PACS export (DICOM, or class folders of PNG/JPEG), or pull new studies from a "
                          "DICOMweb PACS (ingest.dicomweb_url), into object storage.")
    parser.add_argument("--data-version-out", default=None,
                        help="also write the data version (sha256 of manifest.csv) to this file (for KFP caching)")
    parser.add_argument("--check-new", default=None, metavar="JSON",
                        help="only ask the PACS how many studies are new; write {new_studies, listed} to JSON")
    return run_stage("ingest", _ingest, parser, argv)


def _ingest(params: Params, args: argparse.Namespace) -> None:
    if args.check_new:
        write_json(args.check_new, _check_new(params))
        return
    if params.ingest.dicomweb_url:
        _pull(params)
    else:
        _ingest_export(params)
    if args.data_version_out:
        manifest = (Path(params.paths.ingested) / "manifest.csv").read_bytes()
        out = Path(args.data_version_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(hashlib.sha256(manifest).hexdigest())


def _ingest_export(params: Params) -> None:
    """Export mode: every file under paths.source; with ingest.accumulate, added to the earlier manifest."""
    source = Path(params.paths.source)
    files = list_export(source)
    _check_outputs_outside(source, params)
    salt, salt_source = _salt(params, allow_default=is_generated_default(source, files, params))
    try:
        store = open_store(params.paths.store, params.storage)
        earlier = (read_manifest(store.get("manifest.csv")) if params.ingest.accumulate and
                   store.exists("manifest.csv") else [])
        result = ingest(read_files(source, files), store, params.classes, salt, image_limits(params),
                        workers=worker_processes(), earlier=earlier)
        if earlier:
            result = dataclasses.replace(result, manifest=merge_manifests(earlier, result.manifest, result.withdrawn))
        manifest_csv = rows_to_csv(result.manifest, MANIFEST_COLUMNS)
        store.put("manifest.csv", manifest_csv)
    except (StorageError, BotoCoreError, ClientError) as exc:
        raise StageError(f"object store {params.paths.store} failed: {exc}") from None
    payload = summary(result, params.classes, store.uri, salt_source)
    _write_outputs(Path(params.paths.ingested), manifest_csv, result, payload)
    _report(payload, params.paths.ingested)
    if not result.manifest:
        raise StageError(f"no usable images in {source}: all {len(files)} files were quarantined "
                         f"(reasons in {params.paths.ingested}/quarantine.csv)")


def is_generated_default(source: Path, files: list[Path], params: Params) -> bool:
    """The embedded default: the source is paths.generated_export and holds only files `generate` writes."""
    if source.resolve() != Path(params.paths.generated_export).resolve():
        return False
    return all(GENERATED_FILE.match(path.relative_to(source).as_posix()) for path in files)


def _salt(params: Params, allow_default: bool) -> tuple[str, str]:
    try:
        return resolve_salt(params.ingest, allow_default=allow_default)
    except SaltRequired as exc:
        raise StageError(str(exc)) from None


def image_limits(params: Params) -> ImageLimits:
    """Per-file size bounds: the same params validate declares for the dataset."""
    return ImageLimits(params.validate_.min_width, params.validate_.max_width)


def _pacs_client(settings) -> PacsClient:
    session = retrying_session(settings.dicomweb_user, os.environ.get(settings.dicomweb_password_env),
                               settings.dicomweb_retry_attempts, settings.dicomweb_retry_backoff_s)
    return PacsClient(settings.dicomweb_url, session, settings.dicomweb_timeout_s, settings.dicomweb_page_size)


def _check_new(params: Params) -> dict:
    """How many PACS studies a pull would fetch now (QIDO-RS + the pull state; nothing is retrieved)."""
    if not params.ingest.dicomweb_url:
        return {"new_studies": 0, "listed": 0, "reason": "ingest.dicomweb_url is not set: no PACS to watch"}
    salt, _ = _salt(params, allow_default=False)
    try:
        store = open_store(params.paths.store, params.storage)
        state = read_state(store.get(STATE_KEY) if store.exists(STATE_KEY) else None)
        listed = _pacs_client(params.ingest).studies()
    except (PacsError, StorageError, BotoCoreError, ClientError) as exc:
        raise StageError(f"cannot check {params.ingest.dicomweb_url} for new studies: {exc}") from None
    todo = new_studies(listed, state, salt)
    print(f"ingest: {len(todo)} of {len(listed)} PACS studies are new since the last pull")
    return {"new_studies": len(todo), "listed": len(listed)}


def _pull(params: Params) -> None:
    """PACS mode: QIDO-RS for studies new since the last run, WADO-RS their series, then as above.

    The manifest grows: rows of earlier pulls (read back from the store) plus this run's, less earlier
    rows whose bytes now arrive under another label (quarantined: conflicting labels). The pull
    state (salted study keys -> instance counts) is saved in the store only after the manifest, so a
    failed run is simply pulled again next time (stored objects are skipped, never duplicated).
    """
    settings = params.ingest
    salt, salt_source = _salt(params, allow_default=False)  # a PACS holds real patients
    try:
        client = _pacs_client(settings)
        store = open_store(params.paths.store, params.storage)
        state = read_state(store.get(STATE_KEY) if store.exists(STATE_KEY) else None)
        listed = client.studies()
        todo = new_studies(listed, state, salt)
        log.info("PACS %s lists %d studies: %d new or changed since the last run", settings.dicomweb_url,
                 len(listed), len(todo))
        files = (SourceFile(path, data, reason) for path, data, reason in
                 pulled_files(client, todo, params.classes, settings.dicomweb_label_attribute, salt))
        earlier = read_manifest(store.get("manifest.csv")) if store.exists("manifest.csv") else []
        result = ingest(files, store, params.classes, salt, image_limits(params), earlier=earlier)
        manifest = merge_manifests(earlier, result.manifest, result.withdrawn)
        manifest_csv = rows_to_csv(manifest, MANIFEST_COLUMNS)
        store.put("manifest.csv", manifest_csv)
        store.put(STATE_KEY, state_bytes({**state, **{study_key(salt, s.uid): s.instances for s in todo}}))
    except (PacsError, StorageError, BotoCoreError, ClientError) as exc:
        raise StageError(f"pull from {settings.dicomweb_url} into {params.paths.store} failed: {exc}") from None
    result = dataclasses.replace(result, manifest=manifest)
    payload = {**summary(result, params.classes, store.uri, salt_source), "source": "dicomweb",
               "studies_listed": len(listed), "studies_pulled": len(todo)}
    _write_outputs(Path(params.paths.ingested), manifest_csv, result, payload)
    _report(payload, params.paths.ingested)
    if not manifest:
        raise StageError(f"no usable images pulled from {settings.dicomweb_url} "
                         f"(reasons in {params.paths.ingested}/quarantine.csv)")


def list_export(source: Path) -> list[Path]:
    """Every file under the export folder, in a stable order; refuse a missing or empty export."""
    if not source.exists():
        raise StageError(f"source folder {source} does not exist: set paths.source to a PACS export folder "
                         "(or run `python -m components.generate` for the embedded default)")
    if not source.is_dir():
        raise StageError(f"source {source} is not a folder: paths.source must point to an export folder")
    files = [Path(root, name) for root, dirs, names in os.walk(source) for name in names]
    if not files:
        raise StageError(f"source folder {source} holds no files: nothing to ingest")
    return sorted(files, key=lambda path: path.relative_to(source).as_posix())


def _check_outputs_outside(source: Path, params: Params) -> None:
    """The source is only read: refuse a store or output folder inside it."""
    outputs = {"paths.ingested": params.paths.ingested, "paths.store": params.paths.store}
    for name, value in outputs.items():
        if not value.startswith("s3://") and Path(value).resolve().is_relative_to(source.resolve()):
            raise StageError(f"{name} ({value}) lies inside the source folder {source}; ingest never writes there")


def read_files(source: Path, files: list[Path]) -> Iterator[SourceFile]:
    """Read each file's bytes (with a progress bar); an unreadable file becomes a reasoned SourceFile."""
    for path in progress(files, desc="ingest", unit="file"):
        relative = path.relative_to(source).as_posix()
        try:
            yield SourceFile(relative, path.read_bytes())
        except OSError as exc:
            yield SourceFile(relative, None, f"file cannot be read ({exc.strerror or exc})")


def _write_outputs(folder: Path, manifest_csv: bytes, result: IngestResult, payload: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.csv").write_bytes(manifest_csv)
    (folder / "quarantine.csv").write_bytes(rows_to_csv(result.quarantine, QUARANTINE_COLUMNS))
    write_json(folder / "ingest.json", payload)


def _report(payload: dict, ingested: str) -> None:
    classes = ", ".join(f"{label} {count}" for label, count in payload["per_class"].items())
    conflicting = f" ({payload['conflicting_labels']} for conflicting labels)" if payload["conflicting_labels"] else ""
    print(f"ingest: {payload['files_seen']} files seen -> {payload['ingested_new']} new, "
          f"{payload['already_present']} already in store, {payload['duplicates']} duplicates, "
          f"{payload['quarantined']} quarantined{conflicting}; {payload['images']} images ({classes}) in "
          f"{payload['store']}; manifest in {ingested}/manifest.csv")
    if payload["quarantined"]:
        log.warning("%d files quarantined: see %s/quarantine.csv", payload["quarantined"], ingested)
    if payload["withdrawn_from_manifest"]:
        log.warning("%d rows of earlier runs left the manifest: their bytes now carry another label (see %s/"
                    "quarantine.csv)", payload["withdrawn_from_manifest"], ingested)


if __name__ == "__main__":
    raise SystemExit(main())

"""CLI: write the embedded default PACS export (`params.paths.generated_export`) from `params.generate`."""

from __future__ import annotations

import argparse
import shutil
from collections import Counter
from pathlib import Path

from components.common.cli import StageError, log, run_stage, stage_parser, worker_processes
from components.common.console import progress
from components.common.export_layout import GENERATED_FILE
from components.common.params import Params
from components.generate.core import encoded_export, lesion_kind


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Generate the embedded default PACS export: DICOM CT kidney phantoms.")
    return run_stage("generate", _generate, parser, argv)


def _generate(params: Params, _: argparse.Namespace) -> None:
    """Write every file into a staging folder, then swap it in place of the old export."""
    export = Path(params.paths.generated_export)
    _check_classes(params.classes)
    _check_replaceable(export)
    staging = export.with_name(export.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted run of this stage
    settings = params.generate
    total = sum(map(settings.patients_of, params.classes)) * settings.slices_per_patient
    per_class: Counter[str] = Counter()
    size = 0
    # patients are independent: draw them on every core
    for relative, label, data in progress(encoded_export(settings, params.classes, worker_processes()), total=total,
                                          desc="generate", unit="file"):
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        per_class[label] += 1
        size += len(data)
    if export.exists():
        shutil.rmtree(export)
    staging.rename(export)
    counts = ", ".join(f"{label} {per_class[label]}" for label in params.classes)
    print(f"generate: wrote {sum(per_class.values())} DICOM files ({size / 1e6:.1f} MB) to {export} ({counts})")


def _check_classes(classes: list[str]) -> None:
    for label in classes:
        try:
            lesion_kind(label)
        except ValueError as exc:
            raise StageError(str(exc)) from None


def _check_replaceable(export: Path) -> None:
    """Refuse to delete a folder that holds anything this stage did not write."""
    if not export.exists():
        return
    if not export.is_dir():
        raise StageError(f"{export} exists and is not a folder; point paths.generated_export elsewhere")
    for path in sorted(p for p in export.rglob("*") if not p.is_dir()):
        relative = path.relative_to(export).as_posix()
        if not GENERATED_FILE.match(relative):
            raise StageError(
                f"refusing to replace {export}: it holds {relative!r}, which generate did not write; "
                "point paths.generated_export to another folder or remove it yourself"
            )
    log.info("replacing the previously generated export in %s", export)


if __name__ == "__main__":
    raise SystemExit(main())

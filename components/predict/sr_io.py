"""IO of `components.predict --sr/--store-to-pacs`: the scored slices' DICOM headers in, the SR files out to a
folder and by STOW-RS to the PACS. Nothing here logs a UID or a patient attribute, and nothing goes anywhere
but the SR folder and the PACS (docs/structured-report.md)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from components.common.cli import StageError
from components.common.imaging import looks_like_dicom
from components.common.params import Params


def read_headers(items: Iterable[tuple[str, Callable[[], bytes]]], files: set[str]) -> dict[str, object]:
    """file name -> its DICOM header (no pixels), for each of `files` that is DICOM."""
    import pydicom

    headers = {}
    for name, read in items:
        if name not in files:
            continue
        data = read()
        if not looks_like_dicom(data):
            continue
        try:
            headers[name] = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception:  # pydicom raises many types; the series is then refused an SR, with the reason
            continue
    return headers


def write_reports(reports: Sequence, folder: Path) -> list[Path]:
    """Each SR as <SOPInstanceUID>.dcm in `folder`: the same scoring writes the same file again, not a second."""
    from components.lib.structured_report import report_bytes

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for report in reports:
        path = folder / f"{report.SOPInstanceUID}.dcm"
        path.write_bytes(report_bytes(report))
        written.append(path)
    return written


def pacs_url(explicit: str | None, params: Params) -> str:
    """Where --store-to-pacs sends: --pacs-url, else the PACS the export came from (ingest.dicomweb_url)."""
    url = explicit or params.ingest.dicomweb_url
    if not url:
        raise StageError("--store-to-pacs needs a DICOMweb root: pass --pacs-url or set ingest.dicomweb_url")
    return url


def store_reports(reports: Sequence, url: str, params: Params) -> int:
    """STOW-RS the SRs to `url` with ingest's PACS credentials and timeouts; the number stored."""
    from components.lib.pacs import PacsClient, PacsError, retrying_session

    settings = params.ingest
    session = retrying_session(settings.dicomweb_user, os.environ.get(settings.dicomweb_password_env),
                               settings.dicomweb_retry_attempts, settings.dicomweb_retry_backoff_s)
    try:
        return PacsClient(url, session, settings.dicomweb_timeout_s).store(reports) if reports else 0
    except PacsError as exc:
        raise StageError(str(exc)) from None

"""A DICOMweb PACS client, shared by ingest (QIDO-RS to find new studies, WADO-RS to fetch them series by series)
and predict (STOW-RS: the verdict's structured report goes back to the study it read).

`PacsClient` wraps `dicomweb_client.DICOMwebClient` (QIDO-RS paging, WADO-RS multipart decoding) on a
`requests.Session` whose urllib3 `Retry` is the one retry policy, and turns its failures into
`PacsError`s that say what to fix (UIDs redacted: the messages reach logs).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

STUDY_UID, SERIES_UID, STUDY_INSTANCES, SERIES_INSTANCES = "0020000D", "0020000E", "00201208", "00201209"


class PacsError(Exception):
    """The PACS could not be queried or answered something unusable; the message says what."""


@dataclass(frozen=True)
class StudyRef:
    """One study as QIDO-RS lists it."""

    uid: str
    instances: int  # NumberOfStudyRelatedInstances (0 when the PACS does not say)


@dataclass(frozen=True)
class SeriesRef:
    """One series of a study as QIDO-RS lists it (one WADO-RS retrieve fetches all its instances)."""

    study: str
    uid: str
    instances: int  # NumberOfSeriesRelatedInstances (0 when the PACS does not say)


def _first(item: Mapping, tag: str) -> str:
    """The first value of `tag` in a DICOM JSON object, or ''."""
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def _count(item: Mapping, tag: str) -> int:
    value = _first(item, tag)
    return int(value) if value.isdigit() else 0


def parse_studies(payload: Sequence[Mapping]) -> list[StudyRef]:
    """StudyRefs from a QIDO-RS /studies answer (DICOM JSON); entries without a UID are skipped."""
    return [StudyRef(_first(item, STUDY_UID), _count(item, STUDY_INSTANCES)) for item in payload
            if _first(item, STUDY_UID)]


def parse_series(study: str, payload: Sequence[Mapping]) -> list[SeriesRef]:
    """SeriesRefs, sorted by UID, from a QIDO-RS /studies/{uid}/series answer."""
    refs = [SeriesRef(study, _first(item, SERIES_UID), _count(item, SERIES_INSTANCES)) for item in payload]
    return sorted((ref for ref in refs if ref.uid), key=lambda ref: ref.uid)


def redact_uids(text: str) -> str:
    """`text` with every dotted number (a DICOM UID, also an IP address) replaced by <uid>."""
    return re.sub(r"\d+(?:\.\d+){2,}", "<uid>", text)


@contextmanager
def pacs_errors(base_url: str, what: str) -> Iterator[None]:
    """Turn what requests and dicomweb-client raise during `what` into a PacsError naming the PACS and the
    cause; UIDs (in URLs, in the PACS's answer) are redacted, since the message reaches logs."""
    import requests

    try:
        yield
    except requests.HTTPError as exc:
        response = exc.response
        status = response.status_code if response is not None else 0
        if status in (401, 403):
            raise PacsError(f"PACS {base_url} refused the credentials (HTTP {status}): set ingest.dicomweb_user "
                            "and the password env var named by ingest.dicomweb_password_env") from None
        body = redact_uids(response.text[:200]) if response is not None else ""
        raise PacsError(f"PACS {base_url} answered HTTP {status} to {what}: {body}") from None
    except ValueError as exc:  # bad JSON, a malformed multipart answer or URL (requests' JSON error included)
        raise PacsError(f"PACS {base_url} answered {what} with something unusable "
                        f"({type(exc).__name__}: {redact_uids(str(exc))})") from None
    except requests.RequestException as exc:
        raise PacsError(f"PACS {base_url} unreachable during {what} "
                        f"({type(exc).__name__}: {redact_uids(str(exc))})") from None


@dataclass
class PacsClient:
    """QIDO-RS / WADO-RS / STOW-RS calls against one DICOMweb root through dicomweb-client and a retrying session."""

    base_url: str
    session: object
    timeout_s: float = 30
    page_size: int = 100
    web: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from dicomweb_client import DICOMwebClient

        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # its INFO lines name study UIDs
        with pacs_errors(self.base_url, "the client setup"):
            # permissive_uid: pull what the PACS holds even where its UIDs bend the standard's syntax
            self.web = DICOMwebClient(self.base_url.rstrip("/"), session=self.session, timeout=self.timeout_s,
                                      permissive_uid=True)
        self.web.set_http_retry_params(retry=False)  # the session's urllib3 Retry already retries

    def studies(self) -> list[StudyRef]:
        """Every study, page by page (QIDO-RS limit/offset until an empty page)."""
        with pacs_errors(self.base_url, "QIDO-RS search for studies"):
            payload = self.web.search_for_studies(limit=self.page_size, fields=[STUDY_INSTANCES], get_remaining=True)
        return parse_studies(payload)

    def series(self, study: str) -> list[SeriesRef]:
        with pacs_errors(self.base_url, "QIDO-RS search for the series of a study"):
            payload = self.web.search_for_series(study, limit=self.page_size, fields=[SERIES_INSTANCES],
                                                 get_remaining=True)
        return parse_series(study, payload)

    def instances(self, ref: SeriesRef) -> Iterator:
        """The series' instances as pydicom datasets, streamed from one WADO-RS request."""
        with pacs_errors(self.base_url, "WADO-RS retrieve of a series"):
            yield from self.web.iter_series(ref.study, ref.uid)

    def store(self, datasets: Sequence) -> int:
        """STOW-RS: store `datasets` (one request); the number the PACS accepted, or PacsError if it refused any."""
        with pacs_errors(self.base_url, "STOW-RS store"):
            answer = self.web.store_instances(datasets=list(datasets))
        failed = len(answer.get("FailedSOPSequence", None) or []) if answer is not None else 0
        if failed:
            raise PacsError(f"PACS {self.base_url} refused {failed} of {len(datasets)} instance(s) sent by STOW-RS")
        return len(datasets)


def retrying_session(user: str | None, password: str | None, attempts: int, backoff_s: float):
    """A requests.Session that retries connection errors and 5xx answers with exponential backoff."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    retry = Retry(total=attempts - 1, backoff_factor=backoff_s, status_forcelist=(500, 502, 503, 504),
                  allowed_methods=("GET",), raise_on_status=False)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    if user:
        session.auth = (user, password or "")
    return session


def dataset_bytes(dataset) -> bytes:
    """A retrieved dataset as DICOM Part 10 bytes, written as it was read."""
    import pydicom

    out = io.BytesIO()
    pydicom.dcmwrite(out, dataset, enforce_file_format=False)
    return out.getvalue()


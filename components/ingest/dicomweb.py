"""Pull new studies from a DICOMweb PACS: QIDO-RS to find them, WADO-RS to fetch their instances.

`PacsClient` does the HTTP (a `requests.Session` with retries and backoff); the rest is pure: which
studies are new since the last run (`new_studies`, a state of salted study keys -> instance counts,
so the state itself holds no UIDs), which class a dataset belongs to (`label_of`), and how to split a
WADO-RS multipart/related answer into DICOM files (`multipart_parts`).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from components.ingest.deid import salted_hash

STUDY_UID, SERIES_UID, SOP_UID, STUDY_INSTANCES = "0020000D", "0020000E", "00080018", "00201208"
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'
STATE_KEY = "state/dicomweb.json"


class PacsError(Exception):
    """The PACS could not be queried or answered something unusable; the message says what."""


@dataclass(frozen=True)
class StudyRef:
    """One study as QIDO-RS lists it."""

    uid: str
    instances: int  # NumberOfStudyRelatedInstances (0 when the PACS does not say)


@dataclass(frozen=True)
class InstanceRef:
    study: str
    series: str
    sop: str


def _first(item: Mapping, tag: str) -> str:
    """The first value of `tag` in a DICOM JSON object, or ''."""
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def parse_studies(payload: Sequence[Mapping]) -> list[StudyRef]:
    """StudyRefs from a QIDO-RS /studies answer (DICOM JSON); entries without a UID are skipped."""
    refs = []
    for item in payload:
        uid = _first(item, STUDY_UID)
        if uid:
            count = _first(item, STUDY_INSTANCES)
            refs.append(StudyRef(uid, int(count) if count.isdigit() else 0))
    return refs


def parse_instances(study: str, payload: Sequence[Mapping]) -> list[InstanceRef]:
    """InstanceRefs from a QIDO-RS /studies/{uid}/instances answer."""
    refs = [InstanceRef(study, _first(item, SERIES_UID), _first(item, SOP_UID)) for item in payload]
    return sorted((ref for ref in refs if ref.series and ref.sop), key=lambda ref: (ref.series, ref.sop))


def study_key(salt: str, uid: str) -> str:
    """The salted key under which the pull state remembers a study (never the UID itself)."""
    return "st-" + salted_hash(salt, "pull-study", uid)


def new_studies(listed: Sequence[StudyRef], state: Mapping[str, int], salt: str) -> list[StudyRef]:
    """Studies not pulled before, or whose instance count changed since (new images arrived)."""
    return [study for study in listed if state.get(study_key(salt, study.uid)) != study.instances]


def read_state(raw: bytes | None) -> dict[str, int]:
    """The pull state from its JSON bytes ({} when there is none yet)."""
    if not raw:
        return {}
    try:
        studies = json.loads(raw).get("studies", {})
    except (ValueError, AttributeError):
        raise PacsError(f"the pull state {STATE_KEY} is not valid JSON: delete it to pull everything again") from None
    return {str(key): int(value) for key, value in studies.items()}


def state_bytes(state: Mapping[str, int]) -> bytes:
    return (json.dumps({"studies": dict(sorted(state.items()))}, indent=1) + "\n").encode()


def label_of(dataset, attribute: str, classes: Sequence[str]) -> str:
    """The one class named as a word in `attribute` (e.g. StudyDescription 'CT KIDNEY - Cyst'); '' if none."""
    text = str(dataset.get(attribute, "") or "")
    found = [label for label in classes if re.search(rf"\b{re.escape(label)}\b", text, flags=re.IGNORECASE)]
    return found[0] if len(found) == 1 else ""


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The bodies of a multipart/related answer (WADO-RS), headers stripped."""
    match = re.search(r'boundary="?([^";]+)"?', content_type, flags=re.IGNORECASE)
    if not match:
        raise PacsError(f"WADO-RS answer is not multipart (Content-Type {content_type!r})")
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # closing delimiter
        head, separator, payload = chunk.partition(b"\r\n\r\n")
        if separator:
            parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts


@dataclass
class PacsClient:
    """QIDO-RS / WADO-RS calls against one DICOMweb root, through a retrying `requests.Session`."""

    base_url: str
    session: object
    timeout_s: float = 30
    page_size: int = 100

    def _get(self, path: str, accept: str, params: dict | None = None):
        import requests

        url = f"{self.base_url.rstrip('/')}/{path}"
        try:
            response = self.session.get(url, params=params, headers={"Accept": accept}, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise PacsError(f"PACS {self.base_url} unreachable ({type(exc).__name__}: {exc})") from None
        if response.status_code in (401, 403):
            raise PacsError(f"PACS {self.base_url} refused the credentials (HTTP {response.status_code}): set "
                            "ingest.dicomweb_user and the password env var named by ingest.dicomweb_password_env")
        if not response.ok:
            raise PacsError(f"PACS answered HTTP {response.status_code} to GET {url}: {response.text[:200]}")
        return response

    def studies(self) -> list[StudyRef]:
        """Every study, page by page (QIDO-RS limit/offset)."""
        listed: list[StudyRef] = []
        while True:
            params = {"limit": self.page_size, "offset": len(listed), "includefield": STUDY_INSTANCES}
            response = self._get("studies", "application/dicom+json", params)
            page = parse_studies(response.json() if response.content else [])
            listed += page
            if len(page) < self.page_size:
                return listed

    def instances(self, study: str) -> list[InstanceRef]:
        response = self._get(f"studies/{study}/instances", "application/dicom+json")
        return parse_instances(study, response.json() if response.content else [])

    def retrieve(self, ref: InstanceRef) -> bytes:
        """One instance as DICOM Part 10 bytes (WADO-RS)."""
        response = self._get(f"studies/{ref.study}/series/{ref.series}/instances/{ref.sop}", DICOM_MULTIPART)
        parts = multipart_parts(response.content, response.headers.get("Content-Type", ""))
        if len(parts) != 1:
            raise PacsError(f"WADO-RS returned {len(parts)} parts for one instance")
        return parts[0]


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


def instance_source_path(label: str, salt: str, ref: InstanceRef) -> str:
    """The manifest `source` of a pulled instance: label folder + salted names (no UIDs)."""
    return f"{label}/pacs-{salted_hash(salt, 'pull-study', ref.study)[:12]}/{salted_hash(salt, 'pull-sop', ref.sop)[:16]}.dcm"


def iter_dataset(data: bytes):
    """Parse DICOM bytes (header only) for the label attribute."""
    import pydicom

    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def pulled_files(client: PacsClient, studies: Sequence[StudyRef], classes: Sequence[str], attribute: str,
                 salt: str) -> Iterator[tuple[str, bytes | None, str]]:
    """(source path, bytes or None, reason) for every instance of `studies`, with a progress bar."""
    from tqdm import tqdm

    refs = [ref for study in studies for ref in client.instances(study.uid)]
    for ref in tqdm(refs, desc="wado-rs", unit="instance"):
        data = client.retrieve(ref)
        try:
            label = label_of(iter_dataset(data), attribute, classes)
        except Exception as exc:  # pydicom raises many types on odd files
            yield f"unlabelled/{salted_hash(salt, 'pull-sop', ref.sop)[:16]}.dcm", None, f"not DICOM ({exc})"
            continue
        if not label:
            yield (f"unlabelled/{salted_hash(salt, 'pull-sop', ref.sop)[:16]}.dcm", None,
                   f"{attribute} names none (or more than one) of the classes {', '.join(classes)}")
            continue
        yield instance_source_path(label, salt, ref), data, ""

"""Pull new studies from a DICOMweb PACS (the client is components/lib/pacs.py): which studies are new since
the last run (`new_studies`, a state of salted study keys -> instance counts, so the state itself holds no UIDs),
which class a dataset belongs to (`label_of`), and the pulled instances as manifest rows with salted names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence

from components.ingest.deid import salted_hash
from components.lib.pacs import PacsClient, PacsError, StudyRef, dataset_bytes, redact_uids

STATE_KEY = "state/dicomweb.json"


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


def instance_source_path(label: str, salt: str, study: str, sop: str) -> str:
    """The manifest `source` of a pulled instance: label folder + salted names (no UIDs)."""
    return f"{label}/pacs-{salted_hash(salt, 'pull-study', study)[:12]}/{salted_hash(salt, 'pull-sop', sop)[:16]}.dcm"


def pulled_file(dataset, classes: Sequence[str], attribute: str, salt: str) -> tuple[str, bytes | None, str]:
    """(source path, bytes or None, reason) of one retrieved instance: labelled, or why it is not."""
    sop = str(dataset.get("SOPInstanceUID", ""))
    label = label_of(dataset, attribute, classes)
    if not label:
        return (f"unlabelled/{salted_hash(salt, 'pull-sop', sop)[:16]}.dcm", None,
                f"{attribute} names none (or more than one) of the classes {', '.join(classes)}")
    return instance_source_path(label, salt, str(dataset.get("StudyInstanceUID", "")), sop), dataset_bytes(dataset), ""


def pulled_files(client: PacsClient, studies: Sequence[StudyRef], classes: Sequence[str], attribute: str,
                 salt: str) -> Iterator[tuple[str, bytes | None, str]]:
    """(source path, bytes or None, reason) for every instance of `studies`, one WADO-RS retrieve a series.

    A series whose answer does not parse as DICOM is quarantined as a whole (one row, the instances
    read before the fault kept); PACS and network failures raise PacsError.
    """
    from components.common.console import progress

    series = [ref for study in studies for ref in client.series(study.uid)]
    with progress(total=sum(ref.instances for ref in series), desc="wado-rs", unit="instance") as bar:
        for ref in series:
            try:
                for dataset in client.instances(ref):
                    bar.update()
                    yield pulled_file(dataset, classes, attribute, salt)
            except PacsError:
                raise
            except Exception as exc:  # pydicom raises many types on odd files
                source = f"unreadable/series-{salted_hash(salt, 'pull-series', ref.uid)[:16]}.dcm"
                yield source, None, f"not DICOM ({redact_uids(str(exc))})"


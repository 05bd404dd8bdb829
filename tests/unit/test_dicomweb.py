"""Pure parts of the DICOMweb pull: QIDO-RS parsing, what is new, labels, WADO-RS multipart, state."""

from __future__ import annotations

import json

import pytest
from pydicom.dataset import Dataset

from components.ingest.core import merge_manifests
from components.ingest.dicomweb import (
    PacsError,
    StudyRef,
    label_of,
    multipart_parts,
    new_studies,
    parse_instances,
    parse_studies,
    read_state,
    state_bytes,
    study_key,
)

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]


def test_qido_answers_become_study_and_instance_refs():
    studies = [{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "00201208": {"vr": "IS", "Value": [4]}},
               {"0020000D": {"vr": "UI", "Value": ["1.2.4"]}}, {"00100010": {"vr": "PN"}}]
    assert parse_studies(studies) == [StudyRef("1.2.3", 4), StudyRef("1.2.4", 0)]
    instances = [{"0020000E": {"Value": ["9"]}, "00080018": {"Value": ["9.2"]}},
                 {"0020000E": {"Value": ["9"]}, "00080018": {"Value": ["9.1"]}}, {"0020000E": {"Value": ["9"]}}]
    assert [ref.sop for ref in parse_instances("1.2.3", instances)] == ["9.1", "9.2"]


def test_only_unseen_studies_or_studies_with_new_instances_are_pulled():
    listed = [StudyRef("1.1", 2), StudyRef("1.2", 3), StudyRef("1.3", 1)]
    state = {study_key("s", "1.1"): 2, study_key("s", "1.2"): 2}
    assert [study.uid for study in new_studies(listed, state, "s")] == ["1.2", "1.3"]
    assert new_studies(listed, state, "other-salt") == listed  # a new salt forgets the state


def test_state_round_trips_and_holds_no_uids():
    state = {study_key("s", "1.2.840.99"): 5}
    raw = state_bytes(state)
    assert read_state(raw) == state and b"1.2.840.99" not in raw and read_state(None) == {}
    with pytest.raises(PacsError, match="delete it"):
        read_state(b"{not json")


@pytest.mark.parametrize("text, label", [("CT ABDOMEN - CYST", "Cyst"), ("stone protocol", "Stone"),
                                         ("CT ABDOMEN", ""), ("Cyst and Tumor", ""), ("Cystic", "")])
def test_label_is_the_one_class_named_as_a_word(text, label):
    ds = Dataset()
    ds.StudyDescription = text
    assert label_of(ds, "StudyDescription", CLASSES) == label


def test_multipart_related_answer_splits_into_its_parts():
    body = (b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nDICM-ONE\r\n"
            b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nDICM\r\nTWO\r\n--XyZ--\r\n")
    assert multipart_parts(body, 'multipart/related; type="application/dicom"; boundary=XyZ') == [
        b"DICM-ONE", b"DICM\r\nTWO"]
    with pytest.raises(PacsError, match="not multipart"):
        multipart_parts(body, "application/dicom")


def test_manifests_merge_by_key_without_duplicates():
    row = lambda key, label: {"key": key, "sha256": "x", "source": "s", "label": label, "group": "g",  # noqa: E731
                              "series": "r", "format": "dicom"}
    merged = merge_manifests([row("b", "Cyst"), row("a", "Normal")], [row("b", "Cyst"), row("c", "Stone")])
    assert [r["key"] for r in merged] == ["a", "b", "c"]
    assert json.dumps(merged)  # plain dicts

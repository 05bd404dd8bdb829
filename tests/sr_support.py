"""Reading a DICOM SR back with plain pydicom (not highdicom, which wrote it): its content items, flattened."""

from __future__ import annotations

from collections.abc import Iterator


def content_items(ds, depth: int = 0) -> Iterator[tuple[int, str, str, object]]:
    """(depth, value type, concept name meaning, value) of every content item under `ds`, in document order.

    Values: CODE -> (code value, scheme, meaning); NUM -> float; TEXT/UIDREF -> str; IMAGE -> referenced SOP
    Instance UID; CONTAINER -> None."""
    for item in ds.get("ContentSequence", []):
        kind = str(item.ValueType)
        name = str(item.ConceptNameCodeSequence[0].CodeMeaning)
        if kind == "CODE":
            code = item.ConceptCodeSequence[0]
            value = (str(code.CodeValue), str(code.CodingSchemeDesignator), str(code.CodeMeaning))
        elif kind == "NUM":
            value = float(item.MeasuredValueSequence[0].NumericValue)
        elif kind in ("TEXT", "UIDREF"):
            value = str(item.TextValue if kind == "TEXT" else item.UID)
        elif kind == "IMAGE":
            value = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        else:
            value = None
        yield depth, kind, name, value
        yield from content_items(item, depth + 1)


def by_name(ds) -> dict[str, list[object]]:
    """Concept name meaning -> the values of every content item of that name."""
    found: dict[str, list[object]] = {}
    for _, _, name, value in content_items(ds):
        found.setdefault(name, []).append(value)
    return found


def evidence_instances(ds) -> set[str]:
    """SOP Instance UIDs the SR lists as the evidence it read (Current Requested Procedure Evidence)."""
    return {str(sop.ReferencedSOPInstanceUID) for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}

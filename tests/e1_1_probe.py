"""The audit's probe: every attribute of DICOM PS3.15 Table E.1-1 planted in a CT slice with a unique marker.

The attribute list is read straight from the dicom-anonymizer package's table module, never from
`components.ingest` (whose committed copy of the table, and the code applying it, is what is audited).
A marker is a value no other part of the pipeline writes (MKR0001Q, 18010102, -900012.25, 1.2.999.12.77 ...),
so finding its bytes anywhere the pipeline wrote means that attribute leaked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

EDITION = "2026c"
BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT"}
IDENTITY = {0x00100020, 0x0020000D, 0x0020000E, 0x00080018, 0x00200052}  # kept per file: patient, UIDs
CATEGORIES = ("D_TAGS", "Z_TAGS", "X_TAGS", "U_TAGS", "Z_D_TAGS", "X_Z_TAGS", "X_D_TAGS", "X_Z_D_TAGS",
              "X_Z_U_STAR_TAGS")


def table() -> dict[int, str]:
    """Tag -> Basic Profile action category, for every attribute of the package's Table E.1-1 of EDITION.

    A repeating group (50xx curves, 60xx overlays) is probed in its first group (5000, 6000).
    """
    import importlib

    module = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.dicomfields_{EDITION}")
    tags: dict[int, str] = {}
    for category in CATEGORIES:
        for entry in getattr(module, category):
            tags[(entry[0] << 16) | entry[1]] = category
    tags.pop(0x50000000, None)  # the whole curve group: probed by its label and data below
    tags.update({0x50002500: "X_TAGS", 0x50003000: "X_TAGS"})  # Curve Label, Curve Data
    return tags


@dataclass(frozen=True)
class Marker:
    tag: int  # where it was planted (the outermost attribute)
    vr: str
    text: str  # the needle searched for in every byte written


class Planter:
    """Hands out one unique marker per (attribute, VR)."""

    def __init__(self) -> None:
        self.count = 0
        self.markers: list[Marker] = []

    def value(self, tag: int, vr: str) -> str:
        self.count += 1
        n = self.count
        day = (dt.date(1801, 1, 1) + dt.timedelta(days=n)).strftime("%Y%m%d")
        text = {"DA": day, "DT": f"{day}235958.9{n:05d}", "TM": f"235958.9{n:05d}", "AS": f"{n % 1000:03d}W",
                "DS": f"-9{n:05d}.25", "IS": f"-8{n:06d}", "UI": f"1.2.999.{n}.77"}.get(vr, f"MKR{n:04d}Q")
        self.markers.append(Marker(tag, vr, text))
        return text


def _item(planter: Planter, tag: int, depth: int) -> Dataset:
    """A sequence item with a code (value, meaning), a referenced UID and, once, a nested sequence."""
    item = Dataset()
    item.CodeValue = planter.value(tag, "SH")
    item.CodingSchemeDesignator = "99MKR"
    item.CodeMeaning = planter.value(tag, "LO")
    item.ReferencedSOPInstanceUID = planter.value(tag, "UI")
    if depth == 0:
        item.ConceptNameCodeSequence = Sequence([_item(planter, tag, depth + 1)])
    return item


def _identity(marker: str, original: str, vr: str) -> str:
    """A per-file marker for attributes that must stay distinct (patient key, study/series/SOP UIDs)."""
    digest = int(hashlib.sha256(original.encode()).hexdigest(), 16)
    return f"{marker}.{digest % 10**20}" if vr == "UI" else f"{marker}{digest % 10**6:06d}"


def plant(ds: Dataset) -> tuple[Dataset, list[Marker], list[int]]:
    """Set every table attribute of `ds` to a marker (sequences get marked items, one nested level).

    Markers are handed out in a fixed order, so every file gets the same ones (only the patient key and
    the study/series/SOP UIDs carry a per-file suffix). Also returns the binary-VR tags that were given a
    value but carry no searchable marker.
    """
    planter, binary = Planter(), []
    for tag in sorted(table()):
        if tag >> 16 in (0x0000, 0x0002):
            continue  # command set (not allowed in a file); file meta: MediaStorageSOPInstanceUID set below
        vr = dictionary_VR(tag).split(" or ")[0] if dictionary_has_tag(tag) else "LO"
        if vr in BINARY_VRS:
            ds.add_new(tag, vr, b"\x00\x01" * 4 if vr.startswith("O") or vr == "UN" else 1)
            binary.append(tag)
        elif vr == "SQ":
            ds.add_new(tag, vr, Sequence([_item(planter, tag, 0)]))
        else:
            text = planter.value(tag, vr)
            ds.add_new(tag, vr, _identity(text, str(ds[tag].value), vr) if tag in IDENTITY and tag in ds else text)
    if "SOPInstanceUID" in ds and getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds, planter.markers, binary

"""Regenerate `ps3_15_e1_1.json` (DICOM PS3.15 Table E.1-1, Basic Profile column) from dicom-anonymizer.

The runtime reads only the committed JSON; this script (a dev tool, needs `dicom-anonymizer`, pinned in
requirements/test.txt) converts the package's table of one edition once:

    python -m components.ingest.make_e1_1_table [--edition 2026c]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import inspect
import json
import re
from pathlib import Path

OUT = Path(__file__).with_name("ps3_15_e1_1.json")
PACKAGE, DEFAULT_EDITION = "dicom-anonymizer", "2026c"
ACTIONS = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
           "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
_HEX = r"(0x[0-9A-Fa-f]{4})"
_ENTRY = re.compile(rf"\({_HEX}, {_HEX}(?:, {_HEX}, {_HEX})?\),\s*#\s*(.+)")  # (g, e[, gmask, emask]),  # Name


def rows(edition: str) -> list[dict[str, str]]:
    """One row per attribute: tag as 8 hex digits ('x' for a repeating-group digit), name, action."""
    module = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.dicomfields_{edition}")
    names = {}
    for match in _ENTRY.finditer(inspect.getsource(module)):
        group, element, group_mask, _ = match.groups()[:4]
        names[_tag_text(int(group, 16), int(element, 16), int(group_mask, 16) if group_mask else 0xFFFF)] = \
            match.group(5).strip()
    table = []
    for category, action in ACTIONS.items():
        for entry in getattr(module, category):
            tag = _tag_text(entry[0], entry[1], entry[2] if len(entry) == 4 else 0xFFFF)
            table.append({"tag": tag, "name": names.get(tag, ""), "action": action})
    return sorted(table, key=lambda row: row["tag"])


def _tag_text(group: int, element: int, group_mask: int) -> str:
    """'60xx3000' for the overlay group (mask 0xFF00), else 8 upper-case hex digits."""
    text = f"{group:04X}{element:04X}"
    return text[:2] + "xx" + text[4:] if group_mask == 0xFF00 else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edition", default=DEFAULT_EDITION, help="dicomfields_<edition> module of the package")
    args = parser.parse_args(argv)
    version = importlib.metadata.version(PACKAGE)
    payload = {"standard": "DICOM PS3.15 Table E.1-1, Basic Application Level Confidentiality Profile column",
               "edition": args.edition, "source": f"{PACKAGE}=={version} dicomfields_{args.edition}",
               "attributes": rows(args.edition)}
    lines = [json.dumps(row, ensure_ascii=False) for row in payload.pop("attributes")]
    head = json.dumps(payload, indent=1)[:-2]
    OUT.write_text(head + ',\n "attributes": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n")
    print(f"{OUT}: {len(lines)} attributes of edition {args.edition} ({PACKAGE} {version})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

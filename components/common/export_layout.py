"""The file layout of the embedded default export: what `generate` writes and `ingest` recognises as its own."""

from __future__ import annotations

import re

# <Class>/study-<10 hex>/IM<5 digits>.dcm, relative to the export folder (components.generate.core's paths)
GENERATED_FILE = re.compile(r"^[^/]+/study-[0-9a-f]{10}/IM\d{5}\.dcm$")

"""Pure core of `ingest`: label, check, de-identify and store each file of a PACS export.

A file is judged on its own (`examine`: bytes in, verdict out): it must sit in a class folder, decode,
be CT (not another modality, not a secondary capture or screen save, not flagged BurnedInAnnotation
YES), have a supported bit depth and photometric interpretation and a size within `ImageLimits`; any
other file is quarantined with that reason, so one bad file never stops a run. `ingest` walks the verdicts, writes
each object to the store once (idempotent re-runs), drops byte-identical duplicates and tallies counts
that must add up: files_seen = ingested_new + already_present + duplicates + quarantined.

Byte-identical copies under ONE label keep the first (the rest count as duplicates). Copies under
DIFFERENT labels are all quarantined, reason "conflicting labels ..." naming the labels and the other
copies' paths: which label is right is unknown, so none is ingested. A copy stored before the
conflict showed up moves from ingested_new/already_present to quarantined and leaves the manifest;
its object stays in the store (objects are never deleted or rewritten), and every copy's raw bytes
go under quarantine/. `earlier` (the manifest a PACS pull grows) joins the comparison: an earlier row
with these bytes under another label is quarantined too (in quarantine.csv, key listed in
`IngestResult.withdrawn` for `merge_manifests` to drop; not counted, it is no file of this run).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import PurePosixPath

from components.common.imaging import DICOM_SUFFIXES, ImageDecodeError, LoadedImage, decode_image, looks_like_dicom
from components.common.params import IngestParams
from components.common.storage import ObjectStore
from components.ingest.deid import DEIDENTIFICATION_METHOD, PROFILE_CODES, dataset_bytes, deidentify, profile_table

log = logging.getLogger("kidney_ct")

MANIFEST_COLUMNS = ("key", "sha256", "source", "label", "group", "series", "format")
QUARANTINE_COLUMNS = ("source", "reason", "key")
EXTENSIONS = {"dicom": "dcm", "png": "png", "jpeg": "jpg"}
COUNTS = ("files_seen", "ingested_new", "already_present", "duplicates", "quarantined")
STORED = ("ingested_new", "already_present")  # the tallies of a copy that has a manifest row
EARLIER = "earlier"  # the tally of a row an earlier run put in the manifest (not a file of this run)
CONFLICTING_LABELS = "conflicting labels"
COPIES_NAMED = 5  # other copies a conflicting-labels reason names before "and N more"
RASTER_MODES = frozenset({"L", "RGB", "RGBA", "LA", "P"})  # 8 bits per channel
SECONDARY_CAPTURE = frozenset({"1.2.840.10008.5.1.4.1.1.7"} | {f"1.2.840.10008.5.1.4.1.1.7.{n}" for n in range(1, 5)})
CLEAN_PIXELS_NOT_CLAIMED = "the Clean Pixel Data option is not applied, so text in the pixels would reach the store"


@dataclass(frozen=True)
class ImageLimits:
    """Smallest and largest accepted image side, in pixels (params.validate.min_width / max_width)."""

    min_side: int = 64
    max_side: int = 4096


@dataclass(frozen=True)
class SourceFile:
    """One file of the export: its path relative to the export folder and its bytes."""

    path: str  # POSIX, relative to the export folder
    data: bytes | None  # None when the file could not be read
    read_error: str = ""


@dataclass(frozen=True)
class Accepted:
    """A usable image: the bytes to store (de-identified for DICOM) and its manifest fields."""

    source: str
    label: str
    source_sha256: str
    stored: bytes = field(repr=False)
    format: str  # dicom | png | jpeg
    group: str = ""
    series: str = ""

    @property
    def digest(self) -> str:
        """The prefix of the source sha256 that names the object (and identifies its bytes)."""
        return self.source_sha256[:20]

    @property
    def key(self) -> str:
        return f"images/{self.label}/{self.digest}.{EXTENSIONS[self.format]}"

    def manifest_row(self) -> dict[str, str]:
        sha = hashlib.sha256(self.stored).hexdigest()
        return dict(key=self.key, sha256=sha, source=self.source, label=self.label,
                    group=self.group, series=self.series, format=self.format)  # fmt: skip


@dataclass(frozen=True)
class Rejected:
    """A file that goes to quarantine, with the reason a person can act on."""

    source: str
    reason: str
    data: bytes | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """quarantine/<sha20>/<file name>, or '' when there are no bytes to keep."""
        if self.data is None:
            return ""
        return quarantine_key(hashlib.sha256(self.data).hexdigest()[:20], self.source)

    def quarantine_row(self) -> dict[str, str]:
        return dict(source=self.source, reason=self.reason, key=self.key)


def quarantine_key(digest: str, source: str) -> str:
    """Where the raw bytes of a quarantined file go: quarantine/<sha20>/<file name>."""
    return f"quarantine/{digest}/{PurePosixPath(source).name}"


class Rejection(Exception):
    """Raised inside `examine` to quarantine a file; the message is the reason."""


@dataclass(frozen=True)
class IngestResult:
    """Manifest and quarantine rows plus the counts of one ingest run.

    `conflicting_labels`: files of this run quarantined because their bytes carry several labels;
    `withdrawn`: keys of earlier manifest rows quarantined for the same reason.
    """

    manifest: list[dict[str, str]]
    quarantine: list[dict[str, str]]
    counts: dict[str, int]
    conflicting_labels: int = 0
    withdrawn: tuple[str, ...] = ()

    def per_class(self, classes: Sequence[str]) -> dict[str, int]:
        tally = Counter(row["label"] for row in self.manifest)
        return {label: tally.get(label, 0) for label in classes}


class SaltRequired(ValueError):
    """Real data and no secret salt: the message says what to set."""


def resolve_salt(settings: IngestParams, environ: Mapping[str, str] = os.environ,
                 allow_default: bool = True) -> tuple[str, str]:
    """The salt for patient hashes and where it came from ('env', or 'default' with a warning).

    Without `allow_default` (a real export or a PACS) an unset env var is refused: the default salt is
    public, so anyone with this repository and a list of MRNs could recompute the patient keys.
    """
    value = environ.get(settings.salt_env, "")
    if value:
        return value, "env"
    if not allow_default:
        raise SaltRequired(f"{settings.salt_env} is not set: a real export needs a secret salt, or anyone with this "
                           f"repository and a list of MRNs can reverse the patient keys; set {settings.salt_env} to "
                           "a long random secret (e.g. `export "
                           f"{settings.salt_env}=$(openssl rand -hex 32)`) and keep it with the data")
    log.warning("%s is not set: using params.ingest.default_salt, so patient keys can be guessed by anyone "
                "with this repository; set %s to a secret for real data", settings.salt_env, settings.salt_env)
    return settings.default_salt, "default"


def resolve_label(path: str, classes: Sequence[str]) -> str:
    """The class named by the first folder of `path`: exact match first, then case-insensitive."""
    parts = PurePosixPath(path).parts
    if len(parts) < 2:
        raise Rejection("no label folder: the file sits directly in the export folder, not in a class folder")
    folder = parts[0]
    if folder in classes:
        return folder
    matches = [label for label in classes if label.lower() == folder.lower()]
    if len(matches) == 1:
        return matches[0]
    raise Rejection(f"unknown label folder {folder!r} (expected one of {', '.join(classes)})")


def sniff_format(data: bytes) -> str:
    """dicom, png or jpeg from the content (not the file name)."""
    if looks_like_dicom(data):
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    raise Rejection("unsupported image format (expected DICOM, PNG or JPEG)")


def examine(file: SourceFile, classes: Sequence[str], salt: str,
            limits: ImageLimits = ImageLimits()) -> Accepted | Rejected:
    """Judge one file: label folder, decodable pixels, format, CT only, size; de-identify DICOM."""
    if file.data is None:
        return Rejected(file.path, file.read_error or "file could not be read")
    try:
        label = resolve_label(file.path, classes)
        image = _decoded(file.path, file.data)
        fmt = sniff_format(file.data)
        screen_image(image, fmt, limits)
        stored, group, series = _deidentified(file.data, salt) if fmt == "dicom" else (file.data, "", "")
    except Rejection as rejection:
        return Rejected(file.path, str(rejection), file.data)
    sha = hashlib.sha256(file.data).hexdigest()
    return Accepted(file.path, label, sha, stored, fmt, group, series)


def _decoded(path: str, data: bytes) -> LoadedImage:
    try:
        return decode_image(data)
    except ImageDecodeError as exc:
        if data and not looks_like_dicom(data) and path.lower().endswith(DICOM_SUFFIXES):
            raise Rejection("not a DICOM Part 10 file (no 'DICM' marker after the preamble)") from None
        raise Rejection(str(exc)) from None
    except Exception as exc:  # a decoder bug or exotic input must not stop the whole export
        raise Rejection(f"image cannot be decoded ({type(exc).__name__}: {exc})") from None


def screen_image(image: LoadedImage, fmt: str, limits: ImageLimits) -> None:
    """Refuse a raster of an unsupported bit depth and any image too small or too large to train on."""
    if fmt != "dicom" and image.mode not in RASTER_MODES:
        raise Rejection(f"unsupported bit depth or colour mode {image.mode!r} for a {fmt.upper()} "
                        f"(expected 8-bit grayscale or colour: {', '.join(sorted(RASTER_MODES))})")
    height, width = image.pixels.shape
    if min(width, height) < limits.min_side:
        raise Rejection(f"image is {width}x{height} pixels: smaller than the minimum side of {limits.min_side}")
    if max(width, height) > limits.max_side:
        raise Rejection(f"image is {width}x{height} pixels: larger than the maximum side of {limits.max_side}")


def screen_dicom(ds) -> None:
    """Refuse what is not a plain CT slice: burned-in text, secondary captures, other modalities, odd pixels."""
    if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        raise Rejection(f"BurnedInAnnotation is YES: {CLEAN_PIXELS_NOT_CLAIMED}")
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class in SECONDARY_CAPTURE:
        raise Rejection(f"secondary capture ({getattr(ds.SOPClassUID, 'name', sop_class)}): a screenshot or "
                        f"scan may show identifying text, and {CLEAN_PIXELS_NOT_CLAIMED}")
    image_type = [str(value).upper() for value in (ds.get("ImageType") or [])]
    if "SCREEN SAVE" in image_type:
        raise Rejection(f"ImageType says SCREEN SAVE (a screenshot): {CLEAN_PIXELS_NOT_CLAIMED}")
    modality = str(ds.get("Modality", "") or "").strip()
    if modality != "CT":
        raise Rejection(f"modality {modality or 'missing'}, not CT: only CT slices are training data")
    bits = ds.get("BitsAllocated")
    if bits not in (8, 16) or int(ds.get("BitsStored", bits) or 0) > bits:
        raise Rejection(f"unsupported bit depth (BitsAllocated {bits}, BitsStored {ds.get('BitsStored')}; "
                        "expected 8 or 16 bits)")
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise Rejection(f"unsupported photometric interpretation {photometric or 'missing'} "
                        "(expected MONOCHROME1 or MONOCHROME2)")


def _deidentified(data: bytes, salt: str) -> tuple[bytes, str, str]:
    """De-identified DICOM bytes plus the salted group and series keys."""
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many types on odd files
        raise Rejection(f"DICOM header cannot be read ({type(exc).__name__}: {exc})") from None
    screen_dicom(dataset)
    try:
        result = deidentify(dataset, salt)
        return dataset_bytes(result.dataset), result.group, result.series
    except Exception as exc:  # pydicom raises many types on odd files
        raise Rejection(f"DICOM file cannot be de-identified ({type(exc).__name__}: {exc})") from None


EXAMINE_CHUNK = 64  # files in flight to the worker processes at a time


def examined(files: Iterable[SourceFile], classes: Sequence[str], salt: str, limits: ImageLimits,
             workers: int = 1) -> Iterator[tuple[SourceFile, Accepted | Rejected]]:
    """Each file with its verdict, in order; decoding and de-identification on `workers` processes.

    Files go to the workers EXAMINE_CHUNK at a time, so memory stays bounded however large the export.
    """
    judge = partial(examine, classes=classes, salt=salt, limits=limits)
    if workers <= 1:
        yield from ((file, judge(file)) for file in files)
        return
    from concurrent.futures import ProcessPoolExecutor

    source = iter(files)
    with ProcessPoolExecutor(workers) as pool:
        while chunk := list(islice(source, EXAMINE_CHUNK)):
            yield from zip(chunk, pool.map(judge, chunk, chunksize=max(1, EXAMINE_CHUNK // (4 * workers))))


@dataclass(slots=True)
class _Copy:
    """One accepted file (or earlier manifest row) with given bytes: where, which label, how it was counted."""

    source: str
    label: str
    key: str  # its images/ key
    tally: str  # a name of COUNTS, or EARLIER


def ingest(files: Iterable[SourceFile], store: ObjectStore, classes: Sequence[str], salt: str,
           limits: ImageLimits = ImageLimits(), workers: int = 1,
           earlier: Iterable[Mapping[str, str]] = ()) -> IngestResult:
    """Examine every file (on `workers` processes), store new objects once, drop duplicates, quarantine the rest.

    `earlier`: manifest rows of earlier runs this run extends (a PACS pull), checked for conflicting labels.
    """
    existing = set(store.keys("images/")) | set(store.keys("quarantine/"))
    copies = _earlier_copies(earlier)  # digest of the source bytes -> every copy, in the order seen
    conflicts: dict[str, None] = {}  # digests seen under more than one label, in the order found
    manifest: list[dict[str, str]] = []
    quarantine: list[dict[str, str]] = []
    counts: Counter[str] = Counter({name: 0 for name in COUNTS})
    for file, outcome in examined(files, classes, salt, limits, workers):
        counts["files_seen"] += 1
        if isinstance(outcome, Accepted):
            tally = _admit(outcome, file.data or b"", copies.setdefault(outcome.digest, []), store, existing)
            counts[tally] += 1
            if tally == "quarantined":
                conflicts[outcome.digest] = None
            elif tally in STORED:
                manifest.append(outcome.manifest_row())
            continue
        if outcome.key:
            _put_once(store, outcome.key, file.data or b"", existing)
        counts["quarantined"] += 1
        quarantine.append(outcome.quarantine_row())
    conflicting = [(digest, copy) for digest in conflicts for copy in copies[digest]]
    quarantine += [conflict_row(copy, copies[digest], digest) for digest, copy in conflicting]
    this_run = [copy for _, copy in conflicting if copy.tally != EARLIER]
    for copy in this_run:  # none is ingested: each counts as quarantined and leaves the manifest
        counts[copy.tally] -= 1
        counts["quarantined"] += 1
    dropped = {copy.key for copy in this_run}
    check_counts(counts)
    manifest = sorted((row for row in manifest if row["key"] not in dropped), key=lambda row: row["key"])
    return IngestResult(manifest=manifest, quarantine=quarantine, counts=dict(counts),
                        conflicting_labels=len(this_run),
                        withdrawn=tuple(copy.key for _, copy in conflicting if copy.tally == EARLIER))


def _admit(outcome: Accepted, data: bytes, group: list[_Copy], store: ObjectStore, existing: set[str]) -> str:
    """Add an accepted file to the copies of its bytes (`group`), store it if it is the first; return its tally.

    Bytes under more than one label are quarantined (raw bytes under every copy's quarantine key; the
    rows come at the end of the run, when all copies are known).
    """
    kept = next((other for other in group if other.tally in STORED), None)
    group.append(copy := _Copy(outcome.source, outcome.label, outcome.key, ""))
    if len({other.label for other in group}) > 1:
        for other in group:
            _put_once(store, quarantine_key(outcome.digest, other.source), data, existing)
        copy.tally = "quarantined"
    elif kept is not None:
        log.info("duplicate: %s has the same bytes as %s", outcome.source, kept.source)
        copy.tally = "duplicates"
    else:
        copy.tally = _put_once(store, outcome.key, outcome.stored, existing)
    return copy.tally


def _earlier_copies(rows: Iterable[Mapping[str, str]]) -> dict[str, list[_Copy]]:
    """Earlier manifest rows by the digest in their key (images/<label>/<sha20>.<ext>)."""
    copies: dict[str, list[_Copy]] = {}
    for row in rows:
        copies.setdefault(PurePosixPath(row["key"]).stem, []).append(
            _Copy(row["source"], row["label"], row["key"], EARLIER))
    return copies


def conflict_row(copy: _Copy, group: Sequence[_Copy], digest: str) -> dict[str, str]:
    """The quarantine row of one copy of bytes found under several labels: the labels and the other copies."""
    labels = " vs ".join(dict.fromkeys(other.label for other in group))
    others = [other for other in group if other is not copy]
    named = ", ".join(f"{other.source!r} ({other.label}{', an earlier run' if other.tally == EARLIER else ''})"
                      for other in others[:COPIES_NAMED])
    more = f" and {len(others) - COPIES_NAMED} more" if len(others) > COPIES_NAMED else ""
    reason = (f"{CONFLICTING_LABELS} {labels}: the same bytes are also {named}{more}; which label is right "
              "is unknown, so every copy is quarantined")
    if copy.tally == EARLIER:
        reason += f" (ingested by an earlier run as {copy.key}: the row leaves the manifest, the object stays)"
    elif copy.tally in STORED:
        reason += f" (its object {copy.key} stays in the store, out of the manifest)"
    return dict(source=copy.source, reason=reason, key=quarantine_key(digest, copy.source))


def _put_once(store: ObjectStore, key: str, data: bytes, existing: set[str]) -> str:
    """Upload unless the key is already in the store; say which happened."""
    if key in existing:
        return "already_present"
    store.put(key, data)
    existing.add(key)
    return "ingested_new"


def check_counts(counts: Mapping[str, int]) -> None:
    """Every file seen is accounted for exactly once."""
    accounted = sum(counts[name] for name in COUNTS[1:])
    if counts["files_seen"] != accounted:
        raise AssertionError(f"ingest counts do not add up: {dict(counts)}")


def summary(result: IngestResult, classes: Sequence[str], store_uri: str, salt_source: str) -> dict:
    """The ingest.json payload."""
    formats = Counter(row["format"] for row in result.manifest)
    return {**result.counts, "conflicting_labels": result.conflicting_labels,
            "withdrawn_from_manifest": len(result.withdrawn),
            "images": len(result.manifest), "per_class": result.per_class(classes),
            "formats": dict(sorted(formats.items())), "store": store_uri, "salt": salt_source,
            "deidentification": {"method": DEIDENTIFICATION_METHOD,
                                 "table": f"PS3.15 Table E.1-1 {profile_table().edition}",
                                 "codes": [f"DCM {code} {meaning}" for code, meaning in PROFILE_CODES]}}  # fmt: skip


def rows_to_csv(rows: Iterable[Mapping[str, str]], columns: Sequence[str]) -> bytes:
    """CSV bytes with a header, '\\n' line ends, columns in the given order."""
    import csv

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def read_manifest(data: bytes) -> list[dict[str, str]]:
    """Manifest rows from CSV bytes (as written by `rows_to_csv`)."""
    import csv

    return [dict(row) for row in csv.DictReader(io.StringIO(data.decode()))]


def merge_manifests(earlier: Iterable[Mapping[str, str]], new: Iterable[Mapping[str, str]],
                    withdrawn: Collection[str] = ()) -> list[dict[str, str]]:
    """One row per key (a later row replaces an earlier one), sorted by key: pulls add, never duplicate.

    Earlier rows whose key is in `withdrawn` (quarantined by this run: `IngestResult.withdrawn`) are dropped.
    """
    rows = {row["key"]: {column: row.get(column, "") for column in MANIFEST_COLUMNS}
            for row in earlier if row["key"] not in withdrawn}
    rows.update({row["key"]: dict(row) for row in new})
    return [rows[key] for key in sorted(rows)]

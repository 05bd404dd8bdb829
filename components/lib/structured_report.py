"""Pure core of the verdict as a DICOM Structured Report: one TID 1500 Comprehensive SR per scored series.

In: the source series' pydicom headers (read without pixels), its pooled verdict and the model that gave it.
Out: a highdicom `ComprehensiveSR` that a PACS files with the study it read (it copies the patient and study
attributes of the source and references its study, series and every instance). No IO here: the CLI
(components/predict/sr_io.py) reads the headers and writes or stores the result; the service builds it in memory.

The SR carries the patient's identifiers on purpose: it goes back to that patient's study inside the hospital,
never to object storage, MLflow or a log (docs/structured-report.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LOCAL_SCHEME = "99KIDCT"  # private coding scheme of this project's concepts (the "99" prefix is for local codes)
SR_SERIES_NUMBER = 9901
MANUFACTURER = "kidney-ct pipeline"
# The classes of the default model with their SNOMED CT concepts; any other class gets a local code.
CLASS_CODES = {"Normal": ("17621005", "SCT", "Normal"), "Cyst": ("441457006", "SCT", "Cyst"),
               "Tumor": ("108369006", "SCT", "Neoplasm"), "Stone": ("95570007", "SCT", "Kidney stone")}
SHADOW_DESCRIPTION = "AI verdict - INVESTIGATIONAL, not for diagnosis"
CLINICAL_DESCRIPTION = "AI verdict - decision support"
SHADOW_NOTICE = ("INVESTIGATIONAL: produced by an AI algorithm in shadow mode, for evaluation only. "
                 "Not for diagnosis; not reviewed by a radiologist.")
CLINICAL_NOTICE = ("Decision support produced by an AI algorithm; not reviewed by a radiologist. "
                   "The reading radiologist makes the diagnosis.")
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


class SrRefused(ValueError):
    """No SR can be made for this series (e.g. PNG slices, no DICOM header); the message says why."""


@dataclass(frozen=True)
class Algorithm:
    """The model that gave the verdict: registry name and version, and the parameters of its contract."""

    name: str
    version: str
    parameters: Mapping[str, str]


@dataclass(frozen=True)
class SeriesFinding:
    """One series' verdict as the SR states it; `top` are SOP Instance UIDs of the slices that drove it."""

    label: str
    probabilities: Mapping[str, float]
    pooling: str
    slices: int
    top: Sequence[str]
    prediction_set: Sequence[str] = ()   # the conformal set, most probable first (empty: no calibration)
    coverage: float | None = None        # its certified target coverage

    @property
    def refer(self) -> bool:
        """More than one class in the set: not sure, refer to a radiologist."""
        return len(self.prediction_set) > 1


def check_headers(headers: Sequence) -> None:
    """Refuse a series the SR cannot reference: no DICOM header, a missing UID, or slices of several studies."""
    if not headers:
        raise SrRefused("no DICOM header: a DICOM SR references the DICOM instances it read, so PNG/JPEG "
                        "slices cannot get one (score the DICOM export instead)")
    missing = sorted({key for ds in headers for key in REQUIRED if not str(ds.get(key, "") or "").strip()})
    if missing:
        raise SrRefused(f"a slice's DICOM header lacks {', '.join(missing)}: the SR could not reference it")
    if len({str(ds.StudyInstanceUID) for ds in headers}) > 1:
        raise SrRefused("the series' slices belong to more than one study")


def class_code(label: str):
    from pydicom.sr.coding import Code

    value, scheme, meaning = CLASS_CODES.get(label, (label[:16], LOCAL_SCHEME, label[:64]))
    return Code(value, scheme, meaning)


def local_code(value: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value[:16], LOCAL_SCHEME, meaning[:64])


def content_digest(headers: Sequence, finding: SeriesFinding, algorithm: Algorithm, clinical_use: bool) -> str:
    """SHA-256 of what the SR states (dates excepted): the same scoring gives the same digest."""
    state = {"study": str(headers[0].StudyInstanceUID), "series": sorted({str(ds.SeriesInstanceUID) for ds in headers}),
             "instances": sorted(str(ds.SOPInstanceUID) for ds in headers), "label": finding.label,
             "probabilities": {c: round(float(p), 6) for c, p in finding.probabilities.items()},
             "pooling": finding.pooling, "slices": finding.slices, "top": list(finding.top), "model": algorithm.name,
             "set": list(finding.prediction_set), "coverage": finding.coverage,
             "version": algorithm.version, "parameters": dict(algorithm.parameters), "clinical_use": clinical_use}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def report_uids(headers: Sequence, finding: SeriesFinding, algorithm: Algorithm, clinical_use: bool) -> tuple[str, str]:
    """(SR series UID, SR SOP Instance UID), derived, not random: one SR series per source series and model
    version, and one instance per content, so storing the same scoring twice stores the same instance."""
    from pydicom.uid import generate_uid

    study, series = str(headers[0].StudyInstanceUID), str(headers[0].SeriesInstanceUID)
    sr_series = generate_uid(entropy_srcs=["kidney-ct-sr-series", study, series, algorithm.name, algorithm.version])
    digest = content_digest(headers, finding, algorithm, clinical_use)
    return sr_series, generate_uid(entropy_srcs=["kidney-ct-sr", sr_series, digest])


def algorithm_parameters(algorithm: Algorithm, finding: SeriesFinding) -> list[str]:
    return [f"{key}={value}" for key, value in {**algorithm.parameters, "series_pooling": finding.pooling}.items()]


def measurement_group(by_uid: Mapping, finding: SeriesFinding, algorithm: Algorithm, tracking_uid: str):
    """TID 1501: the verdict (Finding), each class's pooled probability, the algorithm, the top slices."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    probabilities = [hd.sr.Measurement(name=local_code(f"P-{label}", f"Probability of {label}"), value=float(p),
                                       unit=Code("1", "UCUM", "no units"))
                     for label, p in finding.probabilities.items()]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier="kidney CT study verdict"),
        algorithm_id=hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version,
                                                   parameters=algorithm_parameters(algorithm, finding)),
        measurements=probabilities,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(Code("121071", "DCM", "Finding"),
                                                              class_code(finding.label)), *set_evaluations(finding)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(by_uid[uid]) for uid in finding.top])


YES, NO = ("373066001", "SCT", "Yes"), ("373067005", "SCT", "No")


def set_evaluations(finding: SeriesFinding) -> list:
    """The conformal set as coded findings: one "Prediction set member" per class in it, and the refer flag (Yes
    when the set holds more than one class). Nothing without a conformal calibration."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    if not finding.prediction_set:
        return []
    members = [hd.sr.QualitativeEvaluation(local_code("SET", "Prediction set member"), class_code(label))
               for label in finding.prediction_set]
    flag = Code(*(YES if finding.refer else NO))
    return [*members, hd.sr.QualitativeEvaluation(local_code("REFER", "Refer to radiologist"), flag)]


def set_statement(finding: SeriesFinding) -> str:
    """The set as one sentence a reader understands."""
    text = " or ".join(finding.prediction_set)
    coverage = f"{finding.coverage:.0%}" if finding.coverage is not None else "the certified"
    if finding.refer:
        return f"Not sure: the truth is one of {text} with {coverage} probability. Refer to a radiologist."
    return f"{text} alone holds the truth with {coverage} probability (certified on unseen patients)."


def statements(finding: SeriesFinding, algorithm: Algorithm, clinical_use: bool):
    """TID 1500's Qualitative Evaluations container: the notice, the pooling and the model, as text."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    texts = [("NOTICE", "Decision support notice", CLINICAL_NOTICE if clinical_use else SHADOW_NOTICE),
             ("POOLING", "Series pooling", f"{finding.pooling} of {finding.slices} slice probabilities"),
             ("MODEL", "Model", f"{algorithm.name} version {algorithm.version}")]
    if finding.prediction_set:
        texts.insert(1, ("SETTEXT", "Prediction set", set_statement(finding)))
    container = hd.sr.ContainerContentItem(name=Code("C0034375", "UMLS", "Qualitative Evaluations"),
                                           relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=local_code(value, meaning), value=text, relationship_type="CONTAINS")
        for value, meaning, text in texts])
    return container


def build_report(headers: Sequence, finding: SeriesFinding, algorithm: Algorithm, clinical_use: bool):
    """The Comprehensive SR (TID 1500 Imaging Measurement Report) of one scored series."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code
    from pydicom.uid import generate_uid

    check_headers(headers)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO lines name the source's SOP Instance UIDs
    by_uid = {str(ds.SOPInstanceUID): ds for ds in headers}
    unknown = [uid for uid in finding.top if uid not in by_uid]
    if unknown:
        raise SrRefused(f"{len(unknown)} top slice(s) are not among the series' instances")
    series_uid, sop_uid = report_uids(headers, finding, algorithm, clinical_use)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["kidney-ct-device", algorithm.name, algorithm.version]), name=algorithm.name,
        manufacturer_name=MANUFACTURER, model_name=f"{algorithm.name} version {algorithm.version}")
    observation = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(
        observation_context=observation, procedure_reported=Code("77477000", "SCT", "Computerized axial tomography"),
        imaging_measurements=[measurement_group(by_uid, finding, algorithm, generate_uid(entropy_srcs=[sop_uid]))])
    root = report[0]
    root.ContentSequence.append(statements(finding, algorithm, clinical_use))
    sr = hd.sr.ComprehensiveSR(
        evidence=list(headers), content=root, series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        series_description=CLINICAL_DESCRIPTION if clinical_use else SHADOW_DESCRIPTION)
    declare_local_scheme(sr)
    return sr


def declare_local_scheme(sr) -> None:
    """Name the private coding scheme in the Coding Scheme Identification Sequence (PS3.3 C.12.1.1.4), so a DICOM
    validator knows where the 99KIDCT codes come from."""
    from pydicom.dataset import Dataset

    scheme = Dataset()
    scheme.CodingSchemeDesignator = LOCAL_SCHEME
    scheme.CodingSchemeName = "kidney-ct pipeline local codes"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    existing = [item for item in sr.get("CodingSchemeIdentificationSequence", [])
                if item.get("CodingSchemeDesignator") != LOCAL_SCHEME]
    sr.CodingSchemeIdentificationSequence = [*existing, scheme]


def report_bytes(report) -> bytes:
    """The SR as DICOM Part 10 bytes (what is written to the SR folder, stored by STOW-RS or served)."""
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def series_finding(series_row: Mapping, slice_rows: Sequence[Mapping], classes: Sequence[str],
                   sop_of: Mapping[str, str], k: int) -> SeriesFinding:
    """A series' verdict from components.predict's tables: its pooled row, and the SOP Instance UIDs of its k
    slices with the highest probability of the verdict class (highest first, as the service's top slices)."""
    import numpy as np

    from components.common.pooling import top_slices

    members = [row for row in slice_rows if row["series"] == series_row["series"]]
    label = str(series_row["verdict"])
    order = top_slices(np.array([[float(row[f"p_{label}"])] for row in members]), 0, k)
    members_of_set = [c for c in str(series_row.get("set") or "").split("|") if c]
    coverage = series_row.get("coverage")
    return SeriesFinding(label, {c: float(series_row[f"p_{c}"]) for c in classes}, str(series_row["pooling"]),
                         int(series_row["slices"]), [sop_of[members[i]["file"]] for i in order],
                         members_of_set if coverage is not None else [],
                         None if coverage is None else float(coverage))


def export_reports(slice_rows: Sequence[Mapping], series_rows: Sequence[Mapping], headers: Mapping[str, object],
                   classes: Sequence[str], algorithm: Algorithm, clinical_use: bool,
                   k: int) -> tuple[list, list[dict]]:
    """An SR per scored series of an export (`headers`: file name -> its DICOM header, DICOM files only), and
    a row (series, reason) for each series refused, e.g. PNG slices."""
    reports, refused = [], []
    for row in series_rows:
        files = [r["file"] for r in slice_rows if r["series"] == row["series"]]
        try:
            if any(name not in headers for name in files):
                check_headers([])  # a slice without a DICOM header: refused with the reason
            series_headers = [headers[name] for name in files]
            sop_of = {name: str(headers[name].get("SOPInstanceUID", "")) for name in files}
            finding = series_finding(row, slice_rows, classes, sop_of, k)
            reports.append(build_report(series_headers, finding, algorithm, clinical_use))
        except SrRefused as exc:
            refused.append({"series": row["series"], "reason": str(exc)})
    return reports, refused

"""Pure core of what every registered version carries: provenance tags and a model card (markdown)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

# Filled when evaluate reports confidence intervals (issue 3): metrics.json "<metric>_ci" = [low, high].
CI_PENDING = "not yet computed"


def dvc_data_version(lock_text: str | None, manifest_path: str) -> str:
    """md5 DVC recorded for the ingested manifest in dvc.lock, or 'no dvc.lock' / 'not in dvc.lock'."""
    if not lock_text:
        return "no dvc.lock"
    stages = (yaml.safe_load(lock_text) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []) or []:
            if str(out.get("path", "")).rstrip("/") == manifest_path.rstrip("/"):
                return str(out.get("md5", "unknown"))
    return "not in dvc.lock"


def metric_with_ci(metrics: Mapping[str, Any], key: str) -> str:
    """'0.812 (95% CI 0.75-0.86)' when evaluate gave an interval, else the value and CI_PENDING."""
    value = metrics.get(key)
    if value is None:
        return "not measured"
    ci = metrics.get(f"{key}_ci")
    interval = f"95% CI {ci[0]:.3f}-{ci[1]:.3f}" if isinstance(ci, (list, tuple)) and len(ci) == 2 else f"CI {CI_PENDING}"
    return f"{value:.3f} ({interval})"


def provenance_tags(git_commit: str, manifest_sha: str, dvc_md5: str, params_sha: str, gate: Mapping[str, Any],
                    metrics: Mapping[str, Any]) -> dict[str, str]:
    """Version tags: where the code, data and settings came from, the gate verdict and the test metrics."""
    tags = {"git_commit": git_commit, "data_manifest_sha256": manifest_sha, "dvc_manifest_md5": dvc_md5,
            "params_sha256": params_sha, "gate_passed": str(bool(gate.get("passed"))).lower(),
            "gate_reasons": "; ".join(gate.get("reasons") or []) or "none",
            "model_card": "registration/model_card.md", "input_example": "registration/input_example.json"}
    for key in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "test_loss"):
        if isinstance(metrics.get(key), (int, float)):
            tags[key if key.startswith("test_") else f"test_{key}"] = f"{metrics[key]:.4f}"
    return tags


def certified_on(metrics: Mapping[str, Any]) -> str:
    """Where the card's figures come from: the held-out split, or the grouped CV behind a refitted model."""
    protocol = metrics.get("protocol") or {}
    if protocol.get("name") == "cv_refit":
        return (f"out-of-fold predictions of the same recipe's grouped {protocol.get('folds', '?')}-fold CV; the "
                "registered model was refitted on every labelled series")
    return "held-out, group-aware test split"


def model_card(name: str, version: str, candidate: str, classes: list[str], image_size: int, window: tuple[float, float],
               metrics: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    """A markdown model card for one registered version."""
    per_class = metrics.get("per_class") or {}
    rows = "\n".join(f"| {c} | {v.get('precision', 0):.3f} | {v.get('recall', 0):.3f} | {v.get('f1', 0):.3f} | "
                     f"{v.get('support', 0)} |" for c, v in per_class.items()) or "| (not available) | | | | |"
    return f"""# Model card: {name} v{version}

**Decision support only. Not a substitute for a radiologist.** The model sees one axial CT slice at a time;
a radiologist reads the whole study, the clinical context and prior imaging.

## Intended use
Suggests one of {", ".join(classes)} for a single kidney CT slice, to prioritise or double-check a reading
by a qualified radiologist. Not for use without human review, not for paediatric scans or other organs,
not for staging or treatment decisions.

## Model
- Candidate: `{candidate}`; input {image_size}x{image_size} grayscale, DICOM windowed at centre {window[0]:g} /
  width {window[1]:g} HU through the same `prepare_for_model` used in training and serving.
- Code: git commit `{tags.get("git_commit", "unknown")}`; params sha256 `{tags.get("params_sha256", "unknown")}`.

## Data
- Ingested manifest sha256 `{tags.get("data_manifest_sha256", "unknown")}` (DVC md5 `{tags.get("dvc_manifest_md5", "unknown")}`).
- Split by patient / near-duplicate group, so no patient's slices are on both sides of the test split.

## Metrics ({certified_on(metrics)}, {metrics.get("test_images", "?")} images)
- Accuracy: {metric_with_ci(metrics, "accuracy")}
- Macro-F1: {metric_with_ci(metrics, "macro_f1")}
- Gate: {"passed" if tags.get("gate_passed") == "true" else "FAILED"} ({tags.get("gate_reasons", "none")})

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

{study_card(metrics)}
## Limitations
- Trained on a limited set of scanners and patients; performance on other scanners, protocols, contrast phases
  or populations is unknown until measured there.
- A single slice can miss findings visible only on neighbouring slices; small stones and early tumours are hard.
- Slice probabilities are not calibrated risks (the study verdict's are, where a decision rule was fitted);
  Grad-CAM shows where the model looked, not why it is right.
- A conformal set's coverage holds for patients like the calibration ones: on another scanner, site or
  population it no longer does; the monitor's drift verdict says when to recalibrate.
- Confidence intervals: see the metrics above; "{CI_PENDING}" means evaluate did not report them for this version.
"""


def study_card(metrics: Mapping[str, Any]) -> str:
    """The card's study section: the verdict per series and its conformal set, with the certified figures."""
    series, study = metrics.get("series") or {}, metrics.get("study") or {}
    lines = ["## Per study (scan series)"]
    if series:
        recalls = ", ".join(f"{c} {v.get('recall', 0):.2f}" for c, v in (series.get("per_class") or {}).items())
        lines.append(f"- Verdict: {study.get('pooling', series.get('pooling', 'mean'))}; macro-F1 "
                     f"{metric_with_ci(series, 'macro_f1')} over {series.get('series', '?')} series; recall {recalls}")
    if study.get("slice_in_series_macro_f1") is not None:
        lines.append(f"- Slices judged in their series' context (each takes its series' verdict, as its label is its "
                     f"series' label): macro-F1 {study['slice_in_series_macro_f1']:.3f}; the slice figures above "
                     "judge each slice alone")
    if study.get("rule"):
        rule = study["rule"]
        lines.append(f"- Decision rule (fitted on out-of-fold predictions): temperature {rule['temperature']:.2f}, "
                     f"class offsets {rule['offsets']}")
    shift = study.get("shift")
    if shift:
        verdict = "within" if shift["robust"] else "MORE THAN"
        lines.append(f"- A scanner change ({shift['shift']}): series macro-F1 {shift['plain']['series_macro_f1']:.3f} "
                     f"plain, {shift['shifted']['series_macro_f1']:.3f} on the shifted copy of the same out-of-fold "
                     f"series: a drop of {shift['drop']:.3f}, {verdict} the {shift['max_drop']:.2f} allowed"
                     + ("" if shift["robust"] else ". THIS MODEL IS NOT ROBUST TO A SHARPER KERNEL"))
    energy = metrics.get("gradcam_outside_body")
    if energy:
        per = ", ".join(f"{c} {v:.0%}" for c, v in energy["per_class"].items())
        lines.append(f"- Grad-CAM energy outside the body: {energy['overall']:.0%} of the map on {energy['slices']} "
                     f"{energy['on']} ({per}); a model that looks at the surround, table or text is not to be trusted")
    conformal = study.get("conformal")
    if conformal:
        target = conformal["calibration"]["coverage"]
        certified = (conformal.get("certified") or {}).get("summary") or {}
        if not certified:
            lines.append(f"- Conformal sets at {target:.0%}: NOT certified "
                         f"({(conformal.get('certified') or {}).get('not_certified', 'no grouped CV')}); every study "
                         "is referred")
        else:
            def fig(key: str) -> str:
                v = certified.get(key) or {}
                return "n/a" if v.get("estimate") is None else f"{v['estimate']:.3f}"
            per_class = ", ".join(f"{k.removeprefix('coverage_')} {fig(k)}" for k in certified
                                  if k.startswith("coverage_"))
            kind = conformal["calibration"]["method"] + (", class-conditional" if conformal["calibration"]["mondrian"]
                                                         else "")
            lines.append(f"- Conformal sets at {target:.0%} ({kind}): coverage "
                         f"{fig('coverage')} by grouped CV (per class: {per_class}); mean set size "
                         f"{fig('mean_set_size')}; studies decided (a set of one) {fig('decided')}, accuracy of "
                         f"those {fig('decided_accuracy')}. A set of more than one class reads \"refer to a "
                         "radiologist\".")
    return "\n".join(lines) + "\n"

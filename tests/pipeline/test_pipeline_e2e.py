"""End to end: `dvc repro` runs all stages on a tiny generated export; a second repro changes nothing; none of the
fake PHI the generator planted is in any output, log line or MLflow param/tag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

@pytest.fixture(scope="module")
def repro(tiny_pipeline) -> dict:
    """The session's tiny pipeline (tests/pipeline/conftest.py): `dvc repro`, then `dvc status` and the summary."""
    return {"project": tiny_pipeline.project, "first": tiny_pipeline.repro_log, "status": tiny_pipeline.status_log,
            "summary": tiny_pipeline.summary_log}


def test_every_stage_ran_and_wrote_its_outputs(repro):
    project = repro["project"]
    for stage in ("generate", "ingest", "validate", "preprocess", "augment", "train@paper_cnn", "evaluate",
                  "leakage", "report", "register", "package"):
        assert f"Running stage '{stage}'" in repro["first"]
    ingest = json.loads((project / "data/ingested/ingest.json").read_text())
    assert ingest["files_seen"] == 4 * 3 * 4 and ingest["quarantined"] == 0
    assert json.loads((project / "reports/validate/result.json").read_text())["success"] is True
    assert (project / "reports/validate/data_docs/index.html").is_file()
    assert (project / "reports/augment/preview.png").stat().st_size > 1000
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())["paper_cnn"]
    assert metrics["test_images"] == len(split_groups(project, "test"))
    assert metrics["macro_f1"] == pytest.approx(recomputed_macro_f1(project, "paper_cnn"))  # what its predictions score
    series = metrics["series"]  # one verdict per test series (one series per generated patient)
    assert series["pooling"] == "mean" and series["series"] == len(set(split_groups(project, "test")))
    assert series["macro_f1_ci"][0] <= series["macro_f1"] <= series["macro_f1_ci"][1]
    probabilities = (project / "reports/predictions/probabilities.csv").read_text().splitlines()
    assert len(probabilities) == 1 + metrics["test_images"] + len(split_groups(project, "val"))  # val + test slices
    assert set(json.loads((project / "reports/predictions/intervals.json").read_text())["paper_cnn"]) == {
        "slice", "series"}
    assert (project / "reports/evaluate/plots/confusion_paper_cnn.png").is_file()


def recomputed_macro_f1(project: Path, candidate: str) -> float:
    """macro-F1 recomputed from evaluate's written test probabilities (every class counted)."""
    import pandas as pd
    from sklearn.metrics import f1_score

    classes = ["Normal", "Cyst", "Tumor", "Stone"]
    rows = pd.read_csv(project / "reports/predictions/probabilities.csv")
    rows = rows[(rows["candidate"] == candidate) & (rows["split"] == "test")]
    predicted = rows[[f"p_{c}" for c in classes]].to_numpy().argmax(axis=1)
    truth = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return float(f1_score(truth, predicted, labels=range(4), average="macro", zero_division=0))


def split_groups(project: Path, split: str) -> list[str]:
    import pandas as pd

    table = pd.read_csv(project / "data/prepared/split.csv", dtype=str)
    return table.loc[table["split"] == split, "group"].tolist()


def test_report_holds_every_figure_and_the_honest_vs_leaky_numbers(repro):
    project = repro["project"]
    html = (project / "reports/report/report.html").read_text()
    for caption in ("Images per class and split", "Group size distribution", "Sample test images per class",
                    "Augmented training samples", "training and validation curves", "confusion matrix",
                    "metrics with 95% confidence intervals", "reliability diagram", "Grad-CAM overlays",
                    "Leakage gap", "Metrics per candidate"):
        assert caption in html, caption
    assert "figure missing" not in html and "Per study" in html and "bootstrap over series" in html
    assert html.count("data:image/png;base64,") >= 10  # self-contained
    leakage = json.loads((project / "reports/leakage/leakage.json").read_text())
    assert leakage["random_split"]["groups_shared_with_test"] > 0  # the random split really leaks
    report = json.loads((project / "reports/report/report.json").read_text())["candidates"]["paper_cnn"]
    ci = report["ci95"]["macro_f1"]
    assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert report["temperature"] > 0 and 0 <= report["ece_after"] <= 1


def test_split_is_by_patient(repro):
    import pandas as pd

    split = pd.read_csv(repro["project"] / "data/prepared/split.csv")
    assert split["group"].str.startswith("p-").all(), "DICOM exports must group by the patient hash"
    assert (split.groupby("group")["split"].nunique() == 1).all()
    assert split["group"].nunique() == 4 * 3


def test_champion_registered_and_bento_built(repro):
    from mlflow import MlflowClient

    project = repro["project"]
    registration = json.loads((project / "reports/register/registration.json").read_text())
    assert registration["gate_passed"] and registration["champion_version"] == 1
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    champion = client.get_model_version_by_alias("kidney-ct-classifier", "champion")
    assert champion.tags["classes"] == json.dumps(["Normal", "Cyst", "Tumor", "Stone"])
    card = (project / "reports/register/model_card.md").read_text()
    assert "95% CI" in card and "CI not yet computed" not in card  # CIs by bootstrap over test groups
    from importlib.metadata import version

    logged = list((project / "mlartifacts").rglob("requirements.txt"))  # pinned by train, not inferred by MLflow
    assert logged and all(f"tensorflow=={version('tensorflow')}" in path.read_text().split() for path in logged)
    bento = json.loads((project / "reports/package/bento.json").read_text())
    assert bento["bento_tag"].startswith("kidney_ct_classifier:")
    assert (project / ".bentoml" / "bentos").is_dir()


def test_no_planted_phi_in_any_output_log_line_or_mlflow_text(repro):
    """Every file the stages wrote (store, manifests, Data Docs, arrays, MLflow database and artifacts, report,
    card, Bento), the repro log and every MLflow param and tag: none holds a value `generate` planted. (The same on
    an S3 store and a DICOMweb pull: test_dag_services; every DICOM PS3.15 E.1-1 attribute: test_phi_audit.)"""
    import yaml

    from components.common.params import GenerateParams
    from tests.phi import files_under, find_phi, mlflow_texts, planted_phi

    project = repro["project"]
    raw = yaml.safe_load((project / "params.yaml").read_text())
    phi = planted_phi(GenerateParams(**raw["generate"]), raw["classes"])
    export = project / raw["paths"]["generated_export"]
    assert find_phi(files_under(export), phi), "the scan must see the PHI planted in the source export"
    # the export itself, DVC's cache of it, git's objects and the code are no outputs
    sources = [export, project / ".dvc", project / ".git", *(project / name for name in ("components", "tests", "docs"))]
    outputs = list(files_under(project, skip=sources))
    names = {Path(where).name for where, _ in outputs}
    assert {"manifest.csv", "mlruns.db", "report.html", "bento.json"} <= names, "the scan would miss an output"
    assert sum("/store/images/" in where for where, _ in outputs) == 4 * 3 * 4
    texts = mlflow_texts(f"sqlite:///{project / 'mlruns.db'}")
    assert texts, "train logged no MLflow params"
    log_lines = [(f"log line {n}", line.encode()) for n, line in enumerate(repro["first"].splitlines())]
    assert find_phi(outputs + texts + log_lines, phi) == []


def test_second_repro_is_unchanged_and_summary_points_at_outputs(repro):
    assert "Data and pipelines are up to date" in repro["status"], repro["status"]
    assert "champion is v1" in repro["summary"]

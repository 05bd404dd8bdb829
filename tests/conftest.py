"""Shared pytest fixtures. Keep each section small and owned by the stage that needs it."""

from __future__ import annotations

from pathlib import Path

import pytest

# --- MLflow: each test keeps its own tracking store ----------------------------------------------
MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(scope="session")
def session_mlflow_uris() -> dict[str, str]:
    """MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI as the suite found them (unset on CI)."""
    import os

    return {name: os.environ[name] for name in MLFLOW_URI_VARIABLES if name in os.environ}


def reset_mlflow_uris(values: dict[str, str]) -> None:
    """Forget any store a test pointed mlflow at: its global tracking/registry URIs and the variables.

    mlflow.set_tracking_uri / set_registry_uri write a global and export a variable (set_tracking_uri
    skips the variable when the global already equals the URI it is given), and the stages read the
    variable before params (components/common/tracking.py): restoring the variable alone let a later
    `set_tracking_uri(previous)` (tests/registry_support.py) re-export an old test's store, and a
    later test's runs landed there.
    """
    import os
    import sys

    if "mlflow" in sys.modules:
        mlflow = sys.modules["mlflow"]
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for name in MLFLOW_URI_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(values)


@pytest.fixture(autouse=True)
def mlflow_uris_stay_in_their_test(session_mlflow_uris):
    """Every test starts and ends with the suite's own MLflow variables and no global mlflow store.

    Reset before as well as after: a module-scoped fixture is set up before this one.
    """
    reset_mlflow_uris(session_mlflow_uris)
    yield
    reset_mlflow_uris(session_mlflow_uris)


# --- generate/ingest: a tiny generated PACS export -----------------------------------------------
TINY_EXPORT_CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]


def write_tiny_export(folder: Path, patients_per_class: int = 2, slices_per_patient: int = 2,
                      matrix: int = 64, seed: int = 3) -> Path:
    """Write a tiny generated export (<Class>/study-*/IM*.dcm, 64x64 CT DICOM by default) into `folder`."""
    from components.common.params import GenerateParams
    from components.generate.core import dicom_bytes, generate_export

    settings = GenerateParams(seed=seed, patients_per_class=patients_per_class,
                              slices_per_patient=slices_per_patient, matrix=matrix)
    for item in generate_export(settings, TINY_EXPORT_CLASSES):
        path = folder / item.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(dicom_bytes(item.dataset))
    return folder


@pytest.fixture
def tiny_export(tmp_path: Path) -> Path:
    """tmp_path/export: 4 classes x 2 patients x 2 slices = 16 DICOM files of 64x64 pixels."""
    return write_tiny_export(tmp_path / "export")
# --- end generate/ingest ---------------------------------------------------------------------------


# --- order and grouping for the two xdist workers ------------------------------------------------
# `make test` runs two pytest-xdist workers (--dist loadfile --no-loadscope-reorder). Each file is one work unit
# (its module fixtures are built once), except the files that read the session's tiny pipeline
# (tests/pipeline/conftest.py), which form one unit so that one worker builds it and reads it, rather than the
# other waiting on its lock. Units go out in collection order, the longest first (longest processing time first),
# so that none of them starts last and leaves the other worker idle. Only order and placement change.
LONGEST_FIRST = ("test_dag_airflow_server.py", "test_profile_search_e2e.py", "test_monitor_e2e.py")
SHARED_PIPELINE_FILES = ("test_dag_airflow_server.py", "test_gate_refuses_crippled.py", "test_pipeline_e2e.py",
                         "test_quiet_output.py")


def work_unit(nodeid: str) -> str:
    """The xdist work unit of a test: its file, or one unit for the files that read the shared tiny pipeline."""
    path = nodeid.split("::", 1)[0]
    return "shared tiny pipeline" if Path(path).name in SHARED_PIPELINE_FILES else path


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's per-file scheduling with `work_unit` as the file (its loadgroup marks do not reach pytest 9's node
    ids: xdist 3.8 sets `item._nodeid`, which pytest 9 no longer reads)."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return FileScheduling(config, log)


def schedule_rank(item: pytest.Item) -> int:
    """The known longest files (in LONGEST_FIRST's order), then whole-pipeline tests, slow ones, the rest."""
    name = item.path.name
    if name in LONGEST_FIRST:
        return LONGEST_FIRST.index(name)
    marks = {mark.name for mark in item.iter_markers()}
    return len(LONGEST_FIRST) + (0 if "e2e" in marks else 1 if "slow" in marks else 2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Sort whole files by their earliest test's rank (the shared pipeline's readers side by side); refuse a reader
    of the shared pipeline that SHARED_PIPELINE_FILES does not name (it would wait on the other worker's build)."""
    readers = {item.path.name for item in items if "tiny_pipeline" in getattr(item, "fixturenames", ())}
    if not readers <= set(SHARED_PIPELINE_FILES):
        raise pytest.UsageError(f"{sorted(readers - set(SHARED_PIPELINE_FILES))} read the tiny_pipeline fixture: "
                                "add them to SHARED_PIPELINE_FILES in tests/conftest.py")
    file_rank: dict[Path, int] = {}
    for item in items:
        file_rank[item.path] = min(file_rank.get(item.path, 99), schedule_rank(item))
    items.sort(key=lambda item: (file_rank[item.path], item.path.name not in SHARED_PIPELINE_FILES))

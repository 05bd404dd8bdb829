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
# (its module fixtures are built once), except the files that share a session fixture of tests/pipeline/conftest.py
# (the tiny pipeline, the served Bento), which form one unit each so that one worker builds it and reads it, rather
# than the other waiting on its lock or building it again. Units go out in collection order, the longest first
# (longest processing time first), so that none of them starts last and leaves the other worker idle. Only order and
# placement change.
LONGEST_FIRST = ("test_dag_airflow_server.py", "test_profile_search_e2e.py", "test_monitor_e2e.py")
SHARED_FIXTURE_FILES = {
    "tiny_pipeline": ("test_dag_airflow_server.py", "test_gate_refuses_crippled.py", "test_pipeline_e2e.py",
                      "test_quiet_output.py"),
    "served": ("test_serving.py", "test_page_browser.py"),
}


def work_unit(nodeid: str) -> str:
    """The xdist work unit of a test: its file, or the session fixture its file shares with others."""
    path = nodeid.split("::", 1)[0]
    return next((f"shared {fixture}" for fixture, files in SHARED_FIXTURE_FILES.items() if Path(path).name in files),
                path)


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
    """Sort work units by their earliest test's rank (a unit's files side by side); refuse a file that uses a shared
    session fixture that SHARED_FIXTURE_FILES does not list for it (it would wait on, or rebuild, the other's)."""
    for fixture, files in SHARED_FIXTURE_FILES.items():
        readers = {item.path.name for item in items if fixture in getattr(item, "fixturenames", ())}
        if not readers <= set(files):
            raise pytest.UsageError(f"{sorted(readers - set(files))} use the {fixture} fixture: "
                                    "add them to SHARED_FIXTURE_FILES in tests/conftest.py")
    unit_rank: dict[str, int] = {}
    for item in items:
        unit = work_unit(item.nodeid)
        unit_rank[unit] = min(unit_rank.get(unit, 99), schedule_rank(item))
    items.sort(key=lambda item: (unit_rank[work_unit(item.nodeid)], work_unit(item.nodeid)))

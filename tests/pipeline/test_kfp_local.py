"""The Kubeflow pipeline executed by KFP's local runner (`make kfp-local`'s command), on the tiny profile:

1. every stage step executes once, each after every stage upstream of it in dvc.yaml's graph; the champion is
   registered in the workspace's MLflow registry and a Bento built;
2. the same params and data again: every cached step is served from KFP's local cache (only the uncached
   generate, ingest, register and package run, and the fingerprints), nothing is registered twice;
3. a change of `report.gradcam_per_class`: only `report` reruns among the cached steps.

Slow (minutes). Per-step times are printed (-s), not asserted (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.common.stage_graph import ancestors, load_stage_graph
from tests.tiny import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIN = Path(sys.executable).parent
UNCACHED = {"generate", "ingest", "register", "package"}


def kfp_local(workspace: Path) -> tuple[list[dict], set[str], str]:
    """One `python -m pipelines.local` run: (the steps it executed, the steps served cached, its output)."""
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2",
           "KIDNEY_CT_SALT": "kfp-local-salt", "HOME": str(workspace), "MLFLOW_ENABLE_TELEMETRY": "false",
           "GX_ANALYTICS_ENABLED": "False", "DO_NOT_TRACK": "1"}
    done = subprocess.run([str(BIN / "python"), "-m", "pipelines.local", "--params", "params.yaml",
                           "--workspace", "."], cwd=workspace, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    summary = done.stdout[done.stdout.index("kfp-local: steps executed"):]
    executed = [line.split() for line in summary.splitlines()[1:] if line.startswith("  ")]
    cached_line = next(line for line in summary.splitlines() if line.startswith("kfp-local: served from"))
    cached = {name.strip() for name in cached_line.split(":", 2)[2].split(",") if name.strip() != "none"}
    journal = [json.loads(line) for line in (workspace / ".kfp-local" / "steps.jsonl").read_text().splitlines()]
    steps = journal[-len(executed):] if executed else []
    assert [entry["step"].split() for entry in steps] == [row[:-2] for row in executed]
    return steps, cached, output


def stage_of(step: str) -> str:
    return step.split()[0] if not step.startswith("fingerprint") else "fingerprint"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kfp-local")
    written = subprocess.run([str(BIN / "python"), "-m", "components.profile", "tiny", "--write",
                              str(folder / "params.yaml")], cwd=REPO, capture_output=True, text=True)
    assert written.returncode == 0, written.stderr
    return folder


def test_the_pipeline_runs_locally_then_from_the_cache_then_only_what_a_change_feeds(workspace: Path) -> None:
    graph = load_stage_graph(REPO / "dvc.yaml", workspace / "params.yaml")
    before = ancestors(graph)

    # 1. Every stage executes, in graph order; a champion registered, a Bento built.
    steps, cached, _ = kfp_local(workspace)
    print("first run:", [(entry["step"], entry["seconds"]) for entry in steps])
    stages = [stage_of(entry["step"]) for entry in steps if stage_of(entry["step"]) != "fingerprint"]
    assert sorted(stages) == sorted(graph) and not cached  # one train candidate in the tiny profile
    for position, stage in enumerate(stages):
        assert before[stage] <= set(stages[:position]), f"{stage} ran before {before[stage] - set(stages[:position])}"
    registration = json.loads((workspace / "reports" / "register" / "registration.json").read_text())
    assert registration["registered"] and registration["version"] == 1, registration
    bento = json.loads((workspace / "reports" / "package" / "bento.json").read_text())
    assert (workspace / ".bentoml" / "bentos").is_dir() and bento.get("bento_tag"), bento

    # 2. Same params, same data: every cached step comes from KFP's cache; register finds its version.
    steps, cached, output = kfp_local(workspace)
    print("second run:", [(entry["step"], entry["seconds"]) for entry in steps])
    assert {stage_of(entry["step"]) for entry in steps} == UNCACHED | {"fingerprint"}
    assert cached == {("train paper_cnn" if stage == "train" else stage) for stage in graph} - UNCACHED
    registration = json.loads((workspace / "reports" / "register" / "registration.json").read_text())
    assert registration["version"] == 1, registration  # the same model: no second version

    # 3. A report setting changes: report reruns, every other cached step stays cached.
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["report"]["gradcam_per_class"] = 2
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    steps, cached, _ = kfp_local(workspace)
    print("after a report change:", [(entry["step"], entry["seconds"]) for entry in steps])
    assert {stage_of(entry["step"]) for entry in steps} - {"fingerprint"} == UNCACHED | {"report"}
    assert "report" not in cached and "evaluate" in cached and "train paper_cnn" in cached

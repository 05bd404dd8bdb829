"""`make run`'s output is for a person: in the session's tiny `make run` (`dvc repro` with DVC's autostage, no
terminal attached, tests/pipeline/conftest.py), every stage of dvc.yaml prints its start and its `done in` line and
none of the known noise (TensorFlow/CUDA/absl start-up lines, carriage-return progress bars, DVC's `git add
dvc.lock` hint); and the Makefile's DVC setting keeps that hint out of `dvc repro`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.common.stage_graph import resolve, upstream_stages
from tests.tiny import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIN = Path(sys.executable).parent
NOISE = {
    "CUDA probe": re.compile(r"cuInit|CUDA error|cuda drivers", re.I),
    "absl banner": re.compile(r"absl::InitializeLog"),
    "oneDNN": re.compile(r"oneDNN|cpu_feature_guard"),
    "absl error line": re.compile(r"^[EF]\d{4} \d\d:\d\d:\d+\.\d+ "),
    "carriage return": re.compile(r"\r"),
    "DVC's git hint": re.compile(r"git add .*dvc\.lock|To track the changes with git"),
}


def stage_commands(params: dict) -> list[tuple[str, str]]:
    """(stage, command) for every stage of dvc.yaml in an order DVC may run them (foreach stages expanded)."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    upstream, done, ordered = upstream_stages(dvc, params), set(), []
    while len(done) < len(upstream):
        ready = [name for name in upstream if name not in done and upstream[name] <= done]
        assert ready, f"no stage can run after {sorted(done)}"
        done.add(ready[0])
        spec = dvc["stages"][ready[0]]
        if "foreach" in spec:
            items = params[spec["foreach"].strip("${} ").split(".")[0]]
            for part in spec["foreach"].strip("${} ").split(".")[1:]:
                items = items[part]
            ordered += [(f"{ready[0]}@{key}", resolve(spec["do"]["cmd"], {**params, "key": key})) for key in items]
        else:
            ordered.append((ready[0], resolve(spec["cmd"], params)))
    return ordered


def noise_in(text: str) -> list[str]:
    return [f"{kind}: {line!r}" for line in text.split("\n") for kind, pattern in NOISE.items() if pattern.search(line)]


def stage_logs(repro_log: str) -> dict[str, str]:
    """`dvc repro`'s log cut at its `Running stage 'NAME':` lines: stage -> what it printed."""
    parts = re.split(r"^Running stage '([^']+)':$", repro_log, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.fixture(scope="module")
def runs(tiny_pipeline) -> dict:
    """Every stage's output in the session's tiny `make run` (tests/pipeline/conftest.py: `dvc repro`, DVC's
    autostage on, stdout and stderr in one pipe, no terminal, none of the caller's TF/MLflow settings)."""
    logs = stage_logs(tiny_pipeline.repro_log)
    expected = [stage for stage, _ in stage_commands(yaml.safe_load((tiny_pipeline.project / "params.yaml").read_text()))]
    assert sorted(logs) == sorted(expected), tiny_pipeline.repro_log[-3000:]
    return {stage: {"output": output} for stage, output in logs.items()}


def test_no_stage_prints_known_noise(runs):
    found = {stage: noise_in(run["output"]) for stage, run in runs.items()}
    assert not any(found.values()), {stage: lines for stage, lines in found.items() if lines}


def test_dvc_repro_as_make_run_runs_it_prints_no_noise_around_the_stages(tiny_pipeline):
    assert not noise_in(tiny_pipeline.repro_log), noise_in(tiny_pipeline.repro_log)


def test_every_stage_prints_its_start_and_its_time(runs):
    for stage, run in runs.items():
        name = stage.split("@")[0]
        lines = run["output"].splitlines()
        started = [i for i, line in enumerate(lines) if re.fullmatch(rf"\d\d:\d\d:\d\d \[{name}\] started", line)]
        ended = [i for i, line in enumerate(lines) if re.fullmatch(rf"\d\d:\d\d:\d\d \[{name}\] done in \d+\.\d s", line)]
        assert len(started) == 1 and len(ended) == 1 and started[0] < ended[0], f"{stage}:\n{run['output'][-3000:]}"


def test_progress_in_a_log_is_plain_lines(runs):
    ingest = runs["ingest"]["output"]
    assert re.search(r"\[ingest\] ingest: started, 48 files$", ingest, re.M), ingest
    assert re.search(r"\[ingest\] ingest: finished 48 files in \d+\.\d s$", ingest, re.M), ingest
    assert "it/s]" not in ingest and "file/s]" not in ingest  # no tqdm bar


def test_make_runs_dvc_repro_without_the_git_add_hint(tmp_path):
    """The Makefile's `dvc config` lines before `dvc repro` (make -n run), applied to a one-stage DVC project."""
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("needs make and git")
    planned = subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert planned.returncode == 0, planned.stderr
    settings = [line for line in planned.stdout.splitlines() if re.search(r"\bdvc config\b", line)]
    assert settings, f"make run sets no DVC config:\n{planned.stdout}"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=tmp_path, check=True, env=env)
    for line in settings:
        subprocess.run(line.replace(".venv/bin/", f"{BIN}/"), shell=True, cwd=tmp_path, check=True, env=env)
    (tmp_path / "dvc.yaml").write_text("stages:\n  hello:\n    cmd: python -c \"open('out.txt', 'w').write('hi')\"\n"
                                       "    outs:\n      - out.txt\n")
    done = subprocess.run([str(BIN / "dvc"), "repro"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, done.stdout
    assert not noise_in(done.stdout), done.stdout
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=tmp_path, capture_output=True, text=True)
    assert "dvc.lock" in staged.stdout.split(), "autostage: DVC staged dvc.lock itself"
    assert not (tmp_path / ".dvc/config").read_text().count("autostage"), "the committed config is left alone"

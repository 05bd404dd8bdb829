"""components.common.dvc_run on a toy DVC repo: runs a changed stage, skips an unchanged one,
pushes to the remote, commits dvc.lock, maps a stage's refusal to exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DVC_YAML = """stages:
  double:
    cmd: python -c "import yaml, sys; p = yaml.safe_load(open('params.yaml'))['toy']; sys.exit(p['code']) if p['code'] else open('out.txt', 'w').write(str(2 * p['n']))"
    params: [toy]
    outs: [out.txt]
"""


def sh(cmd: list[str], cwd: Path) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def toy_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("toy: {n: 1, code: 0}\n")
    sh(["git", "init", "-q"], repo)
    sh([str(Path(sys.executable).parent / "dvc"), "init", "-q"], repo)
    sh([str(Path(sys.executable).parent / "dvc"), "remote", "add", "-d", "store", str(tmp_path / "remote")], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)
    return repo


def dvc_run(repo: Path, *args: str) -> tuple[int, dict | None, str]:
    result = repo.parent / "result.json"
    result.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    done = subprocess.run([sys.executable, "-m", "components.common.dvc_run", *args, "--result", str(result),
                           "--message", "run-1"], cwd=repo, env={**env, "PYTHONPATH": str(Path.cwd())},
                          capture_output=True, text=True, timeout=120)
    return done.returncode, json.loads(result.read_text()) if result.exists() else None, done.stdout + done.stderr


def test_runs_pushes_commits_then_skips_an_unchanged_stage(toy_repo: Path, tmp_path: Path) -> None:
    code, first, output = dvc_run(toy_repo, "double")
    assert code == 0, output
    assert first["ran"] is True and first["pushed"] == 1 and first["commit"]
    assert (toy_repo / "out.txt").read_text() == "2"
    assert "run-1: double" in sh(["git", "log", "-1", "--format=%s"], toy_repo)
    assert "out.txt" in sh(["git", "show", "HEAD:dvc.lock"], toy_repo)
    assert sum(1 for p in (tmp_path / "remote").rglob("*") if p.is_file()) == 1

    code, again, output = dvc_run(toy_repo, "double")
    assert code == 0, output
    assert again == {"stage": "double", "ran": False, "pushed": 0, "commit": None, "params_changed": False}
    assert "unchanged since dvc.lock" in output


def test_a_run_params_file_replaces_params_yaml_and_reruns(toy_repo: Path, tmp_path: Path) -> None:
    dvc_run(toy_repo, "double")
    other = tmp_path / "run-params.yaml"
    other.write_text("toy: {n: 5, code: 0}\n")
    code, result, output = dvc_run(toy_repo, "double", "--params", str(other))
    assert code == 0, output
    assert result["ran"] and result["params_changed"] and result["commit"]
    assert (toy_repo / "out.txt").read_text() == "10"
    assert "n: 5" in sh(["git", "show", "HEAD:params.yaml"], toy_repo)


def test_a_refusing_stage_exits_2_and_commits_nothing(toy_repo: Path, tmp_path: Path) -> None:
    (toy_repo / "params.yaml").write_text("toy: {n: 1, code: 2}\n")
    head = sh(["git", "rev-parse", "HEAD"], toy_repo)
    code, result, output = dvc_run(toy_repo, "double")
    assert code == 2 and result is None
    assert "exit code 2" in output
    assert sh(["git", "rev-parse", "HEAD"], toy_repo) == head


def test_outside_a_dvc_repo_it_refuses_with_a_reason(tmp_path: Path) -> None:
    code, _, output = dvc_run(tmp_path, "double")
    assert code == 2 and "not a DVC repo" in output


def test_a_retry_after_a_crash_past_the_stage_pushes_and_commits_without_rerunning(toy_repo: Path,
                                                                                  tmp_path: Path) -> None:
    # The first try ran the stage (dvc.lock written) and died before push and commit.
    sh([str(Path(sys.executable).parent / "dvc"), "repro", "--single-item", "double"], toy_repo)
    (toy_repo / "out.txt").touch()  # a rerun would rewrite it; the retry must leave it alone
    mtime = (toy_repo / "out.txt").stat().st_mtime_ns
    code, retry, output = dvc_run(toy_repo, "double")
    assert code == 0, output
    assert retry["ran"] is False and retry["pushed"] == 1 and retry["commit"]
    assert (toy_repo / "out.txt").stat().st_mtime_ns == mtime
    assert sum(1 for p in (tmp_path / "remote").rglob("*") if p.is_file()) == 1


def test_status_lists_what_changed_and_when_nothing_did_pushes_and_exits_with_the_skip_code(
        toy_repo: Path, tmp_path: Path) -> None:
    code, found, output = dvc_run(toy_repo, "--status", "--skip-exit-code", "99")
    assert code == 0 and found["changed"] == ["double"] and found["pushed"] is None, output  # never ran: changed

    dvc_run(toy_repo, "double")
    (tmp_path / "remote").rename(tmp_path / "remote-before")  # an empty remote: the check fills it
    code, found, output = dvc_run(toy_repo, "--status", "--skip-exit-code", "99")
    assert code == 99 and found == {"changed": [], "pushed": 1, "params_changed": False}, output
    assert sum(1 for p in (tmp_path / "remote").rglob("*") if p.is_file()) == 1

    other = tmp_path / "run-params.yaml"
    other.write_text("toy: {n: 3, code: 0}\n")  # the run's params file differs: the stage that reads it changed
    code, found, output = dvc_run(toy_repo, "--status", "--params", str(other), "--skip-exit-code", "99")
    assert code == 0 and found == {"changed": ["double"], "pushed": None, "params_changed": True}, output


def test_status_and_a_stage_name_are_exclusive(toy_repo: Path) -> None:
    code, _, output = dvc_run(toy_repo, "double", "--status")
    assert code == 2 and "name a STAGE, or --status" in output

"""The whole-run benchmark's pieces (`make bench-run`): stage times from DVC's output, the scratch tree, the
child's environment, what the run produced, the table."""

import json
import os
import subprocess
import sys
import time

import pytest

from components import run_bench
from components.run_bench import StageTime, child_env, outcome, report_table, run_timed, scratch_tree, stage_times

REPRO_OUTPUT = [
    (0.4, "Running stage 'generate':"),
    (0.5, "> python -m components.generate"),
    (15.9, "19:52:38 [generate] done in 15.5 s"),
    (16.2, "Running stage 'train@compact_cnn':"),
    (170.0, "19:56:04 [train] done in 152.0 s"),
    (171.0, "Running stage 'evaluate':"),
    (175.0, "19:56:18 [evaluate] failed after 3.1 s: no model"),
]


def test_each_stage_runs_from_its_start_line_to_the_next_and_keeps_the_seconds_it_logged():
    rows = stage_times(REPRO_OUTPUT, end=176.0)
    assert rows == [StageTime("generate", 15.8, 15.5), StageTime("train@compact_cnn", 154.8, 152.0),
                    StageTime("evaluate", 5.0, None)]  # a stage that logged no "done in" failed


def test_no_start_line_means_no_stage():
    assert stage_times([(1.0, "ERROR: failed to reproduce 'dvc.yaml': not a git repository")], end=2.0) == []


def test_the_scratch_tree_holds_the_commit_and_nothing_else(tmp_path):
    repo, dest = tmp_path / "repo", tmp_path / "scratch"
    repo.mkdir(), dest.mkdir()
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=repo,  # noqa: E731
                                    check=True, capture_output=True)
    git("init", "-q")
    (repo / "dvc.yaml").write_text("stages: {}\n")
    git("add", "dvc.yaml"), git("commit", "-qm", "one")
    (repo / "dvc.yaml").write_text("edited, not committed\n")
    (repo / "data.npy").write_text("an output, never committed")
    scratch_tree(repo, "HEAD", dest)
    assert (dest / "dvc.yaml").read_text() == "stages: {}\n"
    assert not (dest / "data.npy").exists()
    assert (dest / ".git").is_dir()  # DVC refuses a folder outside git
    with pytest.raises(subprocess.CalledProcessError):
        scratch_tree(repo, "no-such-ref", tmp_path)


def test_the_child_uses_the_venv_and_its_own_stores(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team-server:5000")
    monkeypatch.setenv("BENTOML_HOME", "/shared/bentoml")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX")
    env = child_env(tmp_path / "bin", None)
    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "bin")
    assert "MLFLOW_TRACKING_URI" not in env and "BENTOML_HOME" not in env
    assert "ONEDNN_MAX_CPU_ISA" not in env  # the caller's cap is not silently kept
    assert child_env(tmp_path / "bin", "AVX2")["ONEDNN_MAX_CPU_ISA"] == "AVX2"


def test_every_output_line_is_stamped_in_order():
    seen = []
    command = [sys.executable, "-c", "import time; print('a', flush=True); time.sleep(0.3); print('b')"]
    events, rc = run_timed(command, run_bench.Path.cwd(), dict(os.environ), time.monotonic(), seen.append)
    assert rc == 0 and [line for _, line in events] == seen == ["a", "b"]
    assert events[1][0] - events[0][0] >= 0.25


def test_outcome_reads_the_fits_and_the_gate_and_the_table_shows_a_failed_gate(tmp_path):
    (tmp_path / "models" / "compact_cnn").mkdir(parents=True)
    (tmp_path / "models" / "compact_cnn" / "run.json").write_text(json.dumps(
        {"candidate": "compact_cnn", "training_seconds": 98.7, "best_epoch": 27}))
    (tmp_path / "reports" / "evaluate").mkdir(parents=True)
    (tmp_path / "reports" / "evaluate" / "verdict.json").write_text(json.dumps(
        {"winner": None, "candidates": {"compact_cnn": {"passed": False, "gate_metric": 0.8812}}}))
    produced = outcome(tmp_path)
    assert produced == {"fits": {"compact_cnn": {"fit_s": 98.7, "best_epoch": 27}},
                        "gate": {"compact_cnn": {"passed": False, "gate_metric": 0.881}}, "winner": None}
    table = report_table({"stages": [{"stage": "generate", "wall_s": 15.8, "own_s": 15.5},
                                     {"stage": "summary", "wall_s": 2.0, "own_s": None}],
                          "total_s": 17.8, "host": "2 cores, X, AVX-512: no", **produced})
    assert "| generate | 15.8 | 15.5 |" in table and "| summary | 2.0 | - |" in table
    assert "**17.8**" in table and "compact_cnn 0.881 (FAILED)" in table and "fit 99 s, best epoch 27" in table
    assert outcome(tmp_path / "nothing") == {"fits": {}, "gate": {}, "winner": None}


def test_it_refuses_to_run_outside_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        run_bench.main([])
    assert stopped.value.code == 2


def test_it_refuses_a_python_without_dvc_beside_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_bench.sys, "executable", str(tmp_path / "bin" / "python"))
    with pytest.raises(SystemExit) as stopped:
        run_bench.main([])
    assert stopped.value.code == 2 and "run it with the project's venv" in capsys.readouterr().err

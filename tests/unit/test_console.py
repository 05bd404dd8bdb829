"""components.common.console: progress as plain lines off a terminal, TensorFlow's import noise filtered."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from components.common import console
from components.common.console import LineProgress, below_tf_log_level, progress, quiet_runtime
from tests.tiny import REPO


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kidney_ct.progress"]


def test_off_a_terminal_progress_is_a_line_at_start_every_tenth_and_end(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    caplog.set_level(logging.INFO, logger="kidney_ct.progress")
    clock = Clock()
    bar = progress(range(50), desc="ingest", unit="file")
    assert isinstance(bar, LineProgress)
    bar.clock = clock
    seen = []
    for item in bar:
        clock.now += 0.25
        seen.append(item)
    assert seen == list(range(50))
    lines = messages(caplog)
    assert lines[0] == "ingest: started, 50 files"
    assert lines[1] == "ingest: 5/50 files (10%), 1.2 s"
    assert [line.split(" (")[1].split(")")[0] for line in lines[1:-1]] == [f"{p}%" for p in range(10, 100, 10)]
    assert lines[-1] == "ingest: finished 50 files in 12.5 s"
    assert not any("\r" in line for line in lines)


def test_work_done_in_a_second_gets_only_its_start_and_end(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="kidney_ct.progress")
    clock = Clock()
    bar = LineProgress(range(48), desc="generate", unit="file", clock=clock)
    for _ in bar:
        clock.now += 0.02
    assert messages(caplog) == ["generate: started, 48 files", "generate: finished 48 files in 1.0 s"]


def test_slow_or_unsized_work_gets_a_line_every_30_seconds(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="kidney_ct.progress")
    clock = Clock()
    bar = LineProgress((i for i in range(10)), desc="wado-rs", unit="instance", clock=clock)
    for _ in bar:
        clock.now += 4.0
    lines = messages(caplog)
    assert lines[0] == "wado-rs: started"
    assert lines[1:-1] == ["wado-rs: 8 instances, 32.0 s"]  # the first update 30 s or more after the start
    assert lines[-1] == "wado-rs: finished 10 instances in 40.0 s"


def test_with_and_update_like_tqdm_and_disable_says_nothing(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="kidney_ct.progress")
    with progress(total=4, desc="wado-rs", unit="instance") as bar:
        for _ in range(4):
            bar.update()
    assert messages(caplog)[0] == "wado-rs: started, 4 instances"
    assert messages(caplog)[-1].startswith("wado-rs: finished 4 instances in ")
    caplog.clear()
    assert list(progress(range(3), desc="quiet", disable=True)) == [0, 1, 2]
    with progress(total=3, desc="quiet", disable=True) as bar:
        bar.update(3)
    assert messages(caplog) == []


def test_no_finished_line_when_the_loop_stops_early(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="kidney_ct.progress")
    for item in progress(range(10), desc="preprocess", unit="img"):
        if item == 2:
            break
    assert not any("finished" in line for line in messages(caplog))


def test_on_a_terminal_progress_is_tqdm(monkeypatch):
    from tqdm import tqdm

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress(range(3), desc="x", unit="img")
    assert isinstance(bar, tqdm) and list(bar) == [0, 1, 2]


@pytest.mark.parametrize(("line", "level", "hidden"), [
    ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n", 1, True),
    ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n", 0, False),
    ("I0000 00:00:1796369427.466952   13295 port.cc:153] oneDNN custom operations are on.\n", 1, True),
    ("I0000 00:00:1796369427.467357   13295 cudart_stub.cc:31] Could not find cuda drivers on your machine\n", 3, True),
    ("2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda\n", 2, True),
    ("W0000 00:00:1796369427.467357   13295 gpu_device.cc:2342] Cannot dlopen some GPU libraries.\n", 1, False),
    ("W0000 00:00:1796369427.467357   13295 gpu_device.cc:2342] Cannot dlopen some GPU libraries.\n", 2, True),
    ("E0000 00:00:1796369430.910846   13295 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n", 2, False),
    ("E0000 00:00:1796369430.910846   13295 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n", 3, True),
    ("F0000 00:00:1796369430.910846   13295 something.cc:1] Check failed\n", 3, False),
    ("Traceback (most recent call last):\n", 3, False),
    ("I don't look like absl] at all\n", 3, False),
])
def test_which_import_lines_the_level_hides(line, level, hidden):
    assert below_tf_log_level(line, level) is hidden


def test_quiet_runtime_sets_only_what_is_unset(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # its import hook goes with the test
    for name in ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(console, "gpu_present", lambda: False)
    quiet_runtime()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3" and os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    monkeypatch.setattr(console, "gpu_present", lambda: True)
    quiet_runtime()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"  # a GPU's warnings stay visible
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    quiet_runtime()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"  # the user's choice wins


def test_tensorflows_retracing_warning_is_dropped_and_no_other(monkeypatch, caplog):
    tensorflow_log = logging.getLogger("tensorflow")
    monkeypatch.setattr(tensorflow_log, "filters", [])  # the filter goes with the test
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    quiet_runtime()
    assert tensorflow_log.filters == []  # level 0: everything is shown
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    quiet_runtime()
    quiet_runtime()
    assert len(tensorflow_log.filters) == 1  # idempotent
    # TensorFlow's own text (tensorflow/python/eager/polymorphic_function/polymorphic_function.py)
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        tensorflow_log.warning("5 out of the last 11 calls to <function f at 0x7f> triggered tf.function retracing. "
                               "Tracing is expensive and the excessive number of tracings could be due to ...")
        tensorflow_log.warning("Model's `__init__()` arguments contain non-serializable objects.")
    assert [r.getMessage()[:5] for r in caplog.records] == ["Model"]


# A stand-in `tensorflow` that writes to file descriptor 2 at import, as TensorFlow's C++ code does.
FAKE_TENSORFLOW = '''
import os, sys
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"I0000 00:00:1796369427.466952   13295 port.cc:153] oneDNN custom operations are on.\\n")
os.write(2, b"I0000 00:00:1796369427.467357   13295 cudart_stub.cc:31] Could not find cuda drivers\\n")
os.write(2, b"W0000 00:00:1796369427.467357   13295 gpu_device.cc:2342] Cannot dlopen some GPU libraries.\\n")
print("a python warning during the import", file=sys.stderr)
os.write(2, b"E0000 00:00:1796369430.910846   13295 cuda_platform.cc:52] failed call to cuInit\\n")
VALUE = 42
'''


@pytest.mark.parametrize(("level", "expected"), [
    ("3", ["a python warning during the import"]),
    ("1", ["W0000", "a python warning during the import", "E0000"]),
    ("0", ["WARNING: All log messages", "I0000", "I0000", "W0000", "a python warning during the import", "E0000"]),
])
def test_the_tensorflow_import_is_filtered_to_the_level_and_nothing_else(tmp_path, level, expected):
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TENSORFLOW)
    script = textwrap.dedent("""
        import sys
        from components.common.console import quiet_runtime
        quiet_runtime()
        print("before", file=sys.stderr, flush=True)
        import tensorflow
        assert tensorflow.VALUE == 42 and "exec_module" not in vars(tensorflow.__loader__)
        print("after", file=sys.stderr, flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "TF_CPP_MIN_LOG_LEVEL": level}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "before" and lines[-1] == "after"
    assert [next((e for e in expected if line.startswith(e)), line) for line in lines[1:-1]] == expected

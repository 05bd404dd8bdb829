"""What a person reads: TensorFlow's start-up noise kept out, progress as a bar on a terminal and as plain lines in logs.

`quiet_runtime()` runs at every CLI edge (`run_stage` calls it) before anything imports TensorFlow; `progress()`
replaces direct `tqdm(...)` calls. See docs/development.md, "Output".
"""

from __future__ import annotations

import glob
import importlib.abc
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("kidney_ct.progress")

# TF_CPP_MIN_LOG_LEVEL where nothing has set it: 3 on a machine without an NVIDIA GPU (TF's C++ errors there are
# its failed CUDA probe, `failed call to cuInit`; a real failure still raises in Python); 1 where a GPU is
# present, so a GPU problem (`Cannot dlopen some GPU libraries`, a W line) stays visible.
CPU_ONLY_TF_LEVEL, GPU_TF_LEVEL = "3", "1"
# Lines TensorFlow writes while it is imported, before absl::InitializeLog(), and that TF_CPP_MIN_LOG_LEVEL does
# not filter (tensorflow/tensorflow#100442): an absl line "I0000 00:00:1796369427.466952   13295 port.cc:153] ..."
# or the older "2025-09-17 14:44:05.157831: I external/.../cudart_stub.cc:32] ...", and absl's banner.
_ABSL_LINE = re.compile(r"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) )\S+:\d+\] ")
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def gpu_present() -> bool:
    """An NVIDIA GPU (or its driver) is on this machine: a /dev/nvidia* device or nvidia-smi on PATH."""
    return bool(glob.glob("/dev/nvidia*")) or shutil.which("nvidia-smi") is not None


RETRACING_NOTICE = "triggered tf.function retracing"


class _DropRetracingNotice(logging.Filter):
    """Drops TensorFlow's 'N out of the last M calls ... triggered tf.function retracing' warning: Keras builds a new
    train function for each model, so a stage that trains several in one process (CV folds, an ensemble) trips it,
    and its advice (define the function outside the loop) does not apply. Every other TensorFlow warning passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return RETRACING_NOTICE not in record.getMessage()


def quiet_runtime() -> None:
    """Keep start-up noise of TensorFlow, CUDA and MLflow out of a stage's output; call before TensorFlow is imported.

    Only sets what is not set already (`TF_CPP_MIN_LOG_LEVEL=0 make run` shows everything), and only where no
    GPU is present does it hide TensorFlow's C++ errors. Drops TensorFlow's retracing warning (_DropRetracingNotice)
    unless the level is 0. Idempotent.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", GPU_TF_LEVEL if gpu_present() else CPU_ONLY_TF_LEVEL)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a finished bar per model download
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
    tensorflow_log = logging.getLogger("tensorflow")  # TensorFlow's Python logger, the same object once imported
    if tf_log_level() >= 1 and not any(isinstance(f, _DropRetracingNotice) for f in tensorflow_log.filters):
        tensorflow_log.addFilter(_DropRetracingNotice())


def tf_log_level() -> int:
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it (0 when unset or unreadable)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def below_tf_log_level(line: str, level: int) -> bool:
    """True for a TensorFlow/absl C++ log line (or absl's pre-init banner) that TF_CPP_MIN_LOG_LEVEL `level` hides."""
    if level < 1:
        return False
    if line.rstrip("\r\n") == _ABSL_BANNER:
        return True
    match = _ABSL_LINE.match(line)
    if not match:
        return False
    severity = _SEVERITY[match.group(1) or match.group(2)]
    return severity < min(level, 3)  # a fatal line is always shown


@contextmanager
def _stderr_filtered(drop: Callable[[str], bool]) -> Iterator[None]:
    """Capture file descriptor 2 (C++ code writes there directly) and write back every line that `drop` keeps."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    try:
        sink = tempfile.TemporaryFile()
        saved = os.dup(2)
    except OSError:  # no stderr to filter, or nowhere to hold it: unfiltered
        yield
        return
    os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        sink.seek(0)
        kept = [line for line in sink.read().decode(errors="replace").splitlines(keepends=True) if not drop(line)]
        sink.close()
        if kept:
            os.write(2, "".join(kept).encode())


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Import `tensorflow` once with the lines TF_CPP_MIN_LOG_LEVEL should have hidden filtered out of stderr.

    Everything else written during the import (a real error, a Python warning) is written back unchanged.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # one import; the finders after this one find the real spec
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module

        def exec_module(module: Any) -> None:
            level = tf_log_level()
            try:
                with _stderr_filtered(lambda line: below_tf_log_level(line, level)):
                    original(module)
            finally:
                del loader.exec_module  # back to the loader's own method

        try:
            loader.exec_module = exec_module
        except AttributeError:  # a loader that takes no attributes: import as is
            pass
        return spec


def on_terminal() -> bool:
    """stderr (where bars and logs go) is an interactive terminal."""
    stream = sys.stderr
    try:
        return bool(stream) and stream.isatty()
    except (AttributeError, ValueError):
        return False


def _plural(unit: str, n: int | None) -> str:
    if n == 1 or not unit:
        return unit
    return unit + ("es" if unit.endswith(("s", "ch", "sh", "x")) else "s")


class LineProgress:
    """tqdm's interface where no one watches: a log line at the start, about every `step` % (or every
    `every_s` seconds when the total is unknown or slow) but not within `min_s` of the last, and at the end;
    never a carriage return. Work done in a second or so gets just its start and end lines."""

    def __init__(self, iterable: Iterable | None = None, desc: str = "", total: int | None = None, unit: str = "it",
                 disable: bool = False, step: int = 10, every_s: float = 30.0, min_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.desc, self.total, self.unit, self.disable = iterable, desc, total, unit, disable
        self.step, self.every_s, self.min_s, self.clock = step, every_s, min_s, clock
        self.n = 0
        self._began: float | None = None
        self._last = 0.0
        self._next_percent = step
        self._closed = False

    def _start(self) -> None:
        if self._began is not None or self.disable:
            return
        self._began = self._last = self.clock()
        if self.total:
            log.info("%s: started, %d %s", self.desc, self.total, _plural(self.unit, self.total))
        else:
            log.info("%s: started", self.desc)

    def update(self, n: int = 1) -> None:
        if self.disable:
            return
        self._start()
        self.n += n
        now = self.clock()
        if self.total and self.n >= self.total:
            return  # the "finished" line says it
        since = now - self._last
        if not (since >= self.every_s or since >= self.min_s and self.total
                and 100 * self.n >= self._next_percent * self.total):
            return
        if self.total:
            self._next_percent = (100 * self.n // self.total // self.step + 1) * self.step
        self._last = now
        of = f"/{self.total}" if self.total else ""
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        log.info("%s: %d%s %s%s, %.1f s", self.desc, self.n, of, _plural(self.unit, self.total or self.n), share,
                 now - (self._began or now))

    def close(self) -> None:
        if self._closed or self.disable:
            return
        self._closed = True
        self._start()
        log.info("%s: finished %d %s in %.1f s", self.desc, self.n, _plural(self.unit, self.n),
                 self.clock() - (self._began or 0.0))

    def __iter__(self) -> Iterator:
        if self.disable:
            yield from self.iterable or ()
            return
        self._start()
        for item in self.iterable or ():
            yield item
            self.update()
        self.close()  # not after a `break` or an error: no "finished" line for work that did not finish

    def __enter__(self) -> LineProgress:
        self._start()
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.close()


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, unit: str = "it",
             disable: bool = False) -> Any:
    """A tqdm bar when stderr is a terminal, else a `LineProgress`: iterate it, or `with` it and call `update(n)`.

    `disable=True` shows nothing either way (callers pass `disable=not progress`).
    """
    if on_terminal():
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable)
    return LineProgress(iterable, desc=desc, total=total, unit=unit, disable=disable)

"""The host a benchmark ran on, in one line: cores, CPU model, AVX-512 or not (TensorFlow is 3-5x faster with it)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def host_line() -> str:
    """e.g. "2 cores, AMD EPYC, AVX-512: yes"; the CPU from /proc/cpuinfo where there is one. With ONEDNN_MAX_CPU_ISA
    set (e.g. AVX2: how an AVX-512 host stands in for one without it), the line says so."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
               platform.processor())
    line = f"{os.cpu_count()} cores, {cpu}, AVX-512: {'yes' if 'avx512f' in info else 'no'}"
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA")  # TensorFlow's and OpenVINO's oneDNN kernels capped at this ISA
    return f"{line} (oneDNN limited to {limit})" if limit else line

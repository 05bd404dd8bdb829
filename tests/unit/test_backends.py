"""The same model and training code runs under TensorFlow and JAX (each in its own process)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.tiny import REPO

# XLA compiles the same graph without its LLVM backend optimisations: the same losses (to 1e-7), half the CPU
# (JAX step of both models: 29 s -> 16 s of CPU on the AVX-512 VM); what runs is under test, not how fast.
FAST_XLA = "--xla_backend_optimization_level=0"


def train_one_step(backend: str, *args: str, **env: str) -> dict:
    xla = f"{FAST_XLA} {env.pop('XLA_FLAGS', '')}".strip()
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "XLA_FLAGS": xla, **env}
    done = subprocess.run([sys.executable, "-m", "tests.backend_step", *args], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_one_training_step_under_each_backend(backend):
    pytest.importorskip(backend)
    summary = train_one_step(backend)
    assert summary["backend"] == backend
    assert set(summary["losses"]) == {"paper_cnn", "vit"}
    assert all(math.isfinite(loss) and loss > 0 for loss in summary["losses"].values())


@pytest.mark.slow
def test_data_parallel_over_two_devices_under_jax():
    pytest.importorskip("jax")
    summary = train_one_step("jax", "data_parallel", "paper_cnn", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert summary["runtime"]["distribution"] == "data_parallel over 2 device(s)"
    assert all(math.isfinite(loss) for loss in summary["losses"].values())


def test_data_parallel_is_refused_under_tensorflow_with_a_clear_reason():
    environment = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-m", "tests.backend_step", "data_parallel", "paper_cnn"], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "needs the JAX backend" in done.stderr

"""The GPU check script (tests/gpu_check.sh, `make gpu-check`): its dry run shows every step's
command, and on a machine without a usable GPU the real run stops at its first step with a
clear message instead of building or testing anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("gpu_check.sh")


def _run(tmp_path, *args, steps=None):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, JOBS="2")
    env.pop("GPU_CHECK_STEPS", None)
    if steps is not None:
        env["GPU_CHECK_STEPS"] = steps
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)


def test_dry_run_shows_every_step_and_runs_nothing(tmp_path):
    p = _run(tmp_path, "--dry-run")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    steps = [line.split()[0] for line in out.splitlines() if line and not line.startswith((" ", "gpu-check"))]
    assert steps == ["env", "build", "pytest", "kernels", "bench", "memcheck", "memcheck"]
    for needle in ("nvidia-smi", "FASTCL_FORCE_CUDA=1", "setup.py build_ext --inplace",
                   "FASTCL_REQUIRE_CUDA=1", "tests/test_cuda_ops.py", "csrc/tests/test_cuda_kernels.cu",
                   "--target fastcl_test_cuda", "bench ops --quick --device cuda",
                   "compute-sanitizer --tool memcheck"):
        assert needle in out, needle
    assert sys.executable in out
    # nothing ran: no build directory, no logs beyond the (empty) summary
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.txt"]
    assert (tmp_path / "out" / "summary.txt").read_text() == ""


def test_steps_subset(tmp_path):
    p = _run(tmp_path, "--dry-run", steps="bench,memcheck")
    assert p.returncode == 0, p.stderr
    steps = [line.split()[0] for line in p.stdout.splitlines() if line and not line.startswith((" ", "gpu-check"))]
    assert steps == ["bench", "memcheck", "memcheck"]


def test_bash_syntax_and_bad_argument(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    p = _run(tmp_path, "--bogus")
    assert p.returncode == 2 and "usage" in p.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop on a machine without a GPU")
def test_without_a_gpu_it_stops_at_the_env_step(tmp_path):
    p = _run(tmp_path)
    assert p.returncode == 1
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert summary.startswith("env: FAILED")
    assert "stopping: no usable GPU" in summary
    log = (tmp_path / "out" / "env.log").read_text()
    assert ("torch is a CPU build" in log) or ("torch sees no CUDA device" in log)
    assert not (tmp_path / "out" / "build.log").exists()

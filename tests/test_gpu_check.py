"""tools/gpu_check.py: exits 3 without CUDA, and its checks run (on the CPU, bf16 and fp16 autocast)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: make gpu-check runs for real")
def test_without_cuda_it_says_so_and_exits_3():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py")], capture_output=True, text=True)
    assert proc.returncode == 3
    assert "no CUDA device" in proc.stderr


@pytest.mark.parametrize("check", [gpu_check.check_criterion_autocast, gpu_check.check_same_as_cpu])
def test_the_numeric_checks_pass_on_the_cpu(check, tmp_path):
    assert check("cpu", str(tmp_path))  # raises AssertionError on a mismatch

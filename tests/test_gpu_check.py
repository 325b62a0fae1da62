"""bench/gpu_check.sh --smoke runs every step of the GPU check, tiny, on this machine: the script cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step_and_prints_the_tables() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke", "--cpu"], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "steps failed: none" in out, out[-3000:]
    for heading in ("## Card and versions", "## Model stage", "## torch.compile and bf16 weights",
                    "## Where one batch's time goes", "## JPEG decoding", "## Ingest end to end", "## FAISS index"):
        assert heading in out
    assert "| cpu | fp32 | 4 |" in out  # a model-stage row was measured
    assert "| 16 JPEGs, cpu decode | 16 |" in out  # all 16 generated JPEGs were ingested
    assert "| video 2 s 640x480 @25 fps, 5 frames/s | 10 |" in out  # 2 s at 5 frames/s
    assert "| CPU | " in out and "GPU decode + resize | skipped | no CUDA device" in out

"""numba's OpenMP threading layer shares libgomp with torch: the fused kernels must leave torch's
thread count as the caller set it. They did not: after ``torch.set_num_threads(1)``, one Mamba
forward left torch on numba's 2 threads (so the benchmark's "1 torch thread" rows of our models
ran on 2). Checked in a fresh process, since the effect depends on when the thread pools start."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from longssm.ops._common import numba_available

SCRIPT = """
import torch
torch.set_num_threads(1)
import torch.nn.functional as F
from longssm.models import ModelConfig, SSMLanguageModel

seen = []
for mixer in ("mamba", "longhorn"):
    model = SSMLanguageModel(ModelConfig(mixer=mixer, d_model=32, n_layers=1, d_state=4,
                                         vocab_size=11))
    tokens = torch.randint(0, 11, (2, 9))
    logits, _ = model(tokens[:, :-1])
    seen.append(torch.get_num_threads())
    F.cross_entropy(logits.reshape(-1, 11), tokens[:, 1:].reshape(-1)).backward()
    seen.append(torch.get_num_threads())
print(seen)
"""


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
def test_fused_kernels_keep_torch_threads():
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "NUMBA_NUM_THREADS": "2",
           "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = done.stdout.strip().splitlines()[-1]
    assert seen == str([1] * 4), f"torch threads after each forward/backward: {seen} (set to 1)"

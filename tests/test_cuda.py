"""Every mixer on a CUDA device == the same model on the CPU; the CLI trains and evaluates there.

Skipped without a CUDA device. In float64 the GPU paths (Triton scan, chunked forms) must match the
CPU (numba / chunked) forms to the float64 tolerance: logits, carried states and gradients. In
float32 the default GPU paths (fla for Mamba-2 inference included) must agree to about 1e-3.
"""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import assert_close
from tests.models.test_lm import MIXERS, make_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICE = "cuda"


def run_split(model, tokens):
    """Logits of the whole sequence run in two pieces with the state carried, and the state."""
    a, b = tokens[:, :13], tokens[:, 13:]
    logits_a, state = model(a)
    logits_b, state = model(b, state)
    return torch.cat([logits_a, logits_b], dim=1), state


def flat_state(state):
    return [t for layer in state for t in layer if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", list(MIXERS))
def test_cuda_model_matches_cpu_float64(name):
    cpu = make_model(name)
    gpu = copy.deepcopy(cpu).cuda()
    tokens = torch.randint(0, 40, (3, 37), generator=torch.Generator().manual_seed(0))
    logits_cpu, state_cpu = run_split(cpu, tokens)
    logits_gpu, state_gpu = run_split(gpu, tokens.cuda())
    assert_close(logits_gpu.cpu(), logits_cpu, name=f"{name} logits")
    for s_gpu, s_cpu in zip(flat_state(state_gpu), flat_state(state_cpu)):
        assert_close(s_gpu.cpu(), s_cpu, name=f"{name} state")
    logits_cpu.square().mean().backward()
    logits_gpu.square().mean().backward()
    for (pname, p_cpu), p_gpu in zip(cpu.named_parameters(), gpu.parameters()):
        if p_cpu.grad is not None:
            assert_close(p_gpu.grad.cpu(), p_cpu.grad, name=f"{name} d/d {pname}")


@pytest.mark.parametrize("name", ["mamba", "mamba2", "s4d", "longhorn"])
def test_cuda_model_float32_inference_close_to_cpu(name):
    cpu = make_model(name).float().eval()
    gpu = copy.deepcopy(cpu).cuda()
    tokens = torch.randint(0, 40, (2, 300), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits_cpu, _ = cpu(tokens)
        logits_gpu, _ = gpu(tokens.cuda())
    err = (logits_gpu.cpu() - logits_cpu).abs().max().item()
    assert err <= 1e-3 * logits_cpu.abs().max().item() + 1e-5, f"{name}: max abs err {err:.3e}"


def test_cli_trains_and_evaluates_on_cuda(tmp_path, monkeypatch, capsys):
    from longssm.cli import main

    monkeypatch.setenv("LONGSSM_CACHE", str(tmp_path / "cache"))
    out = str(tmp_path / "run")
    tiny = ["--model.d_model=16", "--model.n_layers=1", "--model.d_state=4", "--data.seq_len=8",
            "--data.batch_size=2", "--train.steps=3", "--train.eval_batches=1",
            "--train.log_every=1", f"--train.device={DEVICE}"]  # fmt: skip
    assert main(["train", "--out", out, "--quiet", "--data.corpus=markov:1:8:0:20000", *tiny]) == 0
    assert "done: 3 steps" in capsys.readouterr().out
    code = main(["eval", out, "--device", DEVICE, "--lengths", "8,32", "--n-tokens", "256",
                 "--protocol", "all", "--positions", "--positions-length", "32", "--effrem",
                 "--effrem-length", "16", "--effrem-sequences", "4", "--no-progress",
                 "--out", str(tmp_path / "eval")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert main(["generate", out, "-n", "5", "--prompt", "1 2", "--device", DEVICE]) == 0
    assert len(capsys.readouterr().out.split()) == 7  # the prompt's 2 ids and 5 samples

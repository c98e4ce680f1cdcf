"""The registry invariants for the option variants of issue 17 (the registry tests build each mixer
with its defaults only): model pieces == one pass, prefill + step == forward, and float64
gradients of a layer w.r.t. its input and initial state by finite differences (gradcheck)."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close, assert_pieces_equal_one_pass, gradcheck_with_initial_state
from longssm.models import ModelConfig, SSMLanguageModel
from longssm.models.mixers import build_mixer

VARIANTS = {
    "s5-official": dict(mixer="s5", d_state=16, eigen_param="direct", mixer_options={"preset": "official"}),
    "s5-half_glu2-smr": dict(mixer="s5", d_state=8, mixer_options={"activation": "half_glu2", "smr": 2}),
    "s5-full_glu-bilinear": dict(
        mixer="s5", d_state=8, mixer_options={"activation": "full_glu", "discretization": "bilinear"}
    ),
    "s4d-inv2-random-B": dict(mixer="s4d", d_state=8, mixer_options={"init": "inv2", "b_init": "random"}),
    "s4d-quad-smr": dict(mixer="s4d", d_state=8, mixer_options={"init": "quad", "smr": 3, "b_scale": 0.5}),
    "longhorn-official": dict(
        mixer="longhorn", d_state=4, d_conv=4, mixer_options={"preset": "official", "chunk_size": 4}
    ),
    "mamba-negative": dict(mixer="mamba", d_state=4, d_conv=4, mixer_options={"negative_eigenvalues": True}),
    "mamba-negative-smr": dict(
        mixer="mamba", d_state=4, d_conv=4,
        mixer_options={"negative_eigenvalues": True, "smr": 3, "chunk_size": 4},
    ),
    "ids4-tanh": dict(mixer="ids4", d_state=4, mixer_options={"act": "tanh"}),
}


def config(name: str) -> ModelConfig:
    return ModelConfig(d_model=16, n_layers=2, vocab_size=40, **VARIANTS[name])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_model_pieces_and_steps_equal_one_pass(name):
    torch.manual_seed(0)
    model = SSMLanguageModel(config(name)).double()
    tokens = torch.randint(0, 40, (2, 13))
    rest, state = assert_pieces_equal_one_pass(model, tokens, 6, name)
    steps = []
    for t in range(6, 13):
        logits, state = model.step(tokens[:, t], state)
        steps.append(logits)
    assert_close(torch.stack(steps, 1), rest, name=f"{name}: prefill + step == forward")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_layer_gradcheck_including_initial_state(name):
    torch.manual_seed(0)
    cfg = config(name)
    cfg.d_model = 6
    layer = build_mixer(cfg, 0).double()
    x = torch.randn(1, 5, 6, dtype=torch.float64, requires_grad=True)
    gradcheck_with_initial_state(layer, x)

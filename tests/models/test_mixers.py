"""The mixer registry: every entry builds its layer and a model that runs forward, step and a
carried state; option defaults match the layer signatures; layers never load ``longssm.models``."""

from __future__ import annotations

import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import longssm
import longssm.layers
from helpers import (
    assert_close,
    assert_pieces_equal_one_pass,
    assert_states_close,
    small_mixer_fields,
)
from longssm.models import ModelConfig, SSMLanguageModel
from longssm.models.config import MIXERS as CONFIG_MIXERS
from longssm.models.mixers import MIXER_NAMES, MIXERS, MixerSpec, build_mixer, get_mixer, register

NAMES = list(MIXER_NAMES)


def small_config(name: str, **kw) -> ModelConfig:
    return ModelConfig(d_model=16, n_layers=2, vocab_size=40, **small_mixer_fields(name), **kw)


@pytest.mark.parametrize("name", NAMES)
def test_entry_builds_its_layer_with_its_state_type(name):
    spec = MIXERS[name]
    layer = build_mixer(small_config(name), 1).double()
    assert type(layer) is spec.layer
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    y, state = layer(x)
    assert y.shape == x.shape and type(state) is spec.state
    assert type(layer.initial_state(2)) is spec.state
    y_t, state_t = layer.step(x[:, 0], None)
    assert y_t.shape == (2, 16) and type(state_t) is spec.state
    assert_close(y_t, y[:, 0], name=f"{name}: step == forward at t=0")


@pytest.mark.parametrize("name", NAMES)
def test_model_forward_step_and_carried_state(name):
    torch.manual_seed(0)
    model = SSMLanguageModel(small_config(name)).double()
    tokens = torch.randint(0, 40, (2, 13))
    rest, state = assert_pieces_equal_one_pass(model, tokens, 6, name)
    logits, stepped = model.step(tokens[:, 6], state)
    assert_close(logits, rest[:, 0], name=f"{name}: step == forward")
    assert all(type(s) is MIXERS[name].state for s in stepped)


@pytest.mark.parametrize("name", NAMES)
def test_option_defaults_are_the_layer_signature_defaults(name):
    spec = MIXERS[name]
    params = inspect.signature(spec.layer.__init__).parameters
    for option, default in spec.defaults.items():
        assert option in params, f"{name}: option {option!r} is not a keyword of {spec.layer}"
        assert params[option].default == default, f"{name}: default of {option!r}"


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_names_the_valid_ones(name):
    cfg = small_config(name)
    cfg.mixer_options = {**cfg.mixer_options, "no_such_option": 1}
    with pytest.raises(ValueError, match=r"unknown.*option\(s\) \['no_such_option'\]; valid options"):
        build_mixer(cfg, 0)


def test_config_validates_against_the_registry():
    assert CONFIG_MIXERS is MIXERS and NAMES == list(MIXERS)
    with pytest.raises(ValueError, match="mixer must be one of " + ", ".join(NAMES)):
        ModelConfig(mixer="transformer")
    with pytest.raises(ValueError, match="mixer must be one of"):
        get_mixer("transformer")
    with pytest.raises(ValueError, match="already registered"):
        register(MIXERS["gru"])
    assert isinstance(get_mixer("mamba"), MixerSpec)


def layer_modules() -> list[str]:
    return ["longssm.layers"] + [
        f"longssm.layers.{m.name}" for m in pkgutil.iter_modules(longssm.layers.__path__)
    ]


@pytest.mark.parametrize("module", layer_modules())
def test_layers_do_not_load_models(module):
    code = (
        f"import sys, {module}\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('longssm.models'))\n"
        "assert not loaded, loaded\n"
    )
    # the subprocess imports the same longssm as this process
    src = str(Path(longssm.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_a_zero_length_sequence_returns_the_state_unchanged(name):
    torch.manual_seed(0)
    layer = build_mixer(small_config(name), 0).double()
    _, state = layer(torch.randn(2, 5, 16, dtype=torch.float64))
    y, after = layer(torch.zeros(2, 0, 16, dtype=torch.float64), state)
    assert y.shape == (2, 0, 16) and type(after) is type(state)
    # a layer state is one layer of a model state
    assert_states_close((after,), (state,))
    y, zeros = layer(torch.zeros(2, 0, 16, dtype=torch.float64))
    assert_states_close((zeros,), (layer.initial_state(2, dtype=torch.float64),))


@pytest.mark.parametrize("name", NAMES)
def test_a_plain_tuple_is_not_a_layer_state(name):
    layer = build_mixer(small_config(name), 0)
    plain = tuple(layer.initial_state(2))
    with pytest.raises(TypeError, match=f"state must be a {type(layer.initial_state(2)).__name__}"):
        layer(torch.randn(2, 3, 16), plain)


def test_the_config_docs_name_every_registered_mixer():
    # docs/configuration.md is generated from ModelConfig's field docstrings
    docs = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    row = next(line for line in docs.read_text().splitlines() if line.startswith("| `mixer`"))
    missing = [name for name in MIXER_NAMES if name not in row]
    assert not missing, f"ModelConfig.mixer's docstring does not name {missing}"

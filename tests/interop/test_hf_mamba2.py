"""Mamba-2 interop: a random transformers Mamba2ForCausalLM and its longssm twin give one logits."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close

transformers = pytest.importorskip("transformers")

from longssm.interop.hf_mamba2 import (  # noqa: E402
    config_from_hf_mamba2,
    hf_config_from_model_config,
    load_hf_mamba2,
    save_hf_mamba2,
    state_dict_from_hf_mamba2,
    state_dict_to_hf_mamba2,
    to_hf_mamba2,
)
from longssm.models.config import ModelConfig  # noqa: E402
from longssm.models.lm import SSMLanguageModel  # noqa: E402


def small_hf(tie=False, n_groups=1, use_bias=False, dt_limit=(0.0, float("inf"))):
    cfg = transformers.Mamba2Config(
        vocab_size=300, hidden_size=64, num_hidden_layers=2, expand=2, head_dim=16,
        num_heads=8, state_size=16, n_groups=n_groups, conv_kernel=4, chunk_size=8,
        use_bias=use_bias, tie_word_embeddings=tie, time_step_limit=dt_limit,
    )
    torch.manual_seed(0)
    hf = transformers.Mamba2ForCausalLM(cfg).eval()
    with torch.no_grad():
        # Random norm weights, D and larger steps so every parameter and the state matter.
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.normal_(1.0, 0.3)
            elif name.endswith(".D"):
                p.normal_()
            elif name.endswith("dt_bias"):
                p.add_(2.0)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return hf


def hf_logits(hf, tokens):
    with torch.no_grad():
        return hf(tokens, use_cache=False).logits


@pytest.mark.parametrize(
    "tie,n_groups,use_bias,dt_limit",
    [(False, 1, False, (0.0, float("inf"))), (True, 2, True, (0.01, 1.5))],
    ids=["untied-g1", "tied-g2-bias-dtlimit"],
)
def test_logits_match_both_ways(tie, n_groups, use_bias, dt_limit):
    hf = small_hf(tie, n_groups, use_bias, dt_limit)
    tokens = torch.randint(0, 300, (2, 37))
    ref = hf_logits(hf, tokens)
    model = load_hf_mamba2(hf)
    assert model.cfg.mixer == "mamba2" and model.cfg.tie_embeddings == tie
    assert model.blocks[0].mixer.dt_limit == dt_limit
    with torch.no_grad():
        logits, state = model(tokens)
    assert_close(logits, ref, atol=1e-4, rtol=1e-4, name="longssm vs transformers logits")
    assert state[0].ssm.shape == (2, 8, 16, 16)

    back = to_hf_mamba2(model)
    assert_close(hf_logits(back, tokens), ref, atol=1e-5, rtol=1e-5, name="round-trip logits")


def test_save_load_round_trip(tmp_path):
    hf = small_hf()
    tokens = torch.randint(0, 300, (1, 20))
    model = load_hf_mamba2(hf)
    save_hf_mamba2(model, tmp_path / "ckpt")
    loaded = load_hf_mamba2(tmp_path / "ckpt")
    with torch.no_grad():
        assert_close(loaded(tokens)[0], model(tokens)[0], atol=1e-6, rtol=1e-6, name="reloaded")
    reread = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path / "ckpt", local_files_only=True)
    assert_close(hf_logits(reread.eval(), tokens), hf_logits(hf, tokens), atol=1e-5, rtol=1e-5,
                 name="transformers reload")


def test_config_round_trip():
    hf = small_hf()
    cfg = config_from_hf_mamba2(hf.config)
    assert (cfg.d_model, cfg.n_layers, cfg.d_state, cfg.d_conv, cfg.vocab_size) == (64, 2, 16, 4, 300)
    assert cfg.mixer_options["headdim"] == 16 and cfg.mixer_options["chunk_size"] == 8
    hf_cfg = hf_config_from_model_config(cfg)
    assert (hf_cfg.num_heads, hf_cfg.head_dim, hf_cfg.n_groups) == (8, 16, 1)
    assert config_from_hf_mamba2(hf_cfg) == cfg


def test_mismatches_raise_naming_the_key():
    hf = small_hf()
    cfg = config_from_hf_mamba2(hf.config)
    sd = dict(hf.state_dict())
    sd["backbone.layers.0.mixer.A_log"] = torch.zeros(3)
    with pytest.raises(ValueError, match="backbone.layers.0.mixer.A_log"):
        state_dict_from_hf_mamba2(sd, cfg)
    sd = dict(hf.state_dict())
    del sd["backbone.norm_f.weight"]
    with pytest.raises(ValueError, match="norm_f.weight"):
        state_dict_from_hf_mamba2(sd, cfg)
    sd = dict(hf.state_dict())
    sd["backbone.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="backbone.extra.weight"):
        state_dict_from_hf_mamba2(sd, cfg)
    ours = SSMLanguageModel(cfg).state_dict()
    del ours["blocks.1.mixer.D"]
    with pytest.raises(ValueError, match="blocks.1.mixer.D"):
        state_dict_to_hf_mamba2(ours, cfg)


def test_unrepresentable_configs_raise():
    with pytest.raises(ValueError, match="d_conv"):
        hf_config_from_model_config(
            ModelConfig(mixer="mamba2", d_model=32, d_conv=0, mixer_options={"headdim": 16})
        )
    with pytest.raises(ValueError, match="mlp_ratio"):
        hf_config_from_model_config(
            ModelConfig(mixer="mamba2", d_model=32, mlp_ratio=2, mixer_options={"headdim": 16})
        )
    with pytest.raises(ValueError, match="mixer"):
        hf_config_from_model_config(ModelConfig(mixer="mamba", d_model=32))
    with pytest.raises(ValueError, match="local directory"):
        load_hf_mamba2("/nonexistent/mamba2-checkpoint")

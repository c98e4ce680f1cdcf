"""Our Mamba language model == transformers' MambaForCausalLM given the same weights."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close

transformers = pytest.importorskip("transformers")

from longssm.interop.hf_mamba import (  # noqa: E402
    config_from_hf_mamba,
    hf_config_from_model_config,
    load_hf_mamba,
    save_hf_mamba,
    state_dict_from_hf_mamba,
    state_dict_to_hf_mamba,
)
from longssm.models.config import ModelConfig  # noqa: E402
from longssm.models.lm import SSMLanguageModel  # noqa: E402

VOCAB = 300


def random_hf_model(tie=True, use_bias=False):
    hf_cfg = transformers.MambaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, state_size=16, conv_kernel=4,
        expand=2, use_bias=use_bias, tie_word_embeddings=tie,
    )
    model = transformers.MambaForCausalLM(hf_cfg).eval()
    # Perturb every weight (A_log, D, norms included) so a swapped or dropped tensor shows.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize(
    "tie,use_bias", [(True, False), (False, True)], ids=["tied", "untied-bias"]
)
def test_logits_match_both_ways(tie, use_bias):
    hf = random_hf_model(tie, use_bias)
    ids = torch.randint(0, VOCAB, (2, 37))
    expected = hf_logits(hf, ids)

    ours = load_hf_mamba(hf).eval()
    assert ours.cfg.tie_embeddings == tie
    with torch.no_grad():
        logits, _ = ours(ids)
    assert_close(logits, expected, atol=1e-4, rtol=0, name="longssm vs transformers logits")

    # Back to a fresh transformers model.
    back = transformers.MambaForCausalLM(hf_config_from_model_config(ours.cfg)).eval()
    back.load_state_dict(state_dict_to_hf_mamba(ours.state_dict(), ours.cfg), strict=True)
    assert_close(hf_logits(back, ids), expected, atol=1e-4, rtol=0, name="round-trip logits")


def test_save_load_round_trip(tmp_path):
    hf = random_hf_model()
    ids = torch.randint(0, VOCAB, (1, 20))
    expected = hf_logits(hf, ids)
    ours = load_hf_mamba(hf).eval()
    save_hf_mamba(ours, tmp_path / "mamba")
    reloaded_hf = transformers.MambaForCausalLM.from_pretrained(
        tmp_path / "mamba", local_files_only=True
    ).eval()
    assert_close(hf_logits(reloaded_hf, ids), expected, atol=1e-4, rtol=0, name="saved HF")
    reloaded = load_hf_mamba(tmp_path / "mamba").eval()
    with torch.no_grad():
        logits, _ = reloaded(ids)
    assert_close(logits, expected, atol=1e-4, rtol=0, name="loaded longssm")


def test_config_round_trip():
    cfg = ModelConfig(
        d_model=32, n_layers=3, vocab_size=100, d_state=8, d_conv=3, tie_embeddings=False,
        mixer_options={"dt_rank": 5, "bias": True, "dt_min": 0.01},
    )
    back = config_from_hf_mamba(hf_config_from_model_config(cfg))
    assert back.mixer_options["dt_rank"] == 5 and back.mixer_options["bias"] is True
    for name in ("d_model", "n_layers", "vocab_size", "d_state", "d_conv", "tie_embeddings"):
        assert getattr(back, name) == getattr(cfg, name), name


def test_mismatches_raise_naming_the_key():
    hf = random_hf_model()
    cfg = config_from_hf_mamba(hf.config)
    sd = dict(hf.state_dict())
    with pytest.raises(ValueError, match="backbone.layers.0.mixer.bogus"):
        state_dict_from_hf_mamba({**sd, "backbone.layers.0.mixer.bogus": torch.zeros(1)}, cfg)
    bad = {**sd, "backbone.layers.1.mixer.A_log": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match=r"blocks.1.mixer.A_log.*shape"):
        state_dict_from_hf_mamba(bad, cfg)
    del sd["backbone.norm_f.weight"]
    with pytest.raises(ValueError, match="norm_f.weight"):
        state_dict_from_hf_mamba(sd, cfg)
    with pytest.raises(ValueError, match="d_conv >= 1"):
        hf_config_from_model_config(ModelConfig(d_conv=0))
    ours = SSMLanguageModel(ModelConfig(d_model=16, n_layers=1, vocab_size=50))
    with pytest.raises(ValueError, match="extra.weight"):
        state_dict_to_hf_mamba({**ours.state_dict(), "extra.weight": torch.zeros(1)}, ours.cfg)

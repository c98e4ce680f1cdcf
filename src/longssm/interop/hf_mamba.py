"""Convert between transformers' ``MambaForCausalLM`` and longssm's ``SSMLanguageModel``.

The layouts agree by design (``longssm.layers.mamba.Mamba`` uses ``MambaMixer``'s parameter names),
so the conversion is a renaming of state-dict keys:

    backbone.embeddings.weight          <-> embedding.weight
    backbone.layers.{i}.norm.weight     <-> blocks.{i}.norm.weight
    backbone.layers.{i}.mixer.{name}    <-> blocks.{i}.mixer.{name}
    backbone.norm_f.weight              <-> norm_f.weight
    lm_head.weight                      <-> lm_head.weight

Config glossary (transformers ``MambaConfig`` -> ``ModelConfig``): hidden_size -> d_model,
num_hidden_layers -> n_layers, state_size -> d_state, conv_kernel -> d_conv,
layer_norm_epsilon -> norm_eps, tie_word_embeddings -> tie_embeddings, and in ``mixer_options``:
time_step_rank -> dt_rank, time_step_min/max/floor -> dt_min/dt_max/dt_init_floor,
time_step_scale -> dt_scale, time_step_init_scheme -> dt_init, use_bias -> bias,
use_conv_bias -> conv_bias.

Only local files or in-memory models are read; nothing is downloaded.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from torch import nn

from longssm.models.config import ModelConfig
from longssm.models.mixers import MIXERS

INSTALL_HINT = "transformers is needed for Hugging Face interop: pip install longssm[interop]"
MIXER_PARAMS = (
    "in_proj.weight",
    "in_proj.bias",
    "conv1d.weight",
    "conv1d.bias",
    "x_proj.weight",
    "dt_proj.weight",
    "dt_proj.bias",
    "A_log",
    "D",
    "out_proj.weight",
    "out_proj.bias",
)
# mixer option -> MambaConfig field (the init-only options travel so a round trip keeps them).
OPTION_TO_HF = {
    "dt_rank": "time_step_rank",
    "dt_min": "time_step_min",
    "dt_max": "time_step_max",
    "dt_init_floor": "time_step_floor",
    "dt_scale": "time_step_scale",
    "dt_init": "time_step_init_scheme",
    "bias": "use_bias",
    "conv_bias": "use_conv_bias",
}


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return transformers


def config_from_hf_mamba(hf_config: Any) -> ModelConfig:
    """``ModelConfig`` equivalent to a transformers ``MambaConfig``.

    Raises ValueError for settings longssm's Mamba cannot reproduce (activation other than silu,
    intermediate_size other than expand * hidden_size).
    """
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        raise ValueError(f"only hidden_act='silu' is supported, got {hf_config.hidden_act!r}")
    expand = hf_config.expand
    if int(expand) != expand:
        raise ValueError(f"expand must be an integer for longssm, got {expand!r}")
    intermediate = getattr(hf_config, "intermediate_size", int(expand * hf_config.hidden_size))
    if intermediate != int(expand) * hf_config.hidden_size:
        raise ValueError(
            f"intermediate_size={intermediate} must equal expand * hidden_size = "
            f"{int(expand) * hf_config.hidden_size}"
        )
    options = {opt: getattr(hf_config, field) for opt, field in OPTION_TO_HF.items()}
    options["dt_rank"] = int(options["dt_rank"])
    return ModelConfig(
        mixer="mamba",
        d_model=hf_config.hidden_size,
        n_layers=hf_config.num_hidden_layers,
        vocab_size=hf_config.vocab_size,
        d_state=hf_config.state_size,
        expand=int(expand),
        d_conv=hf_config.conv_kernel,
        mlp_ratio=0,
        norm="rmsnorm",
        norm_eps=hf_config.layer_norm_epsilon,
        tie_embeddings=bool(hf_config.tie_word_embeddings),
        mixer_options=options,
    )


def _require_exp_eigen_param(cfg: ModelConfig) -> None:
    """transformers' Mamba stores A as A_log (A = -exp(A_log)): only eigen_param='exp' maps onto it."""
    if cfg.eigen_param != "exp":
        raise ValueError(
            "transformers' Mamba parameterises A = -exp(A_log): need eigen_param='exp', "
            f"got {cfg.eigen_param!r}"
        )


def hf_config_from_model_config(cfg: ModelConfig):
    """A transformers ``MambaConfig`` for ``cfg``; ValueError if transformers' Mamba can't express it."""
    transformers = _transformers()
    if cfg.mixer != "mamba":
        raise ValueError(f"only mixer='mamba' converts to transformers' Mamba, got {cfg.mixer!r}")
    _require_exp_eigen_param(cfg)
    if cfg.mlp_ratio != 0:
        raise ValueError(f"transformers' Mamba has no MLP: need mlp_ratio=0, got {cfg.mlp_ratio}")
    if cfg.norm != "rmsnorm":
        raise ValueError(f"transformers' Mamba uses RMSNorm: need norm='rmsnorm', got {cfg.norm!r}")
    if cfg.d_conv < 1:
        raise ValueError("transformers' Mamba always has a convolution: need d_conv >= 1, got 0")
    options = MIXERS["mamba"].options(cfg.mixer_options)
    fields = {field: options[opt] for opt, field in OPTION_TO_HF.items()}
    return transformers.MambaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        state_size=cfg.d_state,
        num_hidden_layers=cfg.n_layers,
        layer_norm_epsilon=cfg.norm_eps,
        expand=cfg.expand,
        conv_kernel=cfg.d_conv,
        hidden_act="silu",
        tie_word_embeddings=cfg.tie_embeddings,
        **fields,
    )


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of ``SSMLanguageModel(cfg)``, built on the meta device (no memory)."""
    from longssm.models.lm import SSMLanguageModel

    with torch.device("meta"):
        model = SSMLanguageModel(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _hf_to_ours(key: str) -> str | None:
    """Our name for a transformers key (``backbone.`` prefix optional), or None if unknown."""
    key = key.removeprefix("backbone.")
    if key in ("embeddings.weight", "embedding.weight"):
        return "embedding.weight"
    if key in ("norm_f.weight", "lm_head.weight"):
        return key
    match = re.fullmatch(r"layers\.(\d+)\.(norm\.weight|mixer\.(.+))", key)
    if match is None or (match.group(3) is not None and match.group(3) not in MIXER_PARAMS):
        return None
    return f"blocks.{match.group(1)}.{match.group(2)}"


def _ours_to_hf(key: str) -> str | None:
    if key == "embedding.weight":
        return "backbone.embeddings.weight"
    if key == "norm_f.weight":
        return "backbone.norm_f.weight"
    if key == "lm_head.weight":
        return key
    match = re.fullmatch(r"blocks\.(\d+)\.(norm\.weight|mixer\.(.+))", key)
    if match is None or (match.group(3) is not None and match.group(3) not in MIXER_PARAMS):
        return None
    return f"backbone.layers.{match.group(1)}.{match.group(2)}"


def _check_complete(converted: dict, expected: dict, source: str) -> None:
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise ValueError(f"{source} state dict lacks {missing[0]!r} ({len(missing)} missing)")
    for key, shape in expected.items():
        if tuple(converted[key].shape) != shape:
            raise ValueError(
                f"{source} state dict: {key!r} has shape {tuple(converted[key].shape)}, "
                f"expected {shape}"
            )


def state_dict_from_hf_mamba(hf_state_dict: dict, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename a transformers Mamba state dict to ``SSMLanguageModel(cfg)``'s keys.

    Raises ValueError naming the first unknown key, missing key or shape mismatch.
    """
    _require_exp_eigen_param(cfg)
    expected = _expected_shapes(cfg)
    converted = {}
    for key, value in hf_state_dict.items():
        ours = _hf_to_ours(key)
        if ours is None or ours not in expected:
            raise ValueError(f"unexpected key {key!r} in the transformers Mamba state dict")
        converted[ours] = value
    if cfg.tie_embeddings and "lm_head.weight" not in converted and "embedding.weight" in converted:
        converted["lm_head.weight"] = converted["embedding.weight"]
    _check_complete(converted, expected, "transformers Mamba")
    return converted


def state_dict_to_hf_mamba(state_dict: dict, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename an ``SSMLanguageModel(cfg)`` state dict to transformers' ``MambaForCausalLM`` keys.

    Raises ValueError naming the first unknown key, missing key or shape mismatch.
    """
    hf_config_from_model_config(cfg)
    _check_complete(dict(state_dict), _expected_shapes(cfg), "longssm")
    converted = {}
    for key, value in state_dict.items():
        hf_key = _ours_to_hf(key)
        if hf_key is None:
            raise ValueError(f"unexpected key {key!r} in the longssm state dict")
        converted[hf_key] = value
    return converted


def load_hf_mamba(path_or_model: str | os.PathLike | nn.Module):
    """An ``SSMLanguageModel`` with the weights of a transformers Mamba causal LM.

    Args:
        path_or_model: a local directory written by ``save_pretrained`` (never downloaded) or an
            in-memory ``MambaForCausalLM``.

    Returns:
        The longssm model, in the dtype of the source weights.
    """
    from longssm.models.lm import SSMLanguageModel

    if isinstance(path_or_model, (str, os.PathLike)):
        transformers = _transformers()
        if not os.path.isdir(path_or_model):
            raise ValueError(f"{os.fspath(path_or_model)!r} is not a local directory")
        hf_model = transformers.MambaForCausalLM.from_pretrained(
            os.fspath(path_or_model), local_files_only=True
        )
    elif isinstance(path_or_model, nn.Module) and hasattr(path_or_model, "config"):
        hf_model = path_or_model
    else:
        raise TypeError(
            "path_or_model must be a local directory or a transformers MambaForCausalLM, got "
            f"{type(path_or_model).__name__}"
        )
    cfg = config_from_hf_mamba(hf_model.config)
    hf_state = hf_model.state_dict()
    state = state_dict_from_hf_mamba(hf_state, cfg)
    model = SSMLanguageModel(cfg).to(next(iter(hf_state.values())).dtype)
    model.load_state_dict(state, strict=True)
    return model


def save_hf_mamba(model: nn.Module, directory: str | os.PathLike) -> str:
    """Write ``model`` (an ``SSMLanguageModel``) as a transformers Mamba checkpoint directory.

    Returns the directory; ``transformers.MambaForCausalLM.from_pretrained`` reads it.
    """
    transformers = _transformers()
    cfg = model.cfg
    hf_model = transformers.MambaForCausalLM(hf_config_from_model_config(cfg))
    hf_model.to(next(model.parameters()).dtype)
    hf_model.load_state_dict(state_dict_to_hf_mamba(model.state_dict(), cfg), strict=True)
    hf_model.save_pretrained(os.fspath(directory))
    return os.fspath(directory)

"""Convert between transformers' ``Mamba2ForCausalLM`` and longssm's ``SSMLanguageModel``.

The longssm ``Mamba2`` layer uses the parameter names of transformers' ``Mamba2Mixer``, so the
conversion is a renaming of the outer keys:

    transformers                              longssm
    backbone.embeddings.weight                embedding.weight
    backbone.layers.{i}.norm.weight           blocks.{i}.norm.weight
    backbone.layers.{i}.mixer.{name}          blocks.{i}.mixer.{name}
    backbone.norm_f.weight                    norm_f.weight
    lm_head.weight                            lm_head.weight

Config fields (transformers -> ModelConfig): hidden_size -> d_model, num_hidden_layers ->
n_layers, state_size -> d_state, conv_kernel -> d_conv, layer_norm_epsilon -> norm_eps,
tie_word_embeddings -> tie_embeddings; head_dim, n_groups, use_bias, use_conv_bias, chunk_size,
time_step_{min,max,floor,limit} go to ``mixer_options`` (headdim, ngroups, bias, conv_bias,
chunk_size, dt_min, dt_max, dt_init_floor, dt_limit).

Only local files are read (``local_files_only=True``); nothing is downloaded. transformers is an
optional dependency, imported when a function here needs it.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from longssm.models.config import ModelConfig
from longssm.models.lm import SSMLanguageModel
from longssm.models.mixers import MIXERS

_INSTALL_HINT = "transformers is needed for Mamba-2 interop: pip install longssm[interop]"

_RENAMES = [
    (re.compile(r"^backbone\.embeddings\.weight$"), "embedding.weight"),
    (re.compile(r"^backbone\.layers\.(\d+)\.(.+)$"), r"blocks.\1.\2"),
    (re.compile(r"^backbone\.norm_f\.weight$"), "norm_f.weight"),
    (re.compile(r"^lm_head\.weight$"), "lm_head.weight"),
]
_INVERSE = [
    (re.compile(r"^embedding\.weight$"), "backbone.embeddings.weight"),
    (re.compile(r"^blocks\.(\d+)\.(.+)$"), r"backbone.layers.\1.\2"),
    (re.compile(r"^norm_f\.weight$"), "backbone.norm_f.weight"),
    (re.compile(r"^lm_head\.weight$"), "lm_head.weight"),
]


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return transformers


def _rename(key: str, rules) -> str | None:
    for pattern, target in rules:
        if pattern.match(key):
            return pattern.sub(target, key)
    return None


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a longssm model's state dict, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = SSMLanguageModel(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def config_from_hf_mamba2(hf_config: Any) -> ModelConfig:
    """A ``ModelConfig`` (mixer="mamba2") equivalent to a transformers ``Mamba2Config``.

    Raises:
        ValueError: for settings longssm cannot represent (an activation other than silu, or
            num_heads * head_dim != expand * hidden_size).
    """
    act = getattr(hf_config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"only hidden_act='silu' is supported, got {act!r}")
    expand = hf_config.expand
    if float(expand) != int(expand):
        raise ValueError(f"expand must be an integer, got {expand!r}")
    expand = int(expand)
    if hf_config.num_heads * hf_config.head_dim != expand * hf_config.hidden_size:
        raise ValueError(
            f"num_heads * head_dim ({hf_config.num_heads} * {hf_config.head_dim}) must equal "
            f"expand * hidden_size ({expand} * {hf_config.hidden_size})"
        )
    options = {
        "headdim": hf_config.head_dim,
        "ngroups": hf_config.n_groups,
        "dt_min": float(hf_config.time_step_min),
        "dt_max": float(hf_config.time_step_max),
        "dt_init_floor": float(hf_config.time_step_floor),
        "bias": bool(hf_config.use_bias),
        "conv_bias": bool(hf_config.use_conv_bias),
        "chunk_size": hf_config.chunk_size,
    }
    limit = [float(v) for v in hf_config.time_step_limit]
    # The default (0, inf) means "no clamp"; leaving it out keeps the config JSON free of Infinity.
    if limit != [0.0, float("inf")]:
        options["dt_limit"] = limit
    return ModelConfig(
        mixer="mamba2",
        d_model=hf_config.hidden_size,
        n_layers=hf_config.num_hidden_layers,
        vocab_size=hf_config.vocab_size,
        d_state=hf_config.state_size,
        expand=expand,
        d_conv=hf_config.conv_kernel,
        mlp_ratio=0,
        norm="rmsnorm",
        norm_eps=float(hf_config.layer_norm_epsilon),
        tie_embeddings=bool(hf_config.tie_word_embeddings),
        mixer_options=options,
    )


def hf_config_from_model_config(cfg: ModelConfig):
    """A transformers ``Mamba2Config`` equivalent to ``cfg``.

    Raises:
        ValueError: when ``cfg`` has no transformers equivalent (not mamba2, an MLP, LayerNorm,
            no convolution, or the naive scan).
    """
    if cfg.mixer != "mamba2":
        raise ValueError(f"cfg.mixer must be 'mamba2' for Mamba2 interop, got {cfg.mixer!r}")
    if cfg.mlp_ratio != 0:
        raise ValueError("transformers' Mamba2 has no MLP: cfg.mlp_ratio must be 0")
    if cfg.norm != "rmsnorm":
        raise ValueError(f"transformers' Mamba2 uses RMSNorm: cfg.norm must be 'rmsnorm', got {cfg.norm!r}")
    if cfg.d_conv == 0:
        raise ValueError("transformers' Mamba2 always has a convolution: cfg.d_conv must be > 0")
    opts = MIXERS["mamba2"].options(cfg.mixer_options)
    if opts["d_inner"] not in (None, cfg.expand * cfg.d_model) or opts["norm_eps"] is not None:
        raise ValueError("transformers' Mamba2 has d_inner = expand * d_model and one norm eps: a "
                         "model with pruned heads (mixer_options d_inner / norm_eps) does not export")
    if cfg.d_inner % opts["headdim"] != 0:
        raise ValueError(f"headdim ({opts['headdim']}) must divide d_inner ({cfg.d_inner})")
    transformers = _transformers()
    return transformers.Mamba2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        state_size=cfg.d_state,
        expand=cfg.expand,
        conv_kernel=cfg.d_conv,
        head_dim=opts["headdim"],
        num_heads=cfg.d_inner // opts["headdim"],
        n_groups=opts["ngroups"],
        use_bias=opts["bias"],
        use_conv_bias=opts["conv_bias"],
        chunk_size=opts["chunk_size"],
        time_step_min=opts["dt_min"],
        time_step_max=opts["dt_max"],
        time_step_floor=opts["dt_init_floor"],
        time_step_limit=tuple(float(v) for v in opts["dt_limit"]),
        layer_norm_epsilon=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        hidden_act="silu",
        residual_in_fp32=True,
    )


def _convert(sd, rules, expected: dict[str, tuple[int, ...]], source: str):
    """Rename every key of ``sd`` with ``rules`` and check names and shapes against ``expected``."""
    out = {}
    for key, tensor in sd.items():
        new = _rename(key, rules)
        if new is None or new not in expected:
            raise ValueError(f"unexpected {source} key {key!r} (no counterpart in the target)")
        if tuple(tensor.shape) != expected[new]:
            raise ValueError(
                f"{source} key {key!r} has shape {tuple(tensor.shape)}, expected {expected[new]}"
            )
        out[new] = tensor
    return out


def state_dict_from_hf_mamba2(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict:
    """Rename a transformers Mamba2ForCausalLM state dict to an ``SSMLanguageModel(cfg)`` one.

    With tied embeddings a missing ``lm_head.weight`` is taken from the embedding.

    Raises:
        ValueError: naming the first unexpected, missing or mis-shaped key.
    """
    expected = _expected_shapes(cfg)
    out = _convert(sd, _RENAMES, expected, "transformers")
    if cfg.tie_embeddings and "lm_head.weight" not in out and "embedding.weight" in out:
        out["lm_head.weight"] = out["embedding.weight"]
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ValueError(f"transformers state dict lacks {missing[0]!r} (missing: {missing})")
    return out


def state_dict_to_hf_mamba2(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict:
    """Rename an ``SSMLanguageModel(cfg)`` state dict to a transformers Mamba2ForCausalLM one.

    Raises:
        ValueError: naming the first unexpected, missing or mis-shaped key.
    """
    expected = _expected_shapes(cfg)
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise ValueError(f"longssm state dict lacks {missing[0]!r} (missing: {missing})")
    hf_expected = {_rename(k, _INVERSE): shape for k, shape in expected.items()}
    if None in hf_expected:
        raise ValueError("longssm model has parameters with no transformers counterpart")
    renamed = {_rename(k, _INVERSE) or k: v for k, v in sd.items()}
    return _convert(renamed, [(re.compile(r"^(.+)$"), r"\1")], hf_expected, "longssm")


def load_hf_mamba2(path_or_model) -> SSMLanguageModel:
    """Build an ``SSMLanguageModel`` from a local transformers Mamba-2 checkpoint or model.

    Args:
        path_or_model: a directory written by ``save_pretrained`` (read with
            ``local_files_only=True``; nothing is downloaded) or a ``Mamba2ForCausalLM``.

    Returns:
        The longssm model, in the checkpoint's dtype, in eval mode.
    """
    transformers = _transformers()
    if isinstance(path_or_model, (str, os.PathLike)):
        if not os.path.isdir(path_or_model):
            raise ValueError(f"{os.fspath(path_or_model)!r} is not a local directory")
        hf = transformers.Mamba2ForCausalLM.from_pretrained(
            os.fspath(path_or_model), local_files_only=True
        )
    elif isinstance(path_or_model, transformers.Mamba2ForCausalLM):
        hf = path_or_model
    else:
        raise TypeError(
            "path_or_model must be a local directory or a transformers Mamba2ForCausalLM, "
            f"got {type(path_or_model).__name__}"
        )
    cfg = config_from_hf_mamba2(hf.config)
    dtype = next(hf.parameters()).dtype
    model = SSMLanguageModel(cfg).to(dtype)
    model.load_state_dict(state_dict_from_hf_mamba2(hf.state_dict(), cfg))
    return model.eval()


def to_hf_mamba2(model: SSMLanguageModel):
    """A transformers ``Mamba2ForCausalLM`` with the weights of ``model`` (eval mode)."""
    transformers = _transformers()
    hf = transformers.Mamba2ForCausalLM(hf_config_from_model_config(model.cfg))
    dtype = next(model.parameters()).dtype
    hf = hf.to(dtype)
    hf.load_state_dict(state_dict_to_hf_mamba2(model.state_dict(), model.cfg))
    return hf.eval()


def save_hf_mamba2(model: SSMLanguageModel, directory: str | os.PathLike) -> str:
    """Write ``model`` as a transformers Mamba-2 checkpoint (``save_pretrained``) to ``directory``.

    Returns:
        The directory path.
    """
    hf = to_hf_mamba2(model)
    hf.save_pretrained(os.fspath(directory))
    return os.fspath(directory)

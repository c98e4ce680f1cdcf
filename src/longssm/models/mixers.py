"""The mixer registry: every sequence mixer a ``ModelConfig`` can name, registered in one place.

An entry (``MixerSpec``) gives the mixer's name (``ModelConfig.mixer``), its layer class and state
tuple, the ``ModelConfig.mixer_options`` it understands with their defaults, and how to build the
layer of block ``layer_idx`` from a ``ModelConfig`` and those options. ``SSMLanguageModel`` builds
its blocks with ``build_mixer``; ``ModelConfig`` validates ``mixer`` against ``MIXER_NAMES``;
interop, tests and benchmarks read the entries.

This module imports the layers and never ``longssm.models.config`` (which imports it for the
names), so there is no import circle; a ``cfg`` here is any ``ModelConfig``.

Adding a mixer: one layer module in ``longssm.layers`` (plain keyword arguments, the state
protocol of ``longssm.layers.base``), one ``register(MixerSpec(...))`` below, one row in
``docs/models.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from longssm.layers.attention import BlockAttention, BlockAttentionState
from longssm.layers.bst import BST, BSTState
from longssm.layers.ids4 import IDS4, IDS4State
from longssm.layers.longhorn import Longhorn, LonghornState
from longssm.layers.lru import LRU, LRUState
from longssm.layers.mamba import Mamba, MambaState
from longssm.layers.mamba2 import Mamba2, Mamba2State
from longssm.layers.rnn import GRU, LSTM, GRUState, LSTMState
from longssm.layers.s4d import S4D, S4DState
from longssm.layers.s5 import S5, S5State
from longssm.ops.longhorn import DEFAULT_CHUNK_SIZE as LONGHORN_CHUNK_SIZE
from longssm.ops.selective_scan import DEFAULT_CHUNK_SIZE as SCAN_CHUNK_SIZE


@dataclass(frozen=True)
class MixerSpec:
    """One registered mixer.

    Attributes:
        name: the value of ``ModelConfig.mixer``.
        layer: the layer class (``forward`` / ``step`` / ``initial_state``).
        state: the layer's state ``NamedTuple``.
        defaults: every option the mixer understands in ``ModelConfig.mixer_options``, with its
            default.
        construct: ``(cfg, options, layer_idx) -> layer``, options = defaults merged with
            ``cfg.mixer_options``.
        unknown_option: start of the error message for an unknown option (the unknown names and
            the valid ones follow).
        presets: named option bundles, chosen by ``mixer_options={"preset": name, ...}``; the
            bundle overrides ``defaults`` and the other given options override the bundle (e.g.
            S5's ``official``: lindermanlab/S5's defaults).
    """

    name: str
    layer: type[nn.Module]
    state: type
    defaults: Mapping[str, Any]
    construct: Callable[[Any, dict[str, Any], int], nn.Module]
    unknown_option: str
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def options(self, mixer_options: Mapping[str, Any]) -> dict[str, Any]:
        """``defaults``, then the bundle ``mixer_options["preset"]`` names (if any), then the
        other ``mixer_options``; an unknown key or preset is a ValueError naming the valid ones."""
        given = dict(mixer_options)
        preset = given.pop("preset", None)
        if preset is not None and preset not in self.presets:
            valid = sorted(self.presets) or "none"
            raise ValueError(f"{self.name}: unknown preset {preset!r}; valid presets: {valid}")
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"{self.unknown_option} {unknown}; valid options: {sorted(self.defaults)}"
            )
        bundle = self.presets[preset] if preset is not None else {}
        return {**self.defaults, **bundle, **given}

    def build(self, cfg, layer_idx: int) -> nn.Module:
        """The layer of block ``layer_idx`` for the ``ModelConfig`` ``cfg``."""
        return self.construct(cfg, self.options(cfg.mixer_options), layer_idx)


MIXERS: dict[str, MixerSpec] = {}
"""name -> ``MixerSpec``, in registration order (the order of docs/models.md)."""


def register(spec: MixerSpec) -> MixerSpec:
    """Add ``spec`` to ``MIXERS``; a name registered twice is an error."""
    if spec.name in MIXERS:
        raise ValueError(f"mixer {spec.name!r} is already registered")
    MIXERS[spec.name] = spec
    return spec


def get_mixer(name: str) -> MixerSpec:
    """The entry registered as ``name``; ValueError naming the registered mixers otherwise."""
    if name not in MIXERS:
        raise ValueError(f"mixer must be one of {', '.join(MIXERS)}, got {name!r}")
    return MIXERS[name]


def build_mixer(cfg, layer_idx: int) -> nn.Module:
    """The mixer layer ``cfg.mixer`` of block ``layer_idx``, built from the ``ModelConfig`` ``cfg``."""
    return get_mixer(cfg.mixer).build(cfg, layer_idx)


def _eigen(cfg) -> dict[str, Any]:
    """The StableSSM eigenvalue map of ``cfg`` as layer keyword arguments."""
    return {"eigen_param": cfg.eigen_param, "eigen_param_b": cfg.eigen_param_b}


S5_OFFICIAL = {
    "init": "block",
    "blocks": 8,
    "clip_eigs": False,
    "activation": "half_glu1",
    "b_init": "lecun",
    "c_init": "trunc_normal",
}
"""lindermanlab/S5's defaults (run_train.py / ssm.py): 8 HiPPO-N blocks, no eigenvalue clipping,
the half-GLU output, B lecun-normal then V⁻¹B, C truncated-normal then CV; ``d_state`` must be
divisible by 16 (2 · 8 blocks)."""

register(
    MixerSpec(
        name="s4d",
        layer=S4D,
        state=S4DState,
        defaults={
            "init": "legs",
            "mode": "auto",
            "dt_min": 1e-3,
            "dt_max": 0.1,
            "chunk_size": 32,
            "b_init": "auto",
            "b_scale": 1.0,
            "real_scale": 1.0,
            "imag_scale": 1.0,
            "smr": 0,
            "step_rescale": 1.0,
            "clip_eigs": True,
        },
        construct=lambda cfg, opts, i: S4D(cfg.d_model, cfg.d_state, **opts, **_eigen(cfg)),
        unknown_option="S4D: unknown mixer option(s)",
    )
)
register(
    MixerSpec(
        name="s5",
        layer=S5,
        state=S5State,
        defaults={
            "init": "hippo-n",
            "blocks": 4,
            "discretization": "zoh",
            "clip_eigs": True,
            "dt_min": 1e-3,
            "dt_max": 0.1,
            "chunk_size": 32,
            "activation": "gelu",
            "b_init": "normal",
            "c_init": "normal",
            "step_rescale": 1.0,
            "smr": 0,
        },
        construct=lambda cfg, opts, i: S5(cfg.d_model, cfg.d_state, **opts, **_eigen(cfg)),
        unknown_option="S5: unknown mixer option(s)",
        presets={"official": S5_OFFICIAL},
    )
)
register(
    MixerSpec(
        name="mamba",
        layer=Mamba,
        state=MambaState,
        defaults={
            "dt_rank": "auto",
            "dt_min": 1e-3,
            "dt_max": 0.1,
            "dt_init_floor": 1e-4,
            "dt_scale": 1.0,
            "dt_init": "random",
            "bias": False,
            "conv_bias": True,
            "scan": "auto",
            "chunk_size": SCAN_CHUNK_SIZE,
            "negative_eigenvalues": False,
            "smr": 0,
        },
        construct=lambda cfg, opts, i: Mamba(
            cfg.d_model, cfg.d_state, cfg.expand, cfg.d_conv, **opts, **_eigen(cfg)
        ),
        unknown_option="unknown mamba mixer option(s)",
    )
)
def _mamba2(cfg, opts: dict, i: int) -> Mamba2:
    """Mamba-2 of block i. ``d_inner`` None = expand * d_model; ``norm_eps`` (of the gated
    RMSNorm) None = cfg.norm_eps. Both are set by head pruning (``longssm prune --method heads``):
    fewer heads, and the eps rescaled so that the group mean square is unchanged."""
    opts = dict(opts)
    eps = opts.pop("norm_eps")
    return Mamba2(d_model=cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                  norm_eps=cfg.norm_eps if eps is None else float(eps), layer_idx=i, **opts)


register(
    MixerSpec(
        name="mamba2",
        layer=Mamba2,
        state=Mamba2State,
        defaults={
            "headdim": 64,
            "ngroups": 1,
            "dt_min": 1e-3,
            "dt_max": 0.1,
            "dt_init_floor": 1e-4,
            "dt_limit": (0.0, float("inf")),
            "bias": False,
            "conv_bias": True,
            "chunk_size": 64,
            "scan": "auto",
            "d_inner": None,
            "norm_eps": None,
        },
        construct=lambda cfg, opts, i: _mamba2(cfg, opts, i),
        unknown_option="unknown mamba2 mixer option(s)",
    )
)
register(
    MixerSpec(
        name="longhorn",
        layer=Longhorn,
        state=LonghornState,
        defaults={
            "dt_rank": "auto",
            "beta_min": 1e-3,
            "beta_max": 0.1,
            "dt_scale": 1.0,
            "bias": False,
            "conv_bias": True,
            "scan": "auto",
            "chunk_size": LONGHORN_CHUNK_SIZE,
            "beta_init": "loguniform",
        },
        construct=lambda cfg, opts, i: Longhorn(
            cfg.d_model, cfg.d_state, cfg.expand, cfg.d_conv, **opts
        ),
        unknown_option="unknown longhorn mixer option(s)",
        presets={"official": {"beta_init": "official"}},
    )
)
register(
    MixerSpec(
        name="lru",
        layer=LRU,
        state=LRUState,
        defaults={"r_min": 0.0, "r_max": 0.99, "max_phase": 2 * math.pi, "chunk_size": 32},
        construct=lambda cfg, opts, i: LRU(cfg.d_model, cfg.d_state, **opts),
        unknown_option="LRU: unknown mixer option(s)",
    )
)
register(
    MixerSpec(
        name="gru",
        layer=GRU,
        state=GRUState,
        defaults={"hidden": 0},
        construct=lambda cfg, opts, i: GRU(cfg.d_model, **opts),
        unknown_option="GRU: unknown mixer option(s)",
    )
)
register(
    MixerSpec(
        name="lstm",
        layer=LSTM,
        state=LSTMState,
        defaults={"hidden": 0},
        construct=lambda cfg, opts, i: LSTM(cfg.d_model, **opts),
        unknown_option="LSTM: unknown mixer option(s)",
    )
)

register(
    MixerSpec(
        name="ids4",
        layer=IDS4,
        state=IDS4State,
        defaults={"act": "softmax", "init": "uniform"},
        construct=lambda cfg, opts, i: IDS4(cfg.d_model, cfg.d_state, **opts),
        unknown_option="IDS4: unknown mixer option(s)",
    )
)
# Block-State Transformer (Fathi, Pilault et al. 2023) and its attention-only baseline.
register(
    MixerSpec(
        name="bst",
        layer=BST,
        state=BSTState,
        defaults={
            "variant": "sh",
            "block_size": 16,
            "heads": 4,
            "filters": 4,
            "rope": True,
            "init": "legs",
            "dt_min": 1e-3,
            "dt_max": 0.1,
            "mode": "auto",
            "chunk_size": 32,
        },
        construct=lambda cfg, opts, i: BST(cfg.d_model, cfg.d_state, **opts),
        unknown_option="BST: unknown mixer option(s)",
    )
)
register(
    MixerSpec(
        name="block-attention",
        layer=BlockAttention,
        state=BlockAttentionState,
        defaults={"heads": 4, "block_size": 16, "rope": True},
        construct=lambda cfg, opts, i: BlockAttention(cfg.d_model, **opts),
        unknown_option="block-attention: unknown mixer option(s)",
    )
)

MIXER_NAMES: tuple[str, ...] = tuple(MIXERS)
"""The registered names, in registration order."""

__all__ = ["MIXERS", "MIXER_NAMES", "MixerSpec", "build_mixer", "get_mixer", "register"]

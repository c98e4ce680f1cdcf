"""Adapted runs on disk: read ``adapter.safetensors`` + ``adapter.json``, rebuild base + adapter.

An adapted run ``RUN2/`` (``longssm adapt ... --out RUN2``) holds
    adapter.safetensors   the method's tensors (``longssm.models.adapters.adapter_tensors`` names)
    adapter.json          base checkpoint path, its model.safetensors SHA-256, method, shapes,
                          trainable-parameter count, training settings and losses
``load_adapted(RUN2)`` rebuilds the base model (``checkpoint.load_model``), checks the adapter fits
it (names and shapes, then the base's SHA-256) and returns base + adapter. ``load_source`` calls it
for such a directory, so ``longssm eval RUN2`` / ``generate RUN2`` read it like any run.
``load_merged(RUN2)`` is the plain model a ``lora:R`` or ``full`` adapted run equals (LoRA merged
into W); ``train|extend --init-from RUN2`` start from it (``interop.pretrained``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from longssm.checkpoint import file_sha256, load_model, resolve_checkpoint
from longssm.models.adapters import AdaptError, apply_adapter, check_mergeable, merge_adapter

ADAPTER_FORMAT = 1
TENSORS, META = "adapter.safetensors", "adapter.json"


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory holding ``adapter.json`` (an adapted run)."""
    return (Path(path) / META).is_file()


def read_adapter_meta(path: str | os.PathLike) -> dict:
    """The metadata (``adapter.json``) of an adapted run; AdaptError when it is not one."""
    path = Path(path)
    if not (path / META).is_file() or not (path / TENSORS).is_file():
        raise AdaptError(f"{path} is not an adapted run ({META} + {TENSORS})")
    try:
        with open(path / META) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise AdaptError(f"corrupt adapter in {path}: {exc}") from exc
    if not isinstance(meta, dict) or "method" not in meta or "base" not in meta:
        raise AdaptError(f"{path / META} is not adapter metadata (no method/base)")
    return meta


def read_adapter(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of an adapted run directory; AdaptError when it is not one."""
    meta = read_adapter_meta(path)
    try:
        tensors = load_file(str(Path(path) / TENSORS))
    except (SafetensorError, OSError) as exc:
        raise AdaptError(f"corrupt adapter in {path}: {exc}") from exc
    return meta, tensors


def load_adapted(path: str | os.PathLike, base: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", check_base: bool = True):
    """Base model + adapter of the adapted run ``path``.

    Args:
        path: the adapted run directory (``longssm adapt ... --out``).
        base: the base run or checkpoint (default: the one recorded in the metadata).
        device: where the model lives.
        check_base: require the base's model.safetensors to have the recorded SHA-256.

    Returns: (model in eval mode, adapter metadata, base checkpoint metadata).
    """
    meta, tensors = read_adapter(path)
    base = meta["base"] if base is None else base
    if not Path(base).exists():
        raise AdaptError(f"the base checkpoint of adapter {path} is gone: {base}")
    model, ckpt, base_meta = load_model(base, device=device)
    apply_adapter(model, meta["method"], tensors)
    if check_base and file_sha256(Path(ckpt) / "model.safetensors") != meta.get("base_sha256"):
        raise AdaptError(f"base checkpoint {ckpt} is not the one adapter {path} was trained on "
                         "(SHA-256 differs)")
    return model.to(device).eval(), meta, base_meta


def load_adapted_source(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``(model, path, meta)`` of an adapted run, as ``load_source`` returns for any source:
    ``meta`` is the base checkpoint's (tokenizer, step, config) plus an ``adapter`` record, with
    ``config.data.corpus`` the corpus the adapter was trained on (the run's own corpus)."""
    model, meta, base_meta = load_adapted(path, device=device)
    base_meta = dict(base_meta)
    if meta.get("corpus"):
        config = dict(base_meta["config"])
        config["data"] = dict(config.get("data", {}), corpus=meta["corpus"])
        base_meta["config"] = config
    base_meta["adapter"] = {k: meta.get(k) for k in (
        "method", "base", "base_sha256", "corpus", "trainable_parameters")}
    return model, Path(path), base_meta


def mergeable_base(path: str | os.PathLike) -> Path:
    """The base checkpoint of an adapted run that ``train|extend --init-from`` can start from.

    Only ``lora:R`` and ``full`` adapters are plain weights of the base architecture
    (``models.adapters.check_mergeable``); the state methods and prefix tuning are refused (one
    line). The base must still exist and have the SHA-256 the adapter was trained on.
    """
    meta = read_adapter_meta(path)
    check_mergeable(meta["method"], path)
    base = meta["base"]
    if not Path(base).exists():
        raise AdaptError(f"the base checkpoint of adapter {path} is gone: {base}")
    ckpt = resolve_checkpoint(base)
    if file_sha256(ckpt / "model.safetensors") != meta.get("base_sha256"):
        raise AdaptError(f"base checkpoint {ckpt} is not the one adapter {path} was trained on "
                         "(SHA-256 differs)")
    return ckpt


def load_merged(path: str | os.PathLike, dtype: torch.dtype | None = None):
    """The plain model an adapted run equals (``lora:R`` merged into the weights, or the
    ``full`` weights), on the CPU in ``dtype`` (default the base run's), train mode, every
    parameter trainable. The LoRA sums are formed in float64 (``merged_linear``)."""
    mergeable_base(path)
    model, _, _ = load_adapted(path)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return merge_adapter(model).train()

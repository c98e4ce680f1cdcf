"""Attach state adapters to a trained model; save them small; load base + adapter anywhere.

An adapted run ``RUN2/`` holds
    adapter.safetensors   the method's tensors, ``blocks.{i}.{h0|h_offset|y_offset}``
    adapter.json          base checkpoint path, its model.safetensors SHA-256, method, shapes,
                          trainable-parameter count, training settings and losses
``load_adapted(RUN2)`` rebuilds the base model (``longssm.checkpoint.load_model``), checks the
adapter fits it (shapes, then the base's SHA-256) and returns base + adapter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from longssm.adapt.errors import AdaptError
from longssm.adapt.state_tuning import PARAM_OF, STATE_METHODS, StateAdapter, state_adapter
from longssm.checkpoint import load_model

ADAPTER_FORMAT = 1
TENSORS, META = "adapter.safetensors", "adapter.json"


def check_method(method: str) -> str:
    """``method`` if it is a known adaptation method, else AdaptError."""
    if method not in STATE_METHODS:
        raise AdaptError(f"unknown adaptation method {method!r}; expected one of "
                         f"{', '.join(STATE_METHODS)}")
    return method


def attach(model: torch.nn.Module, method: str) -> list[torch.nn.Parameter]:
    """Freeze every parameter of ``model`` and wrap each block's mixer in the adapter of
    ``method`` (in place). Returns the trainable tensors, one per block."""
    check_method(method)
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for block in model.blocks:
        if isinstance(block.mixer, StateAdapter):
            raise AdaptError("this model already carries an adapter")
        block.mixer = state_adapter(block.mixer, method)
        params.append(block.mixer.tensor)
    return params


def adapter_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of an adapted model, ``blocks.{i}.{name}`` -> tensor."""
    out = {}
    for i, block in enumerate(model.blocks):
        if isinstance(block.mixer, StateAdapter):
            out[f"blocks.{i}.{PARAM_OF[block.mixer.method]}"] = block.mixer.tensor
    return out


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_free(out: str | os.PathLike) -> Path:
    """``out`` as a Path if nothing is there yet (nothing is ever overwritten), else AdaptError."""
    out = Path(out)
    if out.exists():
        raise AdaptError(f"{out} already exists; give a new --out (nothing is overwritten)")
    return out


def save_adapter(out: str | os.PathLike, model: torch.nn.Module, meta: dict) -> Path:
    """Write ``adapter.safetensors`` + ``adapter.json`` into the new directory ``out`` atomically."""
    out = check_free(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter_tensors(model).items()}
    meta = dict(meta, format=ADAPTER_FORMAT,
                shapes={k: list(v.shape) for k, v in tensors.items()})
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(tensors, str(tmp / TENSORS))
        with open(tmp / META, "w") as f:
            json.dump(meta, f, indent=1)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_adapter(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of an adapted run directory; AdaptError when it is not one."""
    path = Path(path)
    if not (path / META).is_file() or not (path / TENSORS).is_file():
        raise AdaptError(f"{path} is not an adapted run ({META} + {TENSORS})")
    try:
        with open(path / META) as f:
            meta = json.load(f)
        tensors = load_file(str(path / TENSORS))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as exc:
        raise AdaptError(f"corrupt adapter in {path}: {exc}") from exc
    if not isinstance(meta, dict) or "method" not in meta or "base" not in meta:
        raise AdaptError(f"{path / META} is not adapter metadata (no method/base)")
    return meta, tensors


def apply_adapter(model: torch.nn.Module, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Attach the adapter ``meta["method"]`` to ``model`` and load ``tensors`` into it.

    AdaptError when the tensors do not fit the model (names or shapes).
    """
    attach(model, meta["method"])
    own = adapter_tensors(model)
    if set(own) != set(tensors):
        raise AdaptError(f"adapter does not fit this model: it holds {sorted(tensors)[:3]}, the "
                         f"model needs {sorted(own)[:3]} ({len(own)} layers)")
    for name, param in own.items():
        if tuple(tensors[name].shape) != tuple(param.shape):
            raise AdaptError(f"adapter tensor {name} has shape {tuple(tensors[name].shape)}, "
                             f"the model expects {tuple(param.shape)}")
    with torch.no_grad():
        for name, param in own.items():
            param.copy_(tensors[name])
    for param in own.values():
        param.requires_grad_(False)


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
    model, ckpt, base_meta = load_model(meta["base"] if base is None else base, device=device)
    apply_adapter(model, meta, tensors)
    if check_base and file_sha256(Path(ckpt) / "model.safetensors") != meta.get("base_sha256"):
        raise AdaptError(f"base checkpoint {ckpt} is not the one this adapter was trained on "
                         "(SHA-256 differs)")
    return model.to(device).eval(), meta, base_meta

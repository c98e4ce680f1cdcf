"""Checkpoints: safetensors for tensors, JSON for metadata; never pickle.

A checkpoint is a directory ``ckpt-{step:08d}/`` holding
    model.safetensors      weights (tied weights stored once)
    optimizer.safetensors  optimiser tensors (``opt.{param_index}.{name}``), optional
    extra.safetensors      other named tensors: carried states, RNG state, learned states
    meta.json              resolved config, step, loader position, tokenizer, RNG seeds, ...
It is written into a temporary sibling directory and renamed into place, so a crash never leaves a
half-written checkpoint under the final name. A run directory keeps them under ``checkpoints/``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model

FORMAT_VERSION = 1
CHECKPOINT_PREFIX = "ckpt-"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit the model it is loaded into."""


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split ``optimizer.state_dict()`` into named tensors and a JSON-able remainder."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, param_state in sd["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{index}.{name}"] = value.detach().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """Inverse of ``optimizer_to_tensors``; loads into ``optimizer`` in place."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state does not fit this model: {exc}") from exc


def save_checkpoint(
    directory: str | os.PathLike,
    model: torch.nn.Module,
    meta: dict,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint directory atomically. Returns its path.

    An existing directory of the same name is replaced only after the new one is complete.
    """
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        meta = dict(meta, format_version=FORMAT_VERSION)
        if optimizer is not None:
            opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            meta["optimizer"] = opt_meta
        if extra:
            save_file(
                {k: v.detach().contiguous() for k, v in extra.items()},
                str(tmp / "extra.safetensors"),
            )
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f, indent=1, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in checkpoint metadata")


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.name.startswith(CHECKPOINT_PREFIX) and (p / "meta.json").is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from a checkpoint path or a run directory (its latest checkpoint)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such run or checkpoint: {p}")
    if (p / "meta.json").is_file() and (p / "model.safetensors").is_file():
        return p
    found = checkpoint_dirs(p)
    if not found:
        raise CheckpointError(
            f"{p} is neither a checkpoint (meta.json + model.safetensors) nor a run directory "
            "with checkpoints/ckpt-*"
        )
    return found[-1]


def read_meta(checkpoint: str | os.PathLike) -> dict:
    path = Path(checkpoint) / "meta.json"
    try:
        with open(path) as f:
            meta = json.load(f)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {checkpoint} has no meta.json") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt checkpoint metadata {path}: {exc}") from exc
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{path} is not longssm checkpoint metadata (no 'config')")
    return meta


def read_tensors(checkpoint: str | os.PathLike, name: str, required: bool = True) -> dict:
    """Load ``{name}.safetensors`` of a checkpoint (CPU tensors); ``{}`` when absent and optional."""
    path = Path(checkpoint) / f"{name}.safetensors"
    if not path.is_file():
        if required:
            raise CheckpointError(f"checkpoint {checkpoint} lacks {path.name}")
        return {}
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt checkpoint file {path}: {exc}") from exc


def load_weights(model: torch.nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load ``model.safetensors`` into ``model``; any missing, unexpected or reshaped tensor is an error."""
    tensors = read_tensors(checkpoint, "model")
    own = model.state_dict()
    # tied weights are stored once under one of their names
    aliases = _tied_aliases(model)
    for name, canonical in aliases.items():
        if name not in tensors and canonical in tensors:
            tensors[name] = tensors[canonical]
        elif canonical not in tensors and name in tensors:
            tensors[canonical] = tensors[name]
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit this model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    for name, tensor in own.items():
        if tuple(tensors[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                f"model expects {tuple(tensor.shape)}"
            )
    model.load_state_dict(tensors)


def _tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    seen: dict[int, str] = {}
    aliases = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = id(tensor)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
    return aliases


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints of a run (``keep_last <= 0``: keep all)."""
    if keep_last <= 0:
        return
    for old in checkpoint_dirs(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild the trained model of a run or checkpoint.

    Returns ``(model, checkpoint_dir, meta)``; ``meta["config"]`` is the resolved run config
    (a mapping with ``model``, ``data`` and ``train`` tables) and ``meta["tokenizer"]`` the tokenizer.
    """
    from longssm.models import ModelConfig, SSMLanguageModel

    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    try:
        cfg = ModelConfig.from_dict(meta["config"]["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt} has an invalid model config: {exc}") from exc
    dtype = getattr(torch, meta["config"].get("train", {}).get("dtype", "float32"))
    model = SSMLanguageModel(cfg).to(dtype=dtype)
    load_weights(model, ckpt)
    return model.to(device).eval(), ckpt, meta

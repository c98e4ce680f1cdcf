"""Checkpoints: safetensors for tensors, JSON for metadata; never pickle.

A checkpoint is a directory ``ckpt-{step:08d}/`` holding
    model.safetensors      weights (tied weights stored once)
    optimizer.safetensors  optimiser tensors (``opt.{param_index}.{name}``), optional
    extra.safetensors      other named tensors: carried states, RNG state, learned states
    meta.json              resolved config, step, loader position, tokenizer, RNG seeds, ...,
                           ``files``: the SHA-256 of every tensor file, and ``meta_sha256``:
                           that of meta.json's own content (canonical JSON, without itself)
It is written into a temporary sibling directory ``.ckpt-*`` and renamed into place, so a crash
never leaves a half-written checkpoint under the final name (``clean_stale`` removes the
temporary folders a crash leaves behind). Every load checks ``meta.json`` against its schema
(``validate_meta``) and every tensor file against its SHA-256 (``verify_checkpoint``); a
checkpoint whose floating-point tensors are not all finite is never written. A run directory keeps
them under ``checkpoints/``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file, save_model

FORMAT_VERSION = 2
CHECKPOINT_PREFIX = "ckpt-"
CHECKPOINT_NAME = re.compile(r"ckpt-(\d{8,})")
TENSOR_FILES = ("model", "optimizer", "extra")
# ``file_sha256``'s per-process cache: digests by file version, and the age a file must have
# (its ctime before hashing starts) to be cached, above any filesystem's timestamp granularity.
SHA_CACHE_SIZE = 1024
SHA_CACHE_MIN_AGE_S = 2.0
_SHA_CACHE: OrderedDict[tuple, str] = OrderedDict()


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit the model it is loaded into."""


class NonFiniteCheckpointError(CheckpointError):
    """Refused to write a checkpoint holding a NaN or infinite tensor."""


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
    """Inverse of ``optimizer_to_tensors``; loads into ``optimizer`` in place.

    Every per-parameter tensor (``exp_avg``, ...) must have its parameter's shape.
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    try:
        for key, value in tensors.items():
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
        for key, value in meta.get("scalars", {}).items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        for index, entries in state.items():
            for name, value in entries.items():
                shape = tuple(params[index].shape)
                if isinstance(value, torch.Tensor) and value.ndim and tuple(value.shape) != shape:
                    raise ValueError(
                        f"opt.{index}.{name} has shape {tuple(value.shape)}, parameter {index} "
                        f"has {shape}"
                    )
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"optimizer state does not fit this model: {exc}") from exc


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, else None."""
    for name, tensor in tensors.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and tensor.numel():
            if not bool(torch.isfinite(tensor).all()):
                return name
    return None


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, computed once per process for each version of it.

    The digest is cached under (real path, device, inode, size, mtime, ctime), so one command
    hashes a source checkpoint once however many checks read it (``train|extend --init-from``
    verify it for the config, the tokenizer and the weights). A file whose ctime is less than
    ``SHA_CACHE_MIN_AGE_S`` older than the moment hashing starts is not cached: a filesystem's
    timestamps are coarse (a kernel tick, or seconds), so a rewrite within that window could
    leave every key field unchanged (git's "racily clean" problem); such a file is re-hashed.
    """
    started = time.time()
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
           st.st_ctime_ns)  # fmt: skip
    digest = _SHA_CACHE.get(key)
    if digest is not None:
        _SHA_CACHE.move_to_end(key)
        return digest
    digest = _hash_file(path)
    if st.st_ctime_ns < (started - SHA_CACHE_MIN_AGE_S) * 1e9:
        _SHA_CACHE[key] = digest
        while len(_SHA_CACHE) > SHA_CACHE_SIZE:
            _SHA_CACHE.popitem(last=False)
    return digest


def _hash_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (no cache: ``file_sha256``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    directory: str | os.PathLike,
    model: torch.nn.Module,
    meta: dict,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint directory atomically. Returns its path.

    An existing directory of the same name is replaced only after the new one is complete.
    Raises NonFiniteCheckpointError (nothing written) when a weight, optimiser or extra tensor is
    not finite, and OSError when the disk refuses the write (the temporary folder is removed).
    """
    final = Path(directory)
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer) if optimizer is not None else ({}, None)
    extra = {k: v.detach().contiguous() for k, v in (extra or {}).items()}
    for kind, tensors in (("weight", model.state_dict()), ("optimizer", opt_tensors),
                          ("extra", extra)):  # fmt: skip
        bad = first_non_finite(tensors)
        if bad is not None:
            raise NonFiniteCheckpointError(
                f"refusing to write checkpoint {final.name}: {kind} tensor {bad!r} is not finite"
            )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        _write_files(tmp, model, dict(meta), opt_tensors, opt_meta, extra)
        _fsync_dir(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(final.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, SafetensorError):
            raise OSError(f"cannot write checkpoint {final}: {exc}") from exc
        raise
    return final


def _write_files(tmp: Path, model, meta: dict, opt_tensors: dict, opt_meta, extra: dict) -> None:
    """The tensor files and ``meta.json`` (with their SHA-256) of one checkpoint, into ``tmp``."""
    save_model(model, str(tmp / "model.safetensors"))
    meta["format_version"] = FORMAT_VERSION
    # the metadata describes exactly the files written (a copied meta may name an optimiser)
    meta.pop("optimizer", None)
    if opt_meta is not None:
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        meta["optimizer"] = opt_meta
    if extra:
        save_file(extra, str(tmp / "extra.safetensors"))
    meta["files"] = {}
    for name in TENSOR_FILES:
        path = tmp / f"{name}.safetensors"
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            meta["files"][path.name] = file_sha256(path)
    # a round trip through JSON first, so the digest covers exactly what a reader will see
    meta = json.loads(json.dumps(meta, default=_json_default))
    meta["meta_sha256"] = meta_digest(meta)
    with open(tmp / "meta.json", "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def meta_digest(meta: dict) -> str:
    """SHA-256 of ``meta`` without its own ``meta_sha256`` (canonical JSON: sorted keys)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in checkpoint metadata")


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint directories ``ckpt-*`` of a run, oldest first, valid or not."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: p.name)


def clean_stale(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary ``.ckpt-*`` folders an interrupted save left; returns them.

    Call only while holding the run's lock (no other process may be saving).
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.name.startswith(f".{CHECKPOINT_PREFIX}")]
    for p in stale:
        named = re.fullmatch(r"\.(ckpt-\d{8,})\.old", p.name)
        if named and p.is_dir() and not (root / named.group(1)).exists():
            # killed between the two renames of a replacing save: the old copy is the checkpoint
            os.rename(p, root / named.group(1))
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from a checkpoint path or a run directory (its latest checkpoint).

    The latest checkpoint is returned whether or not it is valid: loading it verifies it, and a
    damaged latest checkpoint is an error rather than a silent fall-back to an older one.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such run or checkpoint: {p}")
    if (p / "meta.json").is_file() or (CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()):
        return p
    found = checkpoint_dirs(p)
    if not found:
        raise CheckpointError(
            f"{p} is neither a checkpoint (meta.json + model.safetensors) nor a run directory "
            "with checkpoints/ckpt-*"
        )
    return found[-1]


def read_meta(checkpoint: str | os.PathLike, require: tuple[str, ...] = ()) -> dict:
    """``meta.json`` of a checkpoint, checked against the schema (``validate_meta``)."""
    path = Path(checkpoint) / "meta.json"
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {checkpoint} has no meta.json") from exc
    except IsADirectoryError as exc:
        raise CheckpointError(f"checkpoint {checkpoint}: meta.json is not a file") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"corrupt checkpoint metadata {path}: {exc}") from exc
    validate_meta(meta, Path(checkpoint), require)
    return meta


def _fail(ckpt: Path, what: str):
    raise CheckpointError(f"invalid checkpoint metadata {ckpt / 'meta.json'}: {what}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_meta(meta: Any, ckpt: Path, require: tuple[str, ...] = ()) -> None:
    """Check ``meta.json`` before anything uses it; raises CheckpointError naming the field.

    Always required: ``config`` (a mapping with a ``model`` table) and ``step`` (an integer >= 0,
    equal to the directory's ``ckpt-NNNNNNNN`` number). ``require`` names more keys that must be
    present (a resume needs ``optimizer``, ``loader`` and ``tokenizer``); every present key must
    have its type.
    """
    if not isinstance(meta, dict):
        _fail(ckpt, f"expected a JSON object, got {type(meta).__name__}")
    for key in ("config", "step", *require):
        if key not in meta:
            _fail(ckpt, f"missing {key!r}")
    config = meta["config"]
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        _fail(ckpt, "'config' must be a mapping with a 'model' table")
    for section in ("data", "train"):
        if not isinstance(config.get(section, {}), dict):
            _fail(ckpt, f"'config.{section}' must be a mapping")
    if config.get("train", {}).get("dtype", "float32") not in ("float32", "float64"):
        _fail(ckpt, f"config.train.dtype must be float32 or float64, got "
                    f"{config['train']['dtype']!r}")  # fmt: skip
    step = meta["step"]
    if not _is_int(step) or step < 0:
        _fail(ckpt, f"'step' must be an integer >= 0, got {step!r}")
    named = CHECKPOINT_NAME.fullmatch(ckpt.name)
    if named and int(named.group(1)) != step:
        _fail(ckpt, f"'step' is {step} but the directory is {ckpt.name}")
    _validate_optional(meta, ckpt)


def _validate_optional(meta: dict, ckpt: Path) -> None:
    types = {"tokenizer": dict, "loader": dict, "optimizer": dict, "has_carried": bool,
             "files": dict, "init_source": dict, "world_size": int, "format_version": int}  # fmt: skip
    for key, kind in types.items():
        if key in meta and (not isinstance(meta[key], kind) or
                            (kind is int and isinstance(meta[key], bool))):  # fmt: skip
            _fail(ckpt, f"{key!r} must be a {kind.__name__}, got {type(meta[key]).__name__}")
    version = meta.get("format_version", 1)
    if version not in (1, FORMAT_VERSION):
        _fail(ckpt, f"unknown format_version {version!r} (this longssm reads 1 and 2)")
    if version >= 2:
        for key in ("files", "meta_sha256"):
            if key not in meta:
                _fail(ckpt, f"missing {key!r} (format 2 checksums every file)")
        if meta["meta_sha256"] != meta_digest(meta):
            raise CheckpointError(
                f"checkpoint file {ckpt / 'meta.json'} is damaged (its SHA-256 differs from "
                "meta_sha256)"
            )
    for name, digest in meta.get("files", {}).items():
        if name not in {f"{n}.safetensors" for n in TENSOR_FILES}:
            _fail(ckpt, f"'files' names an unknown file {name!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            _fail(ckpt, f"'files.{name}' is not a SHA-256 hex digest")
    if "optimizer" in meta:
        opt = meta["optimizer"]
        if not isinstance(opt.get("param_groups"), list) or not isinstance(
            opt.get("scalars", {}), dict
        ):
            _fail(ckpt, "'optimizer' must hold a 'param_groups' list and a 'scalars' mapping")
    if "loader" in meta:
        for key in ("epoch", "step_in_epoch"):
            if not _is_int(meta["loader"].get(key)):
                _fail(ckpt, f"'loader.{key}' must be an integer")
    if "tokenizer" in meta and meta["tokenizer"].get("kind") not in ("byte", "bpe", "hf"):
        _fail(ckpt, "'tokenizer.kind' must be 'byte', 'bpe' or 'hf'")


def verify_checkpoint(checkpoint: str | os.PathLike, require: tuple[str, ...] = ()) -> dict:
    """Read and check a whole checkpoint: the meta schema and every tensor file's SHA-256.

    Returns the metadata. Raises CheckpointError naming the first missing or damaged file.
    """
    ckpt = Path(checkpoint)
    meta = read_meta(ckpt, require)
    files = meta.get("files")
    needed = ["model.safetensors"] + (["optimizer.safetensors"] if "optimizer" in meta else [])
    for name in needed:
        if not (ckpt / name).is_file():
            raise CheckpointError(f"checkpoint {ckpt} lacks {name}")
    if files is None:
        # format 1 (before checksums): nothing to verify beyond the schema
        return meta
    for name in set(needed) - set(files):
        _fail(ckpt, f"'files' has no SHA-256 for {name}")
    for name, digest in sorted(files.items()):
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {ckpt} lacks {name}")
        if file_sha256(path) != digest:
            raise CheckpointError(
                f"checkpoint file {path} is damaged (SHA-256 differs from meta.json)"
            )
    return meta


def read_tensors(checkpoint: str | os.PathLike, name: str, required: bool = True) -> dict:
    """Load ``{name}.safetensors`` of a checkpoint (CPU tensors); ``{}`` when absent and optional.

    Call ``verify_checkpoint`` first: this only parses the file.
    """
    path = Path(checkpoint) / f"{name}.safetensors"
    if not path.is_file():
        if required:
            raise CheckpointError(f"checkpoint {checkpoint} lacks {path.name}")
        return {}
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt checkpoint file {path}: {exc}") from exc


def parameter_count(checkpoint: str | os.PathLike) -> int:
    """Weights stored in a checkpoint's ``model.safetensors``, read from its header only.

    Equals ``model.num_parameters()``: the file holds every parameter once (tied weights are
    saved once) and longssm models register no buffers.
    """
    path = Path(checkpoint) / "model.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


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


def load_tokenizer(meta: dict, ckpt: str | os.PathLike):
    """The tokenizer stored in ``meta``; CheckpointError when it is missing or cannot be rebuilt."""
    from longssm.data import tokenizer_from_dict

    if not isinstance(meta.get("tokenizer"), dict):
        raise CheckpointError(f"checkpoint {ckpt} stores no tokenizer")
    try:
        return tokenizer_from_dict(meta["tokenizer"])
    except Exception as exc:
        # the tokenizers library raises its own Exception types on a damaged BPE JSON
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {ckpt} holds a damaged tokenizer: {message}") from exc


def model_config_of(meta: dict, ckpt: str | os.PathLike):
    """The ``ModelConfig`` of a checkpoint's (validated) meta; CheckpointError when invalid."""
    from longssm.models import ModelConfig

    try:
        return ModelConfig.from_dict(meta["config"]["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt} has an invalid model config: {exc}") from exc


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild the trained model of a run or checkpoint, verified (``verify_checkpoint``).

    Returns ``(model, checkpoint_dir, meta)``; ``meta["config"]`` is the resolved run config
    (a mapping with ``model``, ``data`` and ``train`` tables) and ``meta["tokenizer"]`` the tokenizer.
    """
    from longssm.models import SSMLanguageModel

    ckpt = resolve_checkpoint(path)
    meta = verify_checkpoint(ckpt)
    cfg = model_config_of(meta, ckpt)
    dtype = getattr(torch, meta["config"].get("train", {}).get("dtype", "float32"))
    model = SSMLanguageModel(cfg).to(dtype=dtype)
    load_weights(model, ckpt)
    return model.to(device).eval(), ckpt, meta

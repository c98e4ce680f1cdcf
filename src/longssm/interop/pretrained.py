"""Model sources: a longssm run or checkpoint directory, or a local Hugging Face Mamba directory.

A Hugging Face directory is what ``save_pretrained`` writes for ``MambaForCausalLM`` or
``Mamba2ForCausalLM``: ``config.json`` (with ``model_type`` ``mamba`` / ``mamba2``),
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``) and, optionally,
``tokenizer.json`` (+ ``tokenizer_config.json`` naming its ``eos_token``). It is read from disk
only; nothing is ever downloaded, and pickled ``pytorch_model.bin`` weights are refused.

    source_kind(path)                 -> "run" | "hf" | "adapter" (one-line error: neither)
    load_source(path)                 -> (model, path, meta) for ``eval``/``generate``, any kind
                                         (a run, an adapted run ``adapter.json``, an HF directory)
    source_model_config(SRC)          -> the ModelConfig of a run/checkpoint or an HF directory
    source_tokenizer(SRC)             -> its tokenizer (``data.tokenizer = run:SRC`` reads it)
    resolve_init_source(SRC)          -> SRC pinned: a run's latest checkpoint directory, else SRC
    pretrained_run_config(cfg, overrides, SRC) -> the RunConfig of ``train --init-from SRC``
                                         (``train.init_from`` = the pinned source)
    load_pretrained_weights(model, SRC) -> copy SRC's weights into a model built from that config;
                                         returns the provenance (kind, checkpoint, step, SHA-256)
    export_hf(run, out)               a run's model as an HF directory transformers loads

``--init-from SRC`` takes a longssm run or checkpoint as well as an HF directory, and an adapted
run whose adapter is plain weights (``lora:R`` merged into W, or ``full``; the state methods and
prefix tuning are refused with one line): the same functions serve every kind, dispatching on
``source_kind``; an adapted run's architecture and tokenizer are its base's. A run's weights are read from its
latest checkpoint's ``model.safetensors`` after ``checkpoint.verify_checkpoint`` (schema and
SHA-256 of every file); nothing is unpickled.

``meta`` of an HF directory mimics a checkpoint's: ``config`` (``model`` from ``config.json``;
``data``/``train`` from ``longssm.json`` when the directory was written by ``export_hf``, else
empty), ``step`` and ``tokenizer``. ``longssm.json`` also records the run's own tokenizer, so an
exported byte-level run keeps its token cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from longssm import checkpoint as ckpt_io
from longssm.checkpoint import CheckpointError
from longssm.config import ConfigError, RunConfig, apply_overrides, read_config_file
from longssm.data import ByteTokenizer, HFTokenizer, Tokenizer, tokenizer_from_dict
from longssm.interop.adapters import (
    is_adapter_dir,
    load_adapted_source,
    load_merged,
    mergeable_base,
)
from longssm.models import ModelConfig, SSMLanguageModel

ARCHITECTURES = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM"}
SIDECAR = "longssm.json"


def is_hf_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory whose ``config.json`` is a transformers config (it names
    a ``model_type`` or ``architectures``), not a longssm run config."""
    p = Path(path)
    if not p.is_dir() or (p / "meta.json").exists():
        return False
    try:
        raw = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and ("model_type" in raw or "architectures" in raw)


def _raw_config(path: Path) -> dict:
    if not path.is_dir():
        raise CheckpointError(f"no such Hugging Face checkpoint directory: {path}")
    if is_adapter_dir(path) or (path / "meta.json").exists() or (path / "checkpoints").is_dir():
        kind = "an adapted run (base + adapter)" if is_adapter_dir(path) else "a longssm run"
        raise CheckpointError(f"{path} is {kind}, not a Hugging Face Mamba/Mamba-2 directory")
    if not is_hf_dir(path):
        raise CheckpointError(
            f"{path} is not a Hugging Face checkpoint: expected config.json with model_type "
            f"'mamba' or 'mamba2' ({' or '.join(ARCHITECTURES.values())}) and model.safetensors"
        )
    raw = json.loads((path / "config.json").read_text())
    kind = raw.get("model_type")
    if kind not in ARCHITECTURES:
        archs = raw.get("architectures") or []
        raise CheckpointError(
            f"{path} holds a {kind or ', '.join(map(str, archs)) or 'unknown'!r} model; longssm "
            f"reads {' and '.join(ARCHITECTURES.values())} checkpoints only"
        )
    return raw


def hf_model_config(path: str | os.PathLike) -> ModelConfig:
    """The ``ModelConfig`` of a local HF Mamba / Mamba-2 directory (its ``config.json``)."""
    path = Path(path)
    raw = _raw_config(path)
    try:
        import transformers
    except ImportError:
        raise CheckpointError(
            "reading a Hugging Face checkpoint needs transformers: pip install 'longssm[interop]'"
        ) from None
    from longssm.interop.hf_mamba import config_from_hf_mamba
    from longssm.interop.hf_mamba2 import config_from_hf_mamba2

    config_class = transformers.MambaConfig if raw["model_type"] == "mamba" else (
        transformers.Mamba2Config)  # fmt: skip
    try:
        # from_json_file decodes what save_pretrained encodes (an infinite time_step_limit)
        hf_config = config_class.from_json_file(str(path / "config.json"))
        if raw["model_type"] == "mamba":
            return config_from_hf_mamba(hf_config)
        return config_from_hf_mamba2(hf_config)
    except Exception as exc:
        # transformers' own validation errors are not all ValueErrors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}/config.json: {first}") from exc


def _weight_files(path: Path) -> list[Path]:
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"corrupt {index}: {exc}") from exc
        return [path / n for n in names]
    pickled = " (pytorch_model.bin is pickle and is not read)" if (
        path / "pytorch_model.bin").exists() else ""  # fmt: skip
    raise CheckpointError(f"{path} has no model.safetensors{pickled}")


def load_pretrained_weights(model: SSMLanguageModel, path: str | os.PathLike) -> dict:
    """Copy the weights of model source ``path`` (a longssm run or checkpoint, an HF directory, or
    a LoRA/full adapted run, merged) into ``model``, built from ``source_model_config(path)``.

    Returns the provenance of what was loaded (``init_source_record``). Give the path
    ``resolve_init_source`` returned (``apply_init_from`` puts it in ``train.init_from``) so the
    config and the weights come from one checkpoint even while the source run keeps training.
    """
    kind = _init_kind(path)
    if kind == "hf":
        load_hf_weights(model, path)
        return init_source_record(path, kind)
    if kind == "adapter":
        return init_source_record(path, kind, base=load_adapter_weights(model, path))
    ckpt, meta = _run_checkpoint(path)
    ckpt_io.load_weights(model, ckpt)
    return init_source_record(path, kind, checkpoint=ckpt, step=int(meta["step"]))


def init_source_record(path: str | os.PathLike, kind: str, checkpoint: Path | None = None,
                       step: int | None = None, base: Path | None = None) -> dict:  # fmt: skip
    """The provenance of an ``--init-from`` load, stored as ``init_source`` in every checkpoint's
    meta.json of the new run: ``kind`` (run / hf / adapter), ``path`` (as resolved), the absolute
    ``checkpoint`` directory read (a run's ``ckpt-*``, the HF or adapted-run directory), its
    ``step`` (a run's; an export's recorded step; an adapted run's base step; else None), ``base``
    (an adapted run's base checkpoint) and ``sha256``: the SHA-256 of every weights file read,
    by absolute path (computed once per process: ``checkpoint.file_sha256``)."""
    path = Path(path)
    if kind == "hf":
        files, checkpoint = _weight_files(path), path
        step = _sidecar(path).get("step")
    elif kind == "adapter":
        files, checkpoint = [path / "adapter.safetensors", base / "model.safetensors"], path
        step = ckpt_io.read_meta(base).get("step")
    else:
        files = [checkpoint / "model.safetensors"]
    record = {"kind": kind, "path": os.fspath(path), "checkpoint": str(checkpoint.resolve()),
              "step": step if isinstance(step, int) else None,
              "sha256": {str(f.resolve()): ckpt_io.file_sha256(f) for f in files}}  # fmt: skip
    if base is not None:
        record["base"] = str(base.resolve())
    return record


def resolve_init_source(path: str | os.PathLike) -> Path:
    """The one resolution of an ``--init-from`` source: a run directory becomes its latest
    checkpoint directory (``RUN/checkpoints/ckpt-N``), so the architecture, the tokenizer and the
    weights are all read from that checkpoint even when the source run writes a newer one
    meanwhile; a checkpoint, an HF directory or an adapted run (its base is pinned by SHA-256)
    is itself. One-line CheckpointError/AdaptError for a source that cannot be used."""
    if _init_kind(path) == "run":
        return ckpt_io.resolve_checkpoint(path)
    return Path(path)


def load_adapter_weights(model: SSMLanguageModel, path: str | os.PathLike) -> Path:
    """Copy the plain weights an adapted run equals (``lora:R`` merged, or ``full``) into
    ``model``, built from its base's config; returns the base checkpoint. The merge is formed in
    float64 and rounded once to ``model``'s dtype."""
    base = mergeable_base(path)
    merged = load_merged(path, dtype=torch.float64)  # one rounding, at the copy into ``model``
    own = model.state_dict()
    theirs = merged.state_dict()
    if set(own) != set(theirs) or any(own[k].shape != theirs[k].shape for k in own):
        raise CheckpointError(f"the merged model of adapted run {path} does not fit this model")
    with torch.no_grad():
        model.load_state_dict(theirs)
    return base


def load_hf_weights(model: SSMLanguageModel, path: str | os.PathLike) -> None:
    """Copy the weights of HF directory ``path`` into ``model`` (built from its config)."""
    from longssm.interop.hf_mamba import state_dict_from_hf_mamba
    from longssm.interop.hf_mamba2 import state_dict_from_hf_mamba2

    path = Path(path)
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(path):
        try:
            state.update(load_file(str(file)))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read {file}: {exc}") from exc
    convert = state_dict_from_hf_mamba if model.cfg.mixer == "mamba" else state_dict_from_hf_mamba2
    try:
        converted = convert(state, model.cfg)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        model.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=True)


def _sidecar(path: Path) -> dict:
    try:
        data = json.loads((path / SIDECAR).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def hf_tokenizer(path: str | os.PathLike) -> Tokenizer | None:
    """The tokenizer of HF directory ``path``: the run's own one for an export (``longssm.json``),
    else ``tokenizer.json`` read with ``tokenizers``; None when it has neither."""
    path = Path(path)
    saved = _sidecar(path).get("tokenizer")
    if isinstance(saved, dict):
        return tokenizer_from_dict(saved)
    if (path / "tokenizer.json").is_file():
        return HFTokenizer.load(path)
    return None


def _check_fits(tokenizer: Tokenizer, cfg: ModelConfig, where) -> None:
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ConfigError(
            f"the tokenizer of {where} has {tokenizer.vocab_size} ids but the model's embedding "
            f"has {cfg.vocab_size} rows; give a tokenizer that fits"
        )


def load_hf_dir(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``(model, path, meta)`` of a local HF Mamba / Mamba-2 directory, in float32, eval mode."""
    path = Path(path)
    cfg = hf_model_config(path)
    model = SSMLanguageModel(cfg)
    load_hf_weights(model, path)
    side = _sidecar(path)
    config = side.get("config") if isinstance(side.get("config"), dict) else {}
    meta = {
        "config": {"data": dict(config.get("data", {})), "train": {"dtype": "float32"},
                   "model": cfg.to_dict()},  # fmt: skip
        "step": int(side.get("step", 0)),
        "source": "huggingface",
    }
    tokenizer = hf_tokenizer(path)
    if tokenizer is not None:
        _check_fits(tokenizer, cfg, path)
        meta["tokenizer"] = tokenizer.to_dict()
    return model.to(device).eval(), path, meta


def source_kind(path: str | os.PathLike) -> str:
    """``"hf"`` (a local HF directory), ``"adapter"`` (an adapted run) or ``"run"`` (a longssm run
    or checkpoint directory); CheckpointError (one line) for a missing path or anything else."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such run or checkpoint (nor Hugging Face directory): {p}")
    if is_hf_dir(p):
        return "hf"
    if is_adapter_dir(p):
        return "adapter"
    if p.is_dir() and not (p / "meta.json").exists() and not (p / "checkpoints").is_dir():
        raise CheckpointError(
            f"{p} is neither a longssm run or checkpoint (checkpoints/ckpt-*, meta.json) nor a "
            "Hugging Face Mamba directory (config.json + model.safetensors)"
        )
    return "run"


def load_source(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``(model, directory, meta)`` of a longssm run/checkpoint, an adapted run (base + adapter,
    ``longssm adapt --out``; ``meta["adapter"]`` describes it) or a local HF directory."""
    kind = source_kind(path)
    if kind == "hf":
        return load_hf_dir(path, device)
    if kind == "adapter":
        return load_adapted_source(path, device)
    return ckpt_io.load_model(path, device=device)


def _init_kind(path: str | os.PathLike) -> str:
    """``source_kind`` of an ``--init-from`` source. An adapted run is one only when its adapter
    is plain weights (``lora:R``, ``full``) and its base is intact; the state methods and prefix
    tuning are refused with one line (``interop.adapters.mergeable_base``)."""
    kind = source_kind(path)
    if kind == "adapter":
        mergeable_base(path)
    return kind


def _checkpoint_of(path: str | os.PathLike) -> tuple[Path, dict]:
    """The (verified) checkpoint holding the architecture and tokenizer of a run or adapted-run
    source: the run's latest, or the adapted run's base."""
    if _init_kind(path) == "adapter":
        return _run_checkpoint(mergeable_base(path))
    return _run_checkpoint(path)


def _run_checkpoint(path: str | os.PathLike) -> tuple[Path, dict]:
    """The latest checkpoint of run ``path`` (or the checkpoint itself) and its verified meta."""
    ckpt = ckpt_io.resolve_checkpoint(path)
    return ckpt, ckpt_io.verify_checkpoint(ckpt)


def source_model_config(path: str | os.PathLike) -> ModelConfig:
    """The architecture of model source ``path``: an HF directory's ``config.json`` or the
    ``model`` table of a run's (verified) latest checkpoint."""
    if _init_kind(path) == "hf":
        return hf_model_config(path)
    ckpt, meta = _checkpoint_of(path)
    return ckpt_io.model_config_of(meta, ckpt)


def source_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer of model source ``path``: a run's stored one (its latest checkpoint's), an HF
    directory's ``tokenizer.json`` (or an export's own); ConfigError when it has none."""
    if _init_kind(path) == "hf":
        tokenizer = hf_tokenizer(path)
        if tokenizer is None:
            raise ConfigError(f"{path} has no tokenizer.json; give --data.tokenizer")
        return tokenizer
    ckpt, meta = _checkpoint_of(path)
    return ckpt_io.load_tokenizer(meta, ckpt)


def tokenizer_spec(path: str | os.PathLike) -> str | None:
    """The ``data.tokenizer`` spec of model source ``path``'s own tokenizer (None: it has none):
    ``bytes`` for a byte tokenizer, ``hf:DIR`` for an HF directory's tokenizer.json, ``run:RUN``
    for the tokenizer stored in a run's checkpoint (BPE or HF; it is not retrained)."""
    path = Path(path)
    if _init_kind(path) in ("run", "adapter"):
        ckpt, meta = _checkpoint_of(path)
        saved = meta.get("tokenizer")
        if not isinstance(saved, dict):
            return None
        return "bytes" if saved.get("kind") == "byte" else f"run:{path}"
    saved = _sidecar(path).get("tokenizer")
    if isinstance(saved, dict) and saved.get("kind") == "byte":
        return "bytes"
    if (path / "tokenizer.json").is_file():
        return f"hf:{path}"
    return None


def apply_init_from(raw: dict, init_from: str | os.PathLike) -> dict:
    """A raw run config (file + overrides) started from model source ``init_from`` (a longssm run
    or checkpoint, an HF directory or a lora:R/full adapted run).

    The source is resolved once (``resolve_init_source``): ``train.init_from`` is a run's latest
    checkpoint directory at this moment, and the architecture, tokenizer (``run:CKPT``) and, at
    training, the weights are all read from it. The model table becomes the source's architecture; a given ``model.*`` value that differs
    is a ConfigError naming both values. ``data.tokenizer`` defaults to the source's own.
    """
    path = resolve_init_source(init_from)
    theirs = source_model_config(path).to_dict()
    kind = source_kind(path)
    where = {"hf": f"{path}/config.json", "adapter": f"the model of adapted run {path}"}.get(
        kind, f"the model of run {path}")
    given = raw.get("model", {}) if isinstance(raw.get("model", {}), dict) else {}
    for key, value in given.items():
        if key not in theirs:
            raise ConfigError(f"unknown key model.{key}; valid keys: {sorted(theirs)}")
        if key == "mixer_options" and isinstance(value, dict):
            bad = {k: v for k, v in value.items() if theirs[key].get(k) != v}
            if bad:
                k = next(iter(bad))
                raise ConfigError(
                    f"--model.mixer_options {k}={bad[k]!r} contradicts {where} "
                    f"({k}={theirs[key].get(k)!r}); the architecture comes from --init-from"
                )
        elif value != theirs[key]:
            raise ConfigError(
                f"--model.{key}={value!r} contradicts {where} ({key}={theirs[key]!r}); "
                "the architecture comes from --init-from"
            )
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    out["model"] = theirs
    data = out.setdefault("data", {})
    spec = tokenizer_spec(path)
    if "tokenizer" not in data and spec is not None:
        data["tokenizer"] = spec
    out.setdefault("train", {})["init_from"] = os.fspath(path)
    return out


def pretrained_run_config(config: str | None, overrides: list[str],
                          init_from: str | os.PathLike) -> RunConfig:  # fmt: skip
    """The RunConfig of ``longssm train [CONFIG] --init-from SRC [overrides]`` (SRC a longssm run
    or checkpoint, or an HF directory)."""
    raw = apply_overrides(read_config_file(config) if config else {}, overrides)
    return RunConfig.from_dict(apply_init_from(raw, init_from))


def export_hf(run: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the model of a run or checkpoint as a transformers directory ``out``.

    ``out`` gets ``config.json`` + ``model.safetensors`` (``save_pretrained``), ``tokenizer.json``
    and ``tokenizer_config.json`` (the run's tokenizer, as a ``tokenizers`` document), and
    ``longssm.json`` (the run's config, step and tokenizer). Only ``mamba`` / ``mamba2`` models with
    a convolution, no MLP and RMSNorm have a transformers equivalent (ValueError otherwise).
    ``out`` must not exist or be empty; it is written to a temporary sibling and renamed.
    """
    from longssm.interop.hf_mamba import save_hf_mamba
    from longssm.interop.hf_mamba2 import save_hf_mamba2

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty folder; choose another --hf")
    model, ckpt, meta = ckpt_io.load_model(run)
    if model.cfg.mixer not in ARCHITECTURES:
        raise ConfigError(
            f"only mamba and mamba2 models export to transformers; {run} is {model.cfg.mixer!r}"
        )
    tokenizer = ckpt_io.load_tokenizer(meta, ckpt)
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise ConfigError(f"{run} is a symbol model (vocabulary {model.cfg.vocab_size}); it has "
                          "no text tokenizer to export")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        (save_hf_mamba if model.cfg.mixer == "mamba" else save_hf_mamba2)(model.float(), tmp)
        _write_tokenizer(tmp, tokenizer)
        side = {"config": meta["config"], "step": meta["step"], "checkpoint": str(ckpt),
                "tokenizer": tokenizer.to_dict()}  # fmt: skip
        (tmp / SIDECAR).write_text(json.dumps(side, indent=1))
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_tokenizer(directory: Path, tokenizer: Tokenizer) -> None:
    """``tokenizer.json`` and a ``tokenizer_config.json`` naming the separator as eos_token."""
    (directory / "tokenizer.json").write_text(tokenizer.tokenizers_json())
    sep = getattr(tokenizer, "sep_token", None) or "<|sep|>"
    if isinstance(tokenizer, ByteTokenizer):
        sep = "<|sep|>"
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": sep, "bos_token": sep,
              "model_max_length": 1 << 30}  # fmt: skip
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))

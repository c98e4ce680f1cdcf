"""Typed run configuration: model, data and training sections, loaded from TOML or YAML.

A run config file has up to three tables, ``[model]`` (``ModelConfig``), ``[data]`` (``DataConfig``)
and ``[train]`` (``TrainConfig``); anything missing takes its default. Command-line overrides use
dotted keys: ``--model.d_model=64 --train.policy=zero --data.seq_len=16``.
Every value is checked on construction; errors are ``ConfigError`` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from longssm.models.config import ModelConfig

FLOAT32_MAX = 3.4028234663852886e38


class ConfigError(ValueError):
    """An invalid configuration file, key or value."""


@dataclass(frozen=True)
class PolicyArgument:
    """The argument of a parameterised policy name such as ``bptt:K``."""

    letter: str
    """How the grammar writes it: K in ``bptt:K``."""
    pattern: str
    """Regular expression the argument text must match in full."""
    meaning: str
    """Its range, for error messages: ``K >= 1``."""
    parse: Callable[[str], Any]
    """Text -> value (int, float)."""


# The state-initialisation policies ``train.policy`` accepts: name -> its argument (None: none).
# This table is the one list of policy names. It lives here, not in ``longssm.policies``,
# because config validates ``train.policy`` on construction and sits below that room, which it must
# not import. ``longssm.policies`` maps each name to the class implementing it, each class
# declares the name and argument letter it implements, and that module refuses to import when the
# classes and this table disagree; so a name is valid here exactly when a class builds it there.
POLICY_GRAMMAR: dict[str, PolicyArgument | None] = {
    "zero": None,
    "previous": None,
    "bptt": PolicyArgument("K", r"[1-9][0-9]*", "K >= 1", int),
    "passing": None,
    "noise": None,
    "fitted-noise": None,
    "learned": None,
    "p-reset": PolicyArgument("P", r"0(\.[0-9]+)?|1(\.0+)?", "0 <= P <= 1", float),
}


def policy_choices() -> str:
    """The grammar in one line: ``zero, previous, bptt:K, ..., p-reset:P (K >= 1, 0 <= P <= 1)``."""
    names = [
        name if arg is None else f"{name}:{arg.letter}" for name, arg in POLICY_GRAMMAR.items()
    ]
    ranges = [arg.meaning for arg in POLICY_GRAMMAR.values() if arg is not None]
    return ", ".join(names) + (f" ({', '.join(ranges)})" if ranges else "")


def parse_policy(spec: str) -> tuple[str, Any]:
    """Split a policy spec into (name, argument value or None): ``"bptt:4"`` -> ``("bptt", 4)``.

    Raises ConfigError (one line listing every valid policy) for anything else.
    """
    name, _, text = str(spec).partition(":")
    if name in POLICY_GRAMMAR:
        arg = POLICY_GRAMMAR[name]
        if arg is None and text == "" and ":" not in str(spec):
            return name, None
        if arg is not None and re.fullmatch(arg.pattern, text):
            return name, arg.parse(text)
    raise ConfigError(f"train.policy must be one of {policy_choices()}, got {spec!r}")


@dataclass
class DataConfig:
    """Where tokens come from and how they are cut into training segments."""

    corpus: str = "python-stdlib"
    """Corpus spec: python-stdlib, shakespeare, python-docs, linux-docs, markov:K:V:SEED, or paths."""
    text_field: str = "text"
    """Text column of table corpora (.parquet, .jsonl/.json, .arrow, save_to_disk folders)."""
    tokenizer: str = "bytes"
    """bytes (vocabulary 257), bpe:VOCAB (byte-level BPE trained locally on the train split),
    hf:PATH (a tokenizer.json, or a directory holding one, read with ``tokenizers``) or run:PATH
    (the tokenizer stored in a longssm run's latest checkpoint, or an adapted run's base; set by
    ``--init-from RUN``)."""
    seq_len: int = 32
    """Training segment length T."""
    batch_size: int = 16
    """Number of parallel contiguous streams B (ignored when tokens_per_step > 0)."""
    tokens_per_step: int = 0
    """If > 0, B = tokens_per_step // seq_len, so runs at different T see the same tokens per step."""
    random_offset: bool = False
    """Shift all streams by a seeded random offset < T at each epoch start."""
    cache_dir: str = ""
    """Token cache directory ('' = $LONGSSM_CACHE or ~/.cache/longssm/tokens)."""
    max_tokens: int = 0
    """If > 0, use only the first max_tokens tokens of each split (quick experiments)."""

    def __post_init__(self) -> None:
        _positive(self, "seq_len", "batch_size")
        _non_negative(self, "tokens_per_step", "max_tokens")
        if not isinstance(self.corpus, str) or not self.corpus.strip():
            raise ConfigError("data.corpus must be a non-empty corpus spec")
        if not re.fullmatch(r"bytes|bpe:[1-9][0-9]*|hf:.+|run:.+", str(self.tokenizer)):
            raise ConfigError(
                "data.tokenizer must be 'bytes', 'bpe:VOCAB', 'hf:PATH' or 'run:PATH', got "
                f"{self.tokenizer!r}"
            )
        if self.tokens_per_step and self.tokens_per_step < self.seq_len:
            raise ConfigError(
                f"data.tokens_per_step ({self.tokens_per_step}) must be >= data.seq_len ({self.seq_len})"
            )

    @property
    def effective_batch_size(self) -> int:
        return self.tokens_per_step // self.seq_len if self.tokens_per_step else self.batch_size


@dataclass
class TrainConfig:
    """Optimisation, state-initialisation policy, logging and checkpointing."""

    policy: str = "previous"
    """Initial state of each segment: zero, previous, bptt:K, passing, noise, fitted-noise, learned,
    p-reset:P."""
    noise_std: float = 1.0
    """Standard deviation of the noise policy."""
    reset_at_doc_boundaries: bool = False
    """Zero a row's carried state when a new document starts inside its previous segment."""
    steps: int = 1000
    """Optimiser steps."""
    lr: float = 3e-3
    """Peak learning rate."""
    ssm_lr: float = 0.0
    """Learning rate of SSM dynamics parameters (0 = same as lr)."""
    weight_decay: float = 0.1
    """AdamW weight decay (never applied to parameters tagged no-weight-decay)."""
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 50
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    grad_accum: int = 1
    """Micro-steps per optimiser step (each micro-step takes the next segment of every stream)."""
    seed: int = 0
    dtype: str = "float32"
    """Parameter dtype: float32 or float64."""
    autocast: str = "none"
    """none or bf16 (CPU/GPU autocast)."""
    device: str = "cpu"
    """cpu, cuda, or auto."""
    threads: int = 0
    """CPU threads for torch and numba (0 = the libraries' defaults; 1 helps on a busy 2-core machine)."""
    log_every: int = 10
    eval_every: int = 200
    """Validate at the training length every N steps (0 = only at the end)."""
    eval_batches: int = 8
    diag_every: int = 50
    """Stability diagnostics every N steps (0 = never)."""
    checkpoint_every: int = 500
    """Checkpoint every N steps (0 = only at the end)."""
    keep_last: int = 3
    """Checkpoints kept (0 = all)."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = False
    """Also write TensorBoard event files under RUN/tb/ (needs the tensorboard package)."""
    init_from: str = ""
    """Start from the weights of a longssm run or checkpoint, a local Hugging Face Mamba /
    Mamba-2 directory, or a lora:R / full adapted run (LoRA merged into the weights) ('' = random
    init); the model table is then that source's architecture (``longssm train --init-from``).
    A run directory is pinned to its latest checkpoint (RUN/checkpoints/ckpt-N) when the config
    is made; the checkpoints record what was loaded as ``init_source`` (with SHA-256)."""

    def __post_init__(self) -> None:
        parse_policy(self.policy)
        _positive(self, "steps", "lr", "grad_accum", "log_every", "eval_batches")
        _non_negative(
            self,
            "ssm_lr",
            "weight_decay",
            "warmup_steps",
            "grad_clip",
            "eval_every",
            "diag_every",
            "checkpoint_every",
            "keep_last",
            "noise_std",
            "threads",
        )
        for name in ("beta1", "beta2", "min_lr_ratio"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"train.{name} must lie in [0, 1], got {value!r}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"train.dtype must be float32 or float64, got {self.dtype!r}")
        if self.autocast not in ("none", "bf16"):
            raise ConfigError(f"train.autocast must be none or bf16, got {self.autocast!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"train.device must be cpu, cuda or auto, got {self.device!r}")


@dataclass
class RunConfig:
    """A whole run: model, data and training."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError(
                f"a run config must be a mapping of sections, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - {"model", "data", "train"})
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; valid: model, data, train")
        return cls(
            model=_build(ModelConfig, data.get("model", {}), "model"),
            data=_build(DataConfig, data.get("data", {}), "data"),
            train=_build(TrainConfig, data.get("train", {}), "train"),
        )

    def __post_init__(self) -> None:
        # checks that join two sections, so a run fails before its first step, not during it
        if parse_policy(self.train.policy)[0] == "passing" and self.data.effective_batch_size < 2:
            raise ConfigError(
                "train.policy=passing needs at least 2 streams (data.batch_size or "
                f"tokens_per_step // seq_len), got {self.data.effective_batch_size}"
            )


def _positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{_section(obj)}.{name} must be > 0, got {value!r}")


def _non_negative(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{_section(obj)}.{name} must be >= 0, got {value!r}")


def _section(obj) -> str:
    return {"DataConfig": "data", "TrainConfig": "train"}.get(type(obj).__name__, "model")


def _build(cls, values: Any, section: str):
    if not isinstance(values, dict):
        raise ConfigError(
            f"[{section}] must be a table of key = value, got {type(values).__name__}"
        )
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in [{section}]; valid keys: {sorted(known)}")
    hints = get_type_hints(cls)
    checked = {k: _check_type(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    try:
        return cls(**checked)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[{section}] {exc}") from exc


def _check_type(value: Any, hint: Any, name: str) -> Any:
    """Check (and gently coerce int -> float) a value against a field's annotation."""
    origin = getattr(hint, "__origin__", None)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError as exc:
            raise ConfigError(f"{name} is too large: {value!r}") from exc
        # beyond float32's range a value overflows inside torch (3.4e38)
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            raise ConfigError(f"{name} must be a finite number (|x| <= 3.4e38), got {value!r}")
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
    elif origin is dict and not isinstance(value, dict):
        raise ConfigError(f"{name} must be a table/mapping, got {value!r}")
    return value


def parse_value(text: str) -> Any:
    """A command-line value: JSON if it parses (numbers, true/false, {...}), else the raw string."""
    lowered = text.strip()
    if lowered in ("true", "True"):
        return True
    if lowered in ("false", "False"):
        return False
    try:
        return json.loads(lowered)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (a leading ``--`` is allowed) to a raw config mapping."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r} must look like --section.key=value")
        key, value = text.split("=", 1)
        parts = key.split(".")
        if len(parts) < 2 or parts[0] not in ("model", "data", "train"):
            raise ConfigError(
                f"override key {key!r} must be section.key with section model, data or train"
            )
        table = data.setdefault(parts[0], {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{parts[0]}] must be a table")
        for part in parts[1:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"override key {key!r} goes through a non-table value")
        table[parts[-1]] = parse_value(value)
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML (.toml) or YAML (.yaml/.yml, safe loader) file into a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:
                import tomli as tomllib
            with open(p, "rb") as f:
                return tomllib.load(f)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ModuleNotFoundError as exc:
                raise ConfigError("YAML configs need PyYAML: pip install 'longssm[yaml]'") from exc
            with open(p) as f:
                data = yaml.safe_load(f)
            if data is not None and not isinstance(data, dict):
                raise ConfigError(
                    f"{p}: the top level must be a mapping of sections, got {type(data).__name__}"
                )
            return data or {}
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot parse {p}: {str(exc).splitlines()[0]}") from exc
    raise ConfigError(f"config file must end in .toml, .yaml or .yml, got {p.name}")


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a config file (or start from defaults when ``path`` is None) and apply overrides."""
    data = read_config_file(path) if path is not None else {}
    return RunConfig.from_dict(apply_overrides(data, overrides or []))

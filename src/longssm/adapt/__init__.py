"""Adapting and compressing trained SSMs: state tuning (PEFT), pruning, token reduction.

Example:
    summary = adapt_run("runs/base", "state-offset-h", "../shared/corpora/austen", "runs/adapted",
                        AdaptSettings(steps=200))
    model, meta, base_meta = load_adapted("runs/adapted")       # base + adapter
    report = prune_run("runs/base", "wanda", 0.5, "runs/wanda50")  # a plain run, loadable anywhere
"""

from longssm.adapt.adapter import (
    adapter_tensors,
    apply_adapter,
    attach,
    file_sha256,
    load_adapted,
    read_adapter,
    save_adapter,
)
from longssm.adapt.errors import AdaptError
from longssm.adapt.prune import PRUNE_METHODS, prune_model
from longssm.adapt.prune_run import prune_run
from longssm.adapt.reduce import (
    REDUCE_METHODS,
    ReduceSpec,
    parse_reduce,
    reduced_forward,
    reduced_nll,
)
from longssm.adapt.reduce_eval import reduce_eval
from longssm.adapt.score import paired_gain, position_gain, summarise, window_nll
from longssm.adapt.tune import AdaptSettings, adapt_run
from longssm.interop.adapters import load_merged
from longssm.models.adapters import (
    STATE_METHODS,
    LoRALinear,
    StateAdapter,
    is_mergeable,
    lora_spec,
    merge_adapter,
    state_adapter,
)

__all__ = [
    "REDUCE_METHODS",
    "ReduceSpec",
    "parse_reduce",
    "reduced_forward",
    "reduced_nll",
    "reduce_eval",
    "PRUNE_METHODS",
    "prune_model",
    "prune_run",
    "STATE_METHODS",
    "AdaptError",
    "AdaptSettings",
    "StateAdapter",
    "LoRALinear",
    "lora_spec",
    "is_mergeable",
    "load_merged",
    "merge_adapter",
    "adapt_run",
    "adapter_tensors",
    "apply_adapter",
    "attach",
    "file_sha256",
    "load_adapted",
    "paired_gain",
    "position_gain",
    "read_adapter",
    "save_adapter",
    "state_adapter",
    "summarise",
    "window_nll",
]

"""Save a trained adapter small (``RUN2/adapter.safetensors`` + ``adapter.json``).

Applying and loading an adapter is below this room so every model source can do it:
the modules and ``attach`` / ``apply_adapter`` are in ``longssm.models.adapters``, reading
``RUN2`` (``read_adapter``, ``load_adapted``, the base's SHA-256 check) in
``longssm.interop.adapters``; ``longssm.interop.pretrained.load_source`` (``eval``, ``generate``)
reads an adapted run like any run. They are re-exported here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from longssm.interop.adapters import (
    ADAPTER_FORMAT,
    META,
    TENSORS,
    file_sha256,
    load_adapted,
    read_adapter,
)
from longssm.models.adapters import (
    AdaptError,
    adapter_tensors,
    apply_adapter,
    attach,
    check_method,
)

__all__ = ["ADAPTER_FORMAT", "META", "TENSORS", "adapter_tensors", "apply_adapter", "attach",
           "check_free", "check_method", "file_sha256", "load_adapted", "read_adapter",
           "save_adapter"]


def check_free(out: str | os.PathLike) -> Path:
    """``out`` as a Path if nothing is there yet (nothing is ever overwritten), else AdaptError."""
    out = Path(out)
    if out.exists():
        raise AdaptError(f"{out} already exists; give a new --out (nothing is overwritten)")
    return out


def save_adapter(out: str | os.PathLike, model: nn.Module, meta: dict) -> Path:
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

"""Memory a training step keeps for its backward: the benchmark LM's saved tensors, in MiB.

    PYTHONPATH=src python benchmarks/saved_memory.py

Runs the forward of case 3's LM (byte-level Mamba, d_model 128, 4 layers, d_state 16, expand 2,
d_conv 4) at T=32 x batch 64 and T=1024 x batch 2 under ``torch.autograd.graph.saved_tensors_hooks``
and sums the distinct storages saved for the backward (the fused kernels' ``save_for_backward``
included). Unlike a peak-RSS reading it does not depend on the allocator's pools; run it on two
commits (``PYTHONPATH=<checkout>/src``) to compare them.
"""

from __future__ import annotations

import torch
from run import CASE3_MODEL, build_model

from longssm.ops.cross_entropy import cross_entropy


def saved_bytes(T: int, batch: int) -> tuple[int, int]:
    """(bytes, number of storages) saved for the backward by one forward of the LM."""
    torch.manual_seed(0)
    model = build_model("ours_auto", CASE3_MODEL).train()
    tokens = torch.randint(0, 257, (batch, T + 1), generator=torch.Generator().manual_seed(0))
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits, _ = model(tokens[:, :-1])  # (B, T, V)
        cross_entropy(logits.reshape(-1, 257), tokens[:, 1:].reshape(-1))  # the training loss
    return sum(storages.values()), len(storages)


def main() -> int:
    torch.set_num_threads(1)
    for T, batch in ((32, 64), (1024, 2)):
        size, count = saved_bytes(T, batch)
        print(f"T={T} x {batch}: {size / 2**20:.1f} MiB saved for backward in {count} storages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

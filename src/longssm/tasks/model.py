"""``TaggingModel``: the blocks of an ``SSMLanguageModel`` with a per-position readout.

Token tasks embed ids as the language model does; continuous tasks (signatures, functionals)
replace the embedding by a linear map from R^{d_in}. The readout is a linear layer to ``n_out``
(multi-hot logits, class logits or one regression value), never tied to the embedding.

Glossary:
    inputs   (B, L) ids < n_in, or (B, L, n_in) floats
    outputs  (B, L, n_out)
    state    tuple of layer states, as for ``SSMLanguageModel`` (None = zeros)
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from longssm.models import ModelConfig, SSMLanguageModel


class TaggingModel(nn.Module):
    def __init__(self, cfg: ModelConfig, n_in: int, n_out: int, continuous: bool):
        super().__init__()
        cfg = dataclasses.replace(cfg, vocab_size=n_in, tie_embeddings=False)
        lm = SSMLanguageModel(cfg)
        self.cfg, self.continuous = cfg, continuous
        self.embed = nn.Linear(n_in, cfg.d_model) if continuous else lm.embedding
        self.blocks, self.norm_f = lm.blocks, lm.norm_f
        self.head = nn.Linear(cfg.d_model, n_out)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def initial_state(self, batch_size: int, device=None, dtype=None):
        """Zero state for every block (the policies' ``model.initial_state``)."""
        param = self.head.weight
        device = param.device if device is None else device
        dtype = param.dtype if dtype is None else dtype
        return tuple(
            b.mixer.initial_state(batch_size, device=device, dtype=dtype) for b in self.blocks
        )

    def forward(self, inputs: torch.Tensor, state=None):
        """Returns outputs (B, L, n_out) and the final state (one entry per block)."""
        x = self.embed(inputs if self.continuous else inputs.long())  # (B, L, D)
        new_state = []
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, None if state is None else state[i])
            new_state.append(layer_state)
        return self.head(self.norm_f(x)), tuple(new_state)

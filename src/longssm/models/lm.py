"""``SSMLanguageModel``: embedding -> residual blocks (pre-norm -> mixer [-> MLP]) -> norm -> head.

Glossary:
    tokens   (batch, time) integer ids < vocab_size
    logits   (batch, time, vocab_size)
    state    tuple with one layer state per block (see ``longssm.models.state``); ``None`` = zeros
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from longssm.layers.base import has_hooks
from longssm.models.config import ModelConfig
from longssm.models.mixers import build_mixer
from longssm.models.norms import add_and_norm, make_norm
from longssm.models.state import ModelState


class GatedMLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``, hidden = ratio * d_model."""

    def __init__(self, d_model: int, ratio: int):
        super().__init__()
        hidden = ratio * d_model
        self.up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.up(x).chunk(2, dim=-1)  # (B, T, H) each
        return self.down(F.silu(gate) * value)


class Block(nn.Module):
    """``x + mixer(norm(x))`` then, if configured, ``x + mlp(mlp_norm(x))``; the mixer comes from
    the registry (``longssm.models.mixers``)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.mixer = build_mixer(cfg, layer_idx)
        if cfg.mlp_ratio > 0:
            self.mlp_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
            self.mlp = GatedMLP(cfg.d_model, cfg.mlp_ratio)
        else:
            self.mlp = None

    def forward(self, x, state=None):
        x, y, state = self.forward_pending(x, None, state)
        return x + y, state

    def forward_pending(self, x, pending, state=None):
        """The block with its last residual add left to the caller: returns (x, y, state), the
        block's output being x + y. ``pending`` (the previous block's y, or None) is added to x
        first, inside the norm where it can be (``add_and_norm``): the language model hands each
        block's y to the next block's norm, and the last one's to ``norm_f``. x, y (B, T, D)."""
        x, h = add_and_norm(self.norm, x, pending)
        y, state = self.mixer(h, state)  # (B, T, D)
        if self.mlp is not None:
            x, h = add_and_norm(self.mlp_norm, x, y)
            y = self.mlp(h)
        return x, y, state

    def step(self, x_t, state):
        y_t, state = self.mixer.step(self.norm(x_t), state)  # (B, D)
        x_t = x_t + y_t
        if self.mlp is not None:
            x_t = x_t + self.mlp(self.mlp_norm(x_t))
        return x_t, state


class SSMLanguageModel(nn.Module):
    """A stack of SSM blocks over token embeddings with a (tied) output head.

    Args:
        cfg: the model configuration.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm_f = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=0.02)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def initial_state(self, batch_size: int, device=None, dtype=None) -> ModelState:
        """Zero state for every block; dtype defaults to the model's parameter dtype."""
        param = self.embedding.weight
        device = param.device if device is None else device
        dtype = param.dtype if dtype is None else dtype
        return tuple(
            b.mixer.initial_state(batch_size, device=device, dtype=dtype) for b in self.blocks
        )

    def _check_tokens(self, tokens: torch.Tensor, ndim: int) -> None:
        layout = "(batch, time)" if ndim == 2 else "(batch,)"
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor {layout}, got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(
                f"tokens must be an integer tensor (torch.long), got dtype {tokens.dtype}"
            )
        if tokens.dim() != ndim:
            raise ValueError(f"tokens must have shape {layout}, got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.cfg.vocab_size}) (vocab_size), got range "
                f"[{tokens.min().item()}, {tokens.max().item()}]"
            )

    def _check_state(self, state) -> None:
        if not isinstance(state, tuple) or len(state) != len(self.blocks):
            got = len(state) if isinstance(state, (tuple, list)) else type(state).__name__
            raise ValueError(
                f"state must be a tuple of {len(self.blocks)} layer states (one per block), got {got}"
            )

    def forward(self, tokens: torch.Tensor, state: ModelState | None = None):
        """Args: tokens (batch, time) ids; state: per-block states or None (zeros).

        Returns: logits (batch, time, vocab_size) and the final state (per-block tuple).
        """
        self._check_tokens(tokens, 2)
        if state is not None:
            self._check_state(state)
        x = self.embedding(tokens.long())  # (B, T, D)
        new_state = []
        pending = None  # the last block's output is x + pending (see Block.forward_pending)
        for i, block in enumerate(self.blocks):
            layer_state = None if state is None else state[i]
            if has_hooks(block):  # hooks see the block's own input and output
                x = x if pending is None else x + pending
                (x, layer_state), pending = block(x, layer_state), None
            else:
                x, pending, layer_state = block.forward_pending(x, pending, layer_state)
            new_state.append(layer_state)
        logits = self.lm_head(add_and_norm(self.norm_f, x, pending)[1])  # (B, T, V)
        return logits, tuple(new_state)

    def step(self, token: torch.Tensor, state: ModelState):
        """One decoding step. Args: token (batch,) ids; state. Returns logits (batch, V), state."""
        self._check_tokens(token, 1)
        self._check_state(state)
        x = self.embedding(token.long())  # (B, D)
        new_state = []
        for block, layer_state in zip(self.blocks, state):
            x, layer_state = block.step(x, layer_state)
            new_state.append(layer_state)
        return self.lm_head(self.norm_f(x)), tuple(new_state)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        n: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        state: ModelState | None = None,
        generator: torch.Generator | None = None,
    ):
        """Sample ``n`` tokens after ``prompt`` (batch, time) with a recurrent state.

        temperature 0 means greedy. Returns the new tokens (batch, n) and the final state.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
        if prompt.dim() == 2 and prompt.shape[1] == 0:
            raise ValueError("prompt must contain at least one token")
        logits, state = self(prompt, state)
        logits = logits[:, -1]  # (B, V)
        out = []
        for i in range(n):
            if temperature == 0:
                token = logits.argmax(-1)  # (B,)
            else:
                scaled = logits.float() / temperature
                if top_k is not None:
                    kth = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                probs = torch.softmax(scaled, dim=-1)
                if generator is not None:  # sample where the generator lives (a CPU one on CUDA)
                    probs = probs.to(generator.device)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
                token = token.to(logits.device)
            out.append(token)
            if i + 1 < n:
                logits, state = self.step(token, state)
        if not out:
            return prompt.new_zeros((prompt.shape[0], 0)), state
        tokens = torch.stack(out, dim=1)  # (B, n)
        # the state must include the last sampled token so generation can continue from it
        _, state = self.step(tokens[:, -1], state)
        return tokens, state

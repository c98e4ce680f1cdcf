"""A synthetic corpus with a known ideal loss: a random stationary k-th order Markov chain.

A chain of order ``k`` over ``V`` symbols draws symbol ``x_t`` from ``P(x_t | x_{t-k} .. x_{t-1})``.
Each of the ``V**k`` conditional distributions is drawn once from a symmetric Dirichlet with
concentration ``alpha`` (small ``alpha``: peaked, learnable rows; large: near uniform), seeded.

Glossary (code name -> symbol):
    order        k, the context length (k = 0 is an i.i.d. source)
    vocab_size   V, the number of symbols
    probs        P, shape (V**k, V): row s is the next-symbol distribution after context s, with
                 context (x_1 .. x_k) indexed as s = sum_i x_i V**(k-i)
    stationary   pi, shape (V**k,): the stationary distribution of the chain on k-grams
    entropy_rate H = sum_s pi(s) H(P(. | s)), in nats per symbol: the cross-entropy a perfect model
                 reaches, so the loss floor of a language model trained on samples

Samples start from a context drawn from ``pi``, so every position of a sample is stationary.
"""

from __future__ import annotations

import bisect
import itertools
import math

import numpy as np

from longssm.data.errors import DataError

#: Largest ``V**(k+1)`` accepted: the transition table is held in memory as Python lists.
MAX_TABLE_SIZE = 1 << 22


class MarkovChain:
    """A random stationary k-th order Markov chain over ``vocab_size`` symbols.

    Args:
        order: k >= 0, the number of previous symbols the next one depends on.
        vocab_size: V >= 2, the number of symbols.
        seed: seeds the transition table.
        alpha: Dirichlet concentration of each transition row (> 0).
    """

    def __init__(self, order: int, vocab_size: int, seed: int = 0, alpha: float = 0.5):
        if order < 0 or vocab_size < 2 or alpha <= 0:
            raise DataError(
                f"Markov chain needs order >= 0, vocab_size >= 2 and alpha > 0; "
                f"got order={order}, vocab_size={vocab_size}, alpha={alpha}"
            )
        if vocab_size ** (order + 1) > MAX_TABLE_SIZE:
            raise DataError(
                f"Markov chain table V**(k+1) = {vocab_size}**{order + 1} exceeds "
                f"{MAX_TABLE_SIZE}; use a smaller order or vocabulary"
            )
        self.order = order
        self.vocab_size = vocab_size
        self.seed = seed
        self.alpha = alpha
        self.num_contexts = vocab_size**order
        rng = np.random.default_rng(seed)
        # (V**k, V): one next-symbol distribution per context
        self.probs = rng.dirichlet(np.full(vocab_size, alpha), size=self.num_contexts)
        self.stationary = self._stationary()

    def _stationary(self, tol: float = 1e-14, max_iter: int = 100_000) -> np.ndarray:
        """Stationary distribution of the k-gram chain, by power iteration to machine precision.

        Context s followed by symbol x moves to context (s * V + x) mod V**k; the rows have full
        support (Dirichlet draws are positive), so the chain is primitive and the iteration
        converges geometrically.
        """
        n, v = self.num_contexts, self.vocab_size
        if n == 1:
            return np.ones(1)
        # (V**k, V): the context reached from context s after symbol x
        nxt = (np.arange(n)[:, None] * v + np.arange(v)[None, :]) % n
        pi = np.full(n, 1.0 / n)
        for _ in range(max_iter):
            new = np.bincount(nxt.ravel(), weights=(pi[:, None] * self.probs).ravel(), minlength=n)
            new /= new.sum()
            if np.abs(new - pi).sum() < tol:
                return new
            pi = new
        raise DataError(
            f"Markov chain stationary distribution did not converge in {max_iter} iterations; "
            "use a larger alpha"
        )

    def entropy_rate(self) -> float:
        """Exact entropy rate H = sum_s pi(s) H(P(. | s)) in nats per symbol.

        Returns:
            The cross-entropy loss (nats/token) of the ideal predictor of a long sample.
        """
        p = self.probs
        row_entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)  # (V**k,)
        return float(self.stationary @ row_entropy)

    def sample(self, n_tokens: int, seed: int = 0) -> np.ndarray:
        """Draw a stationary sample.

        Args:
            n_tokens: length of the sample (>= 1).
            seed: seeds the draw (independent of the table's seed).

        Returns:
            (n_tokens,) int64 array of symbols in [0, V).
        """
        if n_tokens < 1:
            raise DataError(f"Markov sample length must be >= 1, got {n_tokens}")
        k, v, n = self.order, self.vocab_size, self.num_contexts
        rng = np.random.default_rng([self.seed, seed])
        out = np.empty(n_tokens, dtype=np.int64)
        context = int(rng.choice(n, p=self.stationary))
        # The first k symbols are the digits of the stationary initial context, most significant
        # first, so the whole sample (not only what follows it) is drawn from the stationary law.
        digits = [(context // v ** (k - 1 - i)) % v for i in range(k)]
        m = min(k, n_tokens)
        out[:m] = digits[:m]
        if n_tokens <= k:
            return out
        # Python lists and bisect are several times faster per step than numpy calls here.
        cdf = [list(itertools.accumulate(row)) for row in self.probs.tolist()]
        uniforms = rng.random(n_tokens - k).tolist()
        symbols = []
        last = v - 1
        for u in uniforms:
            x = min(bisect.bisect_right(cdf[context], u), last)
            symbols.append(x)
            context = (context * v + x) % n
        out[k:] = symbols
        return out

    def __repr__(self) -> str:
        return (
            f"MarkovChain(order={self.order}, vocab_size={self.vocab_size}, seed={self.seed}, "
            f"alpha={self.alpha}, entropy_rate={self.entropy_rate():.4f} nats "
            f"= {self.entropy_rate() / math.log(2):.4f} bits)"
        )

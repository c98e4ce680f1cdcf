"""Which tokens are scored at each evaluation length, and where each window's state comes from.

Glossary:
    L          evaluation length: a window has L input tokens and L targets (the inputs shifted by
               one), so it spans L + 1 tokens; consecutive windows share their boundary token, which
               makes the windows of a row one contiguous stream.
    start      token offset of the first scored window (the same for every L of one evaluation, so
               every L scores the same text when the budget allows).
    row        a contiguous stream of ``windows_per_row`` (k) windows; ``rows`` (b) rows are scored,
               row r covering windows r*k .. r*k + k - 1; round j processes window j of every row.
    donor row  an unscored row after the scored ones (``shuffled`` only), so that even a single
               scored row has unrelated windows to take states from.
    warm-up    round -1: the L tokens before each row's first window, processed but not scored, so
               every scored window of ``stream`` and ``shuffled`` starts from a carried state.

Protocols:
    reset      every window starts from the zero state (the length-extension test).
    stream     window j of row r starts from the final state of window j - 1 of row r (round -1 is
               the warm-up window: the L tokens right before the row).
    shuffled   window j of row r starts from the final state of window j - 1 of row pi(r), pi a fixed
               seeded permutation of rows whose donor window is never the window itself, nor the
               window right before or after it in the text; states are thus carried, but from
               unrelated text.

Budget: ``n_windows = n_tokens // L`` (at least one), ``rows = min(batch_size, n_windows)``,
``windows_per_row = n_windows // rows``; the remainder (fewer than ``rows`` windows) is dropped.
With powers of two for L, n_tokens and batch_size every L scores exactly targets
``tokens[start + 1 : start + n_tokens + 1]``. When the stream is too short the number of windows
shrinks to what fits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from longssm.eval.errors import EvalError

PROTOCOLS = ("reset", "stream", "shuffled")
#: Rows (scored plus donors) of a shuffled plan: the fewest for which a valid permutation exists
#: when every row holds one window.
MIN_SHUFFLED_ROWS = 4


@dataclass(frozen=True)
class WindowPlan:
    """The windows scored at one length under one protocol (see the module docstring).

    Attributes:
        length: L, input tokens per window.
        protocol: reset, stream or shuffled.
        start: token offset of window (row 0, round 0).
        rows: scored rows b.
        windows_per_row: k.
        donor_rows: unscored rows after the scored ones (shuffled only).
        donor_of_row: ``donor_of_row[r]`` is the row whose previous final state row r takes
            (shuffled); the identity for stream; empty for reset.
    """

    length: int
    protocol: str
    start: int
    rows: int
    windows_per_row: int
    donor_rows: int = 0
    donor_of_row: tuple[int, ...] = ()

    @property
    def total_rows(self) -> int:
        return self.rows + self.donor_rows

    @property
    def warmup(self) -> bool:
        """Whether round -1 (unscored) runs before the scored rounds."""
        return self.protocol != "reset"

    @property
    def n_windows(self) -> int:
        return self.rows * self.windows_per_row

    @property
    def n_scored(self) -> int:
        """Target tokens scored."""
        return self.n_windows * self.length

    @property
    def tokens_processed(self) -> int:
        """Input tokens run through the model, warm-up and donor rows included."""
        rounds = self.windows_per_row + int(self.warmup)
        return self.total_rows * rounds * self.length

    def window_start(self, row: int, round_: int) -> int:
        """Offset of the first input token of window ``round_`` of ``row`` (round -1: warm-up)."""
        return self.start + (row * self.windows_per_row + round_) * self.length

    def row_starts(self, round_: int) -> np.ndarray:
        """(total_rows,) offsets of round ``round_``'s windows."""
        return np.array([self.window_start(r, round_) for r in range(self.total_rows)], np.int64)

    @property
    def end_token(self) -> int:
        """One past the last token read (the last window's last target)."""
        return self.window_start(self.total_rows - 1, self.windows_per_row - 1) + self.length + 1


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)} or all")
    return protocol


def plan_windows(
    n_available: int,
    length: int,
    protocol: str,
    n_tokens: int,
    batch_size: int,
    start: int,
    seed: int = 0,
) -> WindowPlan:
    """Lay out the windows of one length (see the module docstring for the rule).

    Args:
        n_available: tokens in the stream.
        length: L >= 1.
        protocol: reset, stream or shuffled.
        n_tokens: target tokens to score (a budget; at least one window is scored).
        batch_size: the most scored rows processed at once.
        start: offset of the first scored window; must be >= L for stream and shuffled (warm-up).
        seed: seeds the shuffled permutation.

    Returns:
        The plan. Raises ``EvalError`` when not even one window fits.
    """
    check_protocol(protocol)
    for name, value in (("length", length), ("n_tokens", n_tokens), ("batch_size", batch_size)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise EvalError(f"{name} must be a positive integer, got {value!r}")
    if protocol != "reset" and start < length:
        raise EvalError(f"start ({start}) must be >= L ({length}) for the {protocol} warm-up window")
    # windows that fit after start
    cap = (n_available - 1 - start) // length
    n_windows = min(max(1, n_tokens // length), cap)
    while n_windows >= 1:
        rows = min(batch_size, n_windows)
        per_row = n_windows // rows
        donors = max(0, MIN_SHUFFLED_ROWS - rows) if protocol == "shuffled" else 0
        plan = WindowPlan(length, protocol, start, rows, per_row, donors)
        if plan.end_token <= n_available:
            return _with_donors(plan, seed)
        # only shuffled donor rows can overflow: keep the scored rows' share of what fits
        n_windows = min(n_windows - 1, cap * rows // plan.total_rows)
    raise EvalError(
        f"a token stream of {n_available} tokens is too short to score one window of L={length} "
        f"({protocol}, starting at token {start})"
    )


def _with_donors(plan: WindowPlan, seed: int) -> WindowPlan:
    if plan.protocol == "reset":
        return plan
    n = plan.total_rows
    if plan.protocol == "stream":
        return replace(plan, donor_of_row=tuple(range(n)))
    return replace(plan, donor_of_row=shuffled_donors(n, plan.windows_per_row, seed))


def shuffled_donors(n_rows: int, windows_per_row: int, seed: int = 0) -> tuple[int, ...]:
    """A seeded permutation ``pi`` of rows whose donor windows are never adjacent to the target.

    Row r's window j (text position r*k + j) takes the state after window j - 1 of row pi(r)
    (position pi(r)*k + j - 1); the two differ by (pi(r) - r)*k - 1 windows, which must not be
    -1 (the stream donor), 0 (the window itself) or +1 (the next window).
    """
    k = windows_per_row

    def valid(perm) -> bool:
        return all(abs((int(p) - r) * k - 1) >= 2 for r, p in enumerate(perm))

    rng = np.random.default_rng(seed)
    for _ in range(1000):
        perm = rng.permutation(n_rows)
        if valid(perm):
            return tuple(int(p) for p in perm)
    # the previous row, cyclically, is valid whenever n_rows >= MIN_SHUFFLED_ROWS
    perm = [(r - 1) % n_rows for r in range(n_rows)]
    if not valid(perm):
        raise EvalError(f"no valid shuffled permutation of {n_rows} rows of {k} windows")
    return tuple(perm)

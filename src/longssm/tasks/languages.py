"""Formal languages with next-character-set labels (Bhattamishra et al. 2020; Sarrof et al. 2024).

A sample of length n is a string w in the language with |w| = n. The model reads ``BOS w_1 .. w_n``
and at every position t = 0..n predicts the *set* of characters that may follow the prefix
``w_1..w_t`` in some string of the language, plus ``EOS`` when the prefix itself is in the language
(a multi-hot vector over ``alphabet + EOS``). A string counts as correct when every position's set
is right (Bhattamishra's metric), so the per-string score is a Bernoulli trial.

Glossary:
    alphabet   the language's characters; token ids 1..|alphabet| (0 = BOS)
    next set   (n + 1, |alphabet| + 1) multi-hot; the last column is EOS
    DFA        delta[q][c] = next state (-1 = dead); ``accept`` the accepting states

Regular languages are sampled *uniformly* among the strings of length n (counting accepting paths
of the DFA); Dyck words with a depth bound likewise (counting depth paths); Shuffle-k and Boolean-k
are sampled by a random walk over the moves that can still complete the string (exact membership,
not uniform). Each language carries an independent reference ``member(s)`` (a regex, a stack or a
counter) used by the tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

EOS = "$"


class Language:
    """A language: ``sample(n, rng) -> str``, ``next_sets(s) -> (n+1, A+1)``, ``lengths(lo, hi)``."""

    name: str
    alphabet: str

    def member(self, s: str) -> bool:
        raise NotImplementedError

    def sample(self, n: int, rng: np.random.Generator) -> str:
        raise NotImplementedError

    def next_sets(self, s: str) -> np.ndarray:
        raise NotImplementedError

    def has_length(self, n: int) -> bool:
        return n >= 1

    def scored(self, s: str) -> np.ndarray:
        """(n + 1,) bool: the positions a string is scored on (every one unless overridden)."""
        return np.ones(len(s) + 1, dtype=bool)

    def lengths(self, lo: int, hi: int) -> list[int]:
        return [n for n in range(lo, hi + 1) if self.has_length(n)]

    def onehot(self, allowed: set[str]) -> np.ndarray:
        row = np.zeros(len(self.alphabet) + 1, dtype=np.float32)
        for c in allowed:
            row[-1 if c == EOS else self.alphabet.index(c)] = 1.0
        return row


def _pick(weights: list[int], rng: np.random.Generator) -> int:
    """Index k with probability weights[k] / sum(weights) (exact Python ints, any size)."""
    total = sum(weights)
    scaled = [w * 2**52 // total for w in weights]  # 52-bit probabilities: exact for sampling
    pick = int(rng.integers(sum(scaled)))
    for k, w in enumerate(scaled):
        if pick < w:
            return k
        pick -= w
    raise AssertionError("unreachable")



@dataclass
class DFALanguage(Language):
    """A regular language given by a DFA; ``reference`` is a regex or a predicate."""

    name: str
    alphabet: str
    delta: dict[int, dict[str, int]]
    accept: frozenset[int]
    reference: str | Callable[[str], bool]
    start: int = 0
    _counts: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        states = sorted(self.delta)
        self.table = np.array(
            [[self.delta[q].get(c, -1) for c in self.alphabet] for q in states], dtype=np.int64
        )  # (S, A)
        self.live = self._live_states()

    def member(self, s: str) -> bool:
        if callable(self.reference):
            return bool(self.reference(s))
        return re.fullmatch(self.reference, s) is not None

    def _live_states(self) -> np.ndarray:
        """States from which an accepting state is reachable."""
        live = np.zeros(len(self.table), dtype=bool)
        live[list(self.accept)] = True
        changed = True
        while changed:
            nxt = live | np.array([any(j >= 0 and live[j] for j in row) for row in self.table])
            changed = bool((nxt != live).any())
            live = nxt
        return live

    def run(self, s: str) -> int:
        q = self.start
        for c in s:
            q = self.table[q, self.alphabet.index(c)] if q >= 0 else -1
        return int(q)

    def accepts(self, s: str) -> bool:
        return self.run(s) in self.accept

    def counts(self, n: int) -> list[list[int]]:
        """counts[r][q] = number of accepted strings of length r read from state q (exact ints)."""
        if n not in self._counts:
            rows = [[int(q in self.accept) for q in range(len(self.table))]]
            for _ in range(n):
                prev = rows[-1]
                rows.append([sum(prev[j] for j in row if j >= 0) for row in self.table])
            self._counts[n] = rows
        return self._counts[n]

    def has_length(self, n: int) -> bool:
        return n >= 1 and self.counts(n)[n][self.start] > 0

    def sample(self, n: int, rng: np.random.Generator) -> str:
        """A uniformly random string of length n in the language."""
        counts, q, out = self.counts(n), self.start, []
        for r in range(n, 0, -1):
            weights = [counts[r - 1][j] if j >= 0 else 0 for j in self.table[q]]
            k = _pick(weights, rng)
            out.append(self.alphabet[k])
            q = self.table[q, k]
        return "".join(out)

    def next_sets(self, s: str) -> np.ndarray:
        rows, q = [], self.start
        for t in range(len(s) + 1):
            allowed = {c for c, j in zip(self.alphabet, self.table[q]) if j >= 0 and self.live[j]}
            if q in self.accept:
                allowed.add(EOS)
            rows.append(self.onehot(allowed))
            if t < len(s):
                q = self.table[q, self.alphabet.index(s[t])]
        return np.stack(rows)


def _cycle(alphabet: str, period: str) -> DFALanguage:
    """(period)*: a cycle of |period| states, state 0 accepting."""
    n = len(period)
    delta = {q: {period[q]: (q + 1) % n} for q in range(n)}
    return DFALanguage(f"({period})*", alphabet, delta, frozenset({0}), f"(?:{period})*")


def _counter_bounded(name: str, depth: int) -> DFALanguage:
    """D_n of Bhattamishra et al.: D_1 = (ab)*, D_n = (a D_{n-1} b)*, i.e. Dyck-1 of depth <= n."""
    delta = {q: {**({"a": q + 1} if q < depth else {}), **({"b": q - 1} if q > 0 else {})}
             for q in range(depth + 1)}
    regex = "(?:ab)*"
    for _ in range(depth - 1):
        regex = f"(?:a{regex}b)*"
    return DFALanguage(name, "ab", delta, frozenset({0}), regex)


def _tomita3_reference(s: str) -> bool:
    """No maximal odd block of 1s immediately followed by a maximal odd block of 0s."""
    blocks = [(m.group()[0], len(m.group())) for m in re.finditer(r"0+|1+", s)]
    return not any(a[0] == "1" and a[1] % 2 and b[0] == "0" and b[1] % 2
                   for a, b in zip(blocks, blocks[1:]))


def _regular() -> dict[str, DFALanguage]:
    t3 = {0: {"0": 0, "1": 1}, 1: {"0": 3, "1": 2}, 2: {"0": 0, "1": 1},
          3: {"0": 4}, 4: {"0": 3, "1": 1}}
    t4 = {0: {"1": 0, "0": 1}, 1: {"1": 0, "0": 2}, 2: {"1": 0}}
    t5 = {q: {"0": q ^ 1, "1": q ^ 2} for q in range(4)}
    t6 = {q: {"0": (q + 1) % 3, "1": (q - 1) % 3} for q in range(3)}
    t7 = {0: {"0": 0, "1": 1}, 1: {"1": 1, "0": 2}, 2: {"0": 2, "1": 3}, 3: {"1": 3}}
    parity = {q: {"0": q, "1": 1 - q} for q in range(2)}
    starfree = {0: {"a": 1}, 1: {"a": 1, "b": 2}, 2: {"b": 2, "c": 3}, 3: {"c": 3, "d": 4},
                4: {"d": 4, "e": 5}, 5: {"e": 5}}
    langs = [
        DFALanguage("tomita1", "01", {0: {"1": 0}}, frozenset({0}), "1*"),
        DFALanguage("tomita2", "01", {0: {"1": 1}, 1: {"0": 0}}, frozenset({0}), "(?:10)*"),
        DFALanguage("tomita3", "01", t3, frozenset({0, 1, 2, 4}), _tomita3_reference),
        DFALanguage("tomita4", "01", t4, frozenset({0, 1, 2}), lambda s: "000" not in s),
        DFALanguage("tomita5", "01", t5, frozenset({0}),
                    lambda s: s.count("0") % 2 == 0 and s.count("1") % 2 == 0),
        DFALanguage("tomita6", "01", t6, frozenset({0}),
                    lambda s: (s.count("0") - s.count("1")) % 3 == 0),
        DFALanguage("tomita7", "01", t7, frozenset({0, 1, 2, 3}), "0*1*0*1*"),
        DFALanguage("parity", "01", parity, frozenset({0}), lambda s: s.count("1") % 2 == 0),
        DFALanguage("starfree", "abcde", starfree, frozenset({5}), "a+b+c+d+e+"),
        DFALanguage("starfree-abd", "abcd", {0: {"a": 0, "b": 0, "d": 1}, 1: {"b": 1, "c": 1}},
                    frozenset({1}), "[ab]*d[bc]*"),
    ]
    langs += [_cycle("a", "aa"), _cycle("a", "aaaa"), _cycle("ab", "abab")]
    langs += [_counter_bounded(f"d{k}", k) for k in (2, 4)]
    names = {"(aa)*": "aa", "(aaaa)*": "aaaa", "(abab)*": "abab"}
    out = {}
    for lang in langs:
        lang.name = names.get(lang.name, lang.name)
        out[lang.name] = lang
    return out


# --------------------------------------------------------------------------- counter languages

OPEN, CLOSE = "([{<", ")]}>"


@lru_cache(maxsize=64)
def _depth_table(n: int, bound: int) -> tuple[tuple[int, ...], ...]:
    """table[r][d] = number of bracket-depth paths of r steps from depth d back to 0 that stay in
    [0, bound] (bound = -1: unbounded); exact Python ints."""
    top = n + 1 if bound < 0 else min(bound, n) + 1
    rows = [tuple(int(d == 0) for d in range(top + 1))]
    for _ in range(n):
        prev = rows[-1]
        rows.append(tuple((prev[d + 1] if d + 1 < top else 0) + (prev[d - 1] if d > 0 else 0)
                          for d in range(top + 1)))
    return tuple(rows)


def _depth_paths(table, remaining: int, depth: int) -> int:
    return table[remaining][depth] if 0 <= depth < len(table[0]) - 1 else 0


class Dyck(Language):
    """Dyck(K, m): well-nested words over K bracket pairs with depth <= m (m = -1: Dyck-K, unbounded).

    Sampled uniformly: a depth path by counting, then a uniform bracket type for every opening.
    Next set: any opening while depth < m; the closing bracket matching the top of the stack;
    EOS at depth 0.
    """

    def __init__(self, name: str, k: int, bound: int = -1):
        self.name, self.k, self.bound = name, k, bound
        self.alphabet = OPEN[:k] + CLOSE[:k]

    def member(self, s: str) -> bool:
        stack = []
        for c in s:
            if c in OPEN[: self.k]:
                stack.append(c)
                if 0 <= self.bound < len(stack):
                    return False
            elif not stack or OPEN.index(stack.pop()) != CLOSE.index(c):
                return False
        return not stack

    def has_length(self, n: int) -> bool:
        return n >= 2 and n % 2 == 0

    def sample(self, n: int, rng: np.random.Generator) -> str:
        out, stack, table = [], [], _depth_table(n, self.bound)
        for r in range(n, 0, -1):
            d = len(stack)
            k = _pick([_depth_paths(table, r - 1, d + 1), _depth_paths(table, r - 1, d - 1)], rng)
            if k == 0:
                stack.append(int(rng.integers(self.k)))
                out.append(OPEN[stack[-1]])
            else:
                out.append(CLOSE[stack.pop()])
        return "".join(out)

    def next_sets(self, s: str) -> np.ndarray:
        rows, stack = [], []
        for t in range(len(s) + 1):
            allowed = set(OPEN[: self.k]) if self.bound < 0 or len(stack) < self.bound else set()
            allowed |= {CLOSE[OPEN.index(stack[-1])]} if stack else {EOS}
            rows.append(self.onehot(allowed))
            if t < len(s):
                stack.append(s[t]) if s[t] in OPEN else stack.pop()
        return np.stack(rows)


class Shuffle(Language):
    """Shuffle-k: interleavings of k Dyck-1 languages over distinct bracket pairs (one counter each).

    Next set: every opening; closing i while counter i > 0; EOS when all counters are 0. Sampled by
    a random walk over the moves that can still close every bracket by length n.
    """

    def __init__(self, k: int):
        self.name, self.k, self.alphabet = f"shuffle{k}", k, OPEN[:k] + CLOSE[:k]

    def member(self, s: str) -> bool:
        return all(Dyck("", 1).member("".join("(" if c == o else ")" for c in s if c in (o, cl)))
                   for o, cl in zip(OPEN[: self.k], CLOSE[: self.k]))

    def has_length(self, n: int) -> bool:
        return n >= 2 and n % 2 == 0

    def sample(self, n: int, rng: np.random.Generator) -> str:
        depth, out = [0] * self.k, []
        for r in range(n, 0, -1):
            moves = [i for i in range(self.k) if sum(depth) + 1 <= r - 1]
            moves += [self.k + i for i in range(self.k) if depth[i] > 0]
            m = moves[int(rng.integers(len(moves)))]
            depth[m % self.k] += 1 if m < self.k else -1
            out.append(self.alphabet[m])
        return "".join(out)

    def next_sets(self, s: str) -> np.ndarray:
        rows, depth = [], [0] * self.k
        for t in range(len(s) + 1):
            allowed = set(OPEN[: self.k]) | {CLOSE[i] for i in range(self.k) if depth[i]}
            rows.append(self.onehot(allowed | ({EOS} if not any(depth) else set())))
            if t < len(s):
                i = self.alphabet.index(s[t])
                depth[i % self.k] += 1 if i < self.k else -1
        return np.stack(rows)


class Boolean(Language):
    """Boolean-k: Boolean expressions in Polish (prefix) notation over constants 0, 1 and k
    operators of arities (1, 2, 3, 2, 3)[:k] (~ & ? | ^). Counter c = operands still needed
    (starts at 1; an operator of arity a adds a - 1, a constant subtracts 1). Next set: every
    symbol while c > 0; EOS when c = 0 (then nothing else)."""

    ARITIES = {"~": 1, "&": 2, "?": 3, "|": 2, "^": 3}

    def __init__(self, k: int):
        self.name, self.k = f"boolean{k}", k
        self.ops = "".join(list(self.ARITIES)[:k])
        self.alphabet = "01" + self.ops

    def _need(self, c: str) -> int:
        return self.ARITIES[c] - 1 if c in self.ARITIES else -1

    def member(self, s: str) -> bool:
        def parse(i: int) -> int:
            if i >= len(s):
                return -1
            j = i + 1
            for _ in range(self.ARITIES.get(s[i], 0)):
                j = parse(j)
                if j < 0:
                    return -1
            return j
        return len(s) > 0 and set(s) <= set(self.alphabet) and parse(0) == len(s)

    def sample(self, n: int, rng: np.random.Generator) -> str:
        need, out = 1, []
        for r in range(n, 0, -1):
            ok = [c for c in self.alphabet
                  if (need + self._need(c) == 0 and r == 1) or 0 < need + self._need(c) <= r - 1]
            c = ok[int(rng.integers(len(ok)))]
            need += self._need(c)
            out.append(c)
        return "".join(out)

    def next_sets(self, s: str) -> np.ndarray:
        rows, need = [], 1
        for t in range(len(s) + 1):
            rows.append(self.onehot(set(self.alphabet) if need > 0 else {EOS}))
            if t < len(s):
                need += self._need(s[t])
        return np.stack(rows)


class Counting(Language):
    """a^n b^n (k = 2) or a^n b^n c^n (k = 3), n >= 0. Next set after a^i b^j c^l follows the
    only string that can complete it; EOS exactly when all blocks are equal."""

    def __init__(self, k: int):
        self.k, self.alphabet = k, "abc"[:k]
        self.name = "anbn" if k == 2 else "anbncn"

    def member(self, s: str) -> bool:
        n = len(s) // self.k
        return s == "".join(c * n for c in self.alphabet)

    def has_length(self, n: int) -> bool:
        return n >= self.k and n % self.k == 0

    def sample(self, n: int, rng: np.random.Generator) -> str:
        return "".join(c * (n // self.k) for c in self.alphabet)

    def next_sets(self, s: str) -> np.ndarray:
        rows = []
        for t in range(len(s) + 1):
            counts = [s[:t].count(c) for c in self.alphabet]
            block = max((i for i, c in enumerate(counts) if c), default=-1)
            if block <= 0:
                allowed = {"a", "b"} if counts[0] else {"a", EOS}
            elif counts[block] < counts[0]:
                allowed = {self.alphabet[block]}
            else:
                allowed = {self.alphabet[block + 1]} if block + 1 < self.k else {EOS}
            rows.append(self.onehot(allowed))
        return np.stack(rows)


class FlipFlop(Language):
    """Flip-flop FFL(0.8) (Liu et al. 2023): pairs (instruction, bit); w writes the bit, r must
    repeat the last written bit, i ignores a random bit. A sampled string starts with w and ends
    with r (Liu's definition); the instructions between are w, r, i with probabilities 0.1, 0.1,
    0.8. Next set: after w or i: {0, 1}; after r: the last written bit; after a bit:
    {w, r, i, EOS}; at the start: {w, EOS}. Only the read positions (the model has just seen r and
    must emit the remembered bit) are scored, as in Liu et al.; every position is trained on."""

    name, alphabet = "flipflop", "wri01"

    def member(self, s: str) -> bool:
        if len(s) % 2 or (s and s[0] != "w"):
            return False
        last = None
        for op, bit in zip(s[::2], s[1::2]):
            if op not in "wri" or bit not in "01" or (op == "r" and bit != last):
                return False
            last = bit if op == "w" else last
        return True

    def has_length(self, n: int) -> bool:
        return n >= 4 and n % 2 == 0

    def sample(self, n: int, rng: np.random.Generator) -> str:
        out, last, pairs = [], "0", n // 2
        for t in range(pairs):
            if t in (0, pairs - 1):
                op = "w" if t == 0 else "r"
            else:
                op = "wri"[rng.choice(3, p=[0.1, 0.1, 0.8])]
            bit = last if op == "r" else "01"[int(rng.integers(2))]
            last = bit if op == "w" else last
            out += [op, bit]
        return "".join(out)

    def scored(self, s: str) -> np.ndarray:
        """Positions t whose prediction follows an r (the reads); position 0 is BOS."""
        return np.array([t > 0 and s[t - 1] == "r" for t in range(len(s) + 1)])

    def next_sets(self, s: str) -> np.ndarray:
        rows, last = [], None
        for t in range(len(s) + 1):
            if t == 0:
                allowed = {"w", EOS}
            elif t % 2 == 0:
                allowed = {"w", "r", "i", EOS}
            else:
                allowed = {last} if s[t - 1] == "r" else {"0", "1"}
            last = s[t] if t < len(s) and t % 2 and s[t - 1] == "w" else last
            rows.append(self.onehot(allowed))
        return np.stack(rows)


def languages() -> dict[str, Language]:
    """Every language of the suite, by name."""
    out: dict[str, Language] = dict(_regular())
    for lang in (Dyck("dyck1", 1), Dyck("dyck2-3", 2, 3), Dyck("dyck3-5", 3, 5), Shuffle(2),
                 Shuffle(4), Boolean(3), Boolean(5), Counting(2), Counting(3), FlipFlop()):
        out[lang.name] = lang
    return out

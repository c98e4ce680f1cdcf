"""Formal-language generators against brute force: every string up to length 12, references
written independently of the generators (regex, stack, counters), next sets by enumeration."""

import itertools

import numpy as np
import pytest

from longssm.tasks.languages import EOS, DFALanguage, languages

LANGS = languages()
REGULAR = [n for n, lang in LANGS.items() if isinstance(lang, DFALanguage)]
MAX_N = 12


def all_strings(alphabet, n_max):
    for n in range(n_max + 1):
        for chars in itertools.product(alphabet, repeat=n):
            yield "".join(chars)


@pytest.fixture(scope="module")
def members():
    """name -> the set of strings of length <= 12 in the language (by the reference)."""
    out = {}
    for name, lang in LANGS.items():
        limit = MAX_N if len(lang.alphabet) <= 3 else (8 if len(lang.alphabet) <= 5 else 6)
        out[name] = (limit, {s for s in all_strings(lang.alphabet, limit) if lang.member(s)})
    return out


@pytest.mark.parametrize("name", REGULAR)
def test_dfa_matches_reference_on_all_strings(name):
    lang = LANGS[name]
    limit = MAX_N if len(lang.alphabet) <= 3 else 8
    for s in all_strings(lang.alphabet, limit):
        assert lang.accepts(s) == lang.member(s), (name, s)


@pytest.mark.parametrize("name", REGULAR)
def test_dfa_counts_match_enumeration(name, members):
    lang = LANGS[name]
    limit, inside = members[name]
    counts = lang.counts(limit)
    for n in range(1, limit + 1):
        assert counts[n][lang.start] == sum(len(s) == n for s in inside), (name, n)
        assert lang.has_length(n) == any(len(s) == n for s in inside)


def enumerated_next_set(prefix, inside, alphabet):
    allowed = {c for c in alphabet if any(s.startswith(prefix + c) for s in inside)}
    return allowed | ({EOS} if prefix in inside else set())


@pytest.mark.parametrize("name", list(LANGS))
def test_samples_are_members_and_next_sets_match_enumeration(name, members):
    lang = LANGS[name]
    limit, inside = members[name]
    rng = np.random.default_rng(0)
    # a prefix of length <= limit/2 can always be completed within the enumerated strings
    for n in lang.lengths(1, limit // 2):
        for _ in range(4):
            s = lang.sample(n, rng)
            assert len(s) == n and lang.member(s), (name, s)
            labels = lang.next_sets(s)
            assert labels.shape == (n + 1, len(lang.alphabet) + 1)
            for t in range(n + 1):
                want = enumerated_next_set(s[:t], inside, lang.alphabet)
                got = {(lang.alphabet + EOS)[i] for i in np.flatnonzero(labels[t])}
                assert got == want, (name, s, t, got, want)


@pytest.mark.parametrize("name", ["tomita3", "dyck1", "dyck2-3", "d2"])
def test_uniform_sampling(name, members):
    """Uniform over the strings of one length: each of the m strings appears ~N/m times."""
    lang = LANGS[name]
    _, inside = members[name]
    n = 6
    pool = sorted(s for s in inside if len(s) == n)
    rng = np.random.default_rng(1)
    draws = [lang.sample(n, rng) for _ in range(200 * len(pool))]
    counts = np.array([draws.count(s) for s in pool])
    assert counts.sum() == len(draws)
    # chi-square with m-1 dof, far beyond the 99.9% quantile only if the sampler is not uniform
    chi2 = ((counts - 200) ** 2 / 200).sum()
    assert chi2 < 3 * len(pool) + 30


def test_long_samples_stay_members():
    rng = np.random.default_rng(2)
    for name in ["parity", "dyck1", "dyck3-5", "shuffle4", "boolean5", "flipflop", "tomita3"]:
        lang = LANGS[name]
        n = lang.lengths(1000, 1004)[0]
        assert lang.member(lang.sample(n, rng)), name


def test_dyck_references_by_stack():
    lang = LANGS["dyck2-3"]
    assert lang.member("([])[]") and not lang.member("([)]") and not lang.member("[[[[]]]]")
    assert not LANGS["dyck1"].member(")(")

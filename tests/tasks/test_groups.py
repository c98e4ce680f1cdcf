"""Group tables: associativity, identity, inverses, orders; running products by composition."""

import itertools

import numpy as np
import pytest

from longssm.tasks.groups import GROUPS, compose, get_group

ORDERS = {"a5": 60, "s5": 120, "a4xz5": 60, "z60": 60}


def sign(perm):
    seen, s = set(), 1
    for i in range(len(perm)):
        if i in seen:
            continue
        j, length = i, 0
        while j not in seen:
            seen.add(j)
            j, length = perm[j], length + 1
        s *= -1 if length % 2 == 0 else 1
    return s


@pytest.mark.parametrize("name", GROUPS)
def test_group_axioms(name):
    g = get_group(name)
    t = g.table
    assert g.order == ORDERS[name]
    assert len({tuple(e) for e in g.elements}) == g.order
    identity = np.arange(g.order)
    assert (t[0] == identity).all() and (t[:, 0] == identity).all()  # element 0 is the identity
    assert all((t[i] == 0).any() for i in range(g.order))  # inverses
    assert (t[t[:, :, None], np.arange(g.order)[None, None, :]] ==
            t[np.arange(g.order)[:, None, None], t[None, :, :]]).all()  # associative
    # the table is the composition of the permutations
    for i, j in itertools.product(range(0, g.order, 7), range(0, g.order, 5)):
        assert (g.elements[t[i, j]] == compose(g.elements[i], g.elements[j])).all()


def test_group_structure():
    a5, s5 = get_group("a5"), get_group("s5")
    assert all(sign(p) == 1 for p in a5.elements)
    assert sum(sign(p) == 1 for p in s5.elements) == 60
    assert not (a5.table == a5.table.T).all()  # not abelian
    assert (get_group("z60").table == get_group("z60").table.T).all()


@pytest.mark.parametrize("name", GROUPS)
def test_running_products_by_iterative_composition(name):
    g = get_group(name)
    rng = np.random.default_rng(0)
    words = rng.integers(g.order, size=(4, 30))
    got = g.running_products(words)
    for b in range(4):
        current = np.arange(g.elements.shape[1])
        for t in range(30):
            current = compose(current, g.elements[words[b, t]])
            assert (g.elements[got[b, t]] == current).all()


def test_unknown_group():
    with pytest.raises(ValueError, match="unknown group"):
        get_group("a6")

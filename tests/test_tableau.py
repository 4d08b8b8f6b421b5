"""Tests of ButcherTableau and of the method catalogue in symode._methods.

The order of every catalogued tableau is proved with the classical order conditions: for
each rooted tree ``t`` with ``|t| <= p`` nodes, ``sum_i b_i Phi_i(t) == 1 / gamma(t)``, with
the elementary weights built recursively from the stage matrix. The trees are generated
programmatically, so every tableau added to ``TABLEAUS`` is checked automatically.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from functools import cache

import numpy as np
import pytest

import symode
from symode import TABLEAUS, ButcherTableau, get_tableau

FSAL_METHODS = {"bosh3", "dopri5", "tsit5"}
ORDER_TOL = 1e-12  # an order condition holds
VIOLATION_MIN = 1e-6  # an order condition clearly fails

# --------------------------------------------------------------------------------------
# rooted trees and elementary weights

# A rooted tree is the sorted tuple of its root's subtrees; the single node is ().


def _grow(tree: tuple) -> set[tuple]:
    """All trees obtained by attaching one new leaf to some node of ``tree``."""
    out = {tuple(sorted(tree + ((),)))}
    for i, child in enumerate(tree):
        for grown in _grow(child):
            out.add(tuple(sorted(tree[:i] + (grown,) + tree[i + 1 :])))
    return out


@cache
def trees_of_order(n: int) -> tuple[tuple, ...]:
    if n == 1:
        return ((),)
    found: set[tuple] = set()
    for tree in trees_of_order(n - 1):
        found |= _grow(tree)
    return tuple(sorted(found))


@cache
def gamma(tree: tuple) -> int:
    """The density: ``|t|`` times the densities of the subtrees."""
    return (1 + sum(_size(child) for child in tree)) * math.prod(gamma(child) for child in tree)


@cache
def _size(tree: tuple) -> int:
    return 1 + sum(_size(child) for child in tree)


def test_tree_generator_counts():
    # OEIS A000081: rooted trees with n nodes; 200 of them up to order 8.
    assert [len(trees_of_order(n)) for n in range(1, 10)] == [1, 1, 2, 4, 9, 20, 48, 115, 286]
    assert sum(len(trees_of_order(n)) for n in range(1, 9)) == 200
    assert all(_size(t) == n for n in range(1, 10) for t in trees_of_order(n))
    # densities of a few named trees: bushy tree gamma = n, tall tree gamma = n!
    assert gamma(((),) * 4) == 5
    assert gamma((((((),),),),)) == 120


class _ElementaryWeights:
    """``Phi(t)`` as the vector over stages, memoised per tree, for one tableau."""

    def __init__(self, tableau: ButcherTableau):
        self.A = np.array(tableau.a, dtype=np.float64)
        self.memo: dict[tuple, np.ndarray] = {}

    def __call__(self, tree: tuple) -> np.ndarray:
        phi = self.memo.get(tree)
        if phi is None:
            phi = np.ones(self.A.shape[0])
            for child in tree:
                phi = phi * (self.A @ self(child))
            self.memo[tree] = phi
        return phi


def order_residuals(tableau: ButcherTableau, weights, order: int) -> list[float]:
    """``max_t |weights . Phi(t) - 1/gamma(t)|`` over the trees of each order 1..order."""
    phi = _weights_for(tableau)
    w = np.array(weights, dtype=np.float64)
    return [max(abs(float(w @ phi(t)) - 1.0 / gamma(t)) for t in trees_of_order(n)) for n in range(1, order + 1)]


@cache
def _weights_for(tableau: ButcherTableau) -> _ElementaryWeights:
    return _ElementaryWeights(tableau)  # tableaus are hashable and immutable


def embedded_weights(tableau: ButcherTableau) -> np.ndarray:
    return np.array(tableau.b, dtype=np.float64) - np.array(tableau.b_err, dtype=np.float64)


ALL = sorted(TABLEAUS.items())
ADAPTIVE = [(name, t) for name, t in ALL if t.adaptive]

# --------------------------------------------------------------------------------------
# order conditions


@pytest.mark.parametrize("name,tableau", ALL, ids=[n for n, _ in ALL])
def test_order_conditions_hold(name, tableau):
    residuals = order_residuals(tableau, tableau.b, tableau.order)
    assert max(residuals) < ORDER_TOL, f"{name}: per-order residuals {residuals}"


@pytest.mark.parametrize("name,tableau", ALL, ids=[n for n, _ in ALL])
def test_order_is_not_understated(name, tableau):
    # at least one condition of order p+1 fails clearly: the declared order is exact
    residual = order_residuals(tableau, tableau.b, tableau.order + 1)[-1]
    assert residual > VIOLATION_MIN, f"{name} also satisfies the order-{tableau.order + 1} conditions"


@pytest.mark.parametrize("name,tableau", ADAPTIVE, ids=[n for n, _ in ADAPTIVE])
def test_embedded_order_conditions_hold(name, tableau):
    assert tableau.error_order < tableau.order
    residuals = order_residuals(tableau, embedded_weights(tableau), tableau.error_order)
    assert max(residuals) < ORDER_TOL, f"{name} embedded: per-order residuals {residuals}"


@pytest.mark.parametrize("name,tableau", ADAPTIVE, ids=[n for n, _ in ADAPTIVE])
def test_embedded_order_is_not_understated(name, tableau):
    # The error estimate b_err . k is then O(h^(error_order+1)) and not smaller: the embedded
    # weights were not mistaken for the propagating ones (b_err would then be ~0).
    residual = order_residuals(tableau, embedded_weights(tableau), tableau.error_order + 1)[-1]
    assert residual > VIOLATION_MIN


def test_order_checker_detects_a_wrong_weight():
    bad = ButcherTableau(
        "rk4_bad", c=TABLEAUS["rk4"].c, a=TABLEAUS["rk4"].a, b=(1 / 6, 1 / 3 + 1e-3, 1 / 3 - 1e-3, 1 / 6), order=4
    )
    residuals = order_residuals(bad, bad.b, 4)
    assert residuals[:2] == pytest.approx([0, 0], abs=1e-15) and residuals[2] > VIOLATION_MIN


# --------------------------------------------------------------------------------------
# the catalogue itself

EXPECTED_SHAPE = {  # name: (stages, order, error_order)
    "euler": (1, 1, None),
    "midpoint": (2, 2, None),
    "heun": (2, 2, None),
    "heun2": (2, 2, None),
    "heun3": (3, 3, None),
    "ralston": (2, 2, None),
    "rk4": (4, 4, None),
    "rk38": (4, 4, None),
    "adaptive_heun": (2, 2, 1),
    "fehlberg2": (3, 2, 1),
    "bosh3": (4, 3, 2),
    "dopri5": (7, 5, 4),
    "tsit5": (7, 5, 4),
    "dopri8": (13, 8, 7),
    # implicit (torchdiffeq's names where it has the method)
    "implicit_euler": (1, 1, None),
    "implicit_midpoint": (1, 2, None),
    "trapezoid": (2, 2, None),
    "sdirk2": (2, 2, None),
    "trbdf2": (3, 2, None),
    "kvaerno3": (4, 3, 2),
    "kvaerno4": (5, 4, 3),
    "kvaerno5": (7, 5, 4),
    "gl4": (2, 4, None),
    "gl6": (3, 6, None),
    "radauIIA3": (2, 3, None),
    "radauIIA5": (3, 5, None),
}
DIAGONALLY_IMPLICIT = {
    "implicit_euler",
    "implicit_midpoint",
    "trapezoid",
    "sdirk2",
    "trbdf2",
    "kvaerno3",
    "kvaerno4",
    "kvaerno5",
}
FULLY_IMPLICIT = {"gl4", "gl6", "radauIIA3", "radauIIA5"}
STIFFLY_ACCURATE = {
    "implicit_euler",
    "trapezoid",
    "sdirk2",
    "trbdf2",
    "kvaerno3",
    "kvaerno4",
    "kvaerno5",
    "radauIIA3",
    "radauIIA5",
}


@pytest.mark.parametrize("name,tableau", ALL, ids=[n for n, _ in ALL])
def test_implicitness_is_read_from_a(name, tableau):
    s = tableau.num_stages
    on_or_above = any(tableau.a[i][j] != 0.0 for i in range(s) for j in range(i, s))
    above = any(tableau.a[i][j] != 0.0 for i in range(s) for j in range(i + 1, s))
    assert tableau.implicit == on_or_above == (name in DIAGONALLY_IMPLICIT | FULLY_IMPLICIT)
    assert tableau.diagonally_implicit == (on_or_above and not above) == (name in DIAGONALLY_IMPLICIT)
    if tableau.implicit:
        assert tableau.stiffly_accurate == (name in STIFFLY_ACCURATE)
        assert not tableau.fsal  # an implicit step returns its own last stage: nothing is carried over


def test_a_stage_equation_the_user_gives_makes_the_tableau_implicit():
    t = ButcherTableau("theta", c=(0, 1), a=((0, 0), (0.5, 0.5)), b=(0.5, 0.5), order=2)
    assert t.implicit and t.diagonally_implicit and t.stiffly_accurate and t.explicit_first_stage
    assert t.solution_stages == (0, 1)


def test_catalogue_contents():
    assert set(TABLEAUS) == set(EXPECTED_SHAPE)
    for name, tableau in TABLEAUS.items():
        assert isinstance(tableau, ButcherTableau)
        assert (tableau.num_stages, tableau.order, tableau.error_order) == EXPECTED_SHAPE[name], name
        assert tableau.adaptive == (tableau.error_order is not None)
        assert tableau.name == ("heun" if name == "heun2" else name)
        assert symode.get_tableau(name.lower()) is tableau  # names are case-insensitive
        assert tableau.doc, f"{name} has no literature note"
    assert TABLEAUS["heun2"] is TABLEAUS["heun"]


def _close(values, expected):
    return all(abs(v - float(e)) < 1e-15 for v, e in zip(values, expected, strict=True))


def test_specific_coefficients():
    q = Fraction
    assert _close(TABLEAUS["midpoint"].c, [0, q(1, 2)]) and _close(TABLEAUS["midpoint"].b, [0, 1])
    assert _close(TABLEAUS["ralston"].a[1], [q(2, 3), 0])
    assert _close(TABLEAUS["ralston"].b, [q(1, 4), q(3, 4)])
    assert _close(TABLEAUS["adaptive_heun"].b_err, [q(-1, 2), q(1, 2)])
    assert _close(TABLEAUS["fehlberg2"].b, [q(1, 512), q(255, 256), q(1, 512)])
    assert _close(TABLEAUS["fehlberg2"].b_err, [q(-1, 512), 0, q(1, 512)])
    # the well-known dopri5 error weights b - b_hat
    assert _close(
        TABLEAUS["dopri5"].b_err,
        [q(71, 57600), 0, q(-71, 16695), q(71, 1920), q(-17253, 339200), q(22, 525), q(-1, 40)],
    )
    # tsit5 error weights b - b_hat to 15 decimals (as in diffrax's Tsit5 b_error)
    tsit5_err = [
        0.001780011052226,
        0.000816434459657,
        -0.007880878010262,
        0.144711007173263,
        -0.582357165452555,
        0.458082105929187,
        -1 / 66,
    ]
    assert np.allclose(TABLEAUS["tsit5"].b_err, tsit5_err, rtol=0, atol=1e-14)
    # dopri8: b vanishes on stages 2-5 (1-based) and the 8th-order weight of stage 13 is 1/4
    d8 = TABLEAUS["dopri8"]
    assert d8.b[1:5] == (0.0,) * 4 and d8.b[12] == 0.25 and d8.b_err[12] == 0.25


# --------------------------------------------------------------------------------------
# FSAL and solution stages


def _expected_fsal(t: ButcherTableau) -> bool:
    return t.c[-1] == 1.0 and t.b[-1] == 0.0 and list(t.a[-1][:-1]) == list(t.b[:-1]) and t.num_stages > 1


@pytest.mark.parametrize("name,tableau", ALL, ids=[n for n, _ in ALL])
def test_fsal(name, tableau):
    assert tableau.fsal == (name in FSAL_METHODS)
    assert tableau.fsal == (_expected_fsal(tableau) and not tableau.implicit)


def test_fsal_needs_last_row_equal_to_b():
    t = TABLEAUS["bosh3"]
    rows = [list(r) for r in t.a]
    rows[-1][0] += 1e-3
    rows[-1][1] -= 1e-3
    perturbed = ButcherTableau("bosh3_perturbed", c=t.c, a=rows, b=t.b, order=1)
    assert not perturbed.fsal


def _reachable_stages(t: ButcherTableau) -> tuple[int, ...]:
    """Stages on which y_{n+1} depends: those with b != 0 and, transitively, those they use."""
    needed = {i for i, bi in enumerate(t.b) if bi != 0.0}
    frontier = list(needed)
    while frontier:
        i = frontier.pop()
        for j in range(i):
            if t.a[i][j] != 0.0 and j not in needed:
                needed.add(j)
                frontier.append(j)
    return tuple(sorted(needed))


@pytest.mark.parametrize("name,tableau", ALL, ids=[n for n, _ in ALL])
def test_solution_stages(name, tableau):
    s = tableau.num_stages
    if tableau.implicit:  # the stages are solved together: each one counts
        assert tableau.solution_stages == tuple(range(s))
        return
    assert tableau.solution_stages == _reachable_stages(tableau)
    if name in FSAL_METHODS:
        # everything except the trailing FSAL stage, which only the error estimate uses
        assert tableau.solution_stages == tuple(range(s - 1))
    else:
        assert tableau.solution_stages == tuple(range(s))


@pytest.mark.parametrize("name,tableau", ALL, ids=[n for n, _ in ALL])
def test_sums_relative_to_the_largest_weight_give_back_the_weights(name, tableau):
    rows = [(tableau.a[i], tableau.a_sums[i]) for i in range(tableau.num_stages)] + [(tableau.b, tableau.b_sum)]
    if tableau.b_err is not None:
        rows.append((tableau.b_err, tableau.b_err_sum))
    for weights, form in rows:
        nonzero = {j: w for j, w in enumerate(weights) if w != 0.0}
        if not nonzero:
            assert form is None
            continue
        p, wp, rest = form
        assert wp == nonzero[p] and abs(wp) == max(abs(w) for w in nonzero.values())
        rebuilt = {p: wp, **{j: wp * r for j, r in rest}}
        assert rebuilt.keys() == nonzero.keys()
        for j, w in nonzero.items():
            assert rebuilt[j] == pytest.approx(w, rel=1e-15)


def test_solution_stages_dopri8_and_rk4():
    assert TABLEAUS["rk4"].solution_stages == (0, 1, 2, 3)
    d8 = TABLEAUS["dopri8"]
    # b is zero on stages 1..4 (0-based), but they feed the chain 1 -> 2 -> 3 -> 4 -> 5 with
    # b[5] != 0: a[2][1], a[3][2], a[4][3] and a[5][3], a[5][4] are nonzero.
    assert all(d8.b[i] == 0.0 for i in range(1, 5))
    assert d8.a[2][1] and d8.a[3][2] and d8.a[4][3] and d8.a[5][3] and d8.a[5][4]
    assert d8.b[5] != 0.0
    assert d8.solution_stages == tuple(range(13))


def test_solution_stages_drop_an_unused_stage():
    # stage 2 only feeds the error estimate and stage 1's k is unused by everything
    t = ButcherTableau(
        "unused", c=(0, 0.5, 1), a=((), (0.5,), (1, 0)), b=(1, 0, 0), order=1, b_err=(0.5, 0, -0.5), error_order=1
    )
    assert t.solution_stages == (0,)


# --------------------------------------------------------------------------------------
# validation, immutability, hashing


def _heun_pair(**changes):
    kwargs = dict(name="pair", c=(0, 1), a=((), (1,)), b=(0.5, 0.5), order=2, b_err=(-0.5, 0.5), error_order=1)
    kwargs.update(changes)
    return ButcherTableau(**kwargs)


def test_valid_inputs_are_accepted():
    t = _heun_pair()
    assert t.a == ((0.0, 0.0), (1.0, 0.0))
    square = _heun_pair(a=((0, 0), (1, 0)))
    assert square == t
    exact = _heun_pair(c=(Fraction(0), Fraction(1)), b=(Fraction(1, 2), Fraction(1, 2)))
    assert exact == t and all(type(x) is float for x in exact.b)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(c=(0, 0.9)), "row 1 of a sums to"),
        (dict(b=(0.5, 0.6)), "sum to"),
        (dict(b_err=(0.5, 0.5)), "b_err sums to"),
        (dict(b_err=(0.0, 0.0)), "all zeros"),
        (dict(a=((0, 1), (1, 0)), c=(0.5, 1)), "row 0 of a sums to"),
        (dict(b=(1.0,)), "b has 1 entries"),
        (dict(b=(0.5, 0.25, 0.25)), "b has 3 entries"),
        (dict(a=((), (1,), (1, 0))), "rows"),
        (dict(a=((), (0.5, 0.5, 0))), r"a\[1\] has 3 entries"),
        (dict(b_err=(-0.5, 0.5, 0.0)), "b_err has 3 entries"),
        (dict(error_order=None), "error_order"),
        (dict(b_err=None), "error_order given without b_err"),
        (dict(order=0), "order"),
        (dict(order=True), "order"),
        (dict(c=()), "empty"),
        (dict(c=(float("nan"), 1)), "finite"),
        (dict(a=((), (float("inf"),))), "finite"),
        (dict(b=(0.5, float("nan"))), "finite"),
        (dict(b_err=(-0.5, float("inf"))), "finite"),
    ],
)
def test_invalid_inputs_raise_value_error(changes, match):
    with pytest.raises(ValueError, match=match):
        _heun_pair(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        dict(name=""),
        dict(name=3),
        dict(c=5),
        dict(b=None),
        dict(b=(0.5, None)),
        dict(a=((), (object(),))),
        dict(b_err="ab"),
    ],
)
def test_invalid_types_raise_type_error(changes):
    with pytest.raises(TypeError):
        _heun_pair(**changes)


@pytest.mark.parametrize("field", ["name", "c", "a", "b", "order", "b_err", "error_order", "doc"])
def test_instances_are_immutable(field):
    t = TABLEAUS["dopri5"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(t, field, getattr(t, field))
    assert isinstance(t.c, tuple) and isinstance(t.b, tuple) and isinstance(t.b_err, tuple)
    assert all(isinstance(row, tuple) for row in t.a)


def test_instances_are_hashable():
    assert len({t for t in TABLEAUS.values()}) == len(TABLEAUS) - 1  # heun2 is heun
    assert hash(_heun_pair()) == hash(_heun_pair(doc="another note"))
    assert _heun_pair() == _heun_pair(doc="another note")
    assert {TABLEAUS["rk4"]: 1}[TABLEAUS["rk4"]] == 1


# --------------------------------------------------------------------------------------
# get_tableau


def test_get_tableau_by_name():
    for name, tableau in TABLEAUS.items():
        assert get_tableau(name) is tableau
    assert get_tableau("DOPRI5") is TABLEAUS["dopri5"]
    assert get_tableau("Tsit5") is TABLEAUS["tsit5"]
    assert get_tableau("Heun2") is TABLEAUS["heun"]


def test_get_tableau_passes_a_tableau_through():
    custom = _heun_pair()
    assert get_tableau(custom) is custom
    assert get_tableau(TABLEAUS["rk38"]) is TABLEAUS["rk38"]


def test_get_tableau_unknown_name():
    with pytest.raises(ValueError) as info:
        get_tableau("dopri9")
    message = str(info.value)
    assert "'dopri9'" in message
    assert all(name in message for name in TABLEAUS)
    assert "ButcherTableau" in message


def test_get_tableau_none_is_dopri5():
    assert get_tableau(None) is TABLEAUS["dopri5"]  # torchdiffeq's method=None


@pytest.mark.parametrize("bad", [4, ["rk4"], b"rk4"])
def test_get_tableau_wrong_type(bad):
    with pytest.raises(TypeError, match="ButcherTableau"):
        get_tableau(bad)

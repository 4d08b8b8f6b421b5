"""Binomial ("revolve") checkpointing for reversing a chain of steps.

Setting
-------
A chain of states ``y_0 -> y_1 -> ... -> y_N`` is to be traversed backwards:
``step_back(n, y_n)`` (the adjoint of step ``n -> n+1``) must be called for
``n = N-1, N-2, ..., 0``, in that order, exactly once each.  ``y_0`` is always
available and does not count as stored; at most ``slots`` further states may be
stored at any one time.  Missing states are recomputed forwards from a stored
one, and the aim is to recompute as few forward steps as possible.

This is the problem solved by Griewank & Walther, "Algorithm 799: revolve",
ACM TOMS 26(1), 2000.  Let ``T(n, s)`` be the minimal number of forward steps
needed to reverse ``n`` steps starting from an available ``y_lo`` with ``s``
free slots.  Then ``T(1, s) = 0``, ``T(n, 0) = n(n-1)/2`` and, for ``s >= 1``,

    T(n, s) = min_{1 <= m < n}  m + T(n - m, s - 1) + T(m, s)

(advance ``m`` steps and store ``y_{lo+m}``, reverse the right part with one
slot fewer, free the slot, reverse the left part with all ``s`` slots).

Closed form
-----------
With ``beta(c, r) = C(c + r, c)`` and ``c = s + 1`` (the number of checkpoints
in Griewank's convention, where the base state ``y_lo`` counts as one), let
``r`` be the smallest integer with ``beta(c, r) >= n`` (the *repetition
number*).  Then

    T(n, s) = r * n - beta(c + 1, r - 1) = r * n - C(s + r + 1, s + 2)

(``T`` is piecewise linear in ``n`` with slope ``r`` on
``beta(c, r-1) < n <= beta(c, r)``).  This is checked exactly against the
recurrence in ``tests/test_checkpointing.py``.

Optimal split
-------------
For ``r = 1`` (``n <= s + 2``, enough slots to store every state) the only
optimal split is ``m = 1``.  For ``r >= 2`` the optimal ``m`` are exactly the
integers in ``[m0 + max(0, e - beta(c-2, r)), m0 + min(e, beta(c-1, r-1))]``
with ``m0 = beta(c, r-2)`` and ``e = n - beta(c, r-1)``.  (Derivation: the
marginal costs ``1 + T(m+1, s) - T(m, s)`` of the left part and
``T(k+1, s-1) - T(k, s-1)`` of the right part are non-decreasing, so the
optimum takes the ``n - 2`` cheapest unit increments; all increments costing
less than ``r`` are taken, and the ``e`` ones costing exactly ``r`` may be
distributed freely between the two parts within their capacities.)
:func:`split` returns the largest such ``m``.

Everything here is pure Python (no torch); all functions run in ``O(r)``
integer operations, and :func:`reverse` keeps no recursion (depth ``O(1)``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["optimal_recomputations", "split", "reverse"]


def _as_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    try:
        ivalue = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}") from None
    if ivalue < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return ivalue


def _beta(c: int, r: int) -> int:
    """``beta(c, r) = C(c + r, c)``, with ``beta(c, r) = 0`` for ``r < 0``."""
    if r < 0:
        return 0
    # C(c + r, c) == C(c + r, r); math.comb picks the cheaper side itself.
    from math import comb

    return comb(c + r, r)


def _repetition_number(n: int, c: int) -> tuple[int, int]:
    """Smallest ``r`` with ``beta(c, r) >= n`` (``c >= 1``), and ``beta(c, r)``."""
    r, b = 0, 1  # beta(c, 0) == 1
    while b < n:
        r += 1
        b = b * (c + r) // r  # beta(c, r) = beta(c, r-1) * (c + r) / r, exact
    return r, b


def optimal_recomputations(n: int, slots: int) -> int:
    """Minimal number of forward steps to reverse ``n`` steps with ``slots`` free slots.

    ``y_lo`` is available and not counted; ``slots`` more states may be stored.
    Equals ``T(n, slots)`` of the recurrence in the module docstring, computed
    by the closed form ``r * n - C(slots + r + 1, slots + 2)``.

    Raises ``ValueError`` unless ``n >= 1`` and ``slots >= 0`` are ints.
    """
    n = _as_int(n, "n", 1)
    slots = _as_int(slots, "slots", 0)
    if slots == 0:
        return n * (n - 1) // 2
    c = slots + 1
    r, _ = _repetition_number(n, c)
    return r * n - _beta(c + 1, r - 1)


def _split_bounds(n: int, slots: int) -> tuple[int, int]:
    """Inclusive range ``(lo, hi)`` of all optimal first-checkpoint offsets ``m``.

    Assumes validated ``n >= 2`` and ``slots >= 1``.
    """
    c = slots + 1
    r, _ = _repetition_number(n, c)
    if r <= 1:
        return 1, 1
    m0 = _beta(c, r - 2)
    extra = n - _beta(c, r - 1)  # in [1, beta(c-1, r)]
    left_capacity = _beta(c - 1, r - 1)
    right_capacity = _beta(c - 2, r)
    return m0 + max(0, extra - right_capacity), m0 + min(extra, left_capacity)


def split(n: int, slots: int) -> int:
    """An optimal number ``m`` of steps to advance before storing a checkpoint.

    For reversing ``n >= 2`` steps from ``y_lo`` with ``slots >= 1`` free slots,
    ``m + T(n - m, slots - 1) + T(m, slots) == T(n, slots)`` and
    ``1 <= m <= n - 1``.  Returns the largest optimal ``m`` (see the module
    docstring for the full optimal range).  Costs ``O(r)`` integer operations.

    Raises ``ValueError`` unless ``n >= 2`` and ``slots >= 1`` are ints (no split
    exists otherwise).
    """
    n = _as_int(n, "n", 2)
    slots = _as_int(slots, "slots", 1)
    return _split_bounds(n, slots)[1]


def reverse(
    n: int,
    slots: int,
    y0: Any,
    advance: Callable[[int, int, Any], Any],
    step_back: Callable[[int, Any], None],
) -> int:
    """Reverse a chain of ``n`` steps with at most ``slots`` stored states.

    Parameters
    ----------
    n:
        Number of steps (``>= 1``); states are ``y_0, ..., y_n``.
    slots:
        Maximum number of states stored at any one time besides ``y_0`` (``>= 0``).
        The single state currently being handed to ``step_back`` after a
        recomputation is transient and not counted (it is released before the
        next ``advance``).
    y0:
        The initial state; never released by the driver.
    advance:
        ``advance(i, j, y_i) -> y_j`` recomputes ``j - i`` forward steps
        (``j > i``); these are what is counted.  It should not retain ``y_i`` or
        the result.
    step_back:
        ``step_back(i, y_i)``; called for ``i = n-1, ..., 0`` in order, once each.

    Returns
    -------
    int
        Total forward steps recomputed; equals ``optimal_recomputations(n, slots)``
        (``n - 1`` when ``slots >= n - 2``: one forward sweep storing every state).

    The schedule is the recurrence of the module docstring, run iteratively on a
    stack of checkpoints, so memory for the schedule itself is ``O(slots)`` and
    there is no recursion.  Freed states are dereferenced at once so that they
    (e.g. large tensors) can be garbage-collected.
    """
    recomputed = 0

    def counted(i: int, j: int, y_i: Any) -> Any:
        nonlocal recomputed
        recomputed += j - i
        return advance(i, j, y_i)

    for i, y in reversed_states(n, slots, y0, counted):
        step_back(i, y)
        del y  # not alive while the next state is recomputed
    return recomputed


def reversed_states(n: int, slots: int, y0: Any, advance: Callable[[int, int, Any], Any]) -> Iterator[tuple[int, Any]]:
    """The schedule of :func:`reverse` as a generator: yields ``(i, y_i)`` for
    ``i = n-1, ..., 0``; the consumer does the step back between two items."""
    n = _as_int(n, "n", 1)
    slots = _as_int(slots, "slots", 0)

    indices = [0]  # indices of available states; indices[0] is y_0 (not counted)
    states = [y0]
    hi = n  # steps hi..n-1 have been reversed; next to reverse is hi - 1
    while hi > 0:
        lo = indices[-1]
        length = hi - lo
        if length == 1:
            yield lo, states[-1]
            hi = lo
            if lo > 0:  # free the checkpoint (y_0 is kept)
                indices.pop()
                states.pop()
            continue
        free = slots - (len(indices) - 1)
        if free <= 0:
            # No slot left: recompute y_{hi-1} from y_lo, use it, drop it.
            y = advance(lo, hi - 1, states[-1])
            yield hi - 1, y
            del y
            hi -= 1
        else:
            m = _split_bounds(length, free)[1]
            indices.append(lo + m)
            states.append(advance(lo, lo + m, states[-1]))

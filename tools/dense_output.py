"""Derive dopri8's continuous extension (``symode._dopri8.B_DENSE``) and print it.

The extension is ``b_i(theta) = sum_{p=1..5} B[i][p-1] theta**p`` over the 13 stages of RK8(7)13M
and a 14th, ``f(t_{n+1}, y_{n+1})``. The conditions, linear in ``B``:

* order 5 at every theta: for every rooted tree ``t`` of at most 5 nodes and every power ``p``,
  ``sum_i B[i][p-1] Phi_i(t) = [p == |t|] / gamma(t)`` (``Phi`` the elementary weights);
* the step's solution at theta = 1: ``sum_p B[i][p-1] = b_i``;
* C1 at both ends: ``b_i'(1) = [i == 14th]`` and ``b_i'(0) = [i == 1st]``;
* ``B[i] = 0`` for the stages with ``b_i = 0`` other than the 14th (stages 2-5).

They are solved for the minimum-norm ``B`` in float64, with two rounds of refinement whose
residuals are computed in exact rational arithmetic (the tableau is rational), entries below 1e-16
set to zero, and the largest residual is printed (about 7e-15). Run: ``python tools/dense_output.py``.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from symode import _dopri8

DEGREE = 5
ORDER = 5


def trees(n: int) -> set[tuple]:
    """The rooted trees with ``n`` nodes, each the sorted tuple of its root's subtrees."""
    if n == 1:
        return {()}
    out = set()
    for tree in trees(n - 1):
        out |= _grown(tree)
    return out


def _grown(tree: tuple) -> set[tuple]:
    out = {tuple(sorted(tree + ((),)))}
    for i, child in enumerate(tree):
        for grown in _grown(child):
            out.add(tuple(sorted(tree[:i] + (grown,) + tree[i + 1 :])))
    return out


def gamma(tree: tuple) -> int:
    size = _size(tree)
    product = 1
    for child in tree:
        product *= gamma(child)
    return size * product


def _size(tree: tuple) -> int:
    return 1 + sum(_size(child) for child in tree)


def main() -> int:
    s = len(_dopri8.C)
    S, P = s + 1, DEGREE
    A = [[Fraction(0)] * S for _ in range(S)]
    for i, row in enumerate(_dopri8.A):
        for j, v in enumerate(row):
            A[i][j] = Fraction(v)
    b = [Fraction(v) for v in _dopri8.B] + [Fraction(0)]
    A[s][:s] = b[:s]
    memo: dict[tuple, list[Fraction]] = {}

    def phi(tree: tuple) -> list[Fraction]:
        if tree not in memo:
            p = [Fraction(1)] * S
            for child in tree:
                q = phi(child)
                p = [x * sum(A[i][j] * q[j] for j in range(S)) for i, x in enumerate(p)]
            memo[tree] = p
        return memo[tree]

    rows: list[list[Fraction]] = []
    rhs: list[Fraction] = []

    def condition(coefficients: dict[int, Fraction], value: Fraction) -> None:
        row = [Fraction(0)] * (S * P)
        for k, v in coefficients.items():
            row[k] = v
        rows.append(row)
        rhs.append(value)

    for n in range(1, ORDER + 1):
        for tree in trees(n):
            weights = phi(tree)
            for p in range(1, P + 1):
                value = Fraction(1, gamma(tree)) if p == n else Fraction(0)
                condition({i * P + p - 1: weights[i] for i in range(S)}, value)
    for i in range(S):
        condition({i * P + p: Fraction(1) for p in range(P)}, b[i])
        condition({i * P + p: Fraction(p + 1) for p in range(P)}, Fraction(1 if i == S - 1 else 0))
        condition({i * P: Fraction(1)}, Fraction(1 if i == 0 else 0))
    free = [i for i in range(S) if b[i] != 0 or i == S - 1]
    cols = [i * P + p for i in free for p in range(P)]
    M = np.array([[float(r[c]) for c in cols] for r in rows])

    def solve(v: np.ndarray) -> np.ndarray:
        out = np.zeros(S * P)
        out[cols] = np.linalg.lstsq(M, v, rcond=None)[0]
        return out

    def residual(x: np.ndarray) -> list[Fraction]:
        exact = [Fraction(float(v)) for v in x]
        return [r - sum(row[c] * exact[c] for c in cols if row[c]) for row, r in zip(rows, rhs)]

    x = solve(np.array([float(v) for v in rhs]))
    for _ in range(2):
        x = x + solve(np.array([float(v) for v in residual(x)]))
    x[np.abs(x) < 1e-16] = 0.0  # exact zeros where the solve leaves round-off (the conditions hold as well)
    print(f"# largest residual: {float(max(abs(v) for v in residual(x))):.1e}")
    print("B_DENSE = (")
    for row in x.reshape(S, P):
        print("    (" + ", ".join(repr(float(v)) for v in row) + "),")
    print(")")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Matrix-free linear algebra for implicit methods on large states (``Newton(jacobian="krylov")``).

No Jacobian is formed: ``J = df/dy`` at a point is applied as products, ``J^T u`` by one
vector-Jacobian product and ``J v`` by differentiating that product once more in ``u`` (it is
linear in ``u``: ``d/du (v . J^T u) = J v``), so any ``f`` that autograd can differentiate twice
works, including one that differentiates itself (a CNF's trace), which forward-mode AD cannot
run. The graphs of one point are built once and reused by every product.

The Newton matrices ``I - h A_BB (x) J`` of a step are solved by GMRES (``gmres``) to a relative
residual of ``NEWTON_RTOL`` (restarted at most ``NEWTON_RESTARTS`` times), an inexact Newton
method: a looser linear solve slows Newton's iteration, whose residual is exact, and never
changes what it converges to. The adjoint stage equations are solved by iterative refinement
whose residual is exact too (``symode._implicit_gradient``), with GMRES on the stages' own
operator as its inner solve (``4 krylov_iters`` products at most). GMRES is not
preconditioned: its products grow with the stiffness ``h |lambda|``. Memory: GMRES's basis
(``krylov_iters`` states in Newton's iteration, four times that in the adjoint's), and one
point's graphs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._tableau import ButcherTableau

__all__ = ["Linearisation", "KrylovSolver", "gmres", "NEWTON_RTOL"]

#: the relative residual of the linear solves inside Newton's iteration (an inexact Newton method),
#: and the restarts of GMRES (``krylov_iters`` products each) allowed to reach it
NEWTON_RTOL, NEWTON_RESTARTS = 1e-3, 3


class Linearisation:
    """``J = df/dy`` at ``y`` as products on flat vectors: ``matvec(v) = J v``, ``rmatvec(u) = J^T u``."""

    def __init__(self, func: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor):
        with torch.enable_grad():
            self.x = y.detach().requires_grad_(True)
            self.out = func(self.x)
        self.zero = torch.zeros(y.numel(), dtype=y.dtype, device=y.device)
        self.constant = not self.out.requires_grad
        self._dual: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        if self.constant:
            return self.zero
        with torch.enable_grad():
            (g,) = torch.autograd.grad(
                self.out, self.x, u.reshape(self.out.shape), retain_graph=True, allow_unused=True
            )
        return self.zero if g is None else g.detach().reshape(-1)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if self.constant:
            return self.zero
        with torch.enable_grad():
            if self._dual is None:
                u = torch.zeros_like(self.out, requires_grad=True)
                try:
                    (first,) = torch.autograd.grad(self.out, self.x, u, create_graph=True, allow_unused=True)
                except RuntimeError as e:
                    raise _not_twice(str(e)) from None
                if first is not None and not first.requires_grad:  # J^T u is linear in u, unless not recorded
                    raise _not_twice("its vector-Jacobian product has no graph (a once_differentiable backward?)")
                self._dual = (u, first)
                if first is not None:
                    self._check_adjoint()
            return self._jvp(v)

    def _jvp(self, v: torch.Tensor) -> torch.Tensor:
        u, g = self._dual if self._dual is not None else (self.zero, None)
        if g is None:  # f does not depend on y
            return self.zero
        with torch.enable_grad():
            try:
                (jv,) = torch.autograd.grad(g, u, v.reshape(g.shape), retain_graph=True, allow_unused=True)
            except RuntimeError as e:
                raise _not_twice(str(e)) from None
        return self.zero if jv is None else jv.detach().reshape(-1)

    def _check_adjoint(self) -> None:
        """``u . J v == J^T u . v`` on a fixed probe: an op whose backward autograd cannot
        differentiate, but which says nothing (a ``once_differentiable`` one beside other terms),
        drops its part of ``J v`` silently; it is refused here instead."""
        gen = torch.Generator().manual_seed(0)
        u, v = torch.randn(2, self.zero.numel(), generator=gen, dtype=self.zero.dtype).to(self.zero.device)
        jv, jtu = self._jvp(v), self.rmatvec(u)
        scale = float(u.norm() * jv.norm() + jtu.norm() * v.norm())
        if abs(float(u @ jv - jtu @ v)) > torch.finfo(self.zero.dtype).eps ** 0.5 * scale:
            raise _not_twice("its Jacobian-vector and vector-Jacobian products disagree: an op is differentiable once")


def _not_twice(why: str) -> TypeError:
    return TypeError(
        f"Newton(jacobian='krylov') applies the Jacobian of f by differentiating its vector-Jacobian product once "
        f"more, which f does not support ({why}); use Newton(jacobian='dense') or 'batched'"
    )


class KrylovSolver:
    """The solves with ``I - h A_BB (x) J`` of one step by GMRES, ``J`` given as ``matvec``/``rmatvec``
    on flat vectors: the matrix-free counterpart of ``symode._newton.Factorisations``."""

    matrix_free = True
    products: tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None

    def __init__(
        self,
        tableau: ButcherTableau,
        h: float,
        matvec: Callable[[torch.Tensor], torch.Tensor],
        rmatvec: Callable[[torch.Tensor], torch.Tensor],
        max_iters: int,
    ):
        self.tableau, self.h, self.max_iters = tableau, h, max_iters
        self.products = (matvec, rmatvec)

    def solve(self, block: tuple[int, ...], rhs: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``rhs`` (one row per stage of the block) solved to ``NEWTON_RTOL``; ``transpose``: with the transpose."""
        if self.products is None:
            raise RuntimeError("KrylovSolver.solve after release()")
        product = self.products[1 if transpose else 0]
        a = [[self.tableau.a[i][j] for j in block] for i in block]
        m, h = len(block), self.h

        def apply(v: torch.Tensor) -> torch.Tensor:
            rows = v.reshape(m, -1)
            jv = [product(r) for r in rows]
            out = []
            for p in range(m):
                acc = rows[p]
                for q in range(m):
                    w = a[q][p] if transpose else a[p][q]
                    if w != 0.0:
                        acc = acc - (h * w) * jv[q]
                out.append(acc)
            return torch.stack(out).reshape(v.shape)

        b = rhs.reshape(-1)
        x, converged = gmres(apply, b, NEWTON_RTOL, self.max_iters)
        for _ in range(NEWTON_RESTARTS):  # restarted from the residual, to the same tolerance on b
            if converged:
                break
            r = b - apply(x)
            ratio = float(torch.linalg.vector_norm(b)) / max(float(torch.linalg.vector_norm(r)), 1e-300)
            dx, converged = gmres(apply, r, min(NEWTON_RTOL * ratio, 0.5), self.max_iters)
            x = x + dx
        return x.reshape(rhs.shape)

    def release(self) -> None:
        """Drop the products (and the graphs they hold): the step no longer needs them."""
        self.products = None


def gmres(
    apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, rtol: float, max_iters: int
) -> tuple[torch.Tensor, bool]:
    """``x`` with ``||b - A x|| <= rtol ||b||`` by GMRES from zero (classical Gram-Schmidt applied
    twice, Givens rotations, no restart), or the best in the ``max_iters`` products' Krylov space:
    ``(x, converged)``."""
    beta = float(torch.linalg.vector_norm(b))
    if beta == 0.0 or not math.isfinite(beta):
        return torch.zeros_like(b) if beta == 0.0 else b * math.nan, beta == 0.0
    basis = b.new_empty(max_iters + 1, b.numel())
    basis[0] = b.reshape(-1) / beta
    columns: list[list[float]] = []  # of the Hessenberg matrix, rotated to upper triangular
    rotations: list[tuple[float, float]] = []
    g = [beta]
    converged = False
    for j in range(max_iters):
        w = apply(basis[j].reshape(b.shape)).reshape(-1)
        done = basis[: j + 1]
        first = done @ w
        w = w - first @ done
        second = done @ w  # the second pass restores the orthogonality the first loses
        w = w - second @ done
        norm = float(torch.linalg.vector_norm(w))
        column = (first + second).tolist() + [norm]
        for k, (c, s) in enumerate(rotations):
            column[k], column[k + 1] = c * column[k] + s * column[k + 1], -s * column[k] + c * column[k + 1]
        radius = math.hypot(column[j], column[j + 1])
        c, s = (1.0, 0.0) if radius == 0.0 else (column[j] / radius, column[j + 1] / radius)
        column[j], column[j + 1] = radius, 0.0
        rotations.append((c, s))
        g.append(-s * g[j])
        g[j] = c * g[j]
        columns.append(column)
        if abs(g[-1]) <= rtol * beta or norm == 0.0 or not math.isfinite(norm):
            converged = math.isfinite(norm)
            break
        basis[j + 1] = w / norm
    k = len(columns)
    y = [0.0] * k
    for i in range(k - 1, -1, -1):  # back substitution on the rotated Hessenberg matrix
        acc = g[i] - sum(columns[j][i] * y[j] for j in range(i + 1, k))
        y[i] = acc / columns[i][i] if columns[i][i] != 0.0 else 0.0
    x = torch.tensor(y, dtype=b.dtype, device=b.device) @ basis[:k]
    return x.reshape(b.shape), converged

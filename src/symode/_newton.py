"""How an implicit method's stage equations are solved: the user's ``Newton`` options, the
settings a solve resolves them to, and the linear algebra of Newton's matrices
``I - h A_BB (x) J`` (the Jacobian by autograd and its LU factorisations; the matrix-free
alternative is ``symode._krylov``). ``symode._implicit`` takes the steps with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._checks import positive_int
from ._krylov import KrylovSolver, Linearisation
from ._tableau import ButcherTableau

__all__ = ["Newton", "NewtonSettings", "StartJacobian", "Factorisations", "jacobian", "block_matrix"]


@dataclass(frozen=True)
class Newton:
    """How the stage equations of an implicit method are solved.

    Args:
        rtol, atol: Newton's method stops when the error it leaves, in units of ``atol + rtol
            |y_n|`` (RMS norm), is estimated at most 1. ``None``: 1% of the solve's
            ``rtol``/``atol`` with adaptive steps (as diffrax and Hairer's RADAU5 do), ``rtol``
            at least ``100 eps`` (float32: 1.2e-5, so that the default ``rtol = 1e-7`` does not
            ask Newton for what float32 cannot hold); with fixed steps ``max(100 eps, sqrt(eps)
            / 100)`` of the state's dtype (float64: 1.5e-10, float32: 1.2e-5), about as tight
            as the stages of a stiff problem's long steps can be held against round-off.
        max_iters: iterations before a step is given up: an adaptive solve retries it smaller;
            a fixed-step solve raises ``SolveError``. ``None``: 10 with adaptive steps, 50 with
            fixed ones (which have no smaller step to retry).
        jacobian: ``"dense"``: the Jacobian of the whole state (``n`` vector-Jacobian products
            for ``n`` numbers); ``"batched"``: the state's first dimension is a batch of
            independent samples (a neural ODE on a batch), and only each sample's block is
            formed (``D`` products for samples of ``D`` numbers, one small LU per sample). It
            preconditions only: a batch whose samples interact converges slower, never wrong;
            ``"krylov"``: none at all (a large state whose parts interact, a discretised PDE):
            the Newton matrices are solved by GMRES with Jacobian-vector products, and the
            adjoint's stage equations with vector-Jacobian products (``symode._krylov``).
        krylov_iters: with ``"krylov"``, the most products (and basis states) of one GMRES solve.
    """

    rtol: float | None = None
    atol: float | None = None
    max_iters: int | None = None
    jacobian: str = "dense"
    krylov_iters: int = 30

    def __post_init__(self) -> None:
        if self.jacobian not in ("dense", "batched", "krylov"):
            raise ValueError(f"Newton.jacobian must be 'dense', 'batched' or 'krylov', got {self.jacobian!r}")
        object.__setattr__(self, "krylov_iters", positive_int(self.krylov_iters, "Newton.krylov_iters"))
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"Newton.{name} must be a positive float or None, got {value!r}")
        if self.max_iters is not None:
            object.__setattr__(self, "max_iters", positive_int(self.max_iters, "Newton.max_iters"))

    def settings(self, dtype: torch.dtype, rtol: Any = None, atol: Any = None) -> NewtonSettings:
        """The tolerances a solve uses: its own, or those of ``rtol``/``atol`` (adaptive steps)."""
        eps = torch.finfo(dtype).eps
        floor = max(100.0 * eps, 0.01 * eps**0.5)  # tighter fails against round-off on stiff steps
        if rtol is None or atol is None:  # fixed steps
            return NewtonSettings(
                self.rtol or floor, self.atol or floor, self.max_iters or 50, self.jacobian, self.krylov_iters
            )
        return NewtonSettings(
            self.rtol if self.rtol is not None else _at_least(rtol * 0.01, 100.0 * eps),
            self.atol if self.atol is not None else atol * 0.01,
            self.max_iters or 10,
            self.jacobian,
            self.krylov_iters,
        )


def _at_least(tolerance: Any, floor: float) -> Any:
    """``tolerance`` (a float or a tensor) raised to ``floor`` where below it."""
    return tolerance.clamp(min=floor) if isinstance(tolerance, torch.Tensor) else max(tolerance, floor)


@dataclass(frozen=True)
class NewtonSettings:
    """A solve's resolved Newton tolerances (floats or tensors shaped like the state)."""

    rtol: Any
    atol: Any
    max_iters: int
    jacobian: str = "dense"
    krylov_iters: int = 30

    def point(self, func: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor) -> Any:
        """``J = df/dy`` at ``y``: formed by autograd (``jacobian``), or as products (``Linearisation``)."""
        if self.jacobian == "krylov":
            return Linearisation(func, y)
        return jacobian(func, y, self.jacobian == "batched")

    def solver(self, tableau: ButcherTableau, h: float, point: Any) -> Any:
        """The solver of ``I - h A_BB (x) J`` for a ``point``: ``Factorisations`` or a ``KrylovSolver``."""
        if isinstance(point, Linearisation):
            return KrylovSolver(tableau, h, point.matvec, point.rmatvec, self.krylov_iters)
        return Factorisations(tableau, h, point)

    def linearise(self, tableau: ButcherTableau, h: float, func: Callable[[torch.Tensor], torch.Tensor], y):
        """``solver(tableau, h, point(func, y))``."""
        return self.solver(tableau, h, self.point(func, y))


def jacobian(func: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, batched: bool = False) -> torch.Tensor:
    """``df/dy`` at ``y`` by reverse mode, as ``(B, D, D)`` blocks: with ``batched`` (``Newton(
    jacobian="batched")``) the blocks ``df_b/dy_b`` of the samples along ``y``'s first
    dimension, from ``D`` products (``D`` the numbers of one sample), as if no sample depended
    on another; else one block of the whole state (``B = 1``, ``D = y.numel()``: ``n`` products).
    The Jacobian only preconditions Newton's method and the adjoint's refinement, whose
    residuals are exact: a batch that is not independent makes them converge slower, not wrong."""
    count, size = (y.shape[0], y[0].numel()) if batched and y.ndim >= 2 else (1, y.numel())
    with torch.enable_grad():
        x = y.detach().requires_grad_(True)
        out = func(x)
        if not out.requires_grad:
            return y.new_zeros(count, size, size)
        eye = torch.eye(size, dtype=out.dtype, device=out.device)
        basis = eye.reshape(size, 1, size).expand(size, count, size).reshape(size, *out.shape)
        try:
            (rows,) = torch.autograd.grad(out, x, basis, is_grads_batched=True, allow_unused=True, retain_graph=True)
        except RuntimeError:  # a func that vmap cannot batch (one that differentiates itself): a product per row
            rows = torch.stack([torch.autograd.grad(out, x, e, retain_graph=True, allow_unused=True)[0] for e in basis])
        del out
    if rows is None:
        return y.new_zeros(count, size, size)
    return rows.reshape(size, count, size).transpose(0, 1).detach()  # [b, d, :] = d f_{b,d} / d y_b


class Factorisations:
    """The LU factorisations of ``I - h A_BB (x) J`` for one step, one per block shape; ``J`` as
    ``(B, D, D)`` blocks (``jacobian``), each sample's factorised on its own."""

    def __init__(self, tableau: ButcherTableau, h: float, jacobian: torch.Tensor):
        self.tableau, self.h, self.jacobian = tableau, h, jacobian
        self.cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def _lu(self, block: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        key = tuple(self.tableau.a[i][j] for i in block for j in block)
        found = self.cache.get(key)  # type: ignore[arg-type]
        if found is None:
            found = torch.linalg.lu_factor(block_matrix(self.tableau, block, self.h, self.jacobian))
            self.cache[key] = found  # type: ignore[index]
        return found

    def solve(self, block: tuple[int, ...], rhs: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``rhs`` (one row per stage of the block) solved; ``transpose``: with the transpose."""
        lu, pivots = self._lu(block)
        count, size = self.jacobian.shape[0], self.jacobian.shape[1]
        by_sample = rhs.reshape(len(block), count, size).transpose(0, 1).reshape(count, -1, 1)
        out = torch.linalg.lu_solve(lu, pivots, by_sample, adjoint=transpose)
        return out.reshape(count, len(block), size).transpose(0, 1).reshape(rhs.shape)


def block_matrix(tableau: ButcherTableau, block: tuple[int, ...], h: float, jacobian: torch.Tensor) -> torch.Tensor:
    """``I - h A_BB (x) J_b`` for each block ``J_b`` of ``jacobian`` (``(B, D, D)``): ``(B, mD, mD)``."""
    a = torch.tensor([[tableau.a[i][j] for j in block] for i in block], dtype=jacobian.dtype, device=jacobian.device)
    count, size, m = jacobian.shape[0], jacobian.shape[1], len(block)
    kron = (a[None, :, None, :, None] * jacobian[:, None, :, None, :]).reshape(count, m * size, m * size)
    return torch.eye(m * size, dtype=jacobian.dtype, device=jacobian.device) - h * kron


class StartJacobian:
    """The Jacobian at a step's start, for the retries of that step: a rejected step is tried
    again, shorter, from the same ``(t, y)``, where the Jacobian is what it was (and what a
    recomputation of the accepted try finds: the same function of the same numbers). Only the
    factorisation, which depends on ``h``, is made anew. One per time loop; it holds one point."""

    def __init__(self) -> None:
        self.at: tuple[float, torch.Tensor, int] | None = None
        self.value: Any = None

    def get(self, t: float, y: torch.Tensor, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """``(value, fresh)``: the kept value when ``(t, y)`` is the point it was computed at (the
        same tensor, not changed in place since)."""
        if self.at is None or self.at[0] != t or self.at[1] is not y or self.at[2] != y._version:
            self.at, self.value = (t, y, y._version), compute()
            return self.value, True
        return self.value, False

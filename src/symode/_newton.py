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

__all__ = ["Newton", "NewtonSettings", "JacobianTape", "REUSE_RATE", "Factorisations", "jacobian", "block_matrix"]


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


#: a step's Newton iteration contracting at most this fast (each update this fraction of the one
#: before, or converged at once) keeps its Jacobian for the next step
REUSE_RATE = 0.01


class JacobianTape:
    """Which Jacobian each step's Newton iteration started from, so that every pass finds the
    same stages. The forward solve (``recording()``) forms the Jacobian at a step's start
    ``(t_n, y_n)``, and keeps it for the next step while the iteration converges fast (every
    update at most ``REUSE_RATE`` times the one before, as Hairer's RADAU5 keeps it), and for
    the retries of a rejected step (the same point); a step whose iteration fails with a kept
    Jacobian is solved again, the same ``h``, with one formed at its own start. For each step
    start ``t_n`` the tape notes the point ``(t_p, y_p)`` of the Jacobian its last try used,
    holding ``y_p`` (a state the exact methods keep anyway when they keep every state; one more
    state per Jacobian otherwise). A recomputation (``replaying()``: the exact methods' backward
    passes) forms the Jacobian at the noted point, once per run of steps that share it. Only a
    tape with ``notes`` (the methods that recompute steps) notes the points and holds their
    states: backprop and the continuous adjoint hold none."""

    def __init__(self, notes: bool = False) -> None:
        self.notes = notes
        self.points: dict[float, tuple[float, torch.Tensor, int]] = {}
        self.player = _Player(self.points)

    def recording(self) -> _Recorder:
        """For a forward solve: the points noted before are dropped."""
        self.points.clear()
        self.player = _Player(self.points)
        return _Recorder(self.points if self.notes else None)

    def replaying(self) -> _Player:
        """For recomputations: one player, which keeps the last Jacobian it formed for the next
        step that shares it (the backward passes take the steps in reverse order)."""
        return self.player

    def release(self) -> None:
        """Drop the Jacobian the player keeps (a backward pass has ended; the notes stay, for
        another backward pass through the same graph)."""
        self.player = _Player(self.points)


class _Side:
    """What both sides of a ``JacobianTape`` hold: the Jacobian last given and its point."""

    def __init__(self) -> None:
        self.at: tuple[float, torch.Tensor, int] | None = None  # (t_p, y_p, y_p's version)
        self.value: Any = None

    def own(self, t: float) -> bool:
        """Whether the Jacobian the last ``get`` gave was formed at the step's own start ``t``."""
        return self.at is not None and self.at[0] == t


class _Recorder(_Side):
    """The forward solve's side of a ``JacobianTape``."""

    def __init__(self, points: dict[float, tuple[float, torch.Tensor, int]] | None) -> None:
        super().__init__()
        self.points = points  # None: nothing is noted
        self.start: tuple[float, torch.Tensor] | None = None  # the last try's (t, y) (y: the caller's tensor)
        self.fast = False  # whether the last converged try contracted fast enough to keep its Jacobian

    def get(self, t: float, y: torch.Tensor, compute: Callable[[float, torch.Tensor], Any]) -> tuple[Any, bool]:
        """``(value, fresh)``: the Jacobian a try from ``(t, y)`` starts from."""
        retry = self.start is not None and self.start[0] == t and self.start[1] is y
        kept = self.at is not None and self.at[1]._version == self.at[2] and (retry or self.fast)
        self.start, self.fast = (t, y), False
        if not kept:
            return self.fresh(t, y, compute), True
        if self.points is not None and self.at is not None:
            self.points[t] = self.at
        return self.value, False

    def fresh(self, t: float, y: torch.Tensor, compute: Callable[[float, torch.Tensor], Any]) -> Any:
        """The Jacobian formed at ``(t, y)``, noted as the one the step from ``t`` uses."""
        held = y.detach()
        self.at, self.value = (t, held, held._version), compute(t, held)
        if self.points is not None:
            self.points[t] = self.at
        return self.value

    def converged(self, fast: bool) -> None:
        self.fast = fast


class _Player(_Side):
    """A recomputation's side of a ``JacobianTape``: the noted points' Jacobians."""

    def __init__(self, points: dict[float, tuple[float, torch.Tensor, int]]) -> None:
        super().__init__()
        self.points = points

    def get(self, t: float, y: torch.Tensor, compute: Callable[[float, torch.Tensor], Any]) -> tuple[Any, bool]:
        point = self.points.get(t)
        if point is None:  # never: every recomputed step was taken by a forward solve that noted it
            raise RuntimeError(
                f"no Jacobian was noted for the step from t = {t!r} of an implicit method, so its recomputation "
                f"cannot find the forward solve's stages: a gradient method that recomputes steps gives its problem "
                f"jacobians=JacobianTape(notes=True) before the forward solve (RecordingMethod does)"
            )
        if point[1]._version != point[2]:
            raise RuntimeError(
                f"the state at t = {point[0]!r}, whose Jacobian the step from t = {t!r} used, was changed in "
                f"place after the forward solve (y0, or a state it returned?): the recomputation would find other "
                f"stages; do not modify them before the backward pass"
            )
        if self.at is point:
            return self.value, False
        self.at, self.value = point, compute(point[0], point[1])
        return self.value, True

    def fresh(self, t: float, y: torch.Tensor, compute: Callable[[float, torch.Tensor], Any]) -> Any:
        del t, y, compute
        return None  # the noted point was the one that converged: a retry cannot help

    def converged(self, fast: bool) -> None:
        del fast

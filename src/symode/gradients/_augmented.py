"""The Newton matrices of the continuous adjoint's implicit backward solve.

Its state is ``z = [y, a, g]`` (the state, its adjoint, the parameters' gradient), whose
Jacobian is preconditioned by the block diagonal ``J_z = diag(J, -J^T, 0)``: no Jacobian of the
parameters' size is ever formed, and Newton's residual is the full system's, so it converges
to it all the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._ivp import ODEProblem
from .._krylov import KrylovSolver, Linearisation
from .._newton import Factorisations, NewtonSettings
from .._newton import jacobian as state_jacobian
from .._tableau import ButcherTableau

__all__ = ["augmented_preconditioner", "augmented_products", "AugmentedFactorisations"]

Product = Callable[[torch.Tensor], torch.Tensor]


def augmented_preconditioner(problem: ODEProblem, tableau: ButcherTableau, settings: NewtonSettings, n: int):
    """``preconditioner(t, h, z)`` for ``symode._implicit.implicit_step``: the LUs of ``J_z``'s
    blocks, or (``Newton(jacobian="krylov")``) GMRES with its products."""

    def preconditioner(t: float, h: float, z: torch.Tensor) -> Any:
        y = z[:n].view(problem.y0.shape)
        problem.stats.num_jacobians += 1
        if settings.jacobian == "krylov":
            point = Linearisation(lambda x: problem.func(problem.time(t), x), y)
            return KrylovSolver(tableau, h, *augmented_products(point, n), settings.krylov_iters)
        jacobian = state_jacobian(lambda x: problem.func(problem.time(t), x), y)
        return AugmentedFactorisations(tableau, h, jacobian, n)

    return preconditioner


def augmented_products(point: Linearisation, n: int) -> tuple[Product, Product]:
    """``J_z v`` and ``J_z^T u`` for the augmented state's ``J_z = diag(J, -J^T, 0)``, matrix-free."""

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([point.matvec(v[:n]), -point.rmatvec(v[n : 2 * n]), torch.zeros_like(v[2 * n :])])

    def rmatvec(u: torch.Tensor) -> torch.Tensor:
        return torch.cat([point.rmatvec(u[:n]), -point.matvec(u[n : 2 * n]), torch.zeros_like(u[2 * n :])])

    return matvec, rmatvec


class AugmentedFactorisations:
    """``I - h A_BB (x) J_z`` for the augmented state ``z = [y, a, g]`` with ``J_z`` the block
    diagonal ``diag(J, -J^T, 0)``: one LU for ``y``, one for ``a``, the identity for ``g``."""

    def __init__(self, tableau: ButcherTableau, h: float, jacobian: torch.Tensor, n: int):
        self.state = Factorisations(tableau, h, jacobian)
        self.adjoint = Factorisations(tableau, h, -jacobian.transpose(-1, -2).contiguous())
        self.n = n

    def solve(self, block: tuple[int, ...], rhs: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        n, m = self.n, len(block)
        z = rhs.reshape(m, -1)
        y = self.state.solve(block, z[:, :n].contiguous(), transpose)
        a = self.adjoint.solve(block, z[:, n : 2 * n].contiguous(), transpose)
        return torch.cat([y, a, z[:, 2 * n :]], dim=1).reshape(rhs.shape)

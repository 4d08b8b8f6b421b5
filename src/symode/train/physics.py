"""Physical systems learned by energy-based neural models that keep the equation's structure.

The Korteweg-de Vries equation ``u_t = -6 u u_x - u_xxx`` is ``u_t = d/dx (dH/du)`` with the
energy ``H(u) = int (-u^3 + u_x^2 / 2) dx``, which it conserves. On a periodic grid of ``n``
points (spacing ``dx``) it is discretised, as in the discrete-gradient literature (Furihata,
Matsuo; the physical experiments of the symplectic adjoint paper build on this), as

    du/dt = G grad H_d(u),   H_d(u) = dx sum_i (-u_i^3 + ((u_{i+1} - u_i) / dx)^2 / 2),

with ``G = D / dx`` and ``D`` the central difference: ``D`` is skew-symmetric, so
``dH_d/dt = grad H_d . G grad H_d = 0`` exactly, whatever ``H_d`` is.

The model (:class:`EnergyModel`) keeps ``G`` and learns the energy: ``H_theta(u) = dx sum_i
g_theta(u_i, (u_{i+1} - u_i) / dx)`` with ``g_theta`` a small network applied at every grid
point (the energy is local and translation-invariant, as the true one). Its dynamics
``G grad H_theta`` (``grad`` by autograd inside ``f``) conserve ``H_theta`` whatever the
weights: the structure is in the model, not learned.

:func:`simulate` makes the data: soliton initial conditions (two solitons
``2 k^2 sech^2(k (x - d))`` of random speeds and places, seeded) solved by dopri8 at
``rtol = atol = 1e-10``. :class:`CahnHilliard` is the same construction with the discrete
Laplacian for ``G`` (dissipative) and the double-well energy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import symode

__all__ = ["CahnHilliard", "KdV", "EnergyNet", "EnergyModel", "simulate"]


class _PeriodicGrid:
    """``n`` points of a periodic interval of ``length``: the spacing and the points."""

    n: int
    length: float

    @property
    def dx(self) -> float:
        return self.length / self.n

    @property
    def grid(self) -> torch.Tensor:
        return torch.arange(self.n, dtype=torch.float64) * self.dx


@dataclass(frozen=True)
class KdV(_PeriodicGrid):
    """The discretised KdV equation on ``n`` points of a periodic interval of ``length``."""

    n: int = 50
    length: float = 10.0
    t_end: float = 2.0

    def operator(self, dtype=torch.float64) -> torch.Tensor:
        """``G = D / dx``: the central difference over ``dx``, skew-symmetric (an ``n x n`` matrix)."""
        eye = torch.eye(self.n, dtype=dtype)
        d = (torch.roll(eye, 1, dims=1) - torch.roll(eye, -1, dims=1)) / (2 * self.dx)
        return d / self.dx

    def energy(self, u: torch.Tensor) -> torch.Tensor:
        """``H_d(u)`` per sample (the last axis is space)."""
        ux = (torch.roll(u, -1, -1) - u) / self.dx
        return self.dx * (-u.pow(3) + 0.5 * ux.pow(2)).sum(-1)

    def field(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The true ``du/dt = D(-3 u^2 - delta^2 u)``, in closed form."""
        lap = (torch.roll(u, -1, -1) - 2 * u + torch.roll(u, 1, -1)) / self.dx**2
        w = -3 * u.pow(2) - lap
        return (torch.roll(w, -1, -1) - torch.roll(w, 1, -1)) / (2 * self.dx)

    def initial(self, generator: torch.Generator) -> torch.Tensor:
        """Two solitons of random speeds ``4 k^2`` (``k`` in [0.5, 1]) at random places."""
        x = self.grid
        u = torch.zeros(self.n, dtype=torch.float64)
        for _ in range(2):
            k = 0.5 + 0.5 * float(torch.rand((), generator=generator, dtype=torch.float64))
            d = self.length * float(torch.rand((), generator=generator, dtype=torch.float64))
            for shift in (-self.length, 0.0, self.length):  # periodic images
                u = u + 2 * k**2 / torch.cosh(k * (x - d - shift)).pow(2)
        return u


@dataclass(frozen=True)
class CahnHilliard(_PeriodicGrid):
    """The discretised Cahn-Hilliard equation ``u_t = (u^3 - u - gamma u_xx)_xx`` on ``n`` points of
    a periodic interval of ``length``: ``du/dt = G grad H_d(u)`` with ``H_d(u) = dx sum_i
    ((u_i^2 - 1)^2 / 4 + gamma ((u_{i+1} - u_i) / dx)^2 / 2)`` and ``G`` the discrete Laplacian over
    ``dx``, symmetric negative semidefinite: ``H_d`` decreases and the mass ``sum u`` is kept.
    The default grid is coarse (``dx = 0.5``, ``gamma = 1``) so that an explicit method takes
    moderate steps (the fourth-order term is stiff on fine grids)."""

    n: int = 40
    length: float = 20.0
    gamma: float = 1.0
    t_end: float = 10.0

    def operator(self, dtype=torch.float64) -> torch.Tensor:
        """``G``: the discrete Laplacian over ``dx`` (an ``n x n`` matrix)."""
        eye = torch.eye(self.n, dtype=dtype)
        lap = (torch.roll(eye, 1, dims=1) - 2 * eye + torch.roll(eye, -1, dims=1)) / self.dx**2
        return lap / self.dx

    def _lap(self, u: torch.Tensor) -> torch.Tensor:
        return (torch.roll(u, -1, -1) - 2 * u + torch.roll(u, 1, -1)) / self.dx**2

    def energy(self, u: torch.Tensor) -> torch.Tensor:
        ux = (torch.roll(u, -1, -1) - u) / self.dx
        return self.dx * (0.25 * (u.pow(2) - 1).pow(2) + 0.5 * self.gamma * ux.pow(2)).sum(-1)

    def field(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self._lap(u.pow(3) - u - self.gamma * self._lap(u))

    def initial(self, generator: torch.Generator) -> torch.Tensor:
        """A random smooth state of mean 0: five Fourier modes, amplitudes ``0.3 / k``."""
        x = self.grid
        u = torch.zeros(self.n, dtype=torch.float64)
        for k in range(1, 6):
            a, b = (0.3 / k * torch.randn(2, generator=generator, dtype=torch.float64)).tolist()
            u = u + a * torch.cos(2 * math.pi * k * x / self.length) + b * torch.sin(2 * math.pi * k * x / self.length)
        return u


def simulate(
    pde: KdV | CahnHilliard, trajectories: int, *, snapshots: int = 21, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(times, u)``: ``u[j, k]`` the state of trajectory ``j`` at ``times[k]`` (float64), from
    seeded initial conditions over ``[0, pde.t_end]``, solved by dopri8 at 1e-10."""
    generator = torch.Generator().manual_seed(seed)
    u0 = torch.stack([pde.initial(generator) for _ in range(trajectories)])
    times = torch.linspace(0.0, pde.t_end, snapshots, dtype=torch.float64)
    with torch.no_grad():
        ys = symode.solve(pde.field, u0, times, method="dopri8", steps=symode.AdaptiveSteps(rtol=1e-10, atol=1e-10)).ys
    return times, _tensor(ys).transpose(0, 1)


def _tensor(ys: object) -> torch.Tensor:
    """A solve's ``ys`` for a tensor state (not a tuple)."""
    assert isinstance(ys, torch.Tensor)  # the states here are tensors
    return ys


class EnergyNet(torch.nn.Module):
    """``H_theta(u) = dx sum_i g_theta(u_i, (u_{i+1} - u_i) / dx)``: an MLP (softplus) of the
    value and the forward difference at every grid point, summed over the periodic grid (local
    and translation-invariant, as the true energy density ``-u^3 + u_x^2 / 2`` is)."""

    def __init__(self, dx: float, hidden: int = 64):
        super().__init__()
        self.dx = dx
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(2, hidden),
            torch.nn.Softplus(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.Softplus(),
            torch.nn.Linear(hidden, 1),
        )

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        ux = (torch.roll(u, -1, -1) - u) / self.dx
        return self.dx * self.mlp(torch.stack([u, ux], -1)).squeeze(-1).sum(-1)


class EnergyModel(torch.nn.Module):
    """``du/dt = grad H_theta(u) G^T``: the learned energy's dynamics with the equation's own
    operator ``G`` (skew-symmetric for KdV: ``H_theta`` is conserved; negative semidefinite for
    Cahn-Hilliard: ``H_theta`` decreases), whatever the weights."""

    def __init__(self, energy: EnergyNet, operator: torch.Tensor):
        super().__init__()
        self.energy = energy
        self.operator: torch.Tensor
        self.register_buffer("operator", operator)

    def forward(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            u = u if u.requires_grad else u.detach().requires_grad_(True)  # a leaf when solved without a graph
            grad = torch.autograd.grad(self.energy(u).sum(), u, create_graph=True)[0]
        return grad @ self.operator.T


def relative_drift(values: torch.Tensor) -> float:
    """``max_k |H_k - H_0| / max(|H_0|, 1e-300)``."""
    return float((values - values[0]).abs().max() / max(abs(float(values[0])), 1e-300))


def rollout_error(model: torch.nn.Module, times: torch.Tensor, u: torch.Tensor, **solve) -> float:
    """The mean squared error of the model's rollout from ``u[:, 0]`` against ``u`` (all times)."""
    with torch.no_grad():
        ys = _tensor(symode.solve(model, u[:, 0].to(torch.float64), times, **solve).ys).transpose(0, 1)
    error = float((ys - u).pow(2).mean())
    return error if math.isfinite(error) else math.inf

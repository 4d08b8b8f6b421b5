"""The vector fields of the benchmark problems (``nn.Module`` s), and their synthetic data.

* :class:`ConcatMLP`: FFJORD's MLP whose every layer sees ``t`` concatenated to its input;
* :class:`CNFBlock`: one continuous normalizing flow on ``(z, log p)`` with a Hutchinson
  trace estimate inside ``f`` (``f`` itself calls ``torch.autograd.grad``);
* :class:`MLPField`: a plain autonomous neural ODE field, the one MLP of the benchmarks;
* :func:`gaussian_mixture`: the synthetic stand-in for the MAF data sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["ConcatMLP", "CNFBlock", "MLPField", "gaussian_mixture", "ACTIVATIONS"]

ACTIVATIONS = {"tanh": torch.nn.Tanh, "softplus": torch.nn.Softplus, "relu": torch.nn.ReLU, "elu": torch.nn.ELU}


class ConcatMLP(torch.nn.Module):
    """``g(t, z)``: an MLP ``dim -> hidden[0] -> ... -> dim`` whose every layer takes ``t``
    concatenated to its input (FFJORD's ``ConcatLinear``: ``Linear(cat([t, x]))``), with
    ``activation`` after every hidden layer."""

    def __init__(self, dim: int, hidden: Sequence[int], activation: str):
        super().__init__()
        sizes = [dim, *hidden, dim]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a + 1, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        tt = t.expand(*z.shape[:-1], 1)
        x = z
        for i, layer in enumerate(self.layers):
            x = layer(torch.cat([tt, x], dim=-1))
            if i + 1 < len(self.layers):
                x = self.activation(x)
        return x


class CNFBlock(torch.nn.Module):
    """One CNF: ``f(t, (z, logp)) = (g(t, z), -e^T (dg/dz) e)`` with the Hutchinson noise
    ``e`` a buffer (shape ``(batch, dim)``) that :meth:`resample` redraws."""

    def __init__(self, dim: int, hidden: Sequence[int], activation: str, batch: int, noise: str = "gaussian"):
        super().__init__()
        if noise not in ("gaussian", "rademacher"):
            raise ValueError(f"noise must be 'gaussian' or 'rademacher', got {noise!r}")
        self.net = ConcatMLP(dim, hidden, activation)
        self.noise_kind = noise
        self.noise: torch.Tensor
        self.register_buffer("noise", torch.zeros(batch, dim))

    def resample(self, generator: torch.Generator) -> None:
        e = torch.randn(self.noise.shape, generator=generator, dtype=torch.float64)
        if self.noise_kind == "rademacher":
            e = torch.sign(e) + (e == 0)
        self.noise.copy_(e.to(self.noise.dtype))

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z, _ = state
        with torch.enable_grad():
            # a fresh leaf when the solver runs without a graph (no graph is lost then)
            z = z if z.requires_grad else z.detach().requires_grad_(True)
            dz = self.net(t, z)
            e = self.noise
            e_dg = torch.autograd.grad(dz, z, e, create_graph=True)[0]  # e^T dg/dz
        return dz, -(e_dg * e).sum(-1)


def gaussian_mixture(
    n: int, dim: int, *, components: int = 8, scale: float = 0.5, seed: int = 0, dtype=torch.float64
) -> torch.Tensor:
    """``n`` samples of a mixture of ``components`` Gaussians in ``dim`` dimensions (means
    ~ N(0, I), standard deviation ``scale``), drawn in float64 from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(components, dim, generator=gen, dtype=torch.float64)
    which = torch.randint(components, (n,), generator=gen)
    x = means[which] + scale * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    return x.to(dtype)


class MLPField(torch.nn.Module):
    """An autonomous vector field ``f(t, y) = MLP(y)``: dim -> width -> ... -> width -> dim with
    ``depth`` hidden layers (default 2: dim -> width -> width -> dim) and ``activation`` after
    each (default softplus; a name of :data:`ACTIVATIONS`). The layers are drawn in order, so
    a given seed gives the same first layers whatever the depth.

    ``gain`` multiplies every weight of PyTorch's default initialisation. At ``gain=1`` the
    flow over ``[0, 1]`` is nearly linear: dopri5 needs 3-4 steps and in float32 the error
    estimate is then dominated by round-off (7 steps at rtol=atol=1e-6 against 4 in float64).
    At ``gain=3`` the dynamics are non-trivial, the step count is set by the truncation error
    (17 steps at 1e-6 in both precisions) and the state grows about tenfold: a many-step
    solve, where memory that grows with the steps shows.
    """

    def __init__(self, dim: int, width: int, gain: float = 1.0, *, depth: int = 2, activation: str = "softplus"):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth (hidden layers) must be a positive int, got {depth!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        layers: list[torch.nn.Module] = []
        for i in range(depth):
            layers += [torch.nn.Linear(dim if i == 0 else width, width), ACTIVATIONS[activation]()]
        layers.append(torch.nn.Linear(width, dim))
        self.net = torch.nn.Sequential(*layers)
        if gain != 1.0:
            with torch.no_grad():
                for layer in self.net:
                    if isinstance(layer, torch.nn.Linear):
                        layer.weight.mul_(gain)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)

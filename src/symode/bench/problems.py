"""Benchmark problems as data: the paper's continuous normalizing flows and a plain neural ODE.

Every problem is built from a *spec* in :data:`PROBLEMS` (``spec.build(...)``, with size
overrides for tests) and exposes the same small interface (:class:`BenchProblem`):

* ``name``, ``description`` (a dict for reports), ``modules`` (an ``nn.Module`` holding every
  parameter), ``inputs`` (the tensors whose gradients are compared: every parameter, plus
  ``y0`` for the plain neural ODE);
* ``loss(gradient, method, steps) -> (loss, stats)``: one forward solve (several for stacked
  blocks) differentiated by ``gradient`` (a symode gradient method, or an adapter of another
  library: any :class:`~symode.bench.contestants.Contestant`); ``steps`` is one step rule
  or a list, one per block;
  ``stats`` (:class:`SummedStats`) sums the solves' counts over the blocks, backward counts
  included once ``backward()`` has run;
* ``resample(seed)``: what changes from one training iteration to the next (the CNF's
  Hutchinson noise), the same for every gradient method given the same seed;
* ``converted(dtype)``: a copy holding the same values in another dtype (a float64 reference
  of a float32 problem).

The continuous normalizing flows follow FFJORD (Grathwohl et al. 2019) as used in the
symplectic adjoint paper (Matsubara et al. 2021) on the MAF tabular data sets:
``M`` stacked blocks, each a CNF with its own weights on ``t in [0, 1]``, the state
``(z, log p)`` with

    dz/dt = g(t, z),    d(log p)/dt = -tr(dg/dz) ~= -e^T (dg/dz) e

``g`` an MLP whose every layer sees ``t`` concatenated to its input (FFJORD's "concat"
layers), and ``e`` a noise drawn once per training iteration (a buffer, not redrawn per
evaluation of ``f``). ``f`` computes ``e^T dg/dz`` by ``torch.autograd.grad(create_graph=True)``,
so every gradient method differentiates a vector field that itself calls autograd. The loss
is the negative log-likelihood under a standard normal base distribution,
``mean(-log N(z_M; 0, I) + log p_M)`` with ``log p_0 = 0`` (``log p_M`` is the sum over the
blocks of the integrated ``-tr``; FFJORD's sign convention).

The MAF data sets cannot be downloaded here: the data are a synthetic Gaussian mixture of the
data set's dimension. Memory and time depend on shapes and step counts, not on the data; the
step counts of an untrained flow are smaller than those of a trained one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any, cast

import torch

from ._base import BenchProblem, Steps, SummedStats, steps_for_block
from .contestants import as_contestant
from .fields import CNFBlock, MLPField, gaussian_mixture

__all__ = [
    "DEFAULT_PROBLEM",
    "BenchProblem",
    "CNFProblem",
    "MLPProblem",
    "CNFSpec",
    "MLPSpec",
    "SummedStats",
    "PROBLEMS",
    "get_problem",
    "Steps",
]


# --------------------------------------------------------------------------------------
# continuous normalizing flows
class CNFProblem(BenchProblem):
    """``M`` stacked CNF blocks (see the module docstring)."""

    modules: torch.nn.ModuleList

    def __init__(
        self, name: str, blocks: torch.nn.ModuleList, data: torch.Tensor, t1: float, description: dict, noise_seed: int
    ):
        self.name = name
        self.modules = blocks
        self.data = data
        self.t = torch.tensor([0.0, t1], dtype=torch.float64)
        self.description = description
        self.noise_seed = noise_seed
        self.resample(noise_seed)

    @property
    def num_blocks(self) -> int:
        return len(self.modules)

    def resample(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for block in self.modules:
                cast(CNFBlock, block).resample(gen)
        self.noise_seed = seed

    def log_likelihood(self, z: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` per sample from the final state: ``log N(z; 0, I) - logp``."""
        log_normal = -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
        return log_normal - logp

    def flow(
        self, gradient: Any = "backprop", method: str = "dopri5", steps: Steps = None
    ) -> tuple[torch.Tensor, torch.Tensor, SummedStats]:
        """``(z_M, logp_M, stats)``: the data pushed through every block."""
        contestant = as_contestant(gradient)
        z = self.data
        logp = self.data.new_zeros(self.data.shape[:-1])
        parts, grids = [], []
        for k, block in enumerate(self.modules):
            (zs, logps), block_stats, grid = contestant.solve_ode(
                block, (z, logp), self.t, method, steps_for_block(steps, k)
            )
            z, logp = zs[-1], logps[-1]
            parts.append(block_stats)
            grids.append(grid)
        return z, logp, SummedStats(parts, grids)

    def loss(
        self, gradient: Any = "backprop", method: str = "dopri5", steps: Steps = None
    ) -> tuple[torch.Tensor, SummedStats]:
        z, logp, stats = self.flow(gradient, method, steps)
        return -self.log_likelihood(z, logp).mean(), stats

    def converted(self, dtype: torch.dtype) -> CNFProblem:
        other = copy.copy(self)
        other.modules = copy.deepcopy(self.modules).to(dtype)
        other.data = self.data.to(dtype)
        other.description = dict(self.description)
        return other


@dataclass(frozen=True)
class CNFSpec:
    """A FFJORD tabular configuration: data dimension ``dim``, ``blocks`` stacked CNFs, each
    with ``layers`` hidden layers of ``width`` units and ``activation``."""

    name: str
    dim: int
    blocks: int
    layers: int
    width: int
    activation: str
    batch: int = 1000
    data_note: str = ""

    @property
    def summary(self) -> str:
        return (
            f"CNF, {self.name.upper()} shape: d={self.dim}, {self.blocks} block(s) of "
            f"{self.layers}x{self.width} {self.activation}"
        )

    def build(
        self,
        *,
        batch: int | None = None,
        width: int | None = None,
        layers: int | None = None,
        blocks: int | None = None,
        dim: int | None = None,
        dtype: torch.dtype = torch.float32,
        device="cpu",
        seed: int = 0,
        noise: str = "gaussian",
        t1: float = 1.0,
        init_gain: float | None = None,
    ) -> CNFProblem:
        """The problem, with optional size overrides (for tests and scaling runs).

        The weights are PyTorch's default initialisation (FFJORD's) from ``seed``, times
        ``init_gain`` (default 1); the data are ``batch`` samples of a Gaussian mixture from ``seed + 1``;
        the noise is drawn from ``seed + 2`` until :meth:`CNFProblem.resample`."""
        sizes: dict[str, Any] = dict(batch=batch, width=width, layers=layers, blocks=blocks, dim=dim)
        s = replace(self, **{k: v for k, v in sizes.items() if v is not None})
        for key in ("batch", "width", "layers", "blocks", "dim"):
            if getattr(s, key) < (0 if key == "layers" else 1):
                raise ValueError(f"{key} must be at least {0 if key == 'layers' else 1}, got {getattr(s, key)}")
        with torch.random.fork_rng(devices=[]):  # seed the initialisation, leave the global RNG alone
            torch.manual_seed(seed)
            blocks_ = torch.nn.ModuleList(
                CNFBlock(s.dim, [s.width] * s.layers, s.activation, s.batch, noise) for _ in range(s.blocks)
            )
        init_gain = 1.0 if init_gain is None else init_gain
        if init_gain != 1.0:
            with torch.no_grad():
                for p in blocks_.parameters():
                    if p.ndim == 2:
                        p.mul_(init_gain)
        blocks_ = blocks_.to(dtype=dtype, device=device)
        data = gaussian_mixture(s.batch, s.dim, seed=seed + 1).to(dtype=dtype, device=device)
        n_params = sum(p.numel() for p in blocks_.parameters())
        hidden = " -> ".join([str(s.dim), *[str(s.width)] * s.layers, str(s.dim)])
        description = {
            "summary": s.summary,
            "vector_field": f"{s.blocks} block(s), each a CNF on (z, log p): dz/dt = MLP {hidden} with t "
            f"concatenated to every layer's input, {s.activation}; d(log p)/dt = -e^T (dg/dz) e "
            f"(Hutchinson, {noise} noise drawn once per iteration, autograd inside f)",
            "parameters": n_params,
            "blocks": s.blocks,
            "y0_shape": [s.batch, s.dim],
            "t": [0.0, t1],
            "loss": "mean(-log N(z_M; 0, I) + log p_M): negative log-likelihood, blocks chained",
            "data": f"synthetic: {s.batch} samples of an 8-component Gaussian mixture in {s.dim} dimensions "
            f"(seed {seed + 1}); {s.data_note or 'the MAF data set'} cannot be downloaded here, and "
            f"memory and time depend on shapes and step counts, not on the data",
            "init": f"PyTorch default (seed {seed})" + (f", weights x {init_gain:g}" if init_gain != 1.0 else ""),
        }
        return CNFProblem(s.name, blocks_, data, t1, description, noise_seed=seed + 2)


# --------------------------------------------------------------------------------------
# a plain neural ODE
class MLPProblem(BenchProblem):
    """A neural ODE ``dy/dt = MLP(y)`` on ``[0, t1]``, ``loss = mean(y(t1)**2)``; the gradient
    is taken with respect to ``y0`` and the parameters."""

    def __init__(self, func: MLPField, y0: torch.Tensor, t1: float, description: dict):
        self.name = "mlp"
        self.modules = func
        self.y0 = y0.detach().requires_grad_(True)
        self.t = torch.tensor([0.0, t1], dtype=torch.float64)
        self.description = description

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        return (self.y0, *super().inputs)

    def loss(
        self, gradient: Any = "backprop", method: str = "dopri5", steps: Steps = None
    ) -> tuple[torch.Tensor, SummedStats]:
        ys, stats, grid = as_contestant(gradient).solve_ode(
            self.modules, self.y0, self.t, method, steps_for_block(steps, 0)
        )
        return ys[-1].pow(2).mean(), SummedStats([stats], [grid])

    def converted(self, dtype: torch.dtype) -> MLPProblem:
        other = copy.copy(self)
        other.modules = copy.deepcopy(self.modules).to(dtype)
        other.y0 = self.y0.detach().to(dtype).requires_grad_(True)
        other.description = dict(self.description)
        return other


@dataclass(frozen=True)
class MLPSpec:
    """A neural ODE with an MLP vector field ``dim -> width -> width -> dim`` (softplus), the
    weights ``gain`` times PyTorch's default initialisation (see :class:`MLPField`)."""

    name: str = "mlp"
    dim: int = 43
    width: int = 860
    gain: float = 3.0
    batch: int = 256
    blocks: int = 1

    @property
    def summary(self) -> str:
        return f"neural ODE, MLP {self.dim} -> {self.width} -> {self.width} -> {self.dim} softplus"

    def build(
        self,
        *,
        batch: int | None = None,
        width: int | None = None,
        layers: int | None = None,
        blocks: int | None = None,
        dim: int | None = None,
        dtype: torch.dtype = torch.float32,
        device="cpu",
        seed: int = 0,
        noise: str = "gaussian",
        t1: float = 1.0,
        init_gain: float | None = None,
    ) -> MLPProblem:
        """The problem with optional size overrides (``layers`` must be 2 or None, ``blocks``
        1 or None; ``noise`` is ignored)."""
        if layers not in (None, 2):
            raise ValueError(f"the mlp problem has 2 hidden layers, got layers={layers}")
        if blocks not in (None, 1):
            raise ValueError(f"the mlp problem has one block, got blocks={blocks}")
        batch = self.batch if batch is None else batch
        dim = self.dim if dim is None else dim
        width = self.width if width is None else width
        gain = self.gain if init_gain is None else init_gain
        for key, v in (("batch", batch), ("dim", dim), ("width", width)):
            if v < 1:
                raise ValueError(f"{key} must be at least 1, got {v}")
        with torch.random.fork_rng(devices=[]):  # seed the initialisation, leave the global RNG alone
            torch.manual_seed(seed)
            func = MLPField(dim, width, gain).to(dtype=dtype, device=device)
        gen = torch.Generator().manual_seed(seed)
        y0 = torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
        n_params = sum(p.numel() for p in func.parameters())
        description = {
            "summary": f"neural ODE, MLP {dim} -> {width} -> {width} -> {dim} softplus",
            "vector_field": f"MLP {dim} -> {width} -> {width} -> {dim}, softplus, autonomous, "
            f"weights {gain:g} x PyTorch's default init (seed {seed})",
            "parameters": n_params,
            "blocks": 1,
            "y0_shape": [batch, dim],
            "t": [0.0, t1],
            "loss": "mean(y(t1)**2); gradients w.r.t. y0 and the parameters",
            "data": f"y0 ~ N(0, 1), seed {seed}"
            + (" (random data of MINIBOONE's dimension, not the data set)" if dim == 43 else ""),
        }
        return MLPProblem(func, y0, t1, description)


# --------------------------------------------------------------------------------------
#: problem name -> spec; ``PROBLEMS[name].build(...)`` makes the problem. The five tabular
#: configurations of FFJORD / the symplectic adjoint paper, and a plain neural ODE. The default
#: batches make a default ``symode bench`` run (every gradient method, 5 timed repeats, float32,
#: dopri5 at 1e-5) take about two minutes on an idle 2-core CPU: measured for miniboone (the
#: default problem), estimated from one-iteration timings for the others (FFJORD trained
#: with batches of 1000 or more, which take correspondingly longer here).
PROBLEMS: dict[str, CNFSpec | MLPSpec] = {
    "power": CNFSpec("power", dim=6, blocks=5, layers=3, width=60, activation="tanh", batch=1000, data_note="POWER"),
    "gas": CNFSpec("gas", dim=8, blocks=5, layers=3, width=160, activation="tanh", batch=768, data_note="GAS"),
    "hepmass": CNFSpec(
        "hepmass", dim=21, blocks=10, layers=2, width=210, activation="softplus", batch=512, data_note="HEPMASS"
    ),
    "miniboone": CNFSpec(
        "miniboone", dim=43, blocks=1, layers=2, width=860, activation="softplus", batch=512, data_note="MINIBOONE"
    ),
    "bsds300": CNFSpec(
        "bsds300", dim=63, blocks=2, layers=3, width=1260, activation="tanh", batch=32, data_note="BSDS300"
    ),
    "mlp": MLPSpec(batch=256),
}
#: the problem ``symode bench`` (and ``benchmarks/accuracy.py``) runs by default
DEFAULT_PROBLEM = "miniboone"


def get_problem(name: str, **overrides) -> BenchProblem:
    """``PROBLEMS[name].build(**overrides)``, with a clear error for an unknown name."""
    try:
        spec = PROBLEMS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown problem {name!r}; choose one of {', '.join(PROBLEMS)}") from None
    return spec.build(**overrides)

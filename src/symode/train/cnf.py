"""Continuous normalizing flows (FFJORD, Grathwohl et al. 2019), differentiated by any gradient
method of symode.

A flow is a stack of blocks; block ``k`` moves the samples by ``dz/dt = g_k(t, z)`` from
``t = 0`` to its end time ``T_k`` and changes their log-density by ``-tr(dg_k/dz)``
(the instantaneous change of variables), so ``log p(x) = log N(z(T); 0, I) + int tr``.

* ``g_k``: an MLP whose layers see ``t``: ``concatsquash`` (FFJORD's default: ``W x``
  gated by ``sigmoid(a t + b)`` plus ``c t``) or ``concat`` (``W [t, x]``).
* The trace: ``exact`` (one backward pass per dimension) or ``hutchinson`` (``e^T (dg/dz) e``
  with noise ``e`` drawn before each solve and held in a buffer, so ``f`` is deterministic
  and every exact gradient method gives the same gradient).
* ``learn_time``: ``T_k = exp(log_T_k)`` is a parameter, differentiated through the output
  time.
* The regularisers of RNODE (Finlay et al. 2020), integrated along the flow as extra state
  components: the kinetic energy ``int |g|^2 dt`` and the Jacobian's Frobenius norm
  ``int |e^T dg/dz|^2 dt`` (Hutchinson).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

import symode

__all__ = ["CNF", "CNFBlock", "ConcatLinear", "ConcatSquashLinear", "ODENet"]

_ACTIVATIONS = {"softplus": torch.nn.Softplus, "tanh": torch.nn.Tanh, "elu": torch.nn.ELU}


class ConcatSquashLinear(torch.nn.Module):
    """``W x * sigmoid(a t + b) + c t`` (FFJORD's ``ConcatSquashLinear``)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear = torch.nn.Linear(d_in, d_out)
        self.gate = torch.nn.Linear(1, d_out)
        self.shift = torch.nn.Linear(1, d_out, bias=False)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(1, 1).to(x.dtype)
        return self.linear(x) * torch.sigmoid(self.gate(tt)) + self.shift(tt)


class ConcatLinear(torch.nn.Module):
    """``W [t, x] + b``."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear = torch.nn.Linear(d_in + 1, d_out)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([t.to(x.dtype).expand(*x.shape[:-1], 1), x], -1))


class ODENet(torch.nn.Module):
    """``g(t, z)``: ``dim -> hidden... -> dim`` with time-aware layers and ``activation``
    between them."""

    def __init__(self, dim: int, hidden: Sequence[int], layer: str = "concatsquash", activation: str = "softplus"):
        super().__init__()
        kinds = {"concatsquash": ConcatSquashLinear, "concat": ConcatLinear}
        if layer not in kinds:
            raise ValueError(f"layer must be one of {sorted(kinds)}, got {layer!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        sizes = [dim, *hidden, dim]
        self.layers = torch.nn.ModuleList(kinds[layer](a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = _ACTIVATIONS[activation]()

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = z
        for i, layer in enumerate(self.layers):
            x = layer(t, x)
            if i + 1 < len(self.layers):
                x = self.activation(x)
        return x


class CNFBlock(torch.nn.Module):
    """The vector field of one block on the state ``(z, delta_logp[, kinetic, jacobian])``."""

    def __init__(self, net: ODENet, trace: str = "hutchinson", regularise: bool = False):
        super().__init__()
        if trace not in ("hutchinson", "exact"):
            raise ValueError(f"trace must be 'hutchinson' or 'exact', got {trace!r}")
        self.net, self.trace, self.regularise = net, trace, regularise
        self.noise: torch.Tensor
        self.register_buffer("noise", torch.zeros(0), persistent=False)

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        z = state[0]
        with torch.enable_grad():
            z = z if z.requires_grad else z.detach().requires_grad_(True)  # a leaf when solved without a graph
            dz = self.net(t, z)
            e_dz = None
            if self.trace == "hutchinson" or self.regularise:
                e_dz = torch.autograd.grad(dz, z, self.noise, create_graph=True)[0]  # e^T dg/dz
            if self.trace == "exact":
                columns = [
                    torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i] for i in range(z.shape[1])
                ]
                trace = torch.stack(columns, 1).sum(1)
            else:
                assert e_dz is not None
                trace = (e_dz * self.noise).sum(-1)
        if not self.regularise:
            return dz, -trace
        assert e_dz is not None
        return dz, -trace, dz.pow(2).sum(-1), e_dz.pow(2).sum(-1)


class CNF(torch.nn.Module):
    """A stack of ``blocks`` CNF blocks on ``dim``-dimensional data (module docstring)."""

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64, 64),
        *,
        blocks: int = 1,
        layer: str = "concatsquash",
        activation: str = "softplus",
        trace: str = "hutchinson",
        time: float = 0.5,
        learn_time: bool = True,
        regularise: bool = False,
    ):
        super().__init__()
        if not time > 0:
            raise ValueError(f"time (each block's end time) must be > 0, got {time!r}")
        self.dim = dim
        self.blocks = torch.nn.ModuleList(
            CNFBlock(ODENet(dim, hidden, layer, activation), trace, regularise) for _ in range(blocks)
        )
        log_time = torch.full((blocks,), math.log(time))
        if learn_time:
            self.log_time = torch.nn.Parameter(log_time)
        else:
            self.register_buffer("log_time", log_time)

    def forward(self, x: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, list[symode.Stats]]:
        """:meth:`log_prob` (what ``DistributedDataParallel`` calls)."""
        return self.log_prob(x, **kwargs)

    def log_prob(
        self,
        x: torch.Tensor,
        *,
        gradient: Any = "backprop",
        method: str = "dopri5",
        steps: symode.AdaptiveSteps | symode.FixedSteps | None = None,
        generator: torch.Generator | None = None,
        trace: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[symode.Stats]]:
        """``log p(x)`` per sample, the regularisers' sum over blocks (shape ``(2, batch)``, zero
        without ``regularise``) and each block's solve statistics. ``generator`` draws the
        Hutchinson noise; ``trace`` overrides the blocks' trace for this call."""
        z, delta = x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        regs = torch.zeros(2, x.shape[0], dtype=x.dtype, device=x.device)
        stats = []
        for k in range(len(self.blocks)):
            block = self._block(k)
            kept = block.trace
            block.trace = trace or kept
            # drawn in float64 whatever the dtype: a float32 and a float64 model see the same noise
            block.noise = torch.randn(z.shape, generator=generator, dtype=torch.float64).to(z.device, z.dtype)
            zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            state = (z, zero, zero, zero) if block.regularise else (z, zero)
            end = self.log_time[k].exp().to(x.dtype)
            try:
                sol = symode.solve(
                    block,
                    state,
                    torch.stack([torch.zeros_like(end), end]),
                    method=method,
                    steps=steps,
                    gradient=gradient,
                )
            finally:
                block.trace = kept
            z, delta = sol.ys[0][-1], delta + sol.ys[1][-1]
            if block.regularise:
                regs = regs + torch.stack([sol.ys[2][-1], sol.ys[3][-1]])
            stats.append(sol.stats)
        log_pz = -0.5 * z.pow(2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return log_pz - delta, regs, stats

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, dtype=torch.float32, **solve: Any
    ) -> torch.Tensor:
        """``n`` samples: ``z ~ N(0, I)`` moved back through the blocks, from ``T_k`` to 0."""
        z = torch.randn(n, self.dim, generator=generator, dtype=dtype)
        z = z.to(self.log_time.device)
        for k in reversed(range(len(self.blocks))):
            end = self.log_time[k].exp().to(dtype)
            z = symode.solve(self._block(k).net, z, torch.stack([end, torch.zeros_like(end)]), **solve).ys[-1]
        return z

    def _block(self, k: int) -> CNFBlock:
        block = self.blocks[k]
        assert isinstance(block, CNFBlock)  # the blocks are built in __init__
        return block

"""The interface of a benchmark problem (:class:`BenchProblem`) and the counts of its solves
(:class:`SummedStats`); the problems themselves are in :mod:`symode.bench.problems`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import AdaptiveSteps, FixedSteps, Stats

__all__ = ["BenchProblem", "SummedStats", "Steps", "steps_for_block"]

#: one step rule for every block, or a sequence of them, one per block
Steps = FixedSteps | AdaptiveSteps | Sequence[FixedSteps | AdaptiveSteps] | None


class SummedStats:
    """The counts of several solves (one per block), summed when read.

    Reads are lazy so that the backward counts, which the solves' ``Stats`` fill in when
    ``backward()`` runs, are included once it has run. ``grids``: each solve's accepted step
    endpoints (float64; ``None`` where a peer does not say)."""

    FIELDS = ("num_accepted", "num_rejected", "nfe_forward", "nfe_backward", "nfe_backward_vjp")

    def __init__(self, parts: Sequence[Stats] = (), grids: Sequence[torch.Tensor | None] = ()):
        self.parts = list(parts)
        self.grids = list(grids)

    def __getattr__(self, name):
        if name in SummedStats.FIELDS:
            return sum(getattr(p, name) for p in self.parts)
        raise AttributeError(name)

    @property
    def num_steps(self) -> int:
        return self.num_accepted + self.num_rejected

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in SummedStats.FIELDS}

    def __repr__(self) -> str:
        return f"SummedStats({', '.join(f'{k}={v}' for k, v in self.as_dict().items())}, blocks={len(self.parts)})"


def steps_for_block(steps: Steps, k: int) -> FixedSteps | AdaptiveSteps:
    """``steps`` may be one step rule for every block or a sequence of them, one per block."""
    if isinstance(steps, (list, tuple)):
        return steps[k]
    if steps is None:
        return AdaptiveSteps()
    return steps  # type: ignore[return-value]


class BenchProblem:
    """The interface of a benchmark problem (see the module docstring)."""

    name: str = ""
    description: dict
    modules: torch.nn.Module
    #: the seed of the random draws of the current iteration (None: the problem draws nothing)
    noise_seed: int | None = None

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        """The tensors whose gradients are compared."""
        return tuple(p for p in self.modules.parameters() if p.requires_grad)

    @property
    def num_blocks(self) -> int:
        return 1

    def loss(
        self, gradient: Any = "backprop", method: str = "dopri5", steps: Steps = None
    ) -> tuple[torch.Tensor, SummedStats]:
        """One forward solve per block, differentiated by ``gradient`` (a gradient method,
        its name, or a contestant): ``(loss, stats)``."""
        raise NotImplementedError

    def resample(self, seed: int) -> None:
        """Draw what a new training iteration draws (nothing by default)."""

    def converted(self, dtype: torch.dtype) -> BenchProblem:
        raise NotImplementedError

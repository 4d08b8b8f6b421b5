"""``torch.compile`` of the Runge-Kutta step: ``symode.solve(..., compile=True)``.

For small networks a solve is dominated by per-operation overhead: every stage is a few
tiny kernels plus Python, and backprop replays each of them. Compiling one whole step (every
stage's call of ``func`` and every combination ``y + h sum_j a_ij k_j``) fuses it into one
graph: the forward pass runs one compiled function per step, and backprop one compiled
backward per step.

How the step stays one graph for every step of a solve: the stage times and ``h`` enter as
one tensor (computed in float64, as in the eager step, then cast to the state's dtype), never
as Python floats, which ``torch.compile`` would specialise on (a recompilation per step
size). Evaluations are counted outside the graph. The compiled graphs are cached by
``torch.compile`` (per code, guarded on the tableau, ``func``, shapes, dtype and grad mode):
the first solve of a configuration compiles (20-28 s on a 2-core CPU with an empty inductor
cache, 6-7.5 s with a warm one: ``benchmarks/compile_speed.py``), later ones reuse it.

Limit: torch.compile cannot differentiate its graphs twice. A ``func`` that differentiates
itself with ``create_graph=True`` (a continuous normalizing flow's trace estimate) cannot be
backpropagated through a compiled solve: torch raises "torch.compile with aot_autograd does
not currently support double backward" in ``.backward()``. The adjoint methods (whose forward
pass records no graph) compile such a ``func`` fine.

Scope: the forward steps of every gradient method (backprop records the compiled graph;
the adjoint methods run it without gradient). A step that carries the gradient of the output
times, or that keeps its stage states (``SymplecticAdjoint(store_stages=True)``), and the
backward passes of the adjoint methods, run eagerly. Compiled arithmetic may round
differently from the eager step (fused operations), so a compiled and an eager solve agree to
round-off, not bit for bit, and an adaptive solve may take a slightly different grid.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from ._runge_kutta import rk_step, stage_time
from ._tableau import ButcherTableau

__all__ = ["CompiledStep"]


def _step(
    func: Callable[..., torch.Tensor],
    tableau: ButcherTableau,
    values: torch.Tensor,
    y: torch.Tensor,
    k1: torch.Tensor | None,
    with_error: bool,
) -> Any:
    """The step in tensors only: ``values`` = the ``s`` stage times then ``h``."""
    parts = values.unbind()
    y_next, error, ks, _ = rk_step(func, tableau, 0.0, 0.0, y, k1, with_error=with_error, h=parts[-1], times=parts)
    return y_next, error, ks


_compiled_step = torch.compile(_step)


class CompiledStep:
    """``step(t, t_next, y, k1, *, with_error, keep_stage_states=False, dts=None)`` with the
    signature and results of ``rk_step(rhs, tableau, ...)``, compiled.

    ``func(t, y)`` takes a 0-dim time tensor; ``rhs`` is the counting eager right-hand side
    used by the steps that are not compiled (see the module docstring); ``count(n)`` is told
    the number of evaluations of each compiled step.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        rhs: Callable[..., Any],
        tableau: ButcherTableau,
        count: Callable[[int], None],
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.func, self.tableau, self.count = func, tableau, count
        self.dtype, self.device = dtype, device
        self.eager = functools.partial(rk_step, rhs, tableau)
        s = tableau.num_stages  # stages evaluated per step, as in rk_step
        self._evaluations = {True: s, False: s if tableau.fsal else len(tableau.solution_stages)}

    def __call__(
        self,
        t: float,
        t_next: float,
        y: torch.Tensor,
        k1: torch.Tensor | None = None,
        *,
        with_error: bool = True,
        keep_stage_states: bool = False,
        dts: Any = None,
        stages: Any = None,
        nudge: Any = None,
    ) -> Any:
        if keep_stage_states or dts is not None or stages is not None or nudge is not None:
            return self.eager(
                t,
                t_next,
                y,
                k1,
                with_error=with_error,
                keep_stage_states=keep_stage_states,
                dts=dts,
                stages=stages,
                nudge=nudge,
            )
        tableau = self.tableau
        h = t_next - t
        times = [stage_time(tableau, i, t, t_next, h) for i in range(tableau.num_stages)]
        values = torch.tensor([*times, h], dtype=self.dtype, device=self.device)
        y_next, error, ks = _compiled_step(self.func, tableau, values, y, k1, with_error)
        self.count(self._evaluations[with_error] - (k1 is not None))
        return y_next, error, list(ks), [None] * tableau.num_stages

"""Shared machinery of the gradient methods that integrate without a graph and
differentiate in a backward pass of their own (checkpointing, symplectic adjoint, ...).

A ``RecordingMethod`` says what its forward pass keeps (``record``) and how its backward
pass turns the cotangents of the outputs into those of ``y0`` and the parameters
(``backward``). A ``StepwiseMethod`` goes further: its backward pass pulls the cotangent back
one accepted step at a time, from the last, and it only says how to get each step's start
state (``states``) and how to pull back through one step (``step_back``).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .._integrate import Trajectory
from .._ivp import ODEProblem
from .._newton import JacobianTape
from .._random import RandomTape, restored_after, rng_states, same_states, set_rng_states
from ._base import GradientMethod
from ._first_evaluation import FirstEvaluation, closure_check, first_evaluation_checked, warn_unreplayable

__all__ = ["RecordingMethod", "StepwiseMethod"]


class RecordingMethod(GradientMethod):
    """Forward without an autograd graph; a custom backward pass."""

    #: the symplectic adjoint with ``store_stages`` re-evaluates no stage in order in its
    #: backward pass: a stochastic ``f``'s random numbers are then kept for every stage
    rng_every_stage: bool = False

    def solve(self, problem: ODEProblem) -> tuple[torch.Tensor, Trajectory]:
        if not problem.requires_grad:
            with torch.no_grad():
                trajectory = problem.integrate()
            return torch.stack(trajectory.outputs), trajectory
        first = first_evaluation_checked(problem, type(self).__name__, self.exact)
        if problem.tableau.implicit:  # the backward pass recomputes steps: it needs their Jacobians' points
            check = closure_check(problem, type(self).__name__)
            problem = dataclasses.replace(problem, stage_check=check, jacobians=JacobianTape(notes=True))
        if first.draws and self.exact:
            problem = self._with_tape(problem, first)
        holder: dict[str, Any] = {}
        t = problem.t if problem.t is not None else torch.empty(0)
        ys = _RecordedSolve.apply(self, problem, first, holder, problem.y0, t, *problem.params)
        return ys, holder["trajectory"]

    def _with_tape(self, problem: ODEProblem, first: FirstEvaluation) -> ODEProblem:
        """``problem`` recording the random generators' states for the backward pass to replay."""
        if problem.compile:
            raise ValueError(
                f"{type(self).__name__} cannot replay the random numbers of a func that draws them (dropout in "
                f"training mode, torch.randn, ...) when the steps are compiled (compile=True): the compiled "
                f"steps draw other numbers. Use compile=False, or gradient='backprop'"
            )
        tableau = problem.tableau
        dense = getattr(problem.steps, "interpolate", False)  # the interpolant's stages are evaluated again too
        num_stages = tableau.num_stages if dense else tableau.solution_stages[-1] + 1
        tape = RandomTape(problem.y0.device, first.before, self.rng_every_stage, num_stages)
        return dataclasses.replace(problem, rng_tape=tape)

    @abc.abstractmethod
    def record(self, problem: ODEProblem, y0: torch.Tensor, f0: torch.Tensor) -> Trajectory:
        """The forward solve (run under ``torch.no_grad()``), keeping what the backward needs."""

    @abc.abstractmethod
    def backward(
        self,
        problem: ODEProblem,
        trajectory: Trajectory,
        grad_ys: torch.Tensor,
        params: tuple[torch.Tensor, ...],
        with_time: bool,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None, list[torch.Tensor]]:
        """From the cotangents of the stacked outputs to those of ``y0``, of the output times
        (a 0-dim tensor per output time, when ``with_time``; else ``None``) and of ``params``
        (the parameters that require grad)."""


class StepwiseMethod(RecordingMethod):
    """A backward pass that pulls the cotangent back through one accepted step at a time."""

    @abc.abstractmethod
    def states(self, problem: ODEProblem, trajectory: Trajectory) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(n, y_n)`` for ``n = N-1, ..., 0``: the start state of each step, last step first."""

    @abc.abstractmethod
    def step_back(
        self,
        problem: ODEProblem,
        trajectory: Trajectory,
        n: int,
        y: torch.Tensor,
        lam: torch.Tensor,
        params: tuple[torch.Tensor, ...],
        param_grads: list[torch.Tensor],
        time_grads: list[torch.Tensor] | None,
        dense: list[tuple[int, float, torch.Tensor]],
        out_grads: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        """The cotangent of ``y_n`` from that of ``y_{n+1}`` (``lam``), adding the step's
        parameter cotangents to ``param_grads`` in place and, if ``time_grads`` is given, the
        cotangents of the step's end times to ``time_grads[n]`` and ``time_grads[n + 1]``.
        ``dense``: ``(k, theta, g_k)`` for each output interpolated within the step (at
        ``t_n + theta h``), ``g_k`` its cotangent; the cotangent of its time goes to
        ``out_grads[k]`` (when ``time_grads`` is given)."""

    def backward(self, problem, trajectory, grad_ys, params, with_time):
        param_grads = [torch.zeros_like(p) for p in params]
        zero = grad_ys.new_zeros(())
        time_grads = [zero] * len(trajectory.grid) if with_time else None
        out_grads = [zero] * len(trajectory.out_index) if with_time else None
        out_index, thetas = trajectory.out_index, trajectory.out_theta
        k = len(out_index) - 1  # the next output to meet, going backward
        lam = torch.zeros_like(grad_ys[0])

        def add_outputs(n: int, lam: torch.Tensor) -> torch.Tensor:
            nonlocal k
            while k >= 0 and out_index[k] == n and not (thetas and thetas[k] is not None):  # a step end
                lam = lam + grad_ys[k]
                k -= 1
            return lam

        for n, y in self.states(problem, trajectory):
            lam = add_outputs(n + 1, lam)
            dense = []  # the outputs interpolated in step n
            while k >= 0 and out_index[k] == n + 1:
                theta = thetas[k]
                assert theta is not None  # the step ends were taken above
                dense.append((k, theta, grad_ys[k]))
                k -= 1
            lam = self.step_back(problem, trajectory, n, y, lam, params, param_grads, time_grads, dense, out_grads)
            del y  # not alive while the next state is recomputed
        grad_t = output_time_grads(trajectory, time_grads)
        if grad_t is not None and out_grads is not None:
            grad_t = [a + b for a, b in zip(grad_t, out_grads)]
        return add_outputs(0, lam), grad_t, param_grads


def output_time_grads(trajectory: Trajectory, time_grads: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
    """Cotangents of the output times from those of the grid points, each grid point moving
    with the output time it is anchored to (``Trajectory.anchors``)."""
    if time_grads is None:
        return None
    out = [time_grads[0].new_zeros(()) for _ in trajectory.out_index]
    for anchor, g in zip(trajectory.anchors, time_grads):
        if anchor is not None:
            out[anchor] = out[anchor] + g
    return out


class _RecordedSolve(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        method: RecordingMethod,
        problem: ODEProblem,
        first: FirstEvaluation,
        holder: dict[str, Any],
        y0: torch.Tensor,
        t: torch.Tensor,
        *params,
    ):
        trajectory = method.record(problem, y0.detach(), first.f0)
        if not first.draws and not same_states(rng_states(y0.device), first.after):
            # f drew random numbers, but not in f(t0, y0): the forward solve again, recording them
            if not method.exact:
                warn_unreplayable(type(method).__name__)
            else:  # as things stood after f(t0, y0): the generators, the counts and the buffers f changed
                set_rng_states(first.after, y0.device)
                problem.stats.num_accepted = problem.stats.num_rejected = 0
                problem.stats.nfe_forward = 1
                with torch.no_grad():
                    for b, value in zip(first.changed, first.changed_values):
                        b.copy_(value)
                problem = method._with_tape(problem, first)
                trajectory = method.record(problem, y0.detach(), first.f0)
        holder["trajectory"] = trajectory
        ctx.method, ctx.problem, ctx.trajectory = method, problem, trajectory
        # saved (references, no copies) so that autograd's version check catches an in-place
        # change of y0 or a parameter between this forward pass and the backward pass; a tuple
        # state's components and func's buffers are checked by hand (y0 is their concatenation)
        ctx.save_for_backward(y0, *params)
        ctx.component_versions = [(c, c._version) for c in problem.layout.components or ()]
        ctx.buffers = _Buffers(method, problem, first)
        ys = torch.stack(trajectory.outputs)
        if any(theta is not None for theta in trajectory.out_theta):
            # the trajectory (kept for the backward pass) holds views of the stacked outputs for the
            # interpolated ones: they are tensors of their own, which would otherwise be held twice
            views = ys.detach().unbind(0)
            trajectory.outputs = [
                views[k] if theta is not None else y
                for k, (y, theta) in enumerate(zip(trajectory.outputs, trajectory.out_theta))
            ]
        return ys

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        name = type(ctx.method).__name__
        if torch.is_grad_enabled():  # backward(create_graph=True): a second derivative is wanted
            raise RuntimeError(
                f"{name} cannot be differentiated twice (a backward pass with create_graph=True, e.g. a gradient "
                f"penalty): its backward pass is not itself differentiable, and the solver's part of the second "
                f"derivative would be missing. Use gradient='backprop' for second derivatives"
            )
        ctx.saved_tensors  # noqa: B018  (raises torch's error if y0 or a parameter changed in place)
        for i, (c, version) in enumerate(ctx.component_versions):
            if c._version != version:
                raise RuntimeError(
                    f"y0[{i}] was modified in place after the forward solve and before backward(); the gradient "
                    f"would belong to no solve that was computed. Call backward() before changing it"
                )
        problem = ctx.problem
        params = problem.params
        wanted = [p.requires_grad for p in params]
        with_time = ctx.needs_input_grad[5]

        def run():
            return ctx.method.backward(
                problem, ctx.trajectory, grad_ys, tuple(p for p, w in zip(params, wanted) if w), with_time
            )

        with ctx.buffers.kept():
            if problem.rng_tape is not None:  # the replay leaves the generators as the user left them
                grad_y0, time_grads, param_grads = restored_after(problem.y0.device, run)
            else:
                grad_y0, time_grads, param_grads = run()
        problem.jacobians.release()  # the last Jacobian the recomputations formed (a matrix, or f's graph)
        grad_t = torch.stack(time_grads).to(problem.t.dtype) if with_time else None
        grads = iter(param_grads)
        return (None, None, None, None, grad_y0, grad_t, *[next(grads) if w else None for w in wanted])


class _Buffers:
    """``func``'s buffers between the forward and the backward pass: those that ``f`` changes
    (checked to leave its output alone) are set back after the backward pass to what they were
    before it; any other one must not change in place in between (``f`` would differ)."""

    def __init__(self, method: RecordingMethod, problem: ODEProblem, first: FirstEvaluation):
        buffers = problem.buffers
        checked = {id(b) for b in first.changed}
        late = [b for b, v in zip(buffers, first.buffer_versions) if b._version != v and id(b) not in checked]
        self.changed_by_f = first.changed + late
        changed_ids = {id(b) for b in self.changed_by_f}
        self.watched = [(b, b._version) for b in buffers if id(b) not in changed_ids]
        if late:
            message = (
                f"func changed its module's buffers during the forward solve but not in f(t0, y0), where "
                f"{type(method).__name__} checks that its output does not depend on them; the backward pass "
                f"evaluates func again"
            )
            fix = ". Put such layers in eval mode (func.eval()), or use gradient='backprop'"
            if method.exact:
                raise ValueError(message + ", and the gradient could be wrong" + fix)
            warnings.warn(message + fix, stacklevel=4)

    @contextlib.contextmanager
    def kept(self):
        for b, version in self.watched:
            if b._version != version:
                raise RuntimeError(
                    f"a buffer of func (shape {tuple(b.shape)}) was modified in place after the forward solve and "
                    f"before backward(); the backward pass evaluates func again and would use the new values, so "
                    f"the gradient would belong to no solve that was computed. Call backward() before changing it"
                )
        kept = [b.clone() for b in self.changed_by_f]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, value in zip(self.changed_by_f, kept):
                    b.copy_(value)


def vjp(
    fn: Callable[..., torch.Tensor],
    y: torch.Tensor,
    cotangent: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    param_grads: list[torch.Tensor],
    extra: tuple[torch.Tensor, ...] = (),
    keep_output: bool = False,
    check: Callable[[torch.Tensor, tuple[torch.Tensor, ...]], None] | None = None,
):
    """Differentiate ``out = fn(y, *extra)`` once: returns ``(cotangent^T d(out)/dy,
    [cotangent^T d(out)/de for e in extra], out or None)`` and adds ``cotangent^T d(out)/dθ`` to
    ``param_grads``. A cotangent is ``None`` where ``out`` does not depend on the input. A
    function of its own so that the graph and the gradients in flight die on return.
    ``check(out, inputs)``: called on the output before differentiating it (the closure check
    of ``closure_check``)."""
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        extra = tuple(e.detach().requires_grad_(True) for e in extra)
        out = fn(y, *extra)
        if check is not None:
            check(out, (y, *extra))
        kept = out.detach() if keep_output else None
        if not out.requires_grad:
            return None, [None] * len(extra), kept  # depends on no input
        grads = torch.autograd.grad(out, (y, *extra, *params), cotangent, allow_unused=True)
    for acc, g in zip(param_grads, grads[1 + len(extra) :]):
        if g is not None:
            acc.add_(g)
    return grads[0], list(grads[1 : 1 + len(extra)]), kept

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
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from .._integrate import Trajectory
from .._ivp import ODEProblem
from ._base import GradientMethod

if TYPE_CHECKING:
    from torch.autograd.graph import Node

__all__ = ["RecordingMethod", "StepwiseMethod"]


class RecordingMethod(GradientMethod):
    """Forward without an autograd graph; a custom backward pass."""

    def solve(self, problem: ODEProblem) -> tuple[torch.Tensor, Trajectory]:
        if not problem.requires_grad:
            with torch.no_grad():
                trajectory = problem.integrate()
            return torch.stack(trajectory.outputs), trajectory
        f0 = first_evaluation_checked(problem, type(self).__name__, self.exact)
        holder: dict[str, Trajectory] = {}
        t = problem.t if problem.t is not None else torch.empty(0)
        ys = _RecordedSolve.apply(self, problem, f0, holder, problem.y0, t, *problem.params)
        return ys, holder["trajectory"]

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
    ) -> torch.Tensor:
        """The cotangent of ``y_n`` from that of ``y_{n+1}`` (``lam``), adding the step's
        parameter cotangents to ``param_grads`` in place and, if ``time_grads`` is given, the
        cotangents of the step's end times to ``time_grads[n]`` and ``time_grads[n + 1]``."""

    def backward(self, problem, trajectory, grad_ys, params, with_time):
        param_grads = [torch.zeros_like(p) for p in params]
        zero = grad_ys.new_zeros(())
        time_grads = [zero] * len(trajectory.grid) if with_time else None
        out_index = trajectory.out_index
        k = len(out_index) - 1  # the next output to meet, going backward
        lam = torch.zeros_like(grad_ys[0])

        def add_outputs(n: int, lam: torch.Tensor) -> torch.Tensor:
            nonlocal k
            while k >= 0 and out_index[k] == n:  # an output time: add its cotangent
                lam = lam + grad_ys[k]
                k -= 1
            return lam

        for n, y in self.states(problem, trajectory):
            lam = add_outputs(n + 1, lam)
            lam = self.step_back(problem, trajectory, n, y, lam, params, param_grads, time_grads)
            del y  # not alive while the next state is recomputed
        return add_outputs(0, lam), output_time_grads(trajectory, time_grads), param_grads


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
        f0: torch.Tensor,
        holder: dict[str, Trajectory],
        y0: torch.Tensor,
        t: torch.Tensor,
        *params,
    ):
        trajectory = method.record(problem, y0.detach(), f0)
        holder["trajectory"] = trajectory
        ctx.method, ctx.problem, ctx.trajectory = method, problem, trajectory
        # saved (references, no copies) so that autograd's version check catches an in-place
        # change of y0 or a parameter between this forward pass and the backward pass; a tuple
        # state's components are checked by hand (y0 is their concatenation)
        ctx.save_for_backward(y0, *params)
        ctx.component_versions = [(c, c._version) for c in problem.layout.components or ()]
        return torch.stack(trajectory.outputs)

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
        grad_y0, time_grads, param_grads = ctx.method.backward(
            problem, ctx.trajectory, grad_ys, tuple(p for p, w in zip(params, wanted) if w), with_time
        )
        grad_t = torch.stack(time_grads).to(problem.t.dtype) if with_time else None
        grads = iter(param_grads)
        return (None, None, None, None, grad_y0, grad_t, *[next(grads) if w else None for w in wanted])


def first_evaluation_checked(problem: ODEProblem, method_name: str, exact: bool = True) -> torch.Tensor:
    """Evaluate ``f(t0, y0)`` once with a graph, to find tensors that ``f`` uses and that
    require grad but are not among the parameters: a custom backward pass could give them no
    gradient, so that would be a silent error. Also checks that ``f`` draws no random numbers
    and leaves its module's buffers alone: a backward pass that evaluates ``f`` again would
    draw other numbers or change the buffers again (an error for an exact method, a warning
    for the continuous adjoint, whose gradient is approximate anyway). Returns the
    evaluation, detached, for reuse."""
    t0 = problem.time(problem.t_out[0])
    y = problem.y0.detach().requires_grad_(True)  # f sees a state that requires grad, as in a backward pass
    buffers = [(b, b._version) for b in problem.buffers]
    rng = _rng_states(y.device)
    with torch.enable_grad():
        problem.stats.nfe_forward += 1
        f0 = problem.func(t0, y)
        known = {id(p) for p in problem.params} | {id(t0), id(y)}
        foreign = [v for v in _graph_leaves(f0) if id(v) not in known]
    _check_replayable(method_name, rng, _rng_states(y.device), buffers, exact)
    if foreign:
        shapes = ", ".join(str(tuple(v.shape)) for v in foreign)
        message = (
            f"func uses {len(foreign)} tensor(s) that require grad but are not among the "
            f"parameters given to {method_name} (shapes {shapes}); they would get no gradient."
        )
        if problem.params_explicit:
            warnings.warn(message + " Add them to adjoint_params if their gradient is wanted.", stacklevel=5)
        else:
            raise ValueError(
                message + " Pass every such tensor in adjoint_params=(...), or make func an "
                "nn.Module that holds them as parameters."
            )
    return f0.detach()


def _rng_states(device: torch.device) -> list[torch.Tensor]:
    """The states of the random generators ``f`` may draw from: the CPU's, and the state's
    CUDA device's."""
    states = [torch.random.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def _check_replayable(
    method_name: str,
    before: list[torch.Tensor],
    after: list[torch.Tensor],
    buffers: list[tuple[torch.Tensor, int]],
    exact: bool,
) -> None:
    problems = []
    if any(not torch.equal(a, b) for a, b in zip(before, after)):
        problems.append(
            "func draws random numbers (the random generator advanced while f(t0, y0) ran: dropout in "
            "training mode, torch.randn, ...); the backward pass would draw other ones. Draw the noise once "
            "outside func (a buffer, as a CNF's Hutchinson noise), put dropout in eval mode (func.eval())"
        )
    if any(b._version != v for b, v in buffers):
        problems.append(
            "func changes its module's buffers when evaluated (BatchNorm's running statistics, a counter, ...); "
            "the backward pass would change them again. Put such layers in eval mode (func.eval())"
        )
    if not problems:
        return
    fix = "; or use gradient='backprop', which does not evaluate func again"
    if exact:
        raise ValueError(
            f"{method_name} evaluates func again in its backward pass, so its gradient would be "
            f"wrong: " + "; and ".join(problems) + fix
        )
    warnings.warn(
        f"{method_name}'s backward solve evaluates func again: " + "; and ".join(problems) + fix, stacklevel=5
    )


def _graph_leaves(output: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors (requiring grad) that ``output``'s autograd graph reaches."""
    if output.grad_fn is None:
        return [output] if output.requires_grad else []
    leaves: dict[int, torch.Tensor] = {}
    seen: set[Node] = set()
    stack: list[Node | None] = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves[id(variable)] = variable
        stack.extend(next_node for next_node, _ in node.next_functions)
    return list(leaves.values())


def vjp(
    fn: Callable[..., torch.Tensor],
    y: torch.Tensor,
    cotangent: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    param_grads: list[torch.Tensor],
    extra: tuple[torch.Tensor, ...] = (),
    keep_output: bool = False,
):
    """Differentiate ``out = fn(y, *extra)`` once: returns ``(cotangent^T d(out)/dy,
    [cotangent^T d(out)/de for e in extra], out or None)`` and adds ``cotangent^T d(out)/dθ`` to
    ``param_grads``. A cotangent is ``None`` where ``out`` does not depend on the input. A
    function of its own so that the graph and the gradients in flight die on return."""
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        extra = tuple(e.detach().requires_grad_(True) for e in extra)
        out = fn(y, *extra)
        kept = out.detach() if keep_output else None
        if not out.requires_grad:
            return None, [None] * len(extra), kept  # depends on no input
        grads = torch.autograd.grad(out, (y, *extra, *params), cotangent, allow_unused=True)
    for acc, g in zip(param_grads, grads[1 + len(extra) :]):
        if g is not None:
            acc.add_(g)
    return grads[0], list(grads[1 : 1 + len(extra)]), kept

"""What the methods with a backward pass of their own check of ``f`` before and after the
forward solve, so that their gradient is never silently wrong.

* **Closures**: a tensor that ``f`` uses, that requires grad and that is not among the
  parameters would get no gradient. Every evaluation of ``f`` that is differentiated is
  checked (:func:`check_closures`): ``f(t0, y0)`` before the forward solve, and each
  differentiated evaluation of the backward pass, so a tensor first used after ``t0`` is found
  too.
* **Random numbers**: a backward pass that evaluates ``f`` again must draw what the forward
  evaluation drew. ``f(t0, y0)`` and the whole forward solve are watched; when ``f`` draws, the
  exact methods record the generators' states (``symode._random``) and replay them; the
  continuous adjoint, which cannot (its backward solve evaluates ``f`` elsewhere), warns.
* **Buffers**: ``f`` may update its module's buffers (BatchNorm's running statistics in
  training mode) as long as its output does not depend on them: that is checked by evaluating
  ``f(t0, y0)`` a second time, with the same random numbers, after the update. The backward
  pass leaves such buffers as the forward pass left them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .._ivp import ODEProblem
from .._random import RngState, rng_states, same_states, set_rng_states

if TYPE_CHECKING:
    from torch.autograd.graph import Node

__all__ = [
    "FirstEvaluation",
    "first_evaluation_checked",
    "check_buffers_for_iterates",
    "check_closures",
    "checked_rhs",
    "closure_check",
    "warn_unreplayable",
]

_NO_REPLAY = (
    "func draws random numbers (dropout in training mode, torch.randn, ...), which {name}'s backward "
    "solve cannot replay: it evaluates func at other points than the forward solve did, so its "
    "gradient mixes other random numbers. For the exact gradient of this f use an exact method "
    "(gradient='symplectic_adjoint', 'checkpoint' or 'backprop'), which replays them"
)


_AGAIN = (
    "{name} evaluates func again in its backward pass, which would see other buffer values than the forward "
    "pass, and the gradient would be wrong. Put such layers in eval mode (func.eval()), or use "
    "gradient='backprop', which does not evaluate func again"
)
_ITERATES = (
    "{name} evaluates func at every Newton iterate, so its stage equations change with every evaluation and "
    "have no solution to differentiate. Put such layers in eval mode (func.eval()), keep the state outside "
    "func, or use an explicit method"
)


@dataclass
class FirstEvaluation:
    """``f(t0, y0)`` and what was seen while it ran.

    Attributes:
        f0: the evaluation, detached.
        before: the random generators' states just before it.
        after: their states just after it.
        draws: whether it drew random numbers.
        buffer_versions: the version counters of ``func``'s buffers before it.
        changed: the buffers it changed (checked, for an exact method, to leave its
            output alone; warned of by the continuous adjoint).
        changed_values: their values just after it, to set them back if the forward solve
            must be run again (a func that draws random numbers only after ``t0``).
    """

    f0: torch.Tensor
    before: RngState
    after: RngState
    draws: bool
    buffer_versions: list[int]
    changed: list[torch.Tensor]
    changed_values: list[torch.Tensor]


def first_evaluation_checked(problem: ODEProblem, method_name: str, exact: bool = True) -> FirstEvaluation:
    """Evaluate ``f(t0, y0)`` once with a graph and check it (module docstring): its closures;
    whether it draws random numbers (the continuous adjoint warns); whether it changes its
    module's buffers, and, for an exact method, that its output does not depend on them."""
    t0 = problem.time(problem.t_out[0])
    y = problem.y0.detach().requires_grad_(True)  # f sees a state that requires grad, as in a backward pass
    versions, values = _buffer_state(problem)
    device = y.device
    before = rng_states(device)
    with torch.enable_grad():
        problem.stats.nfe_forward += 1
        f0 = problem.func(t0, y)
        check_closures(problem, f0, (t0, y), method_name, "f(t0, y0)")
    after = rng_states(device)
    draws = not same_states(before, after)
    if draws and not exact:
        warn_unreplayable(method_name)
    changed = _changed_buffers(problem, versions, values)
    del values
    if changed:
        if not exact:
            warnings.warn(
                f"{method_name}'s backward solve evaluates func again, and func changes its module's buffers "
                f"(BatchNorm's running statistics, a counter, ...): they are set back after the backward pass, "
                f"but if func's output depends on them its gradient uses other values. Put such layers in "
                f"eval mode (func.eval()), or use gradient='backprop'",
                stacklevel=5,
            )
        elif problem.tableau.implicit:  # the Newton iterates are the first to see the buffers change
            name = f"the implicit method {problem.tableau.name!r}"
            _check_output_ignores_buffers(problem, name, t0, y.detach(), f0.detach(), changed, before, after, _ITERATES)
        else:
            _check_output_ignores_buffers(problem, method_name, t0, y.detach(), f0.detach(), changed, before, after)
    return FirstEvaluation(f0.detach(), before, after, draws, versions, changed, [b.clone() for b in changed])


def _check_output_ignores_buffers(
    problem: ODEProblem,
    method_name: str,
    t0: torch.Tensor,
    y0: torch.Tensor,
    f0: torch.Tensor,
    changed: list[torch.Tensor],
    before: RngState,
    after: RngState,
    consequence: str = _AGAIN,
) -> None:
    """``f`` changed buffers in ``f(t0, y0)``: evaluate it again from the same random state, with
    the changed buffers, and compare. Leaves the buffers and the generators as the first
    evaluation left them. ``consequence``: what the error says follows (``{name}``: the method)."""
    kept = [b.clone() for b in changed]
    set_rng_states(before, y0.device)
    try:
        with torch.no_grad():
            again = problem.func(t0, y0)
    finally:
        set_rng_states(after, y0.device)
        with torch.no_grad():
            for b, value in zip(changed, kept):
                b.copy_(value)
    eps = torch.finfo(f0.dtype).eps
    scale = float(f0.abs().max()) if f0.numel() else 0.0
    if not torch.allclose(again, f0, rtol=64 * eps, atol=64 * eps * scale):
        raise ValueError(
            "func changes its module's buffers while its output depends on them (evaluated twice at (t0, y0), "
            "it gave different results): " + consequence.format(name=method_name)
        )


def check_buffers_for_iterates(problem: ODEProblem, method_name: str) -> None:
    """An implicit method evaluates ``f`` at every Newton iterate and again to differentiate the
    stages: refuse a ``func`` whose output depends on buffers it changes (a counter in its
    output; BatchNorm's running statistics in training mode only update, and pass)."""
    if not problem.buffers:
        return
    t0 = problem.time(problem.t_out[0])
    y = problem.y0.detach()
    versions, values = _buffer_state(problem)
    before = rng_states(y.device)
    with torch.no_grad():
        problem.stats.nfe_forward += 1
        f0 = problem.func(t0, y)
    after = rng_states(y.device)
    changed = _changed_buffers(problem, versions, values)
    if changed:
        _check_output_ignores_buffers(problem, method_name, t0, y, f0, changed, before, after, _ITERATES)


def _buffer_state(problem: ODEProblem) -> tuple[list[int], list[torch.Tensor]]:
    """The version counters and values of ``func``'s buffers; values too, as some kernels update
    buffers without bumping their version (BatchNorm's running statistics)."""
    return [b._version for b in problem.buffers], [b.clone() for b in problem.buffers]


def _changed_buffers(problem: ODEProblem, versions: list[int], values: list[torch.Tensor]) -> list[torch.Tensor]:
    """The buffers changed since ``_buffer_state`` gave ``(versions, values)``."""
    return [b for b, v, value in zip(problem.buffers, versions, values) if b._version != v or not _equal(b, value)]


def warn_unreplayable(method_name: str) -> None:
    warnings.warn(_NO_REPLAY.format(name=method_name), stacklevel=5)


def check_closures(
    problem: ODEProblem,
    output: torch.Tensor,
    inputs: tuple[torch.Tensor, ...],
    method_name: str,
    where: str,
) -> None:
    """Refuse (or, with ``adjoint_params`` named by the user, warn of) tensors that the graph of
    ``output`` reaches, that require grad and that are neither ``inputs`` nor parameters: a
    custom backward pass gives them no gradient. The graph is not followed behind ``inputs``
    that are not leaves (one evaluation of ``f`` in a longer graph is checked by itself: a
    long graph is never walked from Python, whose node objects would make its deletion
    recursive)."""
    if not output.requires_grad:
        return
    known = {id(p) for p in problem.params} | {id(v) for v in inputs}
    behind = tuple(v for v in inputs if v.grad_fn is not None)
    foreign = [v for v in _graph_leaves(output, behind) if id(v) not in known]
    if not foreign:
        return
    shapes = ", ".join(str(tuple(v.shape)) for v in foreign)
    message = (
        f"func uses {len(foreign)} tensor(s) that require grad but are not among the "
        f"parameters given to {method_name} (shapes {shapes}) in {where}; they would get no gradient."
    )
    if problem.params_explicit:
        warnings.warn(message + " Add them to adjoint_params if their gradient is wanted.", stacklevel=5)
    else:
        raise ValueError(
            message + " Pass every such tensor in adjoint_params=(...), or make func an "
            "nn.Module that holds them as parameters."
        )


def closure_check(problem: ODEProblem, method_name: str) -> Callable[[torch.Tensor, tuple[torch.Tensor, ...]], None]:
    """The ``check`` of ``vjp`` for a backward pass's differentiated evaluations."""

    def check(output: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> None:
        check_closures(problem, output, inputs, method_name, "an evaluation of the backward pass")

    return check


def checked_rhs(problem: ODEProblem, rhs: Callable[..., torch.Tensor], method_name: str) -> Callable[..., torch.Tensor]:
    """``rhs(t, y, dt=None)`` whose every evaluation with a graph is checked for closures by
    itself (not the whole graph it is part of)."""

    def checked(t: float, y: torch.Tensor, dt: torch.Tensor | None = None) -> torch.Tensor:
        out = rhs(t, y, dt)
        inputs = (y,) if dt is None else (y, dt)
        check_closures(problem, out, inputs, method_name, "an evaluation of the backward pass")
        return out

    return checked


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, a NaN equal to a NaN (an uninitialised buffer may hold them)."""
    if a.is_floating_point() or a.is_complex():
        return bool(torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))
    return bool(torch.equal(a, b))


def _graph_leaves(output: torch.Tensor, stop: tuple[torch.Tensor, ...] = ()) -> list[torch.Tensor]:
    """The leaf tensors (requiring grad) that ``output``'s autograd graph reaches, not looking
    behind the tensors ``stop`` (inputs of ``output`` that are not leaves)."""
    if output.grad_fn is None:
        return [output] if output.requires_grad else []
    leaves: dict[int, torch.Tensor] = {}
    seen: set[Node] = {s.grad_fn for s in stop if s.grad_fn is not None}
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

"""Choosing the gradient method for a memory budget: ``choose_gradient`` (``--gradient auto``).

Every exact method computes the same gradient; they differ in memory and time. From the
fastest to the leanest (measured in ``docs/choosing.md``): backprop (no recomputation),
the symplectic adjoint with stored stages, the plain symplectic adjoint, and the symplectic
adjoint with at most ``K`` checkpoints (which recomputes steps). ``choose_gradient`` returns
the first whose estimated peak fits the budget, and for the capped one the largest ``K`` that
fits.

The estimate comes from a cheap probe: the bytes of the state ``|y|``, the memory ``L`` of
one evaluation of ``f`` and its vector-Jacobian product (measured with
``symode.bench.peak_memory``: the profiler's exact bytes on CPU, ``torch.cuda`` statistics on
a GPU), ``G``, the bytes of the tensors one evaluation's graph saves (counted with
``torch.autograd.graph.saved_tensors_hooks``), the parameters ``|p|``,
the tableau's stages ``s`` and the expected number of accepted steps ``N`` (given, or counted
by one forward solve without a graph). Then (the memory models of the methods' docs):

=========================  ==========================================
backprop                   ``N s (G + |y|) + L + |p|``
stored stages              ``N s' |y| + 2 s |y| + L + |p|``  (``s'`` stages kept per step)
symplectic adjoint         ``N |y| + 2 s |y| + L + |p|``
``max_checkpoints=K``      ``K |y| + 2 s |y| + L + |p|``
=========================  ==========================================

each times a safety margin (default 1.25). The steps of a trained model grow: pass
``expected_steps`` when you know more than the probe does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import symode
from symode.bench import peak_memory

__all__ = ["Choice", "choose_gradient", "parse_bytes"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(text: str | int) -> int:
    """``"2GiB"``, ``"500MB"``, ``"1e9"`` or an int: a number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"a memory size must be a number with a unit (B, KB, MB, GB, KiB, MiB, GiB), got {text!r}")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class Choice:
    """The method chosen, and what the choice was made from (bytes)."""

    gradient: symode.GradientMethod
    estimate: int
    budget: int
    estimates: dict[str, int]
    state_bytes: int
    evaluation_bytes: int
    steps: int


def choose_gradient(
    func: Callable[..., Any],
    y0: Any,
    t: Any,
    *,
    memory_budget: str | int,
    method: str = "dopri5",
    steps: symode.AdaptiveSteps | symode.FixedSteps | None = None,
    expected_steps: int | None = None,
    params: Sequence[torch.Tensor] | None = None,
    margin: float = 1.25,
    device: Any = None,
) -> Choice:
    """The fastest exact gradient method whose estimated peak memory for differentiating
    ``symode.solve(func, y0, t, method=method, steps=steps)`` fits ``memory_budget`` (module
    docstring). Raises ``ValueError`` when not even one checkpoint fits, with the bytes needed."""
    budget = parse_bytes(memory_budget)
    tableau = symode.get_tableau(method)
    layout = symode.StateLayout.of(y0)
    flat = layout.flat_y0
    state = flat.numel() * flat.element_size()
    if params is None:
        params = list(func.parameters()) if isinstance(func, torch.nn.Module) else []
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    times = torch.as_tensor(t)
    if expected_steps is None:
        with torch.no_grad():
            expected_steps = symode.solve(func, y0, times, method=tableau, steps=steps).stats.num_accepted
    graph, evaluation = _evaluation_bytes(func, y0, times, [p for p in params if p.requires_grad], device)
    s = tableau.num_stages
    kept = len(tableau.solution_stages)
    n = max(int(expected_steps), 1)
    base = 2 * s * state + evaluation + param_bytes
    estimates = {
        "backprop": n * s * (graph + state) + evaluation + param_bytes,
        "symplectic_adjoint(store_stages)": n * kept * state + base,
        "symplectic_adjoint": n * state + base,
    }
    options: list[tuple[str, symode.GradientMethod]] = [
        ("backprop", symode.Backprop()),
        ("symplectic_adjoint(store_stages)", symode.SymplecticAdjoint(store_stages=True)),
        ("symplectic_adjoint", symode.SymplecticAdjoint()),
    ]
    for name, gradient in options:
        if estimates[name] * margin <= budget:
            return Choice(gradient, estimates[name], budget, estimates, state, evaluation, n)
    cap = int((budget / margin - base) // state)
    if cap >= 1:
        estimate = cap * state + base
        return Choice(symode.SymplecticAdjoint(max_checkpoints=cap), estimate, budget, estimates, state, evaluation, n)
    raise ValueError(
        f"memory_budget {budget:,} B is below what any exact method needs here: one checkpoint takes about "
        f"{int((state + base) * margin):,} B (state {state:,} B, one evaluation of f {evaluation:,} B, parameters "
        f"{param_bytes:,} B); raise the budget or make the batch smaller"
    )


def _evaluation_bytes(
    func: Callable[..., Any], y0: Any, t: torch.Tensor, params: Sequence[torch.Tensor], device: Any
) -> tuple[int, int]:
    """``G``: the bytes one evaluation of ``func`` keeps for its backward pass (the tensors its
    graph saves, counted once each, besides the state and the parameters, and its output), and
    ``L``: the peak memory of that evaluation and its vector-Jacobian product."""
    leaves = tuple(y.detach().requires_grad_() for y in y0) if isinstance(y0, tuple) else y0.detach().requires_grad_()
    inputs = (*leaves, *params) if isinstance(leaves, tuple) else (leaves, *params)
    time = t.reshape(-1)[0].to(inputs[0].dtype)
    known = {x.untyped_storage().data_ptr() for x in inputs}
    saved: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        if storage.data_ptr() not in known:
            saved[storage.data_ptr()] = storage.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = func(time, leaves)
    outputs = out if isinstance(out, tuple) else (out,)
    graph = sum(saved.values()) + sum(o.numel() * o.element_size() for o in outputs)
    del out, outputs

    def evaluate() -> None:
        out = func(time, leaves)
        total = sum(o.sum() for o in out) if isinstance(out, tuple) else out.sum()
        torch.autograd.grad(total, inputs, allow_unused=True)  # no .grad is written

    return graph, peak_memory(evaluate, device=device).peak_bytes

"""The frame of the memory benchmarks in ``benchmarks/`` (memory.py, methods.py, scaling.py) and
of their records.

* :func:`memory_case`: a neural ODE ``dy/dt = MLPField(y)`` on ``t in [0, 1]`` with its sizes
  in bytes (:class:`MemoryCase`): the state ``|y|``, the parameters ``|theta|``, one network
  use's saved activations ``A`` (:func:`saved_activation_bytes`) and the network uses per
  step ``s`` (:func:`network_uses_per_step`);
* :func:`fixed_step_iteration`: one training iteration with ``N`` fixed steps, and
  :func:`measure_iteration`: its peak memory (:func:`~symode.bench.memory.peak_memory`) and
  gradient;
* :func:`add_run_arguments` and :func:`run_and_record`: the options every memory script
  takes, and the run printed as markdown and written as a record (markdown or JSON, with the
  command, the date, the commit and the machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch

from .. import FixedSteps, GradientMethod, Stats, get_tableau, solve
from .fields import MLPField
from .harness import DTYPES
from .memory import peak_memory
from .report import recorded, write_json

__all__ = [
    "MemoryCase",
    "memory_case",
    "network_uses_per_step",
    "saved_activation_bytes",
    "fixed_step_iteration",
    "measure_iteration",
    "add_run_arguments",
    "run_and_record",
]


def network_uses_per_step(method: str) -> int:
    """``s``: the stages of ``method`` that influence the solution, ``len(solution_stages)``
    of its tableau. A trailing stage with no weight (an FSAL tableau's last, evaluated once as
    the next step's first) is not counted: a backward pass never sweeps it. Not the tableau's
    ``num_stages`` (dopri5: 6 here, 7 stages)."""
    return len(get_tableau(method).solution_stages)


def saved_activation_bytes(func: torch.nn.Module, y: torch.Tensor) -> int:
    """``A``: the bytes of the distinct storages autograd saves for the backward pass in one
    forward of ``func`` on ``y`` (at ``t = 0``), the parameters excluded (the linear layers
    save views of their weights, which exist anyway) and the input ``y`` included: what every
    use of ``func`` in backprop's graph keeps alive. Counted, not estimated, with
    ``torch.autograd.graph.saved_tensors_hooks``."""
    param_storages = {p.untyped_storage().data_ptr() for p in func.parameters()}
    saved: dict[int, int] = {}

    def pack(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            ptr = x.untyped_storage().data_ptr()
            if ptr not in param_storages:
                saved[ptr] = x.untyped_storage().nbytes()
        return x

    x = y.detach().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = func(torch.zeros((), dtype=y.dtype, device=y.device), x)
    del out
    return sum(saved.values())


@dataclass
class MemoryCase:
    """A neural ODE of the memory benchmarks (:func:`memory_case`) and its sizes.

    Attributes:
        func: the vector field, an :class:`~symode.bench.fields.MLPField`.
        y0: the initial state, ``(batch, dim)``; requires grad.
        t: ``[0, 1]``, in the state's dtype.
        device: where ``func``, ``y0`` and ``t`` are (pass it to ``peak_memory``).
        stages: ``s``, the network uses per step of the method (:func:`network_uses_per_step`).
        state_bytes: ``|y|``, the bytes of one state.
        theta_bytes: ``|theta|``, the bytes of the parameters.
        activation_bytes: ``A``, one network use's saved activations (:func:`saved_activation_bytes`).
    """

    func: torch.nn.Module
    y0: torch.Tensor
    t: torch.Tensor
    device: torch.device
    stages: int
    state_bytes: int
    theta_bytes: int
    activation_bytes: int

    @property
    def dim(self) -> int:
        """The state's dimension."""
        return self.y0.shape[-1]


def memory_case(
    width: int,
    batch: int,
    dtype: torch.dtype | str = "float32",
    method: str = "rk4",
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    dim: int = 43,
) -> MemoryCase:
    """The neural ODE ``dy/dt = MLPField(dim, width)(y)`` (``dim -> width -> width -> dim``,
    softplus, PyTorch's default initialisation) from ``y0 ~ N(0, 1)`` of shape
    ``(batch, dim)`` on ``t in [0, 1]``, with its sizes for ``method``. ``dim`` defaults to
    MINIBOONE's 43 (the paper's shape). ``torch.manual_seed(seed)`` is called first; the
    network's weights, then ``y0``, are drawn from it. ``dtype``: a ``torch.dtype`` or its
    name in :data:`~symode.bench.harness.DTYPES`."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    device = torch.device(device)
    torch.manual_seed(seed)
    func = MLPField(dim, width).to(device=device, dtype=dtype)
    y0 = torch.randn(batch, dim, dtype=dtype, device=device).requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=dtype, device=device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return MemoryCase(
        func=func,
        y0=y0,
        t=t,
        device=device,
        stages=network_uses_per_step(method),
        state_bytes=batch * dim * itemsize,
        theta_bytes=sum(p.numel() for p in func.parameters()) * itemsize,
        activation_bytes=saved_activation_bytes(func, y0),
    )


def fixed_step_iteration(
    func: torch.nn.Module, y0: torch.Tensor, t: torch.Tensor, n_steps: int, method: str, gradient: str | GradientMethod
) -> tuple[float, Stats]:
    """One training iteration: :func:`symode.solve` from ``t[0]`` to ``t[-1]`` in ``n_steps``
    fixed steps of ``method``, differentiated by ``gradient``; ``loss = mean(y(t[-1])**2)``;
    ``loss.backward()``. Returns ``(loss, stats)`` (the backward counts filled in).

    The :class:`~symode.Solution` is dropped before the backward pass, as ``odeint`` drops it:
    its float64 grid (8 B per step) does not outlive the solve, and the iteration's memory is
    ``odeint``'s."""
    step_size = (float(t[-1]) - float(t[0])) / n_steps
    sol = solve(func, y0, t, method=method, steps=FixedSteps(step_size=step_size), gradient=gradient)
    ys, stats = sol.ys, sol.stats
    del sol
    loss = ys[-1].pow(2).mean()
    loss.backward()
    return loss.item(), stats


def measure_iteration(
    func: torch.nn.Module,
    y0: torch.Tensor,
    t: torch.Tensor,
    n_steps: int,
    method: str,
    gradient: str | GradientMethod,
    device: torch.device | str | None = None,
) -> tuple[int, tuple[float, Stats], torch.Tensor]:
    """The peak bytes of one :func:`fixed_step_iteration` (:func:`~symode.bench.memory.peak_memory`
    on ``device``), what it returned (``(loss, stats)``) and the gradient, flattened: ``y0``'s,
    then every parameter's (those that require grad). ``y0`` must require grad. Every ``.grad``
    is set to ``None`` before the call (so the gradients the backward pass allocates,
    ``|theta| + |y|``, count in every figure) and after it."""
    func.zero_grad(set_to_none=True)
    y0.grad = None
    r = peak_memory(fixed_step_iteration, func, y0, t, n_steps, method, gradient, device=device)
    grads = (y0.grad, *(p.grad for p in func.parameters()))
    grad = torch.cat([g.reshape(-1) for g in grads if g is not None])
    func.zero_grad(set_to_none=True)
    y0.grad = None
    return r.peak_bytes, cast("tuple[float, Stats]", r.result), grad


def add_run_arguments(parser: argparse.ArgumentParser, repeat_check_help: str) -> None:
    """The options every memory benchmark takes: ``--device``, ``--seed``, ``--threads``
    (default 1) and ``--no-repeat-check`` (``args.repeat_check``), described by
    ``repeat_check_help``."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared 2-core machine two threads are often "
        "10x slower; the memory figures do not depend on it)",
    )
    parser.add_argument("--no-repeat-check", dest="repeat_check", action="store_false", help=repeat_check_help)


def run_and_record(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    to_markdown: Callable[[dict[str, Any]], str],
    json_extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``res = run(args)``, printed as ``to_markdown(res)`` with a line on the machine, and
    written to ``args.out`` when given: markdown if it ends in ``.md`` (below the command,
    the machine, the commit and the date), else JSON (:func:`~symode.bench.report.write_json`,
    with ``json_extra(res)`` merged in). Adds to ``res``, unless ``run`` set them: ``wall_s``
    (the run's seconds), ``command`` (``python`` and ``sys.argv``) and ``recorded`` (the date,
    the commit and the machine: :func:`~symode.bench.report.recorded`). Returns ``res``."""
    start = time.perf_counter()
    res = run(args)
    res.setdefault("wall_s", round(time.perf_counter() - start, 1))
    res.setdefault("command", "python " + " ".join(sys.argv))
    res.setdefault("recorded", recorded())
    md = to_markdown(res)
    print(md)
    rec = res["recorded"]
    m = rec["machine"]
    print(f"\n{m['nproc']} CPUs, {m['cpu']}, torch {m['torch']}; {res['wall_s']} s")
    out = getattr(args, "out", None)
    if out:
        if out.endswith(".md"):
            with open(out, "w") as fh:
                fh.write(
                    f"Command: `{res['command']}`  \nMachine: {m['nproc']} CPUs, {m['cpu']}, "
                    f"torch {m['torch']}, Python {m['python']}  \nsymode {m.get('symode', '?')} at "
                    f"{rec['commit']}; date: {rec['date']}; {res['wall_s']} s wall\n\n{md}\n"
                )
        else:
            write_json(out, {**res, **(json_extra(res) if json_extra else {})})
    return res

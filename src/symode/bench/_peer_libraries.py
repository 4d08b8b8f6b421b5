"""The peer libraries' runners: how each library is called to solve "the same problem" as
symode (see :mod:`symode.bench.peers` for what that means and the registry of peers).

Each runner takes a :class:`Job` (the counted field, the state, the times, the peer's name
for the method, the tolerances or symode's fixed-step plan) and returns the states at the
output times, differentiable, like ``torchdiffeq.odeint``. The libraries are imported inside
the runners: none is imported with this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import FixedSteps, StateLayout

__all__ = ["PeerUnsupported", "Job", "Plan"]


class PeerUnsupported(ValueError):
    """The peer cannot run this configuration (a method, fixed steps, ``adjoint_params``);
    the message says why. The bench reports it as skipped, not as an error."""


class Plan:
    """symode's fixed-step grid for the output times: the step endpoints and the index of
    each output time among them."""

    def __init__(self, steps: FixedSteps, t_out: list[float]):
        if steps.step_size is None:
            raise ValueError("the peers take a step size, not a grid of steps")
        self.h: float = steps.step_size
        self.points, self.out_index, _ = steps.plan(t_out)
        # uniform: every output interval is a whole number of steps of exactly h
        self.uniform = all(
            abs(abs(b - a) / self.h - round(abs(b - a) / self.h)) <= 1e-9 for a, b in zip(t_out, t_out[1:])
        )

    def grid(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.points, dtype=like.dtype, device=like.device)


@dataclass
class Job:
    """One solve for a peer's runner.

    ``func`` is the user's field wrapped in a ``CountingField`` (time in the state's dtype,
    fresh leaves in no-grad solves: fields that differentiate themselves need them), never
    the raw field; ``name``/``gradient``/``module``: the peer's (``"torchdiffeq:odeint"``,
    ``"backprop"``, ``"torchdiffeq"``); ``method``: the peer's name for the tableau;
    ``plan``: symode's fixed-step grid, or ``None`` for adaptive steps; ``params``: the
    tensors to differentiate; ``adjoint_params``: as the user gave them (``None``: not
    given).
    """

    name: str
    gradient: str
    module: str
    func: torch.nn.Module
    y0: Any
    t: torch.Tensor
    t_out: list[float]
    method: str
    rtol: float
    atol: float
    step_size: float | None
    plan: Plan | None
    params: tuple[torch.Tensor, ...]
    adjoint_params: Any


def _select_rows(ys: Any, index: list[int]) -> Any:
    """Rows ``index`` of the solution on the whole grid (a tensor or a tuple of them)."""
    if isinstance(ys, torch.Tensor):
        return ys[index]
    return tuple(y[index] for y in ys)


def _stack_outputs(y0: Any, states: list[Any]) -> Any:
    """Stack the states at the output times (``states[0]`` is ``y0``) like torchdiffeq."""
    if isinstance(y0, torch.Tensor):
        return torch.stack(states)
    return tuple(torch.stack([s[i] for s in states]) for i in range(len(y0)))


# --------------------------------------------------------------------------------------
# torchdiffeq


def run_torchdiffeq(job: Job) -> Any:
    import torchdiffeq

    options = {}
    if job.plan is not None:
        steps = FixedSteps(step_size=job.step_size)

        def grid_constructor(func, y0, t):  # torchdiffeq calls it per solve, also in the adjoint's backward
            return torch.tensor(steps.plan(t.detach().cpu().double().tolist())[0], dtype=t.dtype, device=t.device)

        options["grid_constructor"] = grid_constructor
    if job.gradient == "backprop":
        return torchdiffeq.odeint(
            job.func, job.y0, job.t, rtol=job.rtol, atol=job.atol, method=job.method, options=options
        )
    return torchdiffeq.odeint_adjoint(
        job.func,
        job.y0,
        job.t,
        rtol=job.rtol,
        atol=job.atol,
        method=job.method,
        options=options,
        adjoint_params=job.params,
    )


TORCHDIFFEQ_METHODS = {
    "euler": "euler",
    "midpoint": "midpoint",
    "heun": "heun2",
    "rk38": "rk4",
    "adaptive_heun": "adaptive_heun",
    "fehlberg2": "fehlberg2",
    "bosh3": "bosh3",
    "dopri5": "dopri5",
    "dopri8": "dopri8",
}
TORCHDIFFEQ_ADAPTIVE = frozenset({"adaptive_heun", "fehlberg2", "bosh3", "dopri5", "dopri8"})
TORCHDIFFEQ_UNSUPPORTED = {
    "rk4": "torchdiffeq's 'rk4' is Kutta's 3/8 rule, not the classical rk4: use method='rk38' to compare it",
}


# --------------------------------------------------------------------------------------
# TorchDiffEqPack


def _tdep_options(job: Job, t0: float, t1: float, **extra: Any) -> dict[str, Any]:
    options = {
        "method": job.method,
        "t0": t0,
        "t1": t1,
        "rtol": job.rtol,
        "atol": job.atol,
        "h": job.plan.h if job.plan is not None else None,
        "print_neval": False,
        "neval_max": 500000,
    }
    options.update(extra)
    return options


def _check_tdep_params(job: Job) -> None:
    if job.adjoint_params is not None:
        raise PeerUnsupported(
            f"{job.name}: TorchDiffEqPack differentiates the parameters of func "
            f"(an nn.Module) only; adjoint_params is not supported"
        )


def run_tdep_odesolve(job: Job) -> Any:
    from TorchDiffEqPack import odesolve_endtime

    _check_tdep_params(job)
    # One solve per output interval in its end-point mode: the last step ends on the output
    # time, as in symode and in its own odesolve_adjoint. (Its odesolve with t_eval steps past
    # the output times and interpolates back: cubic Hermite by default, which is inaccurate,
    # or interpolation_method='polynomial', which fails for float64 states in 1.0.1.)
    states, y = [job.y0], job.y0
    for a, b in zip(job.t_out, job.t_out[1:]):
        y = odesolve_endtime(job.func, y, _tdep_options(job, a, b))
        states.append(y)
    return _stack_outputs(job.y0, states)


def run_tdep_aca(job: Job) -> Any:
    from TorchDiffEqPack import odesolve_adjoint

    _check_tdep_params(job)
    # odesolve_adjoint returns the state at t1 only: one call per output interval
    states, y = [job.y0], job.y0
    for a, b in zip(job.t_out, job.t_out[1:]):
        y = odesolve_adjoint(job.func, y, options=_tdep_options(job, a, b))
        states.append(y)
    return _stack_outputs(job.y0, states)


TDEP_METHODS = {
    "euler": "euler",
    "midpoint": "rk2",
    "rk4": "rk4",
    "adaptive_heun": "rk12",
    "bosh3": "rk23",
    "dopri5": "dopri5",
}
TDEP_ADAPTIVE = frozenset({"rk12", "rk23", "dopri5"})
TDEP_UNSUPPORTED = {
    "rk38": "TorchDiffEqPack's 'rk4' is the classical rk4, it has no 3/8 rule: use method='rk4'",
}
TDEP_ACA_METHODS = {k: v for k, v in TDEP_METHODS.items() if v in TDEP_ADAPTIVE}
TDEP_ACA_UNSUPPORTED = dict(
    TDEP_UNSUPPORTED,
    **{
        k: f"TorchDiffEqPack's odesolve_adjoint fails in its backward pass with the fixed-step {v!r} "
        f"(its error estimate is None)"
        for k, v in TDEP_METHODS.items()
        if v not in TDEP_ADAPTIVE
    },
)


# --------------------------------------------------------------------------------------
# torchode


def run_torchode(job: Job) -> Any:
    import torchode

    if job.gradient != "backprop" and job.adjoint_params is not None:
        raise PeerUnsupported(
            f"{job.name}: torchode's BacksolveAdjoint differentiates the parameters "
            f"of func (an nn.Module) only; adjoint_params is not supported"
        )
    layout = StateLayout.of(job.y0)
    # the state as one row: one step-size sequence for the whole state, as in symode
    term = torchode.ODETerm(_RowModule(layout, job.func), with_stats=False)
    step_method = {"euler": torchode.Euler, "heun": torchode.Heun, "dopri5": torchode.Dopri5, "tsit5": torchode.Tsit5}[
        job.method
    ](term=term)
    # times in the state's dtype: its BacksolveAdjoint fails with float64 times and a float32 state
    t = torch.tensor(job.t_out, dtype=layout.flat_y0.dtype, device=layout.flat_y0.device)
    dt0 = None
    if job.plan is not None:
        controller = torchode.FixedStepController()
        direction = 1.0 if job.t_out[-1] > job.t_out[0] else -1.0
        dt0 = torch.full((1,), direction * job.plan.h, dtype=t.dtype, device=t.device)
    else:
        controller = torchode.IntegralController(atol=job.atol, rtol=job.rtol, term=term)
    if job.gradient == "backprop":
        solver = torchode.AutoDiffAdjoint(step_method, controller)
    else:
        solver = torchode.BacksolveAdjoint(term, step_method, controller)
    problem = torchode.InitialValueProblem(
        y0=layout.flat_y0.reshape(1, -1), t_start=t[:1], t_end=t[-1:], t_eval=t[None]
    )
    sol = solver.solve(problem, dt0=dt0)
    if not bool((sol.status == 0).all()):
        raise RuntimeError(f"{job.name}: torchode's solve failed with status {sol.status.tolist()}")
    return layout.unflatten(sol.ys[0], lead=(len(job.t_out),))


class _RowModule(torch.nn.Module):
    """The counted field on a ``(1, N)`` row (a module, so that torchode's BacksolveAdjoint
    finds the parameters of ``func`` in ``term.parameters()``)."""

    def __init__(self, layout: StateLayout, func: torch.nn.Module):
        super().__init__()
        self.func = func
        self.layout = layout

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # (1, N) rows with times (1,); BacksolveAdjoint vmaps over the rows: then (N,) and ()
        state = self.layout.unflatten(y.reshape(-1))
        return self.layout.flatten(self.func(t.reshape(-1)[0], state)).reshape(y.shape)


TORCHODE_METHODS = {"euler": "euler", "heun": "heun", "adaptive_heun": "heun", "dopri5": "dopri5", "tsit5": "tsit5"}
TORCHODE_ADAPTIVE: frozenset[str] = frozenset()  # torchode runs every method with fixed or adaptive steps


# --------------------------------------------------------------------------------------
# the authors' torch_symplectic_adjoint


def run_authors(job: Job) -> Any:
    import torch_symplectic_adjoint as tsa

    fn = {
        "backprop": tsa.odeint,
        "adjoint": tsa.odeint_adjoint,
        "checkpoint": tsa.odeint_checkpoint,
        "one_checkpoint": tsa.odeint_onecheckpoint,
        "symplectic_adjoint": tsa.odeint_symplectic_adjoint,
    }[job.gradient]
    kwargs = {} if job.gradient == "backprop" else {"adjoint_params": job.params}
    if job.plan is None:
        return fn(job.func, job.y0, job.t, rtol=job.rtol, atol=job.atol, method=job.method, **kwargs)
    # its fixed-step methods take one step per output interval: solve on symode's grid and
    # return the rows at the output times
    grid = job.plan.grid(job.t if job.t.is_floating_point() else torch.empty(0, dtype=torch.float64))
    ys = fn(job.func, job.y0, grid, rtol=job.rtol, atol=job.atol, method=job.method, **kwargs)
    return _select_rows(ys, job.plan.out_index)


AUTHORS_METHODS = {
    "euler": "euler",
    "midpoint": "midpoint",
    "rk4": "rk4",
    "rk38": "rk38",
    "adaptive_heun": "adaptive_heun",
    "bosh3": "bosh3",
    "dopri5": "dopri5",
    "dopri8": "dopri8",
}
AUTHORS_ADAPTIVE = frozenset({"adaptive_heun", "bosh3", "dopri5", "dopri8"})
AUTHORS_UNSUPPORTED = {
    "fehlberg2": "the authors' 'fehlberg2' estimates its error with the low-order weights, so its steps "
    "shrink with the tolerance and the solve stalls",
}
AUTHORS_INSTALL = (
    "pip install 'git+https://github.com/tksmatsubara/symplectic-adjoint-method@beta' "
    "(not on PyPI; branch beta runs on recent torch)"
)


# --------------------------------------------------------------------------------------

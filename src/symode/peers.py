"""Peers: the libraries users would otherwise pick, run on the same problem as symode.

Each entry of :data:`PEERS` runs one way of differentiating a solve in one library —
backprop through its solver, its continuous adjoint, its checkpointing scheme — behind one
signature, so that ``symode bench`` can put it next to symode's own methods::

    from symode import peers
    peers.available()                      # {"torchdiffeq:odeint": None, "torchode:backprop": "not installed: ..."}
    ys = peers.solve("torchdiffeq:odeint", func, y0, t, method="dopri5", rtol=1e-7, atol=1e-9)
    ys[-1].pow(2).sum().backward()
    peers.stats("torchdiffeq:odeint")       # {"nfe_forward": 86, "nfe_backward": 0}

The libraries are optional: none is imported when this module is imported, none is a
dependency of symode, and none is vendored. A peer that is not installed is reported by
:func:`available` with the command that installs it; the bench lists it as skipped.

The peers
    ``torchdiffeq:odeint`` / ``torchdiffeq:odeint_adjoint`` (torchdiffeq 0.2.5): backprop
        through its solver, and its continuous adjoint (Chen et al. 2018).
    ``torchdiffeqpack:odesolve`` / ``torchdiffeqpack:aca`` (TorchDiffEqPack 1.0.1, which needs
        matplotlib at import): backprop through its solver, and its adaptive checkpoint adjoint
        ``odesolve_adjoint`` (ACA, Zhuang et al. 2020).
    ``torchode:backprop`` / ``torchode:backsolve`` (torchode 1.0.1): its ``AutoDiffAdjoint``
        and ``BacksolveAdjoint`` (a continuous adjoint).
    ``authors:odeint`` / ``authors:odeint_adjoint`` / ``authors:checkpoint`` /
        ``authors:onecheckpoint`` / ``authors:symplectic_adjoint``: the reference code of the
        symplectic adjoint paper (``torch_symplectic_adjoint``, github.com/tksmatsubara/
        symplectic-adjoint-method, branch ``beta``; not on PyPI).

"The same problem"
    ``method`` takes symode's names and is mapped to the peer's name for the same tableau
    (``rk38`` is torchdiffeq's ``"rk4"``, Kutta's 3/8 rule; ``bosh3`` is TorchDiffEqPack's
    ``"rk23"``); a method a peer lacks raises :class:`PeerUnsupported`, whose message says why.
    With ``step_size=h`` (fixed steps) the peer is made to step on symode's grid
    (``symode.FixedSteps(step_size=h)``: steps of ``h`` from each output time, the last one
    shortened to end on the next): torchdiffeq through its ``grid_constructor`` option, the
    authors' code by solving on the grid and returning the rows at ``t``; TorchDiffEqPack and
    torchode can only step by exactly ``h``, so there ``h`` must divide every output interval.
    Adaptive solves use each peer's own controller and initial step with ``rtol``/``atol``, so
    the solutions agree to the tolerance, not to round-off; torchdiffeq and torchode step past
    the output times and interpolate, the authors' code and TorchDiffEqPack (run here one
    output interval at a time, in its end-point mode) end a step on every output time, as
    symode does. TorchDiffEqPack does its time arithmetic in float32 (``dt`` and the weights
    times ``dt``), which limits its agreement with symode to ~1e-7 even on the same grid.
    torchode receives the state as one row ``(1, N)``, so that one step-size sequence serves
    the whole state, as in the others (it would otherwise control each batch row apart).

Evaluation counts
    ``func`` is wrapped in a counter (unless ``count=False``): calls made while ``solve`` runs
    are forward evaluations, calls made after it returned (in ``backward()``) are backward
    evaluations. :func:`stats` gives the counts of a peer's last solve. Count in one run and
    time in another: the wrapper costs a Python call per evaluation.

Parameters
    Gradients reach the parameters of ``func`` when it is an ``nn.Module`` (the adjoint peers
    differentiate those). ``adjoint_params`` names the tensors explicitly, as in symode; only
    the peers that accept it (torchdiffeq's adjoint and the authors' code) take it, the others
    raise :class:`PeerUnsupported`. A plain function closing over tensors gets no parameter
    gradients from an adjoint peer, as in ``symode.solve``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from .methods import get_tableau
from .step_size import FixedSteps

__all__ = ["PEERS", "Peer", "PeerUnsupported", "available", "solve", "stats"]


class PeerUnsupported(ValueError):
    """The peer cannot run this configuration (a method, fixed steps, ``adjoint_params``);
    the message says why. The bench reports it as skipped, not as an error."""


# --------------------------------------------------------------------------------------
@dataclass
class Peer:
    """One way of differentiating a solve in one library.

    Attributes:
        name: ``"library:way"``, e.g. ``"torchdiffeq:odeint_adjoint"``.
        module: the Python module it imports.
        install: the command that installs it.
        gradient: the name of the symode gradient method it is compared with
            (``"backprop"``, ``"adjoint"``, ``"checkpoint"``, ``"one_checkpoint"``,
            ``"symplectic_adjoint"``).
        exact: whether its gradient is the exact gradient of its discrete solve.
        methods: symode method name -> the peer's name for it.
        unsupported: symode method name -> why the peer cannot run it (methods in neither
            mapping are unsupported for the generic reason that the peer has no such method).
        fixed_only_h: the peer steps by exactly ``h`` (``step_size`` must divide every output
            interval) instead of following symode's grid.
        adaptive: the peer's names of the methods that choose their own steps (these take no
            ``step_size`` in the peer).
        needs: other modules that must import for the peer to work.
    """

    name: str
    module: str
    install: str
    gradient: str
    exact: bool
    methods: Mapping[str, str]
    runner: Callable = field(repr=False)
    unsupported: Mapping[str, str] = field(default_factory=dict)
    adaptive: frozenset = frozenset()
    fixed_only_h: bool = False
    needs: tuple[str, ...] = ()
    _last: "_Counted | None" = field(default=None, init=False, repr=False, compare=False)

    def available(self) -> str | None:
        """``None`` if the peer imports, else why not (with the install command)."""
        for mod in (self.module, *self.needs):
            if importlib.util.find_spec(mod) is None:
                return f"not installed: {mod} is missing; {self._install_for(mod)}"
        try:
            importlib.import_module(self.module)
        except Exception as exc:  # an installed peer that fails to import is skipped too
            return f"installed but does not import: {type(exc).__name__}: {exc}"
        return None

    def _install_for(self, mod: str) -> str:
        return self.install if mod == self.module else f"pip install {mod}"

    def solve(self, func: Callable, y0, t, *, method: str, rtol: float = 1e-7, atol: float = 1e-9,
              step_size: float | None = None, adjoint_params: Sequence[torch.Tensor] | None = None,
              count: bool = True):
        """Solve ``dy/dt = func(t, y)`` from ``y0`` at ``t[0]`` with this peer.

        Args:
            func: ``func(t, y)``; an ``nn.Module`` to get parameter gradients from the
                adjoint peers.
            y0: a tensor, or a tuple of tensors (e.g. ``(z, logp)`` of a continuous
                normalizing flow).
            t: 1-D output times, ``t[0]`` the initial time.
            method: a symode method name (``"dopri5"``, ``"rk38"``, ...).
            rtol, atol: tolerances of an adaptive solve (ignored with ``step_size``).
            step_size: fixed steps of this size on symode's grid (see the module docstring).
            adjoint_params: tensors to differentiate besides ``y0`` (default: the
                parameters of ``func`` if it is an ``nn.Module``).
            count: count evaluations of ``func`` for :meth:`stats`.

        Returns:
            The states at ``t``, differentiable: shape ``(len(t), *y0.shape)``, or a tuple of
            such tensors for a tuple ``y0``.

        Raises:
            PeerUnsupported: the peer cannot run this configuration.
            RuntimeError: the peer is not installed (see :meth:`available`).
        """
        if not isinstance(method, str):
            raise PeerUnsupported(f"{self.name}: method must be a symode method name, got {method!r}")
        tableau = get_tableau(method)
        name = tableau.name
        if name not in self.methods:
            why = self.unsupported.get(name, f"{self.module} has no {name!r} method")
            raise PeerUnsupported(f"{self.name}: {why}; it supports {sorted(self.methods)}")
        peer_method = self.methods[name]
        y0_tensors = (y0,) if isinstance(y0, torch.Tensor) else tuple(y0)
        if not y0_tensors or not all(isinstance(c, torch.Tensor) for c in y0_tensors):
            raise TypeError(f"y0 must be a tensor or a tuple of tensors, got {type(y0).__name__}")
        t = torch.as_tensor(t)
        if t.ndim != 1 or len(t) < 2:
            raise ValueError(f"t must be 1-D with at least two times, got shape {tuple(t.shape)}")
        t_out = t.detach().cpu().double().tolist()
        plan = None
        if step_size is not None:
            if peer_method in self.adaptive:
                raise PeerUnsupported(f"{self.name}: {peer_method!r} chooses its own steps in {self.module}; "
                                      f"fixed steps (step_size) need a fixed method such as 'rk38' or 'rk4'")
            steps = FixedSteps(step_size=step_size)
            plan = _Plan(steps, t_out)
            if self.fixed_only_h and not plan.uniform:
                raise PeerUnsupported(
                    f"{self.name}: {self.module} steps by exactly step_size={step_size!r}, which must divide "
                    f"every interval between output times {t_out} to give symode's grid")
        elif not tableau.adaptive:
            raise ValueError(f"method {name!r} takes fixed steps: give step_size")
        reason = self.available()
        if reason is not None:
            raise RuntimeError(f"peer {self.name!r} is unavailable: {reason}")
        if isinstance(func, torch.nn.Module):
            params = tuple(func.parameters()) if adjoint_params is None else tuple(adjoint_params)
        else:
            params = () if adjoint_params is None else tuple(adjoint_params)
        counted = _Counted(func, y0_tensors[0].dtype, y0_tensors[0].device, count)
        self._last = counted if count else None
        try:
            ys = self.runner(_Job(peer=self, func=counted, y0=y0, t=t, t_out=t_out, method=peer_method,
                                  rtol=float(rtol), atol=float(atol), step_size=step_size, plan=plan,
                                  params=params, adjoint_params=adjoint_params, raw_func=func))
        finally:
            counted.in_solve = False
        return ys

    def stats(self) -> dict[str, int] | None:
        """Evaluations of ``func`` in the last solve: ``{"nfe_forward", "nfe_backward"}``
        (backward: calls made after ``solve`` returned); ``None`` if it was not counted."""
        if self._last is None:
            return None
        return {"nfe_forward": self._last.nfe_forward, "nfe_backward": self._last.nfe_backward}


def available() -> dict[str, str | None]:
    """For each peer: ``None`` if it can run here, else why not (``"not installed: ... pip install ..."``)."""
    return {name: peer.available() for name, peer in PEERS.items()}


def solve(name: str, func: Callable, y0, t, **kwargs):
    """``PEERS[name].solve(func, y0, t, **kwargs)``: see :meth:`Peer.solve`."""
    return _peer(name).solve(func, y0, t, **kwargs)


def stats(name: str) -> dict[str, int] | None:
    """The evaluation counts of the last solve of peer ``name``: see :meth:`Peer.stats`."""
    return _peer(name).stats()


def _peer(name: str) -> Peer:
    try:
        return PEERS[name]
    except KeyError:
        raise ValueError(f"unknown peer {name!r}; the peers are {sorted(PEERS)}") from None


# --------------------------------------------------------------------------------------
# shared machinery

class _Counted(torch.nn.Module):
    """``func`` with a call counter and the time cast to the state's dtype. As a module it
    owns ``func`` (when that is a module), so the peers that collect ``parameters()`` find
    its parameters."""

    def __init__(self, func, dtype, device, count: bool):
        super().__init__()
        self.func = func
        self.dtype, self.device, self.count = dtype, device, count
        self.nfe_forward = 0
        self.nfe_backward = 0
        self.in_solve = True

    def forward(self, t, y):
        if self.count:
            if self.in_solve:
                self.nfe_forward += 1
            else:
                self.nfe_backward += 1
        if not isinstance(t, torch.Tensor) or t.dtype != self.dtype or t.ndim:
            t = torch.as_tensor(t, dtype=self.dtype, device=self.device).reshape(())
        if not torch.is_grad_enabled():
            # a no-grad solve (an adjoint's forward pass) may hand over views of a tensor that
            # requires grad, untracked; a field that differentiates itself (a CNF's trace
            # estimate) needs fresh leaves there. Nothing is lost: no graph is being built.
            y = y.detach() if isinstance(y, torch.Tensor) else tuple(c.detach() for c in y)
        return self.func(t, y)


class _Plan:
    """symode's fixed-step grid for the output times: the step endpoints and the index of
    each output time among them."""

    def __init__(self, steps: FixedSteps, t_out: list[float]):
        self.h = steps.step_size
        self.points, self.out_index, _ = steps.plan(t_out)
        # uniform: every output interval is a whole number of steps of exactly h
        self.uniform = all(abs(abs(b - a) / self.h - round(abs(b - a) / self.h)) <= 1e-9
                           for a, b in zip(t_out, t_out[1:]))

    def grid(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.points, dtype=like.dtype, device=like.device)


@dataclass
class _Job:
    peer: Peer
    func: _Counted
    y0: object
    t: torch.Tensor
    t_out: list[float]
    method: str
    rtol: float
    atol: float
    step_size: float | None
    plan: _Plan | None
    params: tuple
    adjoint_params: object
    raw_func: object

    @property
    def func_or_raw(self):
        """The counter when counting; otherwise ``func`` itself (no wrapper overhead) where
        the peer passes the time in the state's dtype anyway."""
        return self.func if self.func.count else self.raw_func


def _select_rows(ys, index: list[int]):
    """Rows ``index`` of the solution on the whole grid (a tensor or a tuple of them)."""
    if isinstance(ys, torch.Tensor):
        return ys[index]
    return tuple(y[index] for y in ys)


def _stack_outputs(y0, states: list):
    """Stack the states at the output times (``states[0]`` is ``y0``) like torchdiffeq."""
    if isinstance(y0, torch.Tensor):
        return torch.stack(states)
    return tuple(torch.stack([s[i] for s in states]) for i in range(len(y0)))


class _Flat:
    """A tensor or tuple state as one row ``(1, N)``: for torchode, which solves a batch of
    independent problems with one step size each (a row per problem)."""

    def __init__(self, y0):
        self.tuple = not isinstance(y0, torch.Tensor)
        self.components = tuple(y0) if self.tuple else (y0,)
        self.sizes = [c.numel() for c in self.components]

    def flatten(self, y) -> torch.Tensor:
        parts = y if self.tuple else (y,)
        return torch.cat([p.reshape(-1) for p in parts]).unsqueeze(0)

    def unflatten(self, flat: torch.Tensor, lead: tuple[int, ...] = ()):
        parts = torch.split(flat, self.sizes, dim=-1)
        parts = tuple(p.reshape(*lead, *c.shape) for p, c in zip(parts, self.components))
        return parts if self.tuple else parts[0]


# --------------------------------------------------------------------------------------
# torchdiffeq

def _run_torchdiffeq(job: _Job):
    import torchdiffeq

    options = {}
    if job.plan is not None:
        steps = FixedSteps(step_size=job.step_size)

        def grid_constructor(func, y0, t):  # torchdiffeq calls it per solve, also in the adjoint's backward
            return torch.tensor(steps.plan(t.detach().cpu().double().tolist())[0], dtype=t.dtype, device=t.device)
        options["grid_constructor"] = grid_constructor
    if job.peer.gradient == "backprop":
        return torchdiffeq.odeint(job.func_or_raw, job.y0, job.t, rtol=job.rtol, atol=job.atol,
                                  method=job.method, options=options)
    return torchdiffeq.odeint_adjoint(job.func, job.y0, job.t, rtol=job.rtol, atol=job.atol, method=job.method,
                                      options=options, adjoint_params=job.params)


_TORCHDIFFEQ_METHODS = {"euler": "euler", "midpoint": "midpoint", "heun": "heun2", "rk38": "rk4",
                        "adaptive_heun": "adaptive_heun", "fehlberg2": "fehlberg2", "bosh3": "bosh3",
                        "dopri5": "dopri5", "dopri8": "dopri8"}
_TORCHDIFFEQ_ADAPTIVE = frozenset({"adaptive_heun", "fehlberg2", "bosh3", "dopri5", "dopri8"})
_TORCHDIFFEQ_UNSUPPORTED = {
    "rk4": "torchdiffeq's 'rk4' is Kutta's 3/8 rule, not the classical rk4: use method='rk38' to compare it",
}


# --------------------------------------------------------------------------------------
# TorchDiffEqPack

def _tdep_options(job: _Job, t0: float, t1: float, **extra) -> dict:
    options = {"method": job.method, "t0": t0, "t1": t1, "rtol": job.rtol, "atol": job.atol,
               "h": job.plan.h if job.plan is not None else None, "print_neval": False, "neval_max": 500000}
    options.update(extra)
    return options


def _check_tdep_params(job: _Job) -> None:
    if job.adjoint_params is not None:
        raise PeerUnsupported(f"{job.peer.name}: TorchDiffEqPack differentiates the parameters of func "
                              f"(an nn.Module) only; adjoint_params is not supported")


def _run_tdep_odesolve(job: _Job):
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


def _run_tdep_aca(job: _Job):
    from TorchDiffEqPack import odesolve_adjoint

    _check_tdep_params(job)
    # odesolve_adjoint returns the state at t1 only: one call per output interval
    states, y = [job.y0], job.y0
    for a, b in zip(job.t_out, job.t_out[1:]):
        y = odesolve_adjoint(job.func, y, options=_tdep_options(job, a, b))
        states.append(y)
    return _stack_outputs(job.y0, states)


_TDEP_METHODS = {"euler": "euler", "midpoint": "rk2", "rk4": "rk4", "adaptive_heun": "rk12",
                 "bosh3": "rk23", "dopri5": "dopri5"}
_TDEP_ADAPTIVE = frozenset({"rk12", "rk23", "dopri5"})
_TDEP_UNSUPPORTED = {
    "rk38": "TorchDiffEqPack's 'rk4' is the classical rk4, it has no 3/8 rule: use method='rk4'",
}
_TDEP_ACA_METHODS = {k: v for k, v in _TDEP_METHODS.items() if v in _TDEP_ADAPTIVE}
_TDEP_ACA_UNSUPPORTED = dict(_TDEP_UNSUPPORTED, **{
    k: f"TorchDiffEqPack's odesolve_adjoint fails in its backward pass with the fixed-step {v!r} "
       f"(its error estimate is None)" for k, v in _TDEP_METHODS.items() if v not in _TDEP_ADAPTIVE})


# --------------------------------------------------------------------------------------
# torchode

def _run_torchode(job: _Job):
    import torchode

    if job.peer.gradient != "backprop" and job.adjoint_params is not None:
        raise PeerUnsupported(f"{job.peer.name}: torchode's BacksolveAdjoint differentiates the parameters "
                              f"of func (an nn.Module) only; adjoint_params is not supported")
    flat = _Flat(job.y0)
    # the state as one row: one step-size sequence for the whole state, as in symode
    term = torchode.ODETerm(_FlatModule(flat, job.func), with_stats=False)
    step_method = {"euler": torchode.Euler, "heun": torchode.Heun, "dopri5": torchode.Dopri5,
                   "tsit5": torchode.Tsit5}[job.method](term=term)
    # times in the state's dtype: its BacksolveAdjoint fails with float64 times and a float32 state
    t = torch.tensor(job.t_out, dtype=flat.components[0].dtype, device=flat.components[0].device)
    dt0 = None
    if job.plan is not None:
        controller = torchode.FixedStepController()
        direction = 1.0 if job.t_out[-1] > job.t_out[0] else -1.0
        dt0 = torch.full((1,), direction * job.plan.h, dtype=t.dtype, device=t.device)
    else:
        controller = torchode.IntegralController(atol=job.atol, rtol=job.rtol, term=term)
    if job.peer.gradient == "backprop":
        solver = torchode.AutoDiffAdjoint(step_method, controller)
    else:
        solver = torchode.BacksolveAdjoint(term, step_method, controller)
    problem = torchode.InitialValueProblem(y0=flat.flatten(job.y0), t_start=t[:1], t_end=t[-1:], t_eval=t[None])
    sol = solver.solve(problem, dt0=dt0)
    if not bool((sol.status == 0).all()):
        raise RuntimeError(f"{job.peer.name}: torchode's solve failed with status {sol.status.tolist()}")
    return flat.unflatten(sol.ys[0], lead=(len(job.t_out),))


class _FlatModule(torch.nn.Module):
    """The counted field on a ``(1, N)`` row (a module, so that torchode's BacksolveAdjoint
    finds the parameters of ``func`` in ``term.parameters()``)."""

    def __init__(self, flat: _Flat, func: _Counted):
        super().__init__()
        self.func = func
        self.flat = flat

    def forward(self, t, y):
        # (1, N) rows with times (1,); BacksolveAdjoint vmaps over the rows: then (N,) and ()
        return self.flat.flatten(self.func(t.reshape(-1)[0], self.flat.unflatten(y.reshape(-1)))).reshape(y.shape)


_TORCHODE_METHODS = {"euler": "euler", "heun": "heun", "adaptive_heun": "heun", "dopri5": "dopri5",
                     "tsit5": "tsit5"}
_TORCHODE_ADAPTIVE = frozenset()  # torchode runs every method with fixed or adaptive steps


# --------------------------------------------------------------------------------------
# the authors' torch_symplectic_adjoint

def _run_authors(job: _Job):
    import torch_symplectic_adjoint as tsa

    fn = {"backprop": tsa.odeint, "adjoint": tsa.odeint_adjoint, "checkpoint": tsa.odeint_checkpoint,
          "one_checkpoint": tsa.odeint_onecheckpoint, "symplectic_adjoint": tsa.odeint_symplectic_adjoint}[
        job.peer.gradient]
    kwargs = {} if job.peer.gradient == "backprop" else {"adjoint_params": job.params}
    if job.plan is None:
        return fn(job.func_or_raw, job.y0, job.t, rtol=job.rtol, atol=job.atol, method=job.method, **kwargs)
    # its fixed-step methods take one step per output interval: solve on symode's grid and
    # return the rows at the output times
    grid = job.plan.grid(job.t if job.t.is_floating_point() else torch.empty(0, dtype=torch.float64))
    ys = fn(job.func_or_raw, job.y0, grid, rtol=job.rtol, atol=job.atol, method=job.method, **kwargs)
    return _select_rows(ys, job.plan.out_index)


_AUTHORS_METHODS = {"euler": "euler", "midpoint": "midpoint", "rk4": "rk4", "rk38": "rk38",
                    "adaptive_heun": "adaptive_heun", "bosh3": "bosh3", "dopri5": "dopri5", "dopri8": "dopri8"}
_AUTHORS_ADAPTIVE = frozenset({"adaptive_heun", "bosh3", "dopri5", "dopri8"})
_AUTHORS_UNSUPPORTED = {
    "fehlberg2": "the authors' 'fehlberg2' estimates its error with the low-order weights, so its steps "
                 "shrink with the tolerance and the solve stalls",
}
_AUTHORS_INSTALL = ("pip install 'git+https://github.com/tksmatsubara/symplectic-adjoint-method@beta' "
                    "(not on PyPI; branch beta runs on recent torch)")


# --------------------------------------------------------------------------------------
def _registry() -> dict[str, Peer]:
    peers = []

    def add(**kwargs):
        peers.append(Peer(**kwargs))

    for way, gradient, exact in (("odeint", "backprop", True), ("odeint_adjoint", "adjoint", False)):
        add(name=f"torchdiffeq:{way}", module="torchdiffeq", install="pip install torchdiffeq==0.2.5",
            gradient=gradient, exact=exact, methods=_TORCHDIFFEQ_METHODS, runner=_run_torchdiffeq,
            unsupported=_TORCHDIFFEQ_UNSUPPORTED, adaptive=_TORCHDIFFEQ_ADAPTIVE)
    for way, gradient, runner, methods, unsupported in (
            ("odesolve", "backprop", _run_tdep_odesolve, _TDEP_METHODS, _TDEP_UNSUPPORTED),
            ("aca", "checkpoint", _run_tdep_aca, _TDEP_ACA_METHODS, _TDEP_ACA_UNSUPPORTED)):
        add(name=f"torchdiffeqpack:{way}", module="TorchDiffEqPack",
            install="pip install TorchDiffEqPack==1.0.1 matplotlib", gradient=gradient, exact=True,
            methods=methods, runner=runner, unsupported=unsupported, adaptive=_TDEP_ADAPTIVE,
            fixed_only_h=True, needs=("matplotlib",))
    for way, gradient, exact in (("backprop", "backprop", True), ("backsolve", "adjoint", False)):
        add(name=f"torchode:{way}", module="torchode", install="pip install torchode==1.0.1",
            gradient=gradient, exact=exact, methods=_TORCHODE_METHODS, runner=_run_torchode,
            adaptive=_TORCHODE_ADAPTIVE, fixed_only_h=True)
    for way, gradient, exact in (("odeint", "backprop", True), ("odeint_adjoint", "adjoint", False),
                                 ("checkpoint", "checkpoint", True), ("onecheckpoint", "one_checkpoint", True),
                                 ("symplectic_adjoint", "symplectic_adjoint", True)):
        methods, unsupported = dict(_AUTHORS_METHODS), dict(_AUTHORS_UNSUPPORTED)
        if gradient == "symplectic_adjoint":
            del methods["euler"]
            unsupported["euler"] = ("the authors' symplectic adjoint crashes with 'euler' (its empty stage "
                                    "loop leaves a variable unbound)")
        add(name=f"authors:{way}", module="torch_symplectic_adjoint", install=_AUTHORS_INSTALL,
            gradient=gradient, exact=exact, methods=methods, runner=_run_authors, unsupported=unsupported,
            adaptive=_AUTHORS_ADAPTIVE)
    return {p.name: p for p in peers}


#: every peer, by name
PEERS: dict[str, Peer] = _registry()

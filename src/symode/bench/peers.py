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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import FixedSteps, Stats, get_tableau
from . import _peer_libraries as libs
from ._peer_libraries import Job, PeerUnsupported, Plan

__all__ = ["PEERS", "Peer", "PeerUnsupported", "CountingField", "available", "solve", "stats"]


class CountingField(torch.nn.Module):
    """``func(t, y)`` as the peers (and the bench) call it: the time cast to a 0-dim tensor
    of the state's dtype, fresh leaves in no-grad solves, and each call counted in ``stats``
    (when given): forward while ``in_solve``, backward after (``nfe_backward``, and
    ``nfe_backward_vjp`` for the calls made with grad enabled). As a module it owns ``func``
    (when that is a module), so the peers that collect ``parameters()`` find its parameters.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        dtype: torch.dtype,
        device: torch.device | str | None = None,
        stats: Stats | None = None,
    ):
        super().__init__()
        self.func = func
        self.dtype, self.device, self.stats = dtype, device, stats
        self.in_solve = True

    def forward(self, t: Any, y: Any) -> Any:
        if self.stats is not None:
            if self.in_solve:
                self.stats.nfe_forward += 1
            else:
                self.stats.nfe_backward += 1
                self.stats.nfe_backward_vjp += 1 if torch.is_grad_enabled() else 0
        if not isinstance(t, torch.Tensor) or t.dtype != self.dtype or t.ndim:
            device = self.device if self.device is not None else (y if isinstance(y, torch.Tensor) else y[0]).device
            t = torch.as_tensor(t).to(dtype=self.dtype, device=device).reshape(())
        if not torch.is_grad_enabled():
            # a no-grad solve (an adjoint's forward pass) may hand over views of a tensor that
            # requires grad, untracked; a field that differentiates itself (a CNF's trace
            # estimate) needs fresh leaves there. Nothing is lost: no graph is being built.
            y = y.detach() if isinstance(y, torch.Tensor) else tuple(c.detach() for c in y)
        return self.func(t, y)


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
    runner: Callable[[Job], Any] = field(repr=False)
    unsupported: Mapping[str, str] = field(default_factory=dict)
    adaptive: frozenset[str] = frozenset()
    fixed_only_h: bool = False
    needs: tuple[str, ...] = ()
    _last: Stats | None = field(default=None, init=False, repr=False, compare=False)

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

    def solve(
        self,
        func: Callable[..., Any],
        y0: Any,
        t: Any,
        *,
        method: str,
        rtol: float = 1e-7,
        atol: float = 1e-9,
        step_size: float | None = None,
        adjoint_params: Sequence[torch.Tensor] | None = None,
        count: bool = True,
    ) -> Any:
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
            count: count evaluations of ``func`` for :meth:`stats` (``False``: the caller
                counts, e.g. with a ``CountingField`` of its own).

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
        plan: Plan | None = None
        if step_size is not None:
            if peer_method in self.adaptive:
                raise PeerUnsupported(
                    f"{self.name}: {peer_method!r} chooses its own steps in {self.module}; "
                    f"fixed steps (step_size) need a fixed method such as 'rk38' or 'rk4'"
                )
            steps = FixedSteps(step_size=step_size)
            plan = Plan(steps, t_out)
            if self.fixed_only_h and not plan.uniform:
                raise PeerUnsupported(
                    f"{self.name}: {self.module} steps by exactly step_size={step_size!r}, which must divide "
                    f"every interval between output times {t_out} to give symode's grid"
                )
        elif not tableau.adaptive:
            raise ValueError(f"method {name!r} takes fixed steps: give step_size")
        reason = self.available()
        if reason is not None:
            raise RuntimeError(f"peer {self.name!r} is unavailable: {reason}")
        if isinstance(func, torch.nn.Module):
            params = tuple(func.parameters()) if adjoint_params is None else tuple(adjoint_params)
        else:
            params = () if adjoint_params is None else tuple(adjoint_params)
        stats = Stats() if count else None
        counted = CountingField(func, y0_tensors[0].dtype, y0_tensors[0].device, stats=stats)
        self._last = stats
        try:
            ys = self.runner(
                Job(
                    name=self.name,
                    gradient=self.gradient,
                    module=self.module,
                    func=counted,
                    y0=y0,
                    t=t,
                    t_out=t_out,
                    method=peer_method,
                    rtol=float(rtol),
                    atol=float(atol),
                    step_size=step_size,
                    plan=plan,
                    params=params,
                    adjoint_params=adjoint_params,
                )
            )
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


def solve(name: str, func: Callable[..., Any], y0: Any, t: Any, **kwargs: Any) -> Any:
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
def _registry() -> dict[str, Peer]:
    peers = []

    def add(**kwargs: Any) -> None:
        peers.append(Peer(**kwargs))

    for way, gradient, exact in (("odeint", "backprop", True), ("odeint_adjoint", "adjoint", False)):
        add(
            name=f"torchdiffeq:{way}",
            module="torchdiffeq",
            install="pip install torchdiffeq==0.2.5",
            gradient=gradient,
            exact=exact,
            methods=libs.TORCHDIFFEQ_METHODS,
            runner=libs.run_torchdiffeq,
            unsupported=libs.TORCHDIFFEQ_UNSUPPORTED,
            adaptive=libs.TORCHDIFFEQ_ADAPTIVE,
        )
    for way, gradient, runner, methods, unsupported in (
        ("odesolve", "backprop", libs.run_tdep_odesolve, libs.TDEP_METHODS, libs.TDEP_UNSUPPORTED),
        ("aca", "checkpoint", libs.run_tdep_aca, libs.TDEP_ACA_METHODS, libs.TDEP_ACA_UNSUPPORTED),
    ):
        add(
            name=f"torchdiffeqpack:{way}",
            module="TorchDiffEqPack",
            install="pip install TorchDiffEqPack==1.0.1 matplotlib",
            gradient=gradient,
            exact=True,
            methods=methods,
            runner=runner,
            unsupported=unsupported,
            adaptive=libs.TDEP_ADAPTIVE,
            fixed_only_h=True,
            needs=("matplotlib",),
        )
    for way, gradient, exact in (("backprop", "backprop", True), ("backsolve", "adjoint", False)):
        add(
            name=f"torchode:{way}",
            module="torchode",
            install="pip install torchode==1.0.1",
            gradient=gradient,
            exact=exact,
            methods=libs.TORCHODE_METHODS,
            runner=libs.run_torchode,
            adaptive=libs.TORCHODE_ADAPTIVE,
            fixed_only_h=True,
        )
    for way, gradient, exact in (
        ("odeint", "backprop", True),
        ("odeint_adjoint", "adjoint", False),
        ("checkpoint", "checkpoint", True),
        ("onecheckpoint", "one_checkpoint", True),
        ("symplectic_adjoint", "symplectic_adjoint", True),
    ):
        methods, unsupported = dict(libs.AUTHORS_METHODS), dict(libs.AUTHORS_UNSUPPORTED)
        if gradient == "symplectic_adjoint":
            del methods["euler"]
            unsupported["euler"] = (
                "the authors' symplectic adjoint crashes with 'euler' (its empty stage loop leaves a variable unbound)"
            )
        add(
            name=f"authors:{way}",
            module="torch_symplectic_adjoint",
            install=libs.AUTHORS_INSTALL,
            gradient=gradient,
            exact=exact,
            methods=methods,
            runner=libs.run_authors,
            unsupported=unsupported,
            adaptive=libs.AUTHORS_ADAPTIVE,
        )
    return {p.name: p for p in peers}


#: every peer, by name
PEERS: dict[str, Peer] = _registry()

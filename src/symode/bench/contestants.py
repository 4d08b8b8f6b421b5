"""What the bench differentiates a problem with: symode's gradient methods and the peers,
behind one declared protocol (:class:`Contestant`).

A contestant solves one block of a benchmark problem (``solve_ode``) and is named by a
``label`` (``"symplectic_adjoint:store_stages"``, ``"torchdiffeq:odeint"``): the row of the
bench's table. :func:`as_contestant` turns a gradient method (an object, a class or a name)
into one; :class:`PeerGradient` runs a peer library through :mod:`symode.bench.peers`.
``--gradients`` names methods with options in a small language: :func:`parse_gradient` reads
it and :func:`gradient_label` writes it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from .. import AdaptiveSteps, FixedSteps, GradientMethod, Stats, SymplecticAdjoint, solve
from ..gradients import GRADIENT_METHODS, Backprop, get_gradient_method
from .peers import CountingField

__all__ = [
    "Contestant",
    "SymodeGradient",
    "PeerGradient",
    "as_contestant",
    "default_gradients",
    "parse_gradient",
    "gradient_label",
    "gradient_list",
    "REFERENCE",
]

#: the reference of every ratio and gradient error: backprop through symode's solver
REFERENCE = "backprop"
#: bare words accepted as options of a gradient method: word -> (keyword, value)
_OPTION_WORDS = {"seminorm": ("norm", "seminorm")}


@runtime_checkable
class Contestant(Protocol):
    """One way of differentiating a solve, as the bench runs it.

    Attributes:
        label: its row in the reports.
        peer: whether it is another library's (its step counts are not known).
    """

    label: str
    peer: bool

    def solve_ode(
        self, func: Any, y0: Any, t: torch.Tensor, method: str, steps: FixedSteps | AdaptiveSteps
    ) -> tuple[Any, Stats, torch.Tensor | None]:
        """Solve ``dy/dt = func(t, y)`` from ``y0`` at the times ``t`` with the Runge-Kutta
        ``method`` and the step rule ``steps``; return ``(ys, stats, grid)``: the states at
        ``t`` (differentiable), the counts (backward counts fill in when ``backward()``
        runs) and the accepted step endpoints (``None`` when unknown)."""


class SymodeGradient:
    """A symode gradient method as a contestant: :func:`symode.solve` with it."""

    peer = False

    def __init__(self, gradient: GradientMethod):
        self.gradient = gradient
        self.label = gradient_label(gradient)

    def __repr__(self) -> str:
        return f"SymodeGradient({self.gradient!r})"

    def solve_ode(
        self, func: Any, y0: Any, t: torch.Tensor, method: str, steps: FixedSteps | AdaptiveSteps
    ) -> tuple[Any, Stats, torch.Tensor | None]:
        sol = solve(func, y0, t, method=method, steps=steps, gradient=self.gradient)
        return sol.ys, sol.stats, sol.grid


class PeerGradient:
    """A peer library's way of differentiating a solve (:mod:`symode.bench.peers`). The counts
    are evaluations of ``f`` (no step counts), made by the bench's own
    :class:`~symode.bench.peers.CountingField`; the peer chooses its own steps (adaptive) and
    may interpolate, so its gradient differs from symode's by about the tolerance."""

    peer = True

    def __init__(self, name: str, peers: Any):
        self.label = name
        self.peers = peers  # the peers module (a stand-in in tests)
        peer = getattr(peers, "PEERS", {}).get(name)
        self.exact = getattr(peer, "exact", False)

    def __repr__(self) -> str:
        return f"PeerGradient({self.label!r})"

    def solve_ode(
        self, func: Any, y0: Any, t: torch.Tensor, method: str, steps: FixedSteps | AdaptiveSteps
    ) -> tuple[Any, Stats, torch.Tensor | None]:
        dtype = (y0 if isinstance(y0, torch.Tensor) else y0[0]).dtype
        kwargs: dict[str, Any] = {}
        if isinstance(steps, FixedSteps):
            if steps.step_size is None:
                raise ValueError(f"{self.label}: the peers take a step size, not a grid of steps")
            kwargs["step_size"] = steps.step_size
        else:
            if isinstance(steps.rtol, (torch.Tensor, tuple, list)) or isinstance(
                steps.atol, (torch.Tensor, tuple, list)
            ):
                raise ValueError(f"{self.label}: the peers take scalar tolerances")
            kwargs.update(rtol=steps.rtol, atol=steps.atol)
        stats = Stats()
        counted = CountingField(func, dtype, stats=stats)
        try:
            ys = self.peers.solve(self.label, counted, y0, t.to(dtype), method=method, count=False, **kwargs)
        finally:
            counted.in_solve = False  # later calls are the backward pass's
        return ys, stats, None


def as_contestant(gradient: Any) -> Contestant:
    """A contestant from a contestant, a ``GradientMethod`` (object or class) or a name."""
    if isinstance(gradient, Contestant):
        return gradient
    return SymodeGradient(get_gradient_method(gradient))


# --------------------------------------------------------------------------------------
# gradient methods by name, with options
def default_gradients() -> list[GradientMethod]:
    """Every class's default configuration, with ``SymplecticAdjoint(store_stages=True)``
    after ``SymplecticAdjoint()``; backprop (the reference) first."""
    methods: list[GradientMethod] = []
    for cls in GRADIENT_METHODS.values():
        methods.append(cls())
        if cls is SymplecticAdjoint:
            methods.append(SymplecticAdjoint(store_stages=True))
    return methods


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_gradient(text: str) -> GradientMethod:
    """A gradient method from ``name[:option[=value]]...``, e.g. ``symplectic_adjoint``,
    ``symplectic_adjoint:store_stages``, ``symplectic_adjoint:max_checkpoints=4``,
    ``adjoint:norm=seminorm`` (or ``adjoint:seminorm``), ``adjoint:rtol=1e-7:atol=1e-7``."""
    name, *options = [part.strip() for part in text.split(":")]
    method = get_gradient_method(name)  # raises ValueError for an unknown name
    if not options:
        return method
    cls = type(method)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    kwargs = {}
    for opt in options:
        key, eq, value = opt.partition("=")
        key = key.strip().replace("-", "_")
        parsed: Any
        if not eq and key not in accepted and key in _OPTION_WORDS:
            key, parsed = _OPTION_WORDS[key]
        elif not eq:
            parsed = True
        else:
            parsed = _parse_value(value.strip())
        if key not in accepted:
            raise ValueError(
                f"{cls.name} has no option {key!r} (in {text!r}); its options: {', '.join(accepted) or 'none'}"
            )
        kwargs[key] = parsed
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def gradient_label(method: GradientMethod | Contestant) -> str:
    """The shortest ``name[:option[=value]]...`` that :func:`parse_gradient` maps back to
    ``method``: the options that differ from the class's defaults (a contestant: its label)."""
    if not isinstance(method, GradientMethod):
        return method.label
    default = vars(type(method)())
    parts = [method.name]
    for key, value in vars(method).items():
        if key in default and _same(default[key], value):
            continue
        parts.append(key if value is True else f"{key}={value}")
    return ":".join(parts)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return bool(a == b)


def gradient_list(text: str | None) -> list[GradientMethod]:
    """The methods of ``--gradients`` (default: :func:`default_gradients`; ``all``: every
    configuration of every class), without repeats, backprop first."""
    methods: Sequence[GradientMethod]
    if text is None:
        methods = default_gradients()
    elif text.strip().lower() == "all":
        methods = [m for cls in GRADIENT_METHODS.values() for m in cls.configurations()]
    else:
        methods = [parse_gradient(part) for part in text.split(",") if part.strip()]
    unique: dict[str, GradientMethod] = {}
    for m in methods:
        unique.setdefault(gradient_label(m), m)
    unique.pop(REFERENCE, None)
    return [Backprop(), *unique.values()]

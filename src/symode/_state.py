"""The state's structure: one tensor, or a tuple of tensors flattened into one vector.

``symode.solve`` flattens a tuple state once, into one vector, so that every other part of
symode (the time loop, the gradient methods) sees one tensor; this module does that and the
checks of ``y0`` and of what ``func`` returns. ``StateLayout`` is public so that code around
symode (the bench's peer adapters, a user's own tools) flattens states the same way.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from ._step_size import Norm, mixed_rms_norm, rms_norm

__all__ = ["StateLayout", "State", "FLOAT_DTYPES"]

#: A state: one tensor, or a tuple of tensors (a tuple ``y0`` gives tuple outputs).
State = torch.Tensor | tuple[torch.Tensor, ...]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class StateLayout:
    """The structure of a state: one tensor, or a tuple of tensors flattened into one vector.

    ``StateLayout.of(y0)`` checks ``y0`` (floating, finite, non-empty; tuple components of one
    dtype and device). ``flat_y0`` is the state as one tensor (``y0`` itself for a tensor, the
    concatenation of the flattened components for a tuple); :meth:`flatten` and
    :meth:`unflatten` convert between the two forms; ``norm`` is the error norm of adaptive
    steps on the flat state (RMS; for tuple states the largest RMS over the components, as
    torchdiffeq does, so that a small component is not drowned).
    """

    def __init__(self, y0: State, components: tuple[torch.Tensor, ...] | None):
        self.y0 = y0
        self.components = components
        self.flat_y0: torch.Tensor
        self.sizes: list[int] | None
        self.norm: Norm
        if components is None:
            self.flat_y0, self.sizes, self.norm = cast(torch.Tensor, y0), None, rms_norm
        else:  # flattened once; the error norm is the max of the components' RMS norms
            self.flat_y0 = torch.cat([c.reshape(-1) for c in components])
            self.sizes = [c.numel() for c in components]
            self.norm = mixed_rms_norm(self.sizes)

    @classmethod
    def of(cls, y0: Any) -> StateLayout:
        """The layout of ``y0`` (a tensor or a non-empty tuple of tensors), checked."""
        if isinstance(y0, torch.Tensor):
            _check_tensor(y0, "y0")
            return cls(y0, None)
        if isinstance(y0, (tuple, list)) and len(y0) > 0:
            for i, c in enumerate(y0):
                if not isinstance(c, torch.Tensor):
                    raise TypeError(f"y0[{i}] must be a tensor, got {type(c).__name__}")
                _check_tensor(c, f"y0[{i}]")
            dtypes = {c.dtype for c in y0}
            devices = {c.device for c in y0}
            if len(dtypes) > 1 or len(devices) > 1:
                raise TypeError(
                    f"the components of y0 must share one dtype and device, got "
                    f"{[(c.dtype, str(c.device)) for c in y0]}; convert them first"
                )
            return cls(tuple(y0), tuple(y0))
        raise TypeError(f"y0 must be a tensor or a non-empty tuple of tensors, got {type(y0).__name__}")

    @property
    def is_tuple(self) -> bool:
        return self.components is not None

    def flatten(self, y: State) -> torch.Tensor:
        """A state of this layout as one tensor (a tuple: its components flattened and
        concatenated; a tensor: itself)."""
        if self.components is None:
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"this layout's state is one tensor, got {type(y).__name__}")
            return y
        if not isinstance(y, (tuple, list)) or len(y) != len(self.components):
            got = f"a {type(y).__name__}" + (f" of length {len(y)}" if isinstance(y, (tuple, list)) else "")
            raise TypeError(f"this layout's state is a tuple of {len(self.components)} tensors, got {got}")
        return torch.cat([c.reshape(-1) for c in y])

    def unflatten(self, flat: torch.Tensor, lead: tuple[int, ...] = ()) -> State:
        """The inverse of :meth:`flatten`; ``lead``: leading dimensions of ``flat`` kept in
        front of each component's shape (``(len(t),)`` for stacked outputs)."""
        if self.components is None:
            return flat.reshape((*lead, *self.flat_y0.shape))
        return self.split(flat, lead)

    def split(self, flat: torch.Tensor, lead: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
        components, sizes = self.components or (), self.sizes or []
        parts = torch.split(flat, sizes, dim=-1)
        return tuple(p.reshape((*lead, *c.shape)) for p, c in zip(parts, components))

    def tolerance(self, tol: Any, name: str) -> float | torch.Tensor:
        """A tolerance as a float or a tensor shaped like the flat state."""
        like = self.flat_y0
        if self.components is not None and isinstance(tol, (tuple, list)):
            if len(tol) != len(self.components):
                raise ValueError(f"{name} has {len(tol)} entries but y0 has {len(self.components)} components")
            parts = []
            for i, (part, c) in enumerate(zip(tol, self.components)):
                part = torch.as_tensor(part, dtype=like.dtype, device=like.device)
                try:
                    parts.append(part.expand(c.shape).reshape(-1))
                except RuntimeError:
                    raise ValueError(
                        f"{name}[{i}] of shape {tuple(part.shape)} does not broadcast to the shape "
                        f"{tuple(c.shape)} of y0[{i}]"
                    ) from None
            return torch.cat(parts)
        if isinstance(tol, (tuple, list)):
            raise TypeError(
                f"{name} is a {type(tol).__name__} of {len(tol)} entries, but y0 is a single tensor: "
                f"give a number, or a tensor that broadcasts to y0's shape {tuple(like.shape)}"
            )
        if isinstance(tol, torch.Tensor):
            target = like  # y0 itself for a single-tensor state (flat_y0 is y0), else the flat state
            try:
                return tol.to(dtype=like.dtype, device=like.device).expand(target.shape)
            except RuntimeError:
                raise ValueError(
                    f"{name} of shape {tuple(tol.shape)} does not broadcast to the state's shape {tuple(target.shape)}"
                ) from None
        return float(tol)

    def wrap(self, func: Callable[..., Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``func`` on the flat state, checking what it returns and that it leaves its argument
        alone (see :class:`_Mutations`)."""
        guard = _Mutations()
        if self.components is None:

            def flat_func(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                version = y._version
                out = func(t, y)
                guard.check(y, version, (out,))
                if (
                    not isinstance(out, torch.Tensor)
                    or out.shape != y.shape
                    or out.dtype != y.dtype
                    or out.device != y.device
                ):
                    _bad_output(out, y)
                return out

            return flat_func

        def tuple_func(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            parts = self.split(y)
            version = y._version  # the parts are views of y: they share its version counter
            out = func(t, parts)
            guard.check(y, version, out if isinstance(out, (tuple, list)) else (out,))
            if not isinstance(out, (tuple, list)) or len(out) != len(parts):
                raise TypeError(
                    f"func must return a tuple of {len(parts)} tensors like y0, got "
                    f"{type(out).__name__}{'' if not isinstance(out, (tuple, list)) else f' of length {len(out)}'}"
                )
            for o, p in zip(out, parts):
                if not isinstance(o, torch.Tensor) or o.shape != p.shape or o.dtype != p.dtype or o.device != p.device:
                    _bad_output(o, p)
            return torch.cat([o.reshape(-1) for o in out])

        return tuple_func


class _Mutations:
    """What ``func`` must not do, found with torch's version counters (no copies, no extra
    memory): write into its argument ``y`` (the solver's state: under backprop the user's
    ``y0`` itself), or return a tensor it returned before after overwriting it (a reused output
    buffer: the earlier stage derivative, still in use, would change under the solver). A
    cached tensor returned unchanged, such as a constant field, is fine."""

    def __init__(self) -> None:
        self.last: list[tuple[weakref.ref[torch.Tensor], int]] = []

    def check(self, y: torch.Tensor, version: int, outputs: Sequence[Any]) -> None:
        if y._version != version:
            raise ValueError(
                "func modified its argument y in place (e.g. y.mul_(-1) or y[...] = ...); y is the solver's "
                "state, which later stages and the backward pass still use. Compute dy/dt into a new tensor "
                "(e.g. -y instead of y.mul_(-1))"
            )
        for ref, seen in self.last:
            earlier = ref()
            if earlier is not None and earlier._version != seen and any(o is earlier for o in outputs):
                raise ValueError(
                    "func returned the same tensor as in an earlier call after overwriting it (a reused output "
                    "buffer, e.g. torch.mul(y, -1, out=buffer)); the earlier result is still in use by the "
                    "solver. Return a new tensor from each call"
                )
        self.last = [(weakref.ref(o), o._version) for o in outputs if isinstance(o, torch.Tensor)]


def _check_tensor(y: torch.Tensor, name: str) -> None:
    if y.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a real floating dtype (float16, bfloat16, float32 or float64), got {y.dtype}; "
            f"convert it, e.g. {name}.double()"
        )
    if y.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(y.shape)})")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name} has non-finite entries (inf or nan)")


def _bad_output(out: Any, like: torch.Tensor) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"func must return a tensor like y, got {type(out).__name__}")
    if out.dtype != like.dtype:
        raise TypeError(
            f"func returned dtype {out.dtype} for a state of dtype {like.dtype}; "
            f"it must return the state's dtype (see the dtype policy in symode.solve)"
        )
    if out.device != like.device:
        raise TypeError(f"func returned a tensor on {out.device} for a state on {like.device}")
    raise ValueError(
        f"func returned shape {tuple(out.shape)} for a state of shape {tuple(like.shape)}; "
        f"dy/dt must have the shape of y"
    )

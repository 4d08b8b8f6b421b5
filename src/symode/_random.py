"""Replaying the random numbers of ``f`` (dropout, ``torch.randn``, ...) in a backward pass.

A gradient method that evaluates ``f`` again in its backward pass (checkpointing, the
symplectic adjoint) gives the exact gradient of a stochastic ``f`` only if each repeated
evaluation draws the random numbers that the forward evaluation it repeats drew, as
``torch.utils.checkpoint`` does with ``preserve_rng_state``. ``RandomTape`` records, during
the forward solve, the states of the random generators (the CPU's and the state's CUDA
device's) that are needed to do that, and hands them out per accepted step in the backward
pass.

What is kept per accepted step ``n``: the generator state just before the evaluation that gave
its first stage (for FSAL methods: the last stage of the step before; for the first step: the
evaluation ``f(t0, y0)``); and, only when other evaluations came in between (the initial step
heuristic, a rejected trial step), the state before its second stage. The stages of a step are
evaluated in order, so the others follow from these. With ``every_stage`` (the symplectic
adjoint's ``store_stages``, which re-evaluates no stage in order) the state before each stage
that influences the solution is kept.

A backward pass replays step ``n`` with ``tape.step(n)``: a ``StepReplay`` whose ``wrap(rhs)``
sets the generators before the evaluations of stage 0 and 1 (the ``i``-th call is stage ``i``:
the stages are evaluated from the first, in order, as in the forward pass) and can capture the
state before every stage for a later differentiated evaluation (``state_before(i)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["RandomTape", "StepReplay", "rng_states", "set_rng_states", "same_states", "restored_after"]

#: the states of the generators ``f`` may draw from: the CPU's, then the CUDA device's
RngState = list[torch.Tensor]


def rng_states(device: torch.device) -> RngState:
    """The states of the random generators that ``f`` may draw from on ``device``: the CPU's,
    and the CUDA device's when the state is on one."""
    states = [torch.random.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def set_rng_states(states: RngState, device: torch.device) -> None:
    """Set the generators to ``states`` (from :func:`rng_states` on the same device)."""
    torch.random.set_rng_state(states[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(states[1], device)


def same_states(a: RngState, b: RngState) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


class RandomTape:
    """The generator states of a forward solve, per accepted step (see the module docstring).

    Args:
        device: the state's device.
        before_f0: the generator states just before the evaluation ``f(t0, y0)`` that the
            time loop is handed as its first stage.
        every_stage: keep the state before every stage, not only the first two.
        num_stages: the number of stages to keep with ``every_stage`` (the stages that
            influence the solution, a prefix of the tableau's).
    """

    def __init__(self, device: torch.device, before_f0: RngState, every_stage: bool = False, num_stages: int = 0):
        self.device = device
        self.every_stage = every_stage
        self.num_stages = num_stages
        #: per accepted step: stage index -> the generator states to set before evaluating it
        self.marks: list[dict[int, RngState]] = []
        self._calls = 1  # call 0 was f(t0, y0)
        self._k1: tuple[int, RngState] | None = (0, before_f0)  # the first stage's evaluation, if known
        self._try: list[tuple[int, RngState]] = []
        self._k1_given = False

    # the forward solve ----------------------------------------------------------------
    def recording(self, rhs: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``rhs``, noting the generator states before each call."""

        def recorded(*args: Any) -> torch.Tensor:
            self._try.append((self._calls, rng_states(self.device)))
            self._calls += 1
            return rhs(*args)

        return recorded

    def try_started(self, k1_given: bool) -> None:
        """The time loop is about to take a (trial) step; ``k1_given``: its first stage is
        known (FSAL, ``f(t0, y0)``, or a rejected trial from the same point)."""
        self._try = []
        self._k1_given = k1_given

    def try_ended(self, accepted: bool, fsal: bool) -> None:
        """The trial step ended; an accepted FSAL step hands its last stage to the next."""
        if self._k1_given:
            if self._k1 is None:
                raise RuntimeError("RandomTape: a first stage was reused whose evaluation was not recorded")
            stages = [self._k1, *self._try]
        else:
            stages = list(self._try)
        self._try = []
        if not accepted:
            self._k1 = stages[0]  # the retry from the same point reuses the first stage
            return
        if self.every_stage:
            self.marks.append({i: state for i, (_, state) in enumerate(stages[: self.num_stages])})
        else:
            marks = {0: stages[0][1]}
            if len(stages) > 1 and stages[1][0] != stages[0][0] + 1:  # other evaluations came between
                marks[1] = stages[1][1]
            self.marks.append(marks)
        self._k1 = stages[-1] if fsal else None

    # the backward pass ----------------------------------------------------------------
    def step(self, n: int, capture: bool = False) -> StepReplay:
        """The replay of accepted step ``n``'s evaluations."""
        return StepReplay(self.marks[n], self.device, capture)


class StepReplay:
    """One step's evaluations, replayed: the ``i``-th call of a wrapped function is stage ``i``."""

    def __init__(self, marks: dict[int, RngState], device: torch.device, capture: bool):
        self.marks = marks
        self.device = device
        self.capture = capture
        self.calls = 0
        self.captured: dict[int, RngState] = {}

    def wrap(self, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def replayed(*args: Any) -> torch.Tensor:
            self.before(self.calls)
            self.calls += 1
            return fn(*args)

        return replayed

    def before(self, i: int) -> None:
        """Set the generators as they were before stage ``i``'s forward evaluation, when that is
        kept; with ``capture``, note the states for :meth:`state_before`."""
        state = self.marks.get(i)
        if state is not None:
            set_rng_states(state, self.device)
        if self.capture:
            self.captured[i] = state if state is not None else rng_states(self.device)

    def state_before(self, i: int) -> RngState:
        """The generator states before stage ``i``: kept on the tape, or captured while the
        stages before it were evaluated in order."""
        state = self.marks.get(i)
        if state is None:
            state = self.captured[i]
        return state

    def set_before(self, i: int) -> None:
        set_rng_states(self.state_before(i), self.device)


def restored_after(device: torch.device, run: Callable[[], Sequence[Any]]) -> Sequence[Any]:
    """``run()``, the generators set back afterwards to where they were before it."""
    saved = rng_states(device)
    try:
        return run()
    finally:
        set_rng_states(saved, device)

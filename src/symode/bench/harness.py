"""The measurements of ``symode bench``: one training iteration, the gradient error, peak
memory and interleaved timing, for a list of contestants on one problem.

:func:`run` measures, for each contestant (:mod:`symode.bench.contestants`):

1. the gradients and counts of one training iteration (which also warms it up), and the
   gradient's error relative to the reference (the first contestant's gradient, or with
   ``reference_dtype`` backprop's gradient in that dtype on the reference's accepted steps);
2. the peak memory of one iteration, in a run of its own (:func:`~symode.bench.memory.peak_memory`;
   the CPU profiler slows every operation, so it is never timed);
3. the time per iteration: the contestants take turns (A B C A B C ...) for ``repeats``
   rounds (:func:`interleave`), each round a new training iteration (new Hutchinson noise).
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import FixedSteps
from ._base import BenchProblem, Steps, SummedStats
from .contestants import Contestant, as_contestant
from .memory import peak_memory

__all__ = ["MethodResult", "iteration", "rel_diffs", "interleave", "run", "busy_cpus", "MiB", "DTYPES"]

MiB = 2**20
#: the dtypes the bench runs in, by name
DTYPES = {"float32": torch.float32, "float64": torch.float64}
_COUNTS = ("nfe_forward", "nfe_backward", "nfe_backward_vjp", "num_accepted", "num_rejected")


@dataclass
class MethodResult:
    """What the bench measures for one contestant (times in seconds).

    ``method``: the contestant's label (a gradient method with its options, or a peer).
    ``peer``: a peer library's (no step counts). ``grad_rel_diff``: max over the compared
    tensors of ``||g - g_ref|| / ||g_ref||``; ``grad_rel_diff_concat``: the same over all
    of them concatenated. ``peak_memory_bytes``: torch allocations of one forward +
    backward above those alive before it; ``memory_ratio``: over the reference's.
    ``time_ratio``: ``median_time_s`` over the reference's; ``time_ratio_paired``: the
    median over rounds of the ratio within a round (the reference's turn is adjacent in time).
    """

    method: str
    peer: bool = False
    grad_rel_diff: float = float("nan")
    grad_rel_diff_concat: float = float("nan")
    loss: float = float("nan")
    nfe_forward: int = 0
    nfe_backward: int = 0
    nfe_backward_vjp: int = 0
    num_accepted: int = 0
    num_rejected: int = 0
    peak_memory_bytes: int = 0
    memory_ratio: float = float("nan")
    times_s: list[float] = field(default_factory=list)
    median_time_s: float = float("nan")
    time_ratio: float = float("nan")
    time_ratio_paired: float = float("nan")

    @property
    def peak_memory_mib(self) -> float:
        return self.peak_memory_bytes / MiB

    def as_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["peak_memory_mib"] = self.peak_memory_mib
        return d


def iteration(
    problem: BenchProblem, contestant: Any, method: str, steps: Steps
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], SummedStats]:
    """One training iteration (forward + backward) of ``problem`` differentiated by
    ``contestant`` (a contestant, a gradient method or its name) with the Runge-Kutta
    ``method``: ``(loss, grads w.r.t. problem.inputs, stats)``."""
    loss, stats = problem.loss(contestant, method, steps)
    grads = torch.autograd.grad(loss, problem.inputs)
    return loss.detach(), grads, stats


def rel_diffs(grads: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> tuple[float, float]:
    """(max over tensors of ||g - r|| / ||r||, the same over the concatenation)."""
    per_tensor, num, den = [], 0.0, 0.0
    for g, r in zip(grads, ref):
        g, r = g.detach().double().cpu(), r.detach().double().cpu()
        d2, r2 = float((g - r).pow(2).sum()), float(r.pow(2).sum())
        num, den = num + d2, den + r2
        per_tensor.append(math.sqrt(d2 / r2) if r2 > 0 else (0.0 if d2 == 0 else math.inf))
    concat = math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)
    return max(per_tensor, default=0.0), concat


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(
    fns: Sequence[Callable[[], Any]],
    repeats: int,
    *,
    device: torch.device | str = "cpu",
    before_round: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    announce: Callable[[int, int], None] | None = None,
) -> list[list[float]]:
    """Time ``fns`` taking turns (A B C A B C ...) for ``repeats`` rounds: ``times[i][k]`` is
    the duration of ``fns[i]()`` in round ``k`` by ``clock`` (synchronised around each call
    on CUDA). ``before_round(k)`` runs before round ``k`` (untimed); ``announce(k, i)``
    before each call."""
    device = torch.device(device)
    times: list[list[float]] = [[] for _ in fns]
    for k in range(repeats):
        if before_round is not None:
            before_round(k)
        for i, fn in enumerate(fns):
            if announce is not None:
                announce(k, i)
            _sync(device)
            start = clock()
            fn()
            _sync(device)
            times[i].append(clock() - start)
    return times


def _gradients(
    problem: BenchProblem,
    contestants: list[Contestant],
    method: str,
    steps: Steps,
    progress: Callable[[str], None],
    skipped: dict[str, str] | None,
    repeats: int,
) -> tuple[list[tuple[Contestant, MethodResult, tuple[torch.Tensor, ...]]], SummedStats | None]:
    """Step 1 of :func:`run`: each contestant's first iteration, its counts and gradients;
    a peer that fails there is skipped (``skipped[label]`` says why) when ``skipped`` is a
    dict. Returns the contestants kept, with their results and gradients, and the first's
    stats."""
    kept = []
    ref_stats = None
    for c in contestants:
        progress(f"gradient: {c.label}")
        try:
            loss, grads, stats = iteration(problem, c, method, steps)
        except Exception as exc:
            if not c.peer or skipped is None:
                raise
            skipped[c.label] = f"{type(exc).__name__}: {exc}"  # a peer that cannot run this problem
            skip = getattr(progress, "skip", None)
            if skip is not None:
                skip(1 + repeats)  # its memory run and timed repeats
            continue
        r = MethodResult(c.label, peer=c.peer, loss=float(loss))
        for key in _COUNTS:
            setattr(r, key, getattr(stats, key))
        kept.append((c, r, grads))
        if ref_stats is None:
            ref_stats = stats
    return kept, ref_stats


def run(
    problem: BenchProblem,
    contestants: Sequence[Any],
    method: str,
    steps: Steps,
    repeats: int,
    device: torch.device | str = "cpu",
    *,
    reference_dtype: torch.dtype | None = None,
    progress: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = None,
    skipped: dict[str, str] | None = None,
) -> list[MethodResult]:
    """Gradients, counts, peak memory and interleaved timings of ``contestants`` on ``problem``
    (see the module docstring), solved with the Runge-Kutta ``method`` and step rule ``steps``.

    ``contestants``: contestants, gradient methods or their names; ``contestants[0]`` is the
    reference of time and memory ratios and, unless ``reference_dtype`` differs from the
    problem's dtype, of the gradient. ``progress(what)`` is called before each iteration,
    ``log(message)`` at each phase. With a dict ``skipped``, a peer that fails in its first
    iteration is left out and ``skipped[label]`` says why; otherwise (and for symode's
    methods always) the error propagates.
    """
    device = torch.device(device)
    progress = progress or (lambda what: None)
    say = log or (lambda message: None)
    say("computing the gradients (and warming up) ...")
    kept, ref_stats = _gradients(
        problem, [as_contestant(c) for c in contestants], method, steps, progress, skipped, repeats
    )
    ref_grads = kept[0][2]
    if reference_dtype is not None and reference_dtype != problem.inputs[0].dtype and ref_stats is not None:
        progress(f"reference gradient in {str(reference_dtype).replace('torch.', '')}")
        if any(g is None for g in ref_stats.grids):
            raise ValueError(f"reference_dtype needs a reference whose grid is known; {kept[0][0].label} gives none")
        ref_steps = [FixedSteps(grid=g) for g in ref_stats.grids]
        ref_grads = iteration(problem.converted(reference_dtype), kept[0][0], method, ref_steps)[1]
    for _, r, grads in kept:
        r.grad_rel_diff, r.grad_rel_diff_concat = rel_diffs(grads, ref_grads)
    del ref_grads
    chosen = [c for c, _, _ in kept]
    results = [r for _, r, _ in kept]
    kept.clear()  # the gradients are not alive during the measurements
    say("measuring the peak memory of one iteration of each method ...")
    for c, r in zip(chosen, results):
        progress(f"memory: {c.label}")
        r.peak_memory_bytes = peak_memory(iteration, problem, c, method, steps, device=device).peak_bytes
    say(f"timing {repeats} iteration(s) of each method, interleaved ...")
    seed = problem.noise_seed

    def before_round(k: int) -> None:
        if seed is not None:
            problem.resample(seed + 1 + k)

    def announce(k: int, i: int) -> None:
        progress(f"time: {chosen[i].label} (repeat {k + 1}/{repeats})")

    try:
        times = interleave(
            [functools.partial(iteration, problem, c, method, steps) for c in chosen],
            repeats,
            device=device,
            before_round=before_round,
            announce=announce,
        )
    finally:
        if seed is not None:
            problem.resample(seed)
    _ratios(results, times)
    return results


def _ratios(results: list[MethodResult], times: list[list[float]]) -> None:
    """Medians and ratios to the reference (``results[0]``) of memory and time."""
    ref = results[0]
    ref_times = times[0]
    for r, ts in zip(results, times):
        r.times_s = ts
        r.memory_ratio = r.peak_memory_bytes / ref.peak_memory_bytes if ref.peak_memory_bytes > 0 else float("nan")
        if ts:
            r.median_time_s = statistics.median(ts)
            ref_median = statistics.median(ref_times)
            r.time_ratio = r.median_time_s / ref_median if ref_median > 0 else float("nan")
            r.time_ratio_paired = statistics.median(a / b for a, b in zip(ts, ref_times))


def busy_cpus(interval: float = 0.3) -> float | None:
    """How many CPUs other processes keep busy now (from /proc/stat over ``interval`` s; Linux), or None."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)

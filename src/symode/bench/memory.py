"""Deterministic peak-memory measurement of a Python callable, on CPU and CUDA.

What it measures
    :func:`peak_memory` runs ``fn(*args, **kwargs)`` once and reports the peak,
    during the call, of the bytes allocated by torch's allocator *above what was
    allocated when the call started*. Tensors alive before the call do not count;
    tensors the call creates count while they are alive inside the call
    (including the ones it returns, and tensors that a custom
    ``autograd.Function`` keeps as ``ctx`` attributes). Memory that is not
    allocated by torch (Python objects, numpy arrays) is not seen.

Why this way
    On CUDA, torch keeps allocator statistics: we reset the peak, record
    ``memory_allocated()`` before the call and subtract it from
    ``max_memory_allocated()`` after it.

    On CPU, torch keeps no memory statistics, tracemalloc does not see tensors,
    and RSS-based measures (ru_maxrss, VmHWM) mostly measure allocator
    fragmentation (see ``shared/design/measuring.md``). We therefore run the call
    under ``torch.profiler`` with ``profile_memory=True``, which records one
    ``"[memory]"`` event per CPU allocator allocation (+nbytes) and free
    (-nbytes), and take the peak of the running sum of those deltas. The result
    is exact (the CPU allocator reports the requested byte count, no rounding)
    and identical from run to run.

    The events are read from the profiler's raw kineto results,
    ``prof.profiler.kineto_results.events()``, which is private API: the public
    ``prof.events()`` list drops most ``"[memory]"`` events and gives a wrong
    peak. This was written against torch 2.13.0 (:data:`TESTED_TORCH_VERSION`);
    if the private access breaks, :func:`peak_memory` raises ``RuntimeError``
    rather than returning a wrong figure. A small, known "canary" allocation is
    made inside the profiling window before ``fn`` runs, to check that memory
    events are really being recorded.

Cost
    The CPU profiler costs about 1 s to start and ~35 us per torch operation, so
    never time a call and measure its memory in the same run: measure memory
    and time in separate runs. The CUDA path costs two synchronisations.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["MemoryResult", "peak_memory", "TESTED_TORCH_VERSION"]

#: The torch version whose private profiler attributes this module was written against.
TESTED_TORCH_VERSION = "2.13.0"

# Size in bytes of the canary allocation: odd, so that it is unlikely to be confused
# with anything else allocated at the same moment.
_CANARY_BYTES = 4093


@dataclass(frozen=True)
class MemoryResult:
    """Result of :func:`peak_memory`.

    Attributes:
        peak_bytes: peak bytes allocated by torch during the call, above the
            amount allocated when the call started (never negative).
        result: what ``fn`` returned.
    """

    peak_bytes: int
    result: object

    @property
    def peak_mib(self) -> float:
        """``peak_bytes`` in MiB (2**20 bytes)."""
        return self.peak_bytes / 2**20


def peak_memory(fn: Callable[..., Any], *args: Any, device: Any = None, **kwargs: Any) -> MemoryResult:
    """Run ``fn(*args, **kwargs)`` once and measure its peak torch memory.

    Args:
        fn: the callable to measure.
        *args, **kwargs: passed to ``fn``.
        device: ``None`` or a CPU device (the default) measures CPU allocations
            with the profiler; a CUDA device (``"cuda"``, ``"cuda:1"``,
            ``torch.device("cuda", 0)``) measures that GPU's allocations with
            ``torch.cuda`` statistics.

    Returns:
        A :class:`MemoryResult` with the peak in bytes and ``fn``'s return value.
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dev.type == "cpu":
        return _peak_memory_cpu(fn, args, kwargs)
    if dev.type == "cuda":
        return _peak_memory_cuda(fn, args, kwargs, dev)
    raise ValueError(f"peak_memory supports CPU and CUDA devices, got {dev}")


def _peak_memory_cuda(fn, args, kwargs, dev: torch.device) -> MemoryResult:
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    result = fn(*args, **kwargs)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - before
    return MemoryResult(peak_bytes=max(int(peak), 0), result=result)


def _peak_memory_cpu(fn, args, kwargs) -> MemoryResult:
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with quiet_stderr():  # the profiler's library logs "profiler_start"/"profiler_stop" lines
        prof.__enter__()
    try:
        canary = torch.empty(_CANARY_BYTES, dtype=torch.uint8)
        del canary
        result = fn(*args, **kwargs)
    finally:
        with quiet_stderr():
            prof.__exit__(None, None, None)
    deltas = _cpu_memory_deltas(prof)
    return MemoryResult(peak_bytes=_peak_after_canary(deltas), result=result)


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (C++ logging bypasses ``sys.stderr``) for a moment."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _broken(what: str) -> RuntimeError:
    return RuntimeError(
        f"symode.profiling: {what}. CPU peak memory relies on private torch profiler "
        f"attributes (prof.profiler.kineto_results.events(), event.nbytes()), tested "
        f"with torch {TESTED_TORCH_VERSION}; this is torch {torch.__version__}."
    )


def _cpu_memory_deltas(prof) -> list[int]:
    """Byte deltas of the CPU allocator's "[memory]" events, in time order."""
    try:
        events = prof.profiler.kineto_results.events()
        mem = []
        for e in events:
            if e.name() != "[memory]":
                continue
            if e.device_type() != torch._C._autograd.DeviceType.CPU:
                continue
            mem.append((e.start_ns(), int(e.nbytes())))
    except Exception as exc:  # private API changed
        raise _broken(f"could not read the profiler's memory events ({exc!r})") from exc
    mem.sort(key=lambda t: t[0])  # stable: ties keep recording order
    return [d for _, d in mem]


def _peak_after_canary(deltas: list[int]) -> int:
    """Peak of the running sum of ``deltas`` after the canary's alloc/free pair."""
    try:
        start = deltas.index(_CANARY_BYTES)
        stop = deltas.index(-_CANARY_BYTES, start + 1)
    except ValueError:
        raise _broken("the profiler recorded no event for a known allocation") from None
    running = peak = 0
    for d in deltas[stop + 1 :]:
        running += d
        if running > peak:
            peak = running
    return peak

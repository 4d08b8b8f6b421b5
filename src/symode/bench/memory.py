"""Deterministic peak-memory measurement of a Python callable, on CPU and CUDA.

What it measures
    :func:`peak_memory` runs ``fn(*args, **kwargs)`` once and reports the peak,
    during the call, of the bytes allocated by torch's allocator *above what was
    allocated when the call started*, counting only memory allocated inside the
    call: tensors the call creates count while they are alive inside the call
    (including the ones it returns, and tensors that a custom
    ``autograd.Function`` keeps as ``ctx`` attributes). Tensors alive before the
    call do not count, and on CPU neither does freeing them: a call that drops
    tensors left by an earlier call (``.grad`` set to None, a cache replaced, a
    list popped) gets the same figure as the same call with those tensors
    already gone. The figure is a property of the call alone, whatever ran
    before it, profiled or not. Memory that is not allocated by torch (Python
    objects, numpy arrays) is not seen.

Why this way
    On CUDA, torch keeps allocator statistics: we reset the peak, record
    ``memory_allocated()`` before the call and subtract it from
    ``max_memory_allocated()`` after it. These statistics cannot tell the
    call's blocks from older ones, so on CUDA (only) a call that frees tensors
    alive before it and then allocates reads lower by up to the bytes it freed;
    the figure does not depend on whether anything was profiled before.

    On CPU, torch keeps no memory statistics, tracemalloc does not see tensors,
    and RSS-based measures (ru_maxrss, VmHWM) mostly measure allocator
    fragmentation (see ``shared/design/measuring.md``). We therefore run the call
    under ``torch.profiler`` with ``profile_memory=True``, which records one
    memory event per CPU allocator allocation (+nbytes) and free (-nbytes), each
    with the block's address. We replay the events in time order, keeping the
    blocks allocated inside the call by address: an allocation adds its bytes, a
    free at the address of such a block removes them, and the peak of that sum is
    the figure. A free at any other address frees memory allocated before the
    call, and is ignored. The result is exact (the CPU allocator reports the
    requested byte count, no rounding) and identical from run to run.

    Summing every free, as this module did at first, makes the figure depend on
    history: the CPU allocator reports a free only if it knows the block's size,
    i.e. only if the block was allocated while a profiler recorded memory. So a
    call that frees tensors of an earlier call saw those frees (and read lower)
    exactly when the earlier call had itself been profiled: ``.grad`` buffers
    set to None at the start of a training step read |theta| + |y| lower after a
    profiled step than after an unprofiled one or on first use.

    The events are read from the profiler's raw results,
    ``prof.profiler.kineto_results``, which is private API: the event tree
    (``experimental_event_tree()``) gives each allocation event's address
    (``extra_fields.ptr``), size and device, and the flat kineto event list
    (``events()``, ``nbytes()``) must hold the same memory events, which is
    checked. (The public ``prof.events()`` list drops most ``"[memory]"`` events
    and gives a wrong peak.) This was written against torch 2.13.0
    (:data:`TESTED_TORCH_VERSION`); if the private access breaks, or the events
    are inconsistent (two allocations at one address with no free between them,
    a block freed with another size than allocated), :func:`peak_memory` raises
    ``RuntimeError`` rather than returning a wrong figure. A small, known
    "canary" allocation is made inside the profiling window before ``fn`` runs,
    to check that memory events are really being recorded; the call's events are
    those after the canary's free.

Cost
    The CPU profiler costs about 1 s to start and ~35 us per torch operation, so
    never time a call and measure its memory in the same run: measure memory
    and time in separate runs. The CUDA path costs two synchronisations.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MemoryResult", "peak_memory", "quiet_stderr", "TESTED_TORCH_VERSION"]

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
    events = _cpu_memory_deltas(prof)
    return MemoryResult(peak_bytes=_peak_after_canary(events), result=result)


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 for the duration of the ``with`` block.

    C++ logging (the profiler's "profiler_start"/"profiler_stop" lines, torch warnings
    printed by ``LOG(WARNING)``) writes to the file descriptor directly, bypassing
    ``sys.stderr``, so redirecting ``sys.stderr`` would not silence it.
    """
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
        f"symode.bench.memory: {what}. CPU peak memory relies on private torch profiler "
        f"attributes (prof.profiler.kineto_results.experimental_event_tree() and the "
        f"allocation events' extra_fields.ptr/.alloc_size/.device, cross-checked against "
        f"prof.profiler.kineto_results.events() and event.nbytes()), tested with torch "
        f"{TESTED_TORCH_VERSION}; this is torch {torch.__version__}."
    )


def _cpu_memory_deltas(prof) -> list[tuple[int, int]]:
    """``(address, byte delta)`` of every CPU allocator allocation (+) and free (-) the
    profiler recorded, in time order (ties keep the order of recording)."""
    try:
        results = prof.profiler.kineto_results
        allocation = torch._C._profiler._EventType.Allocation
        mem = []
        stack = list(reversed(results.experimental_event_tree()))
        while stack:  # depth-first, pre-order: the order in which the tree was built
            e = stack.pop()
            stack.extend(reversed(e.children))
            if e.tag != allocation:
                continue
            fields = e.extra_fields
            if fields.device.type != "cpu":
                continue
            mem.append((int(e.start_time_ns), int(fields.ptr), int(fields.alloc_size)))
        # Cross-check: the flat kineto event list must hold the same CPU memory events.
        flat = sorted(
            int(e.nbytes())
            for e in results.events()
            if e.name() == "[memory]" and e.device_type() == torch._C._autograd.DeviceType.CPU
        )
    except Exception as exc:  # private API changed
        raise _broken(f"could not read the profiler's memory events ({exc!r})") from exc
    if sorted(d for _, _, d in mem) != flat:
        raise _broken(
            f"the profiler's event tree ({len(mem)} CPU memory events) and its event list ({len(flat)}) disagree"
        )
    mem.sort(key=lambda t: t[0])  # stable: ties keep the order of recording
    return [(ptr, d) for _, ptr, d in mem]


def _peak_after_canary(events: list[tuple[int, int]]) -> int:
    """Peak bytes allocated after the canary's alloc/free pair and still alive.

    ``events`` is :func:`_cpu_memory_deltas`'s ``(address, delta)`` list. Only blocks
    allocated after the canary count; a free at an address with no such block alive frees
    memory allocated before the call, and is ignored.
    """
    start = next((i for i, (_, d) in enumerate(events) if d == _CANARY_BYTES), None)
    if start is None:
        raise _broken("the profiler recorded no event for a known allocation")
    canary_ptr = events[start][0]
    stop = next(
        (j for j in range(start + 1, len(events)) if events[j] == (canary_ptr, -_CANARY_BYTES)),
        None,
    )
    if stop is None:
        raise _broken("the profiler recorded no free of a known allocation")
    live: dict[int, int] = {}  # address -> bytes of the blocks allocated inside the call, alive
    running = peak = 0
    for ptr, d in events[stop + 1 :]:
        if d > 0:
            if ptr in live:
                raise _broken(f"two allocations at address {ptr:#x} without a free between them")
            live[ptr] = d
            running += d
            if running > peak:
                peak = running
        elif d < 0:
            size = live.pop(ptr, None)
            if size is None:
                continue  # memory allocated before the call
            if size != -d:
                raise _broken(f"a block of {size} bytes at address {ptr:#x} was freed as {-d} bytes")
            running -= size
    return peak

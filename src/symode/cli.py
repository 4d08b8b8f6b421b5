"""The ``symode`` command: differentiate one problem with every gradient method and compare.

``symode bench`` (also plain ``symode``, or ``python -m symode``) builds a problem of
:data:`symode.problems.PROBLEMS` (default: a continuous normalizing flow shaped like the
symplectic adjoint paper's MINIBOONE model: d = 43, one block, two hidden layers of 860,
softplus, Hutchinson trace estimate inside ``f``), solves it with dopri5 at rtol = atol = 1e-5
in float32, differentiates the loss by each gradient method (default: every class's default
configuration and ``SymplecticAdjoint(store_stages=True)``) and prints one table, per method:

* the peak torch memory of one training iteration (forward + backward), measured with
  :func:`symode.profiling.peak_memory` in a run of its own (the CPU profiler slows every
  operation, so it is never timed; on CUDA, the allocator's peak), and its ratio to backprop's;
* the median wall time of ``--repeats`` iterations, the methods taking turns (A B C A B C ...)
  after a first iteration of each that computes the gradients and warms up, and the ratio to
  backprop's median measured in the same run (on CUDA, synchronised around each iteration);
* the evaluations of ``f`` forward and backward, accepted and rejected steps (summed over
  stacked blocks);
* the gradient's error relative to the exact gradient: the max over the compared tensors
  (every parameter; ``y0`` too for the ``mlp`` problem) of ``||g - g_ref||_2 / ||g_ref||_2``,
  where ``g_ref`` is backprop's gradient in the run's dtype, or with ``--reference-dtype
  float64`` backprop's gradient of the same problem in float64 on the same accepted steps
  (the exact gradient of the discrete solve up to float64 round-off).

Each training iteration draws a new Hutchinson noise (the same for every method within a
round of turns). ``--json``/``--csv`` write the results, ``--plot DIR`` PNG figures
(matplotlib, the ``bench`` extra), ``--peers`` adds peer libraries through
:mod:`symode.peers` when that module is present.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from . import __version__
from .gradients import GRADIENT_METHODS, Backprop, GradientMethod, SymplecticAdjoint, get_gradient_method
from .integrate import Stats
from .methods import TABLEAUS, get_tableau
from .problems import PROBLEMS, BenchProblem, get_problem
from .profiling import peak_memory
from .step_size import AdaptiveSteps, FixedSteps

__all__ = ["main", "run", "PROBLEMS", "MethodResult", "parse_gradient", "gradient_label",
           "default_gradients", "DEFAULT_PROBLEM", "PeerGradient", "Progress"]

REFERENCE = "backprop"
DEFAULT_PROBLEM = "miniboone"
MiB = 2**20
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: bare words accepted as options of a gradient method: word -> (keyword, value)
_OPTION_WORDS = {"seminorm": ("norm", "seminorm")}


# --------------------------------------------------------------------------------------
# gradient methods by name, with options
def default_gradients() -> list[GradientMethod]:
    """Every class's default configuration, with ``SymplecticAdjoint(store_stages=True)``
    after ``SymplecticAdjoint()``; backprop (the reference) first."""
    methods = []
    for cls in GRADIENT_METHODS.values():
        methods.append(cls())
        if cls is SymplecticAdjoint:
            methods.append(SymplecticAdjoint(store_stages=True))
    return methods


def _parse_value(text: str):
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
        if not eq and key not in accepted and key in _OPTION_WORDS:
            key, value = _OPTION_WORDS[key]
        elif not eq:
            value = True
        else:
            value = _parse_value(value.strip())
        if key not in accepted:
            raise ValueError(f"{cls.name} has no option {key!r} (in {text!r}); its options: "
                             f"{', '.join(accepted) or 'none'}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def gradient_label(method: GradientMethod) -> str:
    """The shortest ``name[:option[=value]]...`` that :func:`parse_gradient` maps back to
    ``method``: the options that differ from the class's defaults."""
    if hasattr(method, "solve_ode"):  # a peer
        return method.name
    default = vars(type(method)())
    parts = [method.name]
    for key, value in vars(method).items():
        if key in default and _same(default[key], value):
            continue
        parts.append(key if value is True else f"{key}={value}")
    return ":".join(parts)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return a == b


def _gradient_list(text: str | None) -> list[GradientMethod]:
    """The methods of ``--gradients`` (default: :func:`default_gradients`; ``all``: every
    configuration of every class), without repeats, backprop first."""
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


# --------------------------------------------------------------------------------------
# results
@dataclass
class MethodResult:
    """What the command measures for one gradient method (times in seconds).

    ``peer``: a peer library's (no step counts). ``grad_rel_diff``: max over the compared
    tensors of ``||g - g_ref|| / ||g_ref||``;
    ``grad_rel_diff_concat``: the same over all of them concatenated. ``peak_memory_bytes``:
    torch allocations of one forward + backward above those alive before it;
    ``memory_ratio``: over the reference's. ``time_ratio``: ``median_time_s`` over the
    reference's; ``time_ratio_paired``: the median over rounds of the ratio within a round
    (the reference's turn is adjacent in time).
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
    times_s: list = field(default_factory=list)
    median_time_s: float = float("nan")
    time_ratio: float = float("nan")
    time_ratio_paired: float = float("nan")

    @property
    def peak_memory_mib(self) -> float:
        return self.peak_memory_bytes / MiB

    def as_dict(self) -> dict:
        d = dict(vars(self))
        d["peak_memory_mib"] = self.peak_memory_mib
        return d


# --------------------------------------------------------------------------------------
# progress
class Progress:
    """A one-line progress bar on stderr (``\\r``-rewritten); silent when disabled."""

    def __init__(self, total: int, enabled: bool, stream=None, width: int = 24):
        self.total, self.enabled, self.width = max(total, 1), enabled, width
        self.stream = sys.stderr if stream is None else stream
        self.done = 0
        self.start = time.perf_counter()

    def __call__(self, what: str) -> None:
        """Announce the next unit of work."""
        self.done += 1
        if not self.enabled:
            return
        filled = int(self.width * (self.done - 1) / self.total)
        elapsed = int(time.perf_counter() - self.start)
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {what}  "
                f"{elapsed // 60}:{elapsed % 60:02d}")
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()

    def skip(self, n: int) -> None:
        """``n`` announced units of work will not be done."""
        self.total = max(self.total - n, self.done, 1)

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# --------------------------------------------------------------------------------------
# one iteration, and the measurements built on it
def _iteration(problem: BenchProblem, gradient: GradientMethod, solver: str, steps) -> tuple:
    """One training iteration (forward + backward): ``(loss, grads w.r.t. problem.inputs, stats)``."""
    loss, stats = problem.loss(gradient, solver, steps)
    grads = torch.autograd.grad(loss, problem.inputs)
    return loss.detach(), grads, stats


def _rel_diffs(grads: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> tuple[float, float]:
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


def run(problem: BenchProblem, methods: Sequence[GradientMethod | str], solver: str, steps, repeats: int,
        device: torch.device | str = "cpu", *, reference_dtype: torch.dtype | None = None,
        progress=None, log=None, skipped: dict | None = None) -> list[MethodResult]:
    """Gradients, counts, peak memory and interleaved timings of ``methods`` on ``problem``.

    ``methods``: symode gradient methods (objects or names) or peers (:class:`PeerGradient`).
    ``methods[0]`` is the reference of time and memory ratios and, unless
    ``reference_dtype`` differs from the problem's dtype, of the gradient: with it, the
    reference gradient is backprop's on ``problem.converted(reference_dtype)`` on the
    accepted steps of ``methods[0]``'s solve. ``progress(what)`` is called before each
    iteration, ``log(message)`` at each phase. With a dict ``skipped``, a peer that fails
    in its first iteration is left out and ``skipped[label]`` says why; otherwise (and for
    symode's methods always) the error propagates.
    """
    device = torch.device(device)
    methods = [m if isinstance(m, GradientMethod) or hasattr(m, "solve_ode") else get_gradient_method(m)
               for m in methods]
    labels = [gradient_label(m) for m in methods]
    results = [MethodResult(label) for label in labels]
    progress = progress or (lambda what: None)
    base_seed = problem.noise_seed
    grads_of = []
    # 1. the gradients and counts, once each (this is also every method's warm-up)
    if log:
        log("computing the gradients (and warming up) ...")
    ref_stats = None
    kept = []
    for label, m, r in zip(labels, methods, results):
        progress(f"gradient: {label}")
        try:
            loss, grads, stats = _iteration(problem, m, solver, steps)
        except Exception as exc:
            if not hasattr(m, "solve_ode") or skipped is None:
                raise
            skipped[label] = f"{type(exc).__name__}: {exc}"  # a peer that cannot run this problem
            if hasattr(progress, "skip"):
                progress.skip(1 + repeats)  # its memory run and timed repeats
            continue
        kept.append((label, m, r))
        r.peer = hasattr(m, "solve_ode")
        r.loss = float(loss)
        for key in ("nfe_forward", "nfe_backward", "nfe_backward_vjp", "num_accepted", "num_rejected"):
            setattr(r, key, getattr(stats, key))
        grads_of.append(grads)
        if ref_stats is None:
            ref_stats = stats
    dtype = problem.inputs[0].dtype
    if reference_dtype is not None and reference_dtype != dtype:
        progress(f"reference gradient in {str(reference_dtype).replace('torch.', '')}")
        ref_problem = problem.converted(reference_dtype)
        ref_steps = [FixedSteps(grid=g) for g in ref_stats.grids]
        _, ref_grads, _ = _iteration(ref_problem, methods[0], solver, ref_steps)
        del ref_problem
    else:
        ref_grads = grads_of[0]
    labels, methods, results = [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept]
    for r, grads in zip(results, grads_of):
        r.grad_rel_diff, r.grad_rel_diff_concat = _rel_diffs(grads, ref_grads)
    del grads_of, ref_grads
    # 2. peak memory of one iteration each, in runs of their own (the CPU profiler is slow)
    if log:
        log("measuring the peak memory of one iteration of each method ...")
    for label, m, r in zip(labels, methods, results):
        progress(f"memory: {label}")
        r.peak_memory_bytes = peak_memory(_iteration, problem, m, solver, steps, device=device).peak_bytes
    # 3. time: the methods take turns; each round is a new training iteration (new noise)
    if log:
        log(f"timing {repeats} iteration(s) of each method, interleaved ...")
    try:
        for k in range(repeats):
            if base_seed is not None:
                problem.resample(base_seed + 1 + k)
            for label, m, r in zip(labels, methods, results):
                progress(f"time: {label} (repeat {k + 1}/{repeats})")
                _sync(device)
                start = time.perf_counter()
                _iteration(problem, m, solver, steps)
                _sync(device)
                r.times_s.append(time.perf_counter() - start)
    finally:
        if base_seed is not None:
            problem.resample(base_seed)
    ref = results[0]
    for r in results:
        r.memory_ratio = r.peak_memory_bytes / ref.peak_memory_bytes if ref.peak_memory_bytes > 0 else float("nan")
        if r.times_s:
            r.median_time_s = statistics.median(r.times_s)
            r.time_ratio = r.median_time_s / ref.median_time_s if ref.median_time_s > 0 else float("nan")
            r.time_ratio_paired = statistics.median(a / b for a, b in zip(r.times_s, ref.times_s))
    return results


# --------------------------------------------------------------------------------------
# peers (symode.peers: adapters for other libraries, optional)
def _peers_module():
    try:
        from . import peers
    except ImportError:
        return None
    return peers


class _CountingField(torch.nn.Module):
    """``func`` counting its calls into a symode ``Stats``: forward while the solve runs,
    backward after it returned (a module, so that the peers find the parameters of ``func``)."""

    def __init__(self, func, stats: Stats, dtype: torch.dtype):
        super().__init__()
        self.func, self.stats, self.dtype = func, stats, dtype
        self.in_solve = True

    def forward(self, t, y):
        if self.in_solve:
            self.stats.nfe_forward += 1
        else:
            self.stats.nfe_backward += 1
            self.stats.nfe_backward_vjp += 1 if torch.is_grad_enabled() else 0
        if not isinstance(t, torch.Tensor) or t.dtype != self.dtype:
            t = torch.as_tensor(t).to(self.dtype)
        return self.func(t, y)


class PeerGradient:
    """A peer library's way of differentiating a solve (``symode.peers``), usable wherever the
    bench takes a gradient method: the problems call :meth:`solve_ode` instead of
    ``symode.solve``. The counts are evaluations of ``f`` (no step counts); the peer chooses
    its own steps (adaptive) and may interpolate, so its gradient differs from symode's by
    about the tolerance."""

    def __init__(self, name: str, peers):
        self.name = name
        self.peers = peers
        peer = getattr(peers, "PEERS", {}).get(name)
        self.exact = getattr(peer, "exact", False)

    def __repr__(self) -> str:
        return f"PeerGradient({self.name!r})"

    def solve_ode(self, func, y0, t, method, steps):
        dtype = (y0 if isinstance(y0, torch.Tensor) else y0[0]).dtype
        kwargs = {}
        if isinstance(steps, FixedSteps):
            if steps.step_size is None:
                raise ValueError(f"{self.name}: the peers take a step size, not a grid of steps")
            kwargs["step_size"] = steps.step_size
        elif isinstance(steps, AdaptiveSteps):
            if isinstance(steps.rtol, torch.Tensor) or isinstance(steps.atol, torch.Tensor):
                raise ValueError(f"{self.name}: the peers take scalar tolerances")
            kwargs.update(rtol=steps.rtol, atol=steps.atol)
        stats = Stats()
        counted = _CountingField(func, stats, dtype)
        ys = self.peers.solve(self.name, counted, y0, t.to(dtype), method=method, count=False, **kwargs)
        counted.in_solve = False
        return ys, stats, None


# --------------------------------------------------------------------------------------
# command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="symode",
        description="symode: explicit Runge-Kutta ODE solvers for PyTorch with exact gradients. "
                    "With no command, runs 'symode bench'.")
    p.add_argument("--version", action="version", version=f"symode {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser(
        "bench", help="differentiate a problem by every gradient method and compare memory, time, "
                      "function evaluations and gradient error",
        description="Differentiate one training iteration of a problem by every gradient method of symode "
                    "(backprop through the solver, checkpointing, one checkpoint, the symplectic adjoint and "
                    "its stored-stages variant, the continuous adjoint) and print one table: peak memory, "
                    "time per iteration (median, and ratio to backprop in the same run), function "
                    "evaluations forward and backward, steps, and the gradient's error relative to the "
                    "exact gradient. The default takes about two minutes on an idle 2-core CPU.")
    _bench_arguments(b)
    p.bench_parser = b  # for usage errors that name the subcommand
    return p


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    prob = p.add_argument_group("problem")
    prob.add_argument("--problem", choices=list(PROBLEMS), default=DEFAULT_PROBLEM,
                      help="the FFJORD tabular CNF shapes of the paper (power, gas, hepmass, miniboone, bsds300; "
                           "synthetic data of the data set's dimension) or a plain neural ODE (mlp) "
                           "(default: %(default)s)")
    prob.add_argument("--batch", type=int, default=None,
                      help="batch size (default: the problem's, chosen so that a run with the other defaults "
                           "takes about two minutes on an idle 2-core CPU: "
                           + ", ".join(f"{k} {v.batch}" for k, v in PROBLEMS.items()) + ")")
    prob.add_argument("--width", type=int, default=None, help="override the hidden width")
    prob.add_argument("--layers", type=int, default=None, help="override the number of hidden layers (CNFs)")
    prob.add_argument("--blocks", type=int, default=None, help="override the number of stacked blocks (CNFs)")
    prob.add_argument("--dim", type=int, default=None, help="override the data dimension")
    prob.add_argument("--init-gain", type=float, default=None,
                      help="multiply the default-initialised weights by this (default: 1 for the CNFs, "
                           "FFJORD's initialisation; 3 for mlp)")
    prob.add_argument("--noise", choices=("gaussian", "rademacher"), default="gaussian",
                      help="the Hutchinson noise of the CNFs (default: %(default)s, FFJORD's)")
    prob.add_argument("--t1", type=float, default=1.0, help="each block integrates over [0, t1] (default: 1)")
    sol = p.add_argument_group("solver and gradients")
    sol.add_argument("--method", default="dopri5", choices=sorted(TABLEAUS),
                     help="the Runge-Kutta method (default: %(default)s)")
    sol.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default: %(default)s)")
    sol.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default: %(default)s)")
    sol.add_argument("--step-size", type=float, default=None,
                     help="take fixed steps of this size instead of adaptive ones")
    sol.add_argument("--gradients", default=None, metavar="LIST",
                     help="comma-separated gradient methods, each name[:option[=value]]... e.g. "
                          "'symplectic_adjoint:store_stages', 'symplectic_adjoint:max_checkpoints=4', "
                          "'adjoint:seminorm'; 'all' for every configuration; backprop is always added as "
                          "the reference (default: " + ",".join(gradient_label(m) for m in default_gradients())
                          + ")")
    sol.add_argument("--reference-dtype", choices=sorted(_DTYPES), default=None,
                     help="compute the reference gradient (backprop on the same accepted steps) in this dtype "
                          "(default: the run's dtype); float64 measures the float32 methods' round-off")
    run_ = p.add_argument_group("measurement")
    run_.add_argument("--repeats", type=int, default=5,
                      help="timed iterations per method, after one that computes the gradients and warms up "
                           "(default: %(default)s)")
    run_.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="(default: %(default)s)")
    run_.add_argument("--device", default="cpu",
                      help="cpu or cuda[:i]; cuda measures the CUDA allocator's peak and synchronises around "
                           "each timed iteration (default: %(default)s)")
    run_.add_argument("--threads", type=int, default=None,
                      help="torch intra-op threads (default: torch's, i.e. OMP_NUM_THREADS or the cores, reduced "
                           "to the idle CPUs when other processes keep some busy at the start); on a loaded "
                           "machine 1 thread is far more stable")
    run_.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    run_.add_argument("--peers", action="store_true",
                      help="also run the peer libraries that symode.peers finds installed")
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON to PATH")
    out.add_argument("--csv", metavar="PATH", default=None, help="write the results as CSV to PATH (one row a method)")
    out.add_argument("--plot", metavar="DIR", default=None,
                     help="write PNG figures to DIR (needs matplotlib: pip install 'symode[bench]')")
    out.add_argument("--quiet", action="store_true", help="no progress bar or progress messages")


_TOP_LEVEL = {"-h", "--help", "--version"}


def _with_command(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` with ``bench`` inserted when it names no command; whether it was."""
    if argv and (argv[0] in _TOP_LEVEL or not argv[0].startswith("-")):
        return argv, False
    return ["bench", *argv], True


def _busy_cpus(interval: float = 0.3) -> float | None:
    """How many CPUs other processes keep busy now (from /proc/stat over ``interval`` s; Linux), or None."""
    def sample():
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


def _json_safe(obj):
    """``obj`` with non-finite floats replaced by None (strict JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _fmt(x: float, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _fmt_mib(x: float) -> str:
    """Three significant digits or more: 1364, 101.5, 2.31, 0.136."""
    return f"{x:.0f}" if x >= 1000 else f"{x:.4g}" if x >= 1 else f"{x:.3g}"


def _table(results: Sequence[MethodResult], reference_is_backprop: bool) -> str:
    header = ("method", "peak MiB", "x bp", "time s", "x bp", "NFE fwd", "NFE bwd", "steps acc/rej", "grad rel err")
    rows = [header]
    for r in results:
        err = ("(reference)" if r.method == REFERENCE and reference_is_backprop else _fmt(r.grad_rel_diff, ".2e"))
        rows.append((r.method, _fmt_mib(r.peak_memory_mib), _fmt(r.memory_ratio, ".3f"), _fmt(r.median_time_s, ".3f"),
                     _fmt(r.time_ratio, ".2f"), str(r.nfe_forward), str(r.nfe_backward),
                     "-" if r.peer else f"{r.num_accepted}/{r.num_rejected}", err))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


_CSV_FIELDS = ("problem", "solver", "dtype", "device", "batch", "method", "peak_memory_bytes", "peak_memory_mib",
               "memory_ratio", "median_time_s", "time_ratio", "time_ratio_paired", "nfe_forward", "nfe_backward",
               "nfe_backward_vjp", "num_accepted", "num_rejected", "grad_rel_diff", "grad_rel_diff_concat",
               "loss", "times_s")


def _write_csv(path: str, info: dict, rows: Sequence[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            row = dict(row)
            row["times_s"] = ";".join(f"{t:.6g}" for t in row.get("times_s", []))
            writer.writerow({"problem": info["problem"], "solver": info["solver"], "dtype": info["dtype"],
                             "device": info["device"], "batch": info["y0_shape"][0],
                             **{k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}})


def _import_pyplot():
    """matplotlib.pyplot with a non-interactive backend, or ``None`` when not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _write_plots(plt, directory: str, info: dict, rows: Sequence[dict]) -> list[str]:
    """Two figures: per-method bars (peak memory, time, gradient error) and memory vs time."""
    os.makedirs(directory, exist_ok=True)
    name = info["problem"]
    title = f"{info['summary']}, batch {info['y0_shape'][0]}, {info['solver']}, {info['dtype']}, {info['device']}"
    labels = [r["method"] for r in rows]
    ypos = list(range(len(rows)))[::-1]
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(15, 0.5 * len(rows) + 2.2), sharey=True)
    panels = ((axes[0], [r["peak_memory_mib"] for r in rows], "peak memory (MiB)", "memory_ratio", False),
              (axes[1], [r["median_time_s"] for r in rows], "time per iteration (s, median)", "time_ratio", False),
              (axes[2], [r["grad_rel_diff"] for r in rows], "gradient rel. error", None, True))
    for ax, values, xlabel, ratio_key, log in panels:
        vals = [v if v is not None and isinstance(v, (int, float)) and math.isfinite(v) else 0.0 for v in values]
        base = 0.0
        if log:  # zeros (the reference itself, bit-identical gradients) get no bar, just "0"
            positive = [v for v in vals if v > 0]
            base = min(positive) / 10 if positive else 1e-17
            ax.set_xscale("log")
        ax.barh(ypos, [v - base if v > base else 0.0 for v in vals], left=base, color="tab:blue")
        for y, v, r in zip(ypos, vals, rows):
            text = (f"{v:.3g}" if ratio_key is None or not r[ratio_key] else f"{v:.3g} ({r[ratio_key]:.2f}x)")
            ax.text(max(v, base), y, " " + text, va="center", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.margins(x=0.3)
    axes[0].set_yticks(ypos)
    axes[0].set_yticklabels(labels)
    fig.suptitle(title, fontsize=9)
    paths.append(_save(plt, fig, directory, f"{name}_methods.png"))

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        if r["median_time_s"] and r["peak_memory_mib"]:
            ax.scatter(r["median_time_s"], r["peak_memory_mib"])
            ax.annotate(r["method"], (r["median_time_s"], r["peak_memory_mib"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("time per iteration (s, median)")
    ax.set_ylabel("peak memory (MiB)")
    ax.set_yscale("log")
    from matplotlib import ticker
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    ax.set_title(title, fontsize=8)
    paths.append(_save(plt, fig, directory, f"{name}_memory_vs_time.png"))
    return paths


def _save(plt, fig, directory: str, filename: str) -> str:
    """Lay out, write as PNG and close ``fig``; returns the path."""
    fig.tight_layout()
    path = os.path.join(directory, filename)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """The ``symode`` command; returns the exit status (``--threads`` is undone on return, so
    that calling it in-process leaves torch's thread count as it was)."""
    threads = torch.get_num_threads()
    try:
        return _main(argv)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, implied = _with_command(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if implied and not args.quiet:
        print("symode: no command given, running 'symode bench' ('symode --help' lists the commands)",
              file=sys.stderr)
    return _bench(parser.bench_parser, args)


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    for name in ("batch", "width", "blocks", "dim"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    if args.layers is not None and args.layers < 0:
        parser.error("--layers must be at least 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    try:
        methods = _gradient_list(args.gradients)
        tableau = get_tableau(args.method)
        if args.step_size is not None:
            steps = FixedSteps(step_size=args.step_size)
        elif tableau.adaptive:
            steps = AdaptiveSteps(rtol=args.rtol, atol=args.atol)
        else:
            parser.error(f"method {args.method!r} takes fixed steps: give --step-size")
        device = torch.device(args.device)
    except (ValueError, TypeError, RuntimeError) as exc:
        parser.error(str(exc))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch build sees no CUDA device")
    plt = None
    if args.plot:
        plt = _import_pyplot()
        if plt is None:
            parser.error("--plot needs matplotlib, which is not installed: pip install matplotlib "
                         "(or pip install 'symode[bench]')")
    skipped: dict[str, str] = {}
    if args.peers:
        peers = _peers_module()
        if peers is None:
            parser.error("--peers needs the module symode.peers, which this installation lacks")
        for name, why in peers.available().items():
            if why is None:
                methods.append(PeerGradient(name, peers))
            else:
                skipped[name] = why
    cpus = os.cpu_count() or 1
    busy = _busy_cpus() if device.type == "cpu" else None
    threads_note = ""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif busy is not None and busy >= 0.5 and torch.get_num_threads() > 1:
        # several threads on CPUs that other processes keep busy are many times slower (each
        # waits for the slowest): use the idle ones
        free = max(1, int(round(cpus - busy)))
        if free < torch.get_num_threads():
            threads_note = (f" (not {torch.get_num_threads()}: other processes keep {busy:.1f} CPU(s) busy; "
                            f"--threads sets it)")
            torch.set_num_threads(free)
    dtype = _DTYPES[args.dtype]
    try:
        problem = get_problem(args.problem, batch=args.batch, width=args.width, layers=args.layers, blocks=args.blocks,
                              dim=args.dim, dtype=dtype, device=device, seed=args.seed, noise=args.noise,
                              t1=args.t1, init_gain=args.init_gain)
    except ValueError as exc:
        parser.error(str(exc))

    if isinstance(steps, FixedSteps):
        solver = f"{tableau.name}, fixed steps of {args.step_size}"
    else:
        solver = f"{tableau.name}, adaptive, rtol={args.rtol:g}, atol={args.atol:g}"
    reference_dtype = _DTYPES[args.reference_dtype] if args.reference_dtype else None
    if reference_dtype == dtype:
        reference_dtype = None
    reference = ("backprop's gradient" if reference_dtype is None else
                 f"backprop's gradient in {args.reference_dtype} on the same accepted steps")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info = {
        "command": "symode bench", "problem": args.problem, **problem.description, "solver": solver,
        "dtype": args.dtype, "device": str(device), "repeats": args.repeats, "gradient_reference": reference,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": cpus, "load_average_1min": load,
        "busy_cpus_at_start": busy, "threads_note": threads_note.strip(" ()"), "python": platform.python_version(),
        "symode": __version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    print(f"symode {__version__} bench: gradient methods on the {args.problem!r} problem")
    for key in ("summary", "vector_field", "parameters", "y0_shape", "t", "loss", "data", "solver", "dtype",
                "device"):
        print(f"  {key + ':':14s}{info[key]}")
    print(f"  {'torch:':14s}{torch.__version__}, {torch.get_num_threads()} thread(s){threads_note}, {cpus} CPU(s), "
          f"load average {load:.2f}"
          + ("" if busy is None else f", {busy:.1f} CPU(s) busy at start") + f", Python {platform.python_version()}"
          + (f", {info['gpu']}" if "gpu" in info else ""))
    print(f"  {'timing:':14s}median of {args.repeats} iteration(s) (forward + backward, a new Hutchinson noise "
          f"each) after one that computes the gradients; methods interleaved; peak memory in a separate run")
    if busy is not None and busy > 0.5:
        print(f"  warning: other processes keep {busy:.1f} of the {cpus} CPU(s) busy: times are unreliable"
              + (", and with several threads each can be many times slower (try --threads 1)"
                 if torch.get_num_threads() > 1 else ""))
    elif torch.get_num_threads() > 1 and device.type == "cpu":
        print(f"  note: {torch.get_num_threads()} threads: if other processes start using the CPUs during the run, "
              f"each iteration can become many times slower (--threads 1 is steadier)")
    sys.stdout.flush()

    interactive = not args.quiet and sys.stderr.isatty()
    total = len(methods) * (2 + args.repeats) + (1 if reference_dtype is not None else 0)
    progress = Progress(total, enabled=interactive)

    def log(msg: str) -> None:
        if not args.quiet and not interactive:
            print(f"  ... {msg}", file=sys.stderr, flush=True)

    wall = time.perf_counter()
    try:
        results = run(problem, methods, args.method, steps, args.repeats, device, reference_dtype=reference_dtype,
                      progress=progress, log=log, skipped=skipped)
    except Exception as exc:  # a solve that fails: report it as an error of the command
        progress.close()
        print(f"symode: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    wall = time.perf_counter() - wall
    info["wall_time_s"] = wall
    rows = [r.as_dict() for r in results]

    print()
    print(_table(results, reference_is_backprop=reference_dtype is None))
    print()
    if args.peers:
        ran = [r.method for r in results if r.peer]
        print(f"peers (symode.peers): {', '.join(ran) if ran else 'none ran'}"
              + ("; their steps are their own (adaptive, interpolated outputs), so their gradient differs from "
                 "symode's by about the tolerance, and they report no step counts" if ran else ""))
        for name, why in skipped.items():
            print(f"  skipped {name}: {why}")
        print()
    print(f"grad rel err: max over the compared tensors (each weight and bias{', y0' if args.problem == 'mlp' else ''})"
          f" of ||g - g_ref||_2 / ||g_ref||_2, g_ref = {reference}.")
    print("peak MiB: torch allocations above the start of one forward + backward; x bp: / backprop's. "
          "time s: median seconds per iteration; x bp: / backprop's median (--json also gives the median of "
          "the per-round ratios). NFE bwd: evaluations of f in the backward pass (recomputation + "
          "vector-Jacobian products); steps and NFE summed over the blocks.")
    print(f"wall time: {wall:.1f} s")
    report = {"info": info, "results": rows}
    if args.peers:
        report["peers_skipped"] = skipped
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(_json_safe(report), fh, indent=2)
            fh.write("\n")
    if args.csv:
        _write_csv(args.csv, info, rows)
    if plt is not None:
        for path in _write_plots(plt, args.plot, info, rows):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``symode`` command: differentiate one problem with every gradient method and compare.

``symode`` (or ``python -m symode``) builds a problem (default: a neural ODE whose vector
field is a MINIBOONE-shaped MLP, 43 -> 860 -> 860 -> 43 with softplus, on random data of
that shape, solved by dopri5 at rtol = atol = 1e-6 in float32 on [0, 1]), computes the
gradient of ``loss = mean(y(t1)**2)`` with respect to ``y0`` and the network's parameters by
each gradient method of :data:`symode.gradients.GRADIENT_METHODS`, and prints, per method:

* the gradient's relative difference from backprop's: the max over the gradient tensors
  (``y0``, each weight and bias) of ``||g - g_ref||_2 / ||g_ref||_2``;
* the evaluations of ``f`` forward and backward, accepted and rejected steps;
* the peak torch memory of one iteration (forward + backward), measured with
  :func:`symode.profiling.peak_memory` in a run of its own (the profiler slows every
  operation, so it is never timed);
* the median wall time of ``--repeats`` iterations after one warm-up, the methods taking
  turns (A B A B ...) so that their ratio is measured under the same machine conditions.

Problems and gradient methods are data (:data:`PROBLEMS`, ``GRADIENT_METHODS``), so that a
later benchmark can loop over more of them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import __version__
from .gradients import GRADIENT_METHODS, get_gradient_method
from .methods import TABLEAUS, get_tableau
from .profiling import peak_memory
from .solve import solve
from .step_size import AdaptiveSteps, FixedSteps

__all__ = ["main", "PROBLEMS", "BenchProblem", "MethodResult", "run"]

REFERENCE = "backprop"
MiB = 2**20
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------------------
# problems
@dataclass
class BenchProblem:
    """A problem to differentiate: ``func`` (an ``nn.Module`` whose parameters are
    differentiated), the initial state ``y0`` (differentiated too), output times ``t`` and
    ``loss(ys)``, plus a description for the report."""

    name: str
    func: torch.nn.Module
    y0: torch.Tensor
    t: torch.Tensor
    loss: Callable[[torch.Tensor], torch.Tensor]
    description: dict = field(default_factory=dict)

    @property
    def params(self) -> tuple[torch.Tensor, ...]:
        return tuple(p for p in self.func.parameters() if p.requires_grad)


class MLPField(torch.nn.Module):
    """An autonomous vector field ``f(t, y) = MLP(y)``: dim -> width -> width -> dim, softplus.

    ``gain`` multiplies every weight of PyTorch's default initialisation. At ``gain=1`` the
    flow over ``[0, 1]`` is nearly linear: dopri5 needs 3-4 steps and in float32 the error
    estimate is then dominated by round-off (7 steps at rtol=atol=1e-6 against 4 in float64).
    At ``gain=3`` the dynamics are non-trivial, the step count is set by the truncation error
    (17 steps at 1e-6 in both precisions) and the state grows about tenfold: a many-step
    solve, where memory that grows with the steps shows.
    """

    def __init__(self, dim: int, width: int, gain: float = 1.0):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, width), torch.nn.Softplus(),
            torch.nn.Linear(width, width), torch.nn.Softplus(),
            torch.nn.Linear(width, dim))
        if gain != 1.0:
            with torch.no_grad():
                for layer in self.net:
                    if isinstance(layer, torch.nn.Linear):
                        layer.weight.mul_(gain)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def _mlp_problem(args: argparse.Namespace, dtype: torch.dtype, device: torch.device) -> BenchProblem:
    gen = torch.Generator().manual_seed(args.seed)
    with torch.random.fork_rng(devices=[]):  # seed the initialisation, leave the global RNG alone
        torch.manual_seed(args.seed)
        func = MLPField(args.dim, args.width, args.init_gain).to(dtype=dtype, device=device)
    y0 = torch.randn(args.batch, args.dim, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    t = torch.tensor([0.0, args.t1], dtype=torch.float64)
    n_params = sum(p.numel() for p in func.parameters())
    description = {
        "vector_field": f"MLP {args.dim} -> {args.width} -> {args.width} -> {args.dim}, softplus, autonomous, "
                        f"weights {args.init_gain:g} x PyTorch's default init (seed {args.seed})",
        "parameters": n_params,
        "y0_shape": list(y0.shape),
        "t": [0.0, args.t1],
        "loss": "mean(y(t1)**2)",
        "data": f"y0 ~ N(0, 1), seed {args.seed} (random data of MINIBOONE's dimension {args.dim}, "
                f"not the data set)" if args.dim == 43 else f"y0 ~ N(0, 1), seed {args.seed}",
    }
    return BenchProblem("mlp", func, y0, t, lambda ys: ys[-1].pow(2).mean(), description)


#: problem name -> builder(args, dtype, device); the first is the default
PROBLEMS: dict[str, Callable[[argparse.Namespace, torch.dtype, torch.device], BenchProblem]] = {
    "mlp": _mlp_problem,
}


# --------------------------------------------------------------------------------------
# one iteration, and the measurements built on it
@dataclass
class MethodResult:
    """What the command measures for one gradient method (times in seconds).

    ``grad_rel_diff``: max over the gradient tensors of ``||g - g_ref|| / ||g_ref||``;
    ``grad_rel_diff_concat``: the same over all of them concatenated. ``peak_memory_bytes``:
    torch allocations of one forward + backward above those alive before it. ``time_ratio``:
    ``median_time_s`` over the reference's; ``time_ratio_paired``: the median over rounds of
    the ratio within a round (the reference's turn is adjacent in time).
    """

    method: str
    grad_rel_diff: float = float("nan")
    grad_rel_diff_concat: float = float("nan")
    loss: float = float("nan")
    nfe_forward: int = 0
    nfe_backward: int = 0
    nfe_backward_vjp: int = 0
    num_accepted: int = 0
    num_rejected: int = 0
    peak_memory_bytes: int = 0
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


def _iteration(problem: BenchProblem, gradient: str, solver: str, steps) -> tuple:
    """One forward + backward: ``(loss, grads w.r.t. (y0, *params), stats)``."""
    y0 = problem.y0.detach().requires_grad_(True)
    sol = solve(problem.func, y0, problem.t, method=solver, steps=steps, gradient=gradient)
    loss = problem.loss(sol.ys)
    grads = torch.autograd.grad(loss, (y0, *problem.params))
    return loss.detach(), grads, sol.stats


def _rel_diffs(grads: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> tuple[float, float]:
    """(max over tensors of ||g - r|| / ||r||, the same over the concatenation)."""
    per_tensor, num, den = [], 0.0, 0.0
    for g, r in zip(grads, ref):
        g, r = g.detach().double(), r.detach().double()
        d2, r2 = float((g - r).pow(2).sum()), float(r.pow(2).sum())
        num, den = num + d2, den + r2
        per_tensor.append(math.sqrt(d2 / r2) if r2 > 0 else (0.0 if d2 == 0 else math.inf))
    concat = math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)
    return max(per_tensor, default=0.0), concat


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(problem: BenchProblem, methods: Sequence[str], solver: str, steps, repeats: int,
        device: torch.device, log=None) -> list[MethodResult]:
    """Gradients, peak memory and interleaved timings of ``methods`` (the first is the reference)."""
    results = {m: MethodResult(m) for m in methods}
    ref_grads = None
    # 1. the gradients and counts, once
    for m in methods:
        loss, grads, stats = _iteration(problem, m, solver, steps)
        r = results[m]
        r.loss = float(loss)
        r.nfe_forward, r.nfe_backward, r.nfe_backward_vjp = stats.nfe_forward, stats.nfe_backward, stats.nfe_backward_vjp
        r.num_accepted, r.num_rejected = stats.num_accepted, stats.num_rejected
        if ref_grads is None:
            ref_grads = grads
        r.grad_rel_diff, r.grad_rel_diff_concat = _rel_diffs(grads, ref_grads)
        del grads
    # 2. peak memory of one iteration each, in runs of their own (the profiler is slow)
    for m in methods:
        if log:
            log(f"measuring the peak memory of {m} ...")
        results[m].peak_memory_bytes = peak_memory(_iteration, problem, m, solver, steps, device=device).peak_bytes
    # 3. time: one warm-up each, then the methods take turns
    if log:
        log(f"timing {repeats} iteration(s) of each method, interleaved ...")
    for m in methods:
        _iteration(problem, m, solver, steps)
    for _ in range(repeats):
        for m in methods:
            _sync(device)
            start = time.perf_counter()
            _iteration(problem, m, solver, steps)
            _sync(device)
            results[m].times_s.append(time.perf_counter() - start)
    ref = results[methods[0]]
    for r in results.values():
        if r.times_s:
            r.median_time_s = statistics.median(r.times_s)
    for r in results.values():
        r.time_ratio = r.median_time_s / ref.median_time_s if ref.median_time_s > 0 else float("nan")
        # the median of the ratios within each round (the methods' turns are adjacent in time)
        r.time_ratio_paired = statistics.median(a / b for a, b in zip(r.times_s, ref.times_s))
    return [results[m] for m in methods]


# --------------------------------------------------------------------------------------
# command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="symode",
        description="Differentiate a neural ODE by backprop and by the symplectic adjoint (and every other "
                    "gradient method of symode) and compare the gradients, function evaluations, peak "
                    "memory and time.")
    p.add_argument("--problem", choices=sorted(PROBLEMS), default=next(iter(PROBLEMS)),
                   help="the problem (default: %(default)s)")
    p.add_argument("--gradients", default=",".join(GRADIENT_METHODS),
                   help=f"comma-separated gradient methods; {REFERENCE} is always added as the reference "
                        f"(default: %(default)s)")
    p.add_argument("--method", default="dopri5", choices=sorted(TABLEAUS),
                   help="the Runge-Kutta method (default: %(default)s)")
    p.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance (default: %(default)s)")
    p.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (default: %(default)s)")
    p.add_argument("--step-size", type=float, default=None,
                   help="take fixed steps of this size instead of adaptive ones")
    p.add_argument("--batch", type=int, default=64, help="batch size (default: %(default)s)")
    p.add_argument("--dim", type=int, default=43, help="state dimension (default: %(default)s, MINIBOONE's)")
    p.add_argument("--width", type=int, default=860, help="hidden width (default: %(default)s)")
    p.add_argument("--init-gain", type=float, default=3.0,
                   help="multiply the MLP's default-initialised weights by this; 3 gives non-trivial dynamics "
                        "whose step count is set by truncation error, not round-off (default: %(default)s)")
    p.add_argument("--t1", type=float, default=1.0, help="final time; the solve runs on [0, t1] (default: %(default)s)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="(default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's, i.e. OMP_NUM_THREADS or the cores); on a "
                        "loaded machine 1 thread is far more stable")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed iterations per method, after one warm-up (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON to PATH")
    p.add_argument("--version", action="version", version=f"symode {__version__}")
    return p


def _gradient_names(text: str) -> list[str]:
    names = []
    for part in text.split(","):
        part = part.strip()
        if part:
            name = get_gradient_method(part).name  # raises ValueError for an unknown name
            if name not in names:
                names.append(name)
    if REFERENCE in names:
        names.remove(REFERENCE)
    return [REFERENCE, *names]


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


def _fmt_time(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def _table(results: Sequence[MethodResult]) -> str:
    header = ("method", "grad rel diff", "NFE fwd", "NFE bwd", "steps acc/rej", "peak MiB", "median s", "ratio")
    rows = [header]
    for r in results:
        rows.append((r.method, "(reference)" if r.method == REFERENCE else f"{r.grad_rel_diff:.2e}",
                     str(r.nfe_forward), str(r.nfe_backward), f"{r.num_accepted}/{r.num_rejected}",
                     f"{r.peak_memory_mib:.2f}", _fmt_time(r.median_time_s),
                     "-" if math.isnan(r.time_ratio) else f"{r.time_ratio:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
    parser = _parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    for name in ("batch", "dim", "width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    try:
        methods = _gradient_names(args.gradients)
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
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = _DTYPES[args.dtype]
    problem = PROBLEMS[args.problem](args, dtype, device)

    if isinstance(steps, FixedSteps):
        solver = f"{tableau.name}, fixed steps of {args.step_size}"
    else:
        solver = f"{tableau.name}, adaptive, rtol={args.rtol:g}, atol={args.atol:g}"
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    busy = _busy_cpus() if device.type == "cpu" else None
    info = {
        "problem": args.problem, **problem.description, "solver": solver, "dtype": args.dtype,
        "device": str(device), "repeats": args.repeats,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": cpus, "load_average_1min": load,
        "busy_cpus_at_start": busy,
        "python": platform.python_version(), "symode": __version__,
    }
    print(f"symode {__version__}: gradient methods on the {args.problem!r} problem")
    for key in ("vector_field", "parameters", "y0_shape", "t", "loss", "data", "solver", "dtype", "device"):
        print(f"  {key + ':':14s}{info[key]}")
    print(f"  {'torch:':14s}{torch.__version__}, {torch.get_num_threads()} thread(s), {cpus} CPU(s), "
          f"load average {load:.2f}"
          + ("" if busy is None else f", {busy:.1f} CPU(s) busy at start") + f", Python {platform.python_version()}")
    print(f"  {'timing:':14s}median of {args.repeats} iteration(s) (forward + backward) after one warm-up, "
          f"methods interleaved; peak memory measured in a separate run")
    if busy is not None and busy > 0.5:
        print(f"  warning: other processes keep {busy:.1f} of the {cpus} CPU(s) busy: times are unreliable"
              + (", and with several threads each can be many times slower (try --threads 1)"
                 if torch.get_num_threads() > 1 else ""))
    sys.stdout.flush()

    def log(msg: str) -> None:
        print(f"  ... {msg}", file=sys.stderr, flush=True)

    try:
        results = run(problem, methods, args.method, steps, args.repeats, device, log=log)
    except Exception as exc:  # a solve that fails: report it as an error of the command
        print(f"symode: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print()
    print(_table(results))
    print()
    print("grad rel diff: max over the gradient tensors (y0, each weight and bias) of "
          "||g - g_backprop||_2 / ||g_backprop||_2.")
    print("NFE bwd: evaluations of f in the backward pass (recomputation + vector-Jacobian products); "
          "peak MiB: torch allocations above the start of one forward + backward; "
          "ratio: median time / backprop's (--json also gives the median of the per-round ratios).")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(_json_safe({"info": info, "results": [r.as_dict() for r in results]}), fh, indent=2)
            fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``symode`` command: differentiate one problem with every gradient method and compare.

``symode bench`` (also plain ``symode``, or ``python -m symode``) builds a problem of
:data:`symode.bench.problems.PROBLEMS` (default: a continuous normalizing flow shaped like the
symplectic adjoint paper's MINIBOONE model: d = 43, one block, two hidden layers of 860,
softplus, Hutchinson trace estimate inside ``f``), solves it with dopri5 at rtol = atol = 1e-5
in float32, differentiates the loss by each gradient method (default: every class's default
configuration and ``SymplecticAdjoint(store_stages=True)``) and prints one table, per method:

* the peak torch memory of one training iteration (forward + backward), measured with
  :func:`symode.bench.memory.peak_memory` in a run of its own (the CPU profiler slows every
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
:mod:`symode.bench.peers` when that module is present.

This module parses the arguments and wires the bench's pieces together: the problems
(:mod:`~symode.bench.problems`), the contestants (:mod:`~symode.bench.contestants`), the
measurements (:mod:`~symode.bench.harness`) and the reports (:mod:`~symode.bench.report`).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import AdaptiveSteps, FixedSteps, __version__, get_tableau
from ..train.cli import run_train
from ._arguments import DEFAULT_PROBLEM, build_parser, with_command
from .contestants import Contestant, PeerGradient, SymodeGradient, default_gradients, gradient_label, gradient_list
from .contestants import parse_gradient as parse_gradient
from .harness import DTYPES, MethodResult, busy_cpus, run
from .problems import BenchProblem, get_problem
from .report import Progress, import_pyplot, table, write_csv, write_json, write_plots

__all__ = ["main", "Progress", "DEFAULT_PROBLEM", "default_gradients", "gradient_label", "parse_gradient"]


def _peers_module() -> Any:
    """:mod:`symode.bench.peers`, or ``None`` when this installation lacks it."""
    try:
        from . import peers
    except ImportError:
        return None
    return peers


# --------------------------------------------------------------------------------------
# the command
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
    args_list, implied = with_command(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "train":
        return run_train(args)
    if implied and not args.quiet:
        print("symode: no command given, running 'symode bench' ('symode --help' lists the commands)", file=sys.stderr)
    return _bench(parser.bench_parser, args)  # type: ignore[attr-defined]


@dataclass
class _Setup:
    """What ``symode bench``'s arguments ask for, checked."""

    contestants: list[Contestant]
    steps: FixedSteps | AdaptiveSteps
    solver: str
    device: torch.device
    problem: BenchProblem
    reference_dtype: torch.dtype | None
    plt: Any
    skipped: dict[str, str]
    busy: float | None
    threads_note: str


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    setup = _setup(parser, args)
    info = _describe(args, setup)
    _print_header(args, setup, info)
    interactive = not args.quiet and sys.stderr.isatty()
    total = len(setup.contestants) * (2 + args.repeats) + (1 if setup.reference_dtype is not None else 0)
    progress = Progress(total, enabled=interactive)

    def log(msg: str) -> None:
        if not args.quiet and not interactive:
            print(f"  ... {msg}", file=sys.stderr, flush=True)

    wall = time.perf_counter()
    try:
        results = run(
            setup.problem,
            setup.contestants,
            args.method,
            setup.steps,
            args.repeats,
            setup.device,
            reference_dtype=setup.reference_dtype,
            progress=progress,
            log=log,
            skipped=setup.skipped,
        )
    except Exception as exc:  # a solve that fails: report it as an error of the command
        progress.close()
        print(f"symode: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    info["wall_time_s"] = time.perf_counter() - wall
    _print_results(args, setup, results, info["gradient_reference"], info["wall_time_s"])
    _write_outputs(args, setup, results, info)
    return 0


def _setup(parser: argparse.ArgumentParser, args: argparse.Namespace) -> _Setup:
    """The arguments checked and turned into objects (a usage error exits with status 2)."""
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
        contestants: list[Contestant] = [SymodeGradient(g) for g in gradient_list(args.gradients)]
        tableau = get_tableau(args.method)
        steps: FixedSteps | AdaptiveSteps
        if args.step_size is not None:
            steps = FixedSteps(step_size=args.step_size)
            solver = f"{tableau.name}, fixed steps of {args.step_size}"
        elif tableau.adaptive:
            steps = AdaptiveSteps(rtol=args.rtol, atol=args.atol)
            solver = f"{tableau.name}, adaptive, rtol={args.rtol:g}, atol={args.atol:g}"
        else:
            parser.error(f"method {args.method!r} takes fixed steps: give --step-size")
        device = torch.device(args.device)
    except (ValueError, TypeError, RuntimeError) as exc:
        parser.error(str(exc))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch build sees no CUDA device")
    plt = None
    if args.plot:
        plt = import_pyplot()
        if plt is None:
            parser.error(
                "--plot needs matplotlib, which is not installed: pip install matplotlib "
                "(or pip install 'torch-symode[bench]')"
            )
    skipped = _add_peers(parser, args, contestants)
    busy, threads_note = _choose_threads(args, device)
    try:
        problem = get_problem(
            args.problem,
            batch=args.batch,
            width=args.width,
            layers=args.layers,
            blocks=args.blocks,
            dim=args.dim,
            dtype=DTYPES[args.dtype],
            device=device,
            seed=args.seed,
            noise=args.noise,
            t1=args.t1,
            init_gain=args.init_gain,
        )
    except ValueError as exc:
        parser.error(str(exc))
    reference_dtype = DTYPES[args.reference_dtype] if args.reference_dtype else None
    if reference_dtype == DTYPES[args.dtype]:
        reference_dtype = None
    return _Setup(contestants, steps, solver, device, problem, reference_dtype, plt, skipped, busy, threads_note)


def _add_peers(
    parser: argparse.ArgumentParser, args: argparse.Namespace, contestants: list[Contestant]
) -> dict[str, str]:
    """With ``--peers``, append every installed peer; returns the missing ones and why."""
    skipped: dict[str, str] = {}
    if args.peers:
        peers = _peers_module()
        if peers is None:
            parser.error("--peers needs the module symode.bench.peers, which this installation lacks")
        for name, why in peers.available().items():
            if why is None:
                contestants.append(PeerGradient(name, peers))
            else:
                skipped[name] = why
    return skipped


def _choose_threads(args: argparse.Namespace, device: torch.device) -> tuple[float | None, str]:
    """Set torch's thread count (``--threads``, or the idle CPUs when other processes keep
    some busy); returns the busy CPUs at the start and a note on the choice."""
    busy = busy_cpus() if device.type == "cpu" else None
    note = ""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif busy is not None and busy >= 0.5 and torch.get_num_threads() > 1:
        # several threads on CPUs that other processes keep busy are many times slower (each
        # waits for the slowest): use the idle ones
        free = max(1, round((os.cpu_count() or 1) - busy))
        if free < torch.get_num_threads():
            note = f" (not {torch.get_num_threads()}: other processes keep {busy:.1f} CPU(s) busy; --threads sets it)"
            torch.set_num_threads(free)
    return busy, note


def _describe(args: argparse.Namespace, setup: _Setup) -> dict[str, Any]:
    """The run's description, for the header and the reports."""
    reference = (
        "backprop's gradient"
        if setup.reference_dtype is None
        else f"backprop's gradient in {args.reference_dtype} on the same accepted steps"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info = {
        "command": "symode bench",
        "problem": args.problem,
        **setup.problem.description,
        "solver": setup.solver,
        "dtype": args.dtype,
        "device": str(setup.device),
        "repeats": args.repeats,
        "gradient_reference": reference,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count() or 1,
        "load_average_1min": load,
        "busy_cpus_at_start": setup.busy,
        "threads_note": setup.threads_note.strip(" ()"),
        "python": platform.python_version(),
        "symode": __version__,
    }
    if setup.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(setup.device)
    return info


def _print_header(args: argparse.Namespace, setup: _Setup, info: dict[str, Any]) -> None:
    print(f"symode {__version__} bench: gradient methods on the {args.problem!r} problem")
    for key in ("summary", "vector_field", "parameters", "y0_shape", "t", "loss", "data", "solver", "dtype", "device"):
        print(f"  {key + ':':14s}{info[key]}")
    busy, cpus, threads = setup.busy, info["cpus"], torch.get_num_threads()
    print(
        f"  {'torch:':14s}{torch.__version__}, {threads} thread(s){setup.threads_note}, {cpus} CPU(s), "
        f"load average {info['load_average_1min']:.2f}"
        + ("" if busy is None else f", {busy:.1f} CPU(s) busy at start")
        + f", Python {platform.python_version()}"
        + (f", {info['gpu']}" if "gpu" in info else "")
    )
    print(
        f"  {'timing:':14s}median of {args.repeats} iteration(s) (forward + backward, a new Hutchinson noise "
        f"each) after one that computes the gradients; methods interleaved; peak memory in a separate run"
    )
    if busy is not None and busy > 0.5:
        print(
            f"  warning: other processes keep {busy:.1f} of the {cpus} CPU(s) busy: times are unreliable"
            + (", and with several threads each can be many times slower (try --threads 1)" if threads > 1 else "")
        )
    elif threads > 1 and setup.device.type == "cpu":
        print(
            f"  note: {threads} threads: if other processes start using the CPUs during the run, "
            f"each iteration can become many times slower (--threads 1 is steadier)"
        )
    sys.stdout.flush()


def _print_results(
    args: argparse.Namespace, setup: _Setup, results: list[MethodResult], reference: str, wall: float
) -> None:
    print()
    print(table(results, reference_is_backprop=setup.reference_dtype is None))
    print()
    if args.peers:
        ran = [r.method for r in results if r.peer]
        print(
            f"peers (symode.bench.peers): {', '.join(ran) if ran else 'none ran'}"
            + (
                "; their steps are their own (adaptive, interpolated outputs), so their gradient differs from "
                "symode's by about the tolerance, and they report no step counts"
                if ran
                else ""
            )
        )
        for name, why in setup.skipped.items():
            print(f"  skipped {name}: {why}")
        print()
    print(
        f"grad rel err: max over the compared tensors (each weight and bias{', y0' if args.problem == 'mlp' else ''})"
        f" of ||g - g_ref||_2 / ||g_ref||_2, g_ref = {reference}."
    )
    print(
        "peak MiB: torch allocations above the start of one forward + backward; x bp: / backprop's. "
        "time s: median seconds per iteration; x bp: / backprop's median (--json also gives the median of "
        "the per-round ratios). NFE bwd: evaluations of f in the backward pass (recomputation + "
        "vector-Jacobian products); steps and NFE summed over the blocks."
    )
    print(f"wall time: {wall:.1f} s")


def _write_outputs(args: argparse.Namespace, setup: _Setup, results: list[MethodResult], info: dict[str, Any]) -> None:
    rows = [r.as_dict() for r in results]
    report: dict[str, Any] = {"info": info, "results": rows}
    if args.peers:
        report["peers_skipped"] = setup.skipped
    if args.json:
        write_json(args.json, report)
    if args.csv:
        write_csv(args.csv, info, rows)
    if setup.plt is not None:
        for path in write_plots(setup.plt, args.plot, info, rows):
            print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())

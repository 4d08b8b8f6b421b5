"""The command line of ``symode``: the parser of the command and of ``symode bench``'s options
(what the options mean is said in their help; :mod:`symode.bench.cli` wires them up)."""

from __future__ import annotations

import argparse

from .. import TABLEAUS, __version__
from ..train.cli import add_train_parser
from .contestants import default_gradients, gradient_label
from .harness import DTYPES
from .problems import DEFAULT_PROBLEM, PROBLEMS

__all__ = ["build_parser", "with_command"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``symode`` command and its ``bench`` subcommand."""
    p = argparse.ArgumentParser(
        prog="symode",
        description="symode: explicit Runge-Kutta ODE solvers for PyTorch with exact gradients. "
        "With no command, runs 'symode bench'.",
    )
    p.add_argument("--version", action="version", version=f"symode {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser(
        "bench",
        help="differentiate a problem by every gradient method and compare memory, time, "
        "function evaluations and gradient error",
        description="Differentiate one training iteration of a problem by every gradient method of symode "
        "(backprop through the solver, checkpointing, one checkpoint, the symplectic adjoint and "
        "its stored-stages variant, the continuous adjoint) and print one table: peak memory, "
        "time per iteration (median, and ratio to backprop in the same run), function "
        "evaluations forward and backward, steps, and the gradient's error relative to the "
        "exact gradient. The default takes about two minutes on an idle 2-core CPU.",
    )
    _bench_arguments(b)
    add_train_parser(sub)
    p.bench_parser = b  # type: ignore[attr-defined]  # for usage errors that name the subcommand
    return p


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    _problem_arguments(p.add_argument_group("problem"))
    _solver_arguments(p.add_argument_group("solver and gradients"))
    _measurement_arguments(p.add_argument_group("measurement"))
    _output_arguments(p.add_argument_group("output"))


def _problem_arguments(prob: argparse._ArgumentGroup) -> None:
    prob.add_argument(
        "--problem",
        choices=list(PROBLEMS),
        default=DEFAULT_PROBLEM,
        help="the FFJORD tabular CNF shapes of the paper (power, gas, hepmass, miniboone, bsds300; "
        "synthetic data of the data set's dimension) or a plain neural ODE (mlp) "
        "(default: %(default)s)",
    )
    prob.add_argument(
        "--batch",
        type=int,
        default=None,
        help="batch size (default: the problem's, chosen so that a run with the other defaults "
        "takes about two minutes on an idle 2-core CPU: "
        + ", ".join(f"{k} {v.batch}" for k, v in PROBLEMS.items())
        + ")",
    )
    prob.add_argument("--width", type=int, default=None, help="override the hidden width")
    prob.add_argument("--layers", type=int, default=None, help="override the number of hidden layers (CNFs)")
    prob.add_argument("--blocks", type=int, default=None, help="override the number of stacked blocks (CNFs)")
    prob.add_argument("--dim", type=int, default=None, help="override the data dimension")
    prob.add_argument(
        "--init-gain",
        type=float,
        default=None,
        help="multiply the default-initialised weights by this (default: 1 for the CNFs, "
        "FFJORD's initialisation; 3 for mlp)",
    )
    prob.add_argument(
        "--noise",
        choices=("gaussian", "rademacher"),
        default="gaussian",
        help="the Hutchinson noise of the CNFs (default: %(default)s, FFJORD's)",
    )
    prob.add_argument("--t1", type=float, default=1.0, help="each block integrates over [0, t1] (default: 1)")


def _solver_arguments(sol: argparse._ArgumentGroup) -> None:
    sol.add_argument(
        "--method", default="dopri5", choices=sorted(TABLEAUS), help="the Runge-Kutta method (default: %(default)s)"
    )
    sol.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (default: %(default)s)")
    sol.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default: %(default)s)")
    sol.add_argument(
        "--step-size", type=float, default=None, help="take fixed steps of this size instead of adaptive ones"
    )
    sol.add_argument(
        "--gradients",
        default=None,
        metavar="LIST",
        help="comma-separated gradient methods, each name[:option[=value]]... e.g. "
        "'symplectic_adjoint:store_stages', 'symplectic_adjoint:max_checkpoints=4', "
        "'adjoint:seminorm'; 'all' for every configuration; backprop is always added as "
        "the reference (default: " + ",".join(gradient_label(m) for m in default_gradients()) + ")",
    )
    sol.add_argument(
        "--reference-dtype",
        choices=sorted(DTYPES),
        default=None,
        help="compute the reference gradient (backprop on the same accepted steps) in this dtype "
        "(default: the run's dtype); float64 measures the float32 methods' round-off",
    )


def _measurement_arguments(run_: argparse._ArgumentGroup) -> None:
    run_.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed iterations per method, after one that computes the gradients and warms up (default: %(default)s)",
    )
    run_.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="(default: %(default)s)")
    run_.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda[:i]; cuda measures the CUDA allocator's peak and synchronises around "
        "each timed iteration (default: %(default)s)",
    )
    run_.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's, i.e. OMP_NUM_THREADS or the cores, reduced "
        "to the idle CPUs when other processes keep some busy at the start); on a loaded "
        "machine 1 thread is far more stable",
    )
    run_.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    run_.add_argument(
        "--peers", action="store_true", help="also run the peer libraries that symode.bench.peers finds installed"
    )


def _output_arguments(out: argparse._ArgumentGroup) -> None:
    out.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON to PATH")
    out.add_argument("--csv", metavar="PATH", default=None, help="write the results as CSV to PATH (one row a method)")
    out.add_argument(
        "--plot",
        metavar="DIR",
        default=None,
        help="write PNG figures to DIR (needs matplotlib: pip install 'symode[bench]')",
    )
    out.add_argument("--quiet", action="store_true", help="no progress bar or progress messages")


_TOP_LEVEL = {"-h", "--help", "--version"}


def with_command(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` with ``bench`` inserted when it names no command; whether it was."""
    if argv and (argv[0] in _TOP_LEVEL or not argv[0].startswith("-")):
        return argv, False
    return ["bench", *argv], True

"""``symode train ...``: the training commands' options (``symode train cnf --help``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from .. import TABLEAUS
from .data import DATASETS
from .latent import LatentConfig, train_latent_ode
from .loop import CNFConfig, train_cnf
from .physics_loop import PhysicsConfig, train_physics

__all__ = ["add_train_parser", "run_train"]


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths such as 64,64,64, got {text!r}"
        ) from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return sizes


def add_train_parser(sub: Any) -> None:
    """Add ``train`` and its workflows to the ``symode`` command's subparsers."""
    train = sub.add_parser("train", help="train the paper's models (continuous normalizing flows, ...)")
    workflows = train.add_subparsers(dest="workflow", metavar="WORKFLOW", required=True)
    defaults = CNFConfig()
    c = workflows.add_parser(
        "cnf",
        help="train a continuous normalizing flow (FFJORD) by any gradient method",
        description="Train a continuous normalizing flow on a data set that loads with no network, "
        "differentiated by any gradient method; print the held-out negative log-likelihood (nats) "
        "periodically and write metrics.json, checkpoint.pt and plots to --out.",
    )
    c.add_argument("--data", default=defaults.data, choices=DATASETS, help="the data set (default %(default)s)")
    c.add_argument(
        "--gradient",
        default=defaults.gradient,
        help="the gradient method (default %(default)s), or 'auto' with --memory-budget: the fastest exact method "
        "that fits",
    )
    c.add_argument("--memory-budget", default=None, help="with --gradient auto: the memory to fit, e.g. 2GiB")
    _solve_and_optimise(c, defaults)
    c.add_argument("--hidden", type=_sizes, default=defaults.hidden, help="layer widths, e.g. 64,64,64")
    c.add_argument("--blocks", type=int, default=defaults.blocks, help="stacked CNF blocks")
    c.add_argument("--layer", default=defaults.layer, choices=("concatsquash", "concat"))
    c.add_argument("--activation", default=defaults.activation, choices=("softplus", "tanh", "elu"))
    c.add_argument("--trace", default=defaults.trace, choices=("hutchinson", "exact"))
    c.add_argument("--time", type=float, default=defaults.time, help="each block's (initial) end time")
    c.add_argument("--fixed-time", action="store_true", help="do not learn the end times")
    c.add_argument("--kinetic", type=float, default=defaults.kinetic, help="kinetic energy regulariser weight")
    c.add_argument("--jacobian", type=float, default=defaults.jacobian, help="Jacobian norm regulariser weight")
    c.add_argument("--eval-every", type=int, default=defaults.eval_every, help="held-out NLL every N iterations")
    c.add_argument("--eval-size", type=int, default=defaults.eval_size)
    c.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    c.add_argument("--dtype", default=defaults.dtype, choices=("float32", "float64"))
    c.add_argument("--device", default=defaults.device, help="cpu or cuda")
    c.add_argument("--no-plots", action="store_true")
    c.add_argument("--out", default=None, help="the directory for metrics.json, checkpoint.pt and the plots")
    c.add_argument("--resume", default=None, help="a checkpoint.pt to continue from (the same options)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_physics_parser(workflows)
    _add_latent_parser(workflows)


def _add_physics_parser(workflows: Any) -> None:
    for name, help, description in (
        (
            "kdv",
            "learn the Korteweg-de Vries equation with an energy-conserving neural model",
            "Simulate KdV soliton trajectories (seeded), learn them with a neural energy H_theta in the equation's "
            "own skew-symmetric operator (so H_theta is conserved), integrated with dopri8",
        ),
        (
            "cahn-hilliard",
            "learn the Cahn-Hilliard equation with an energy-dissipating neural model",
            "Simulate Cahn-Hilliard phase separation (seeded), learn it with a neural energy H_theta in the "
            "equation's own discrete Laplacian (so H_theta decreases), integrated with dopri8",
        ),
    ):
        _physics_options(
            workflows.add_parser(
                name,
                help=help,
                description=description + "; report the held-out "
                "rollout error against the untrained model's and the learned energy along the model's rollouts, and "
                "write metrics.json, model.pt and plots to --out.",
            )
        )


def _physics_options(k: argparse.ArgumentParser) -> None:
    defaults = PhysicsConfig()
    k.add_argument("--gradient", default=defaults.gradient, help="the gradient method (default %(default)s)")
    _solve_and_optimise(k, defaults)
    k.add_argument("--hidden", type=int, default=defaults.hidden)
    k.add_argument("--trajectories", type=int, default=defaults.trajectories, help="training trajectories")
    k.add_argument("--eval-every", type=int, default=defaults.eval_every)
    k.add_argument("--no-plots", action="store_true")
    k.add_argument("--out", default=None)
    k.add_argument("--quiet", action="store_true")


def _add_latent_parser(workflows: Any) -> None:
    defaults = LatentConfig()
    la = workflows.add_parser(
        "latent-ode",
        help="train a latent ODE on irregularly sampled spirals",
        description="Train a latent ODE (GRU encoder, neural ODE, decoder; negative ELBO) on noisy 2-D spirals, each "
        "observed at its own random subset of irregular times; report the held-out interpolation error (at the "
        "unobserved times) against the untrained model's, and write metrics.json and model.pt to --out.",
    )
    la.add_argument("--gradient", default=defaults.gradient, help="the gradient method (default %(default)s)")
    _solve_and_optimise(la, defaults)
    la.add_argument("--samples", type=int, default=defaults.samples, help="training spirals")
    la.add_argument("--times", type=int, default=defaults.times, help="observation times (the union over samples)")
    la.add_argument("--eval-every", type=int, default=defaults.eval_every)
    la.add_argument("--out", default=None)
    la.add_argument("--quiet", action="store_true")


def _solve_and_optimise(parser: argparse.ArgumentParser, defaults: Any) -> None:
    """The options every workflow shares: the solver, its tolerances, the optimisation."""
    parser.add_argument(
        "--method", default=defaults.method, choices=sorted(TABLEAUS), help="the solver (default %(default)s)"
    )
    parser.add_argument("--rtol", type=float, default=defaults.rtol)
    parser.add_argument("--atol", type=float, default=defaults.atol)
    parser.add_argument("--iterations", type=int, default=defaults.iterations)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)


def run_train(args: argparse.Namespace) -> int:
    """Run ``symode train WORKFLOW`` with the parsed ``args``; the exit status."""
    if args.workflow == "latent-ode":
        latent = LatentConfig(
            **{k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(LatentConfig)}}
        )
        _, found = train_latent_ode(latent, args.out, quiet=args.quiet)
        latent_keys = ("test_interpolation_mse", "untrained_interpolation_mse", "improvement")
        if found:  # rank 0 of several processes, or the only one
            print(json.dumps({k: found[k] for k in latent_keys}))
        return 0
    if args.workflow in ("kdv", "cahn-hilliard"):
        names = {f.name for f in dataclasses.fields(PhysicsConfig)}
        given = {k: v for k, v in vars(args).items() if k in names}
        physics = PhysicsConfig(system=args.workflow, plots=not args.no_plots, **given)
        _, result = train_physics(physics, args.out, quiet=args.quiet)
        keys = ["test_rollout_mse", "untrained_rollout_mse", "improvement", "learned_energy_relative_drift"]
        keys.append("learned_energy_largest_relative_rise")
        if result:  # rank 0 of several processes, or the only one
            print(json.dumps({k: result[k] for k in keys}))
        return 0
    fields = {f.name for f in dataclasses.fields(CNFConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    config = CNFConfig(**values, learn_time=not args.fixed_time, plots=not args.no_plots)
    _, metrics = train_cnf(config, args.out, resume=args.resume, quiet=args.quiet)
    shown = {k: metrics[k] for k in ("test_nll", "peak_memory_bytes", "time_per_iteration_s") if k in metrics}
    if shown:  # rank 0 of several processes, or the only one
        print(json.dumps(shown))
    return 0

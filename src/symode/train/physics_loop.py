"""Training an energy-based model of a physical system: ``train_physics`` (``symode train kdv``,
``symode train cahn-hilliard``).

The data are :func:`symode.train.physics.simulate`'s trajectories; a training pair is two
consecutive snapshots ``(u(t_k), u(t_k+1))``, and the loss the mean squared error of the
model's solve from the first to the time of the second (dopri8, as in the paper). The held-out
metric is the error of the model's rollout over whole held-out trajectories from their initial
states, against the untrained model's; and the learned energy's drift along the model's own
rollout (conserved for KdV, by construction, to the solver's tolerance; for Cahn-Hilliard it
decreases, and ``learned_energy_largest_relative_rise`` is at most the solver's tolerance).

What a run writes to ``out``: ``metrics.json``, ``model.pt`` (the state dict) and with
matplotlib ``trajectory.png`` (true, predicted, error in space-time) and ``energy.png``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

import symode
from symode.bench import peak_memory

from ._common import check_positive, solve_options
from .distributed import Objective, World, join, shard
from .physics import CahnHilliard, EnergyModel, EnergyNet, KdV, relative_drift, rollout_error, simulate
from .progress import Progress

__all__ = ["PhysicsConfig", "train_physics"]

SYSTEMS = ("kdv", "cahn-hilliard")


@dataclass
class PhysicsConfig:
    """What a physical-system training run does (the options of ``symode train kdv``)."""

    system: str = "kdv"
    gradient: str = "symplectic_adjoint"
    method: str = "dopri8"
    rtol: float = 1e-6
    atol: float = 1e-8
    iterations: int = 200
    batch_size: int = 32
    lr: float = 1e-2
    hidden: int = 64
    trajectories: int = 20
    test_trajectories: int = 2
    seed: int = 0
    eval_every: int = 100
    plots: bool = True

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ValueError(f"system must be one of {SYSTEMS}, got {self.system!r}")
        check_positive(self, "iterations", "batch_size", "hidden", "trajectories", "test_trajectories")


def train_physics(
    config: PhysicsConfig, out: str | Path | None = None, *, stream: TextIO | None = None, quiet: bool = False
) -> tuple[EnergyModel, dict[str, Any]]:
    """Train the energy-based model of ``config.system``; returns it and the metrics (rank 0's,
    under torchrun: the others return ``{}``)."""
    world = join("cpu")
    try:
        return _train(config, out, world, stream, quiet)
    finally:
        world.leave()


def _pair_loss(model: EnergyModel, start: torch.Tensor, end: torch.Tensor, gap: torch.Tensor, config: PhysicsConfig):
    """The squared error of the model's solve from ``start`` to the snapshots ``end``."""
    sol = symode.solve(model, start, gap, gradient=config.gradient, **solve_options(config))
    return (sol.ys[-1] - end).pow(2).mean(), sol.stats.num_accepted


def _train(config: PhysicsConfig, out, world: World, stream, quiet: bool) -> tuple[EnergyModel, dict[str, Any]]:
    pde = KdV() if config.system == "kdv" else CahnHilliard()
    times, u = simulate(pde, config.trajectories + config.test_trajectories, seed=config.seed)
    train, test = u[: config.trajectories], u[config.trajectories :]
    torch.manual_seed(config.seed)
    model = EnergyModel(EnergyNet(pde.dx, config.hidden), pde.operator()).double()
    options = solve_options(config)
    untrained = rollout_error(model, times, test, **options)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.iterations)
    first, second = train[:, :-1].reshape(-1, pde.n), train[:, 1:].reshape(-1, pde.n)
    gap = torch.stack([torch.zeros((), dtype=torch.float64), times[1] - times[0]])
    batches = torch.Generator().manual_seed(config.seed)
    progress = Progress(config.iterations, stream=stream, quiet=quiet or not world.main, label=config.system)
    history: dict[str, list[Any]] = {"loss": [], "steps": [], "seconds": [], "rollout": []}
    objective = world.wrap(Objective(model, _pair_loss))

    def loss_of(index: torch.Tensor) -> tuple[torch.Tensor, int]:
        return objective(first[index], second[index], gap, config)

    for i in range(1, config.iterations + 1):
        start = time.perf_counter()
        index = shard(torch.randint(len(first), (config.batch_size,), generator=batches), world)
        loss, steps = loss_of(index)
        optimizer.zero_grad()
        loss.backward()  # with several processes, DDP averages the gradients here
        optimizer.step()
        schedule.step()
        history["seconds"].append(time.perf_counter() - start)
        history["loss"].append(world.mean(float(loss.detach())))
        history["steps"].append(steps)
        if world.main and config.eval_every and (i % config.eval_every == 0 or i == config.iterations):
            error = rollout_error(model, times, test, **options)
            history["rollout"].append([i, error])
            progress.note(f"iteration {i}: held-out rollout error {error:.3e} (untrained {untrained:.3e})")
        progress.update(i, loss=history["loss"][-1], steps=steps)
    progress.close()
    if not world.main:
        world.barrier()
        return model, {}
    trained = rollout_error(model, times, test, **options)

    def iteration() -> None:
        index = torch.arange(config.batch_size) % len(first)
        _pair_loss(model, first[index], second[index], gap, config)[0].backward()
        model.zero_grad()

    with torch.no_grad():
        predicted = symode.solve(model, test[:, 0], times, **options).ys
        assert isinstance(predicted, torch.Tensor)  # a tensor state
        predicted = predicted.transpose(0, 1)
        learned = torch.stack([model.energy(p) for p in predicted.transpose(0, 1)])  # (time, trajectory)
    drift = max(relative_drift(learned[:, j]) for j in range(learned.shape[1]))
    rise = float(torch.diff(learned, dim=0).max() / learned[0].abs().max())  # > 0: the energy went up somewhere
    metrics: dict[str, Any] = {
        "test_rollout_mse": trained,
        "untrained_rollout_mse": untrained,
        "improvement": untrained / trained if trained > 0 else None,
        "learned_energy_relative_drift": drift,
        "learned_energy_largest_relative_rise": rise,
        "true_energy_relative_drift": max(relative_drift(pde.energy(test[j])) for j in range(len(test))),
        "rollout_history": history["rollout"],
        "train_loss": history["loss"],
        "peak_memory_bytes": peak_memory(iteration).peak_bytes,
        "time_per_iteration_s": statistics.median(history["seconds"]),
        "steps_per_solve_last_10": statistics.mean(history["steps"][-10:]),
        "config": dataclasses.asdict(config),
        "processes": world.size,
        "torch": str(torch.__version__),
    }
    if out is not None:
        directory = Path(out)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), directory / "model.pt")
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if config.plots:
            from .plots import plot_physics

            metrics["plots"] = plot_physics(times, test[0], predicted[0], learned[:, 0], pde.energy(test[0]), directory)
    world.barrier()
    return model, metrics

"""A latent ODE (Chen et al. 2018, Rubanova et al. 2019) on irregularly sampled time series:
``symode train latent-ode``.

The data are 2-D spirals, clockwise or counter-clockwise, of random radii and phases, each
observed with noise at its own random subset of 100 irregular times (the union over the batch
is the solve's output grid: with dense output its cost does not depend on how many there
are). A GRU reads a sample's observations backwards in time into a Gaussian over the initial
latent state ``z0``; a neural ODE carries ``z0`` to every time; a decoder maps ``z(t)`` to the
observation. The loss is the negative ELBO (the masked Gaussian likelihood of the observed
points plus the KL divergence of ``q(z0)`` from ``N(0, I)``). The held-out metric is the mean
squared error at the times a held-out sample was *not* observed at (interpolation), from the
posterior mean, against the untrained model's.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
from .progress import Progress

__all__ = ["LatentConfig", "LatentODE", "spirals", "train_latent_ode"]


def spirals(n: int, *, times: int = 100, observed: float = 0.3, noise: float = 0.05, seed: int = 0):
    """``(t, x, mask)``: ``n`` noisy spirals at ``times`` irregular times in [0, 5] (sorted, shared),
    ``mask[j, k]`` whether sample ``j`` is observed at ``t[k]`` (a random fraction ``observed``,
    at least 3 points each)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.sort(torch.rand(times, generator=g, dtype=torch.float64) * 5.0).values
    t[0] = 0.0
    radius = 0.5 + torch.rand(n, 1, generator=g, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(n, 1, generator=g, dtype=torch.float64)
    turn = torch.where(torch.rand(n, 1, generator=g) < 0.5, 1.0, -1.0).to(torch.float64)
    angle = phase + turn * 1.2 * t
    r = radius * (1 + 0.3 * t)
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], -1)
    x = x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
    mask = torch.rand(n, times, generator=g) < observed
    mask[:, :3] = True  # every sample is seen at the start
    return t, x.float(), mask


class LatentODE(torch.nn.Module):
    """Encoder (a GRU backwards in time), latent field, decoder."""

    def __init__(self, obs: int = 2, latent: int = 4, hidden: int = 32):
        super().__init__()
        self.latent = latent
        self.gru = torch.nn.GRUCell(2 * obs + 1, hidden)
        self.to_z0 = torch.nn.Linear(hidden, 2 * latent)
        self.field = torch.nn.Sequential(
            torch.nn.Linear(latent, hidden),
            torch.nn.ELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ELU(),
            torch.nn.Linear(hidden, latent),
        )
        self.decoder = torch.nn.Sequential(
            torch.nn.Linear(latent, hidden), torch.nn.ELU(), torch.nn.Linear(hidden, obs)
        )

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.field(z)

    def encode(self, t: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.zeros(x.shape[0], self.gru.hidden_size, dtype=x.dtype)
        m = mask.unsqueeze(-1).to(x.dtype)
        gaps = torch.diff(t, prepend=t[:1]).to(x.dtype)
        for k in reversed(range(len(t))):
            step = torch.cat([x[:, k] * m[:, k], m[:, k].expand_as(x[:, k]), gaps[k].expand(x.shape[0], 1)], -1)
            h = torch.where(m[:, k].bool(), self.gru(step, h), h)  # only observations update the state
        mean, log_var = self.to_z0(h).chunk(2, -1)
        return mean, log_var

    def trajectory(self, z0: torch.Tensor, t: torch.Tensor, **solve: Any) -> torch.Tensor:
        """``z(t)`` for every time, shape ``(batch, len(t), latent)``."""
        zs = symode.solve(self, z0, t.to(z0.dtype), **solve).ys
        assert isinstance(zs, torch.Tensor)  # a tensor state
        return zs.transpose(0, 1)


@dataclass
class LatentConfig:
    """What a latent-ODE training run does (the options of ``symode train latent-ode``)."""

    gradient: str = "symplectic_adjoint"
    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-6
    iterations: int = 300
    batch_size: int = 64
    lr: float = 1e-2
    seed: int = 0
    samples: int = 512
    times: int = 100
    eval_every: int = 100
    noise_std: float = 0.1

    def __post_init__(self) -> None:
        check_positive(self, "iterations", "batch_size", "samples", "times")
        if self.batch_size > self.samples:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed samples ({self.samples})")


def _elbo_loss(model: LatentODE, t, x, mask, config: LatentConfig, generator) -> tuple[torch.Tensor, int]:
    mean, log_var = model.encode(t, x, mask)
    z0 = mean + torch.randn(mean.shape, generator=generator) * (0.5 * log_var).exp()
    sol = symode.solve(model, z0, t.to(z0.dtype), gradient=config.gradient, **solve_options(config))
    zs = sol.ys
    assert isinstance(zs, torch.Tensor)
    x_hat = model.decoder(zs.transpose(0, 1))
    m = mask.unsqueeze(-1).to(x.dtype)
    nll = 0.5 * (((x_hat - x) / config.noise_std) ** 2 * m).sum((1, 2))
    kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(-1)
    return (nll + kl).mean() / x.shape[1], sol.stats.num_accepted


def interpolation_error(model: LatentODE, t, x, mask, config: LatentConfig) -> float:
    """The mean squared error at the unobserved times, from the posterior mean."""
    with torch.no_grad():
        mean, _ = model.encode(t, x, mask)
        x_hat = model.decoder(model.trajectory(mean, t, **solve_options(config)))
    hidden = (~mask).unsqueeze(-1).expand_as(x)
    return float((x_hat - x)[hidden].pow(2).mean())


def train_latent_ode(
    config: LatentConfig, out: str | Path | None = None, *, stream: TextIO | None = None, quiet: bool = False
) -> tuple[LatentODE, dict[str, Any]]:
    """Train the latent ODE; returns the model and the metrics (and writes ``out/metrics.json``);
    under torchrun, rank 0's (the others return ``{}``)."""
    world = join("cpu")
    try:
        return _train(config, out, world, stream, quiet)
    finally:
        world.leave()


def _train(config: LatentConfig, out, world: World, stream, quiet: bool) -> tuple[LatentODE, dict[str, Any]]:
    t, x, mask = spirals(config.samples + 128, times=config.times, seed=config.seed)
    train, test = slice(0, config.samples), slice(config.samples, None)
    torch.manual_seed(config.seed)
    model = LatentODE()
    untrained = interpolation_error(model, t, x[test], mask[test], config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.iterations)
    batches = torch.Generator().manual_seed(config.seed)  # the same global batches on every rank
    noise = torch.Generator().manual_seed(config.seed + 1 + world.rank)  # the posterior samples, per rank
    progress = Progress(config.iterations, stream=stream, quiet=quiet or not world.main, label="latent-ode")
    objective = world.wrap(Objective(model, _elbo_loss))
    losses, seconds, steps_seen, history = [], [], [], []
    for i in range(1, config.iterations + 1):
        start = time.perf_counter()
        index = shard(torch.randint(config.samples, (config.batch_size,), generator=batches), world)
        loss, steps = objective(t, x[train][index], mask[train][index], config, noise)
        optimizer.zero_grad()
        loss.backward()  # with several processes, DDP averages the gradients here
        optimizer.step()
        schedule.step()
        seconds.append(time.perf_counter() - start)
        losses.append(world.mean(float(loss.detach())))
        steps_seen.append(steps)
        if world.main and config.eval_every and (i % config.eval_every == 0 or i == config.iterations):
            error = interpolation_error(model, t, x[test], mask[test], config)
            history.append([i, error])
            progress.note(f"iteration {i}: held-out interpolation error {error:.4f} (untrained {untrained:.4f})")
        progress.update(i, loss=losses[-1], steps=steps)
    progress.close()
    if not world.main:
        world.barrier()
        return model, {}
    trained = interpolation_error(model, t, x[test], mask[test], config)

    def iteration() -> None:  # one training iteration on a fixed batch, for its peak memory
        index = torch.arange(config.batch_size) % config.samples
        _elbo_loss(model, t, x[train][index], mask[train][index], config, torch.Generator().manual_seed(0))[
            0
        ].backward()
        model.zero_grad()

    metrics = {
        "test_interpolation_mse": trained,
        "untrained_interpolation_mse": untrained,
        "improvement": untrained / trained if trained > 0 else None,
        "history": history,
        "train_loss": losses,
        "peak_memory_bytes": peak_memory(iteration).peak_bytes,
        "time_per_iteration_s": statistics.median(seconds),
        "steps_per_solve_last_10": statistics.mean(steps_seen[-10:]),
        "output_times_per_solve": config.times,
        "config": dataclasses.asdict(config),
        "processes": world.size,
        "torch": str(torch.__version__),
    }
    if out is not None:
        directory = Path(out)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), directory / "model.pt")
        (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
    world.barrier()
    return model, metrics

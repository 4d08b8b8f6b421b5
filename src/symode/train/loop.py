"""Training a continuous normalizing flow: ``train_cnf(CNFConfig(...))`` (``symode train cnf``).

Every random draw comes from two seeded generators, one for the batches and one for the
Hutchinson noise, saved in each checkpoint with the model and the optimizer: a run resumed
from a checkpoint ends with exactly the parameters of an uninterrupted one. Checkpoints
hold only tensors and plain Python values and load with ``torch.load(weights_only=True)``.

What a run writes to ``out``: ``metrics.json`` (the final held-out negative log-likelihood
``test_nll`` in nats, its history on the validation split, the training losses, the peak
memory of one iteration, the median time per iteration, the steps per solve, the
configuration), ``checkpoint.pt``, and with matplotlib ``density.png`` and ``samples.png``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

import symode
from symode.bench import peak_memory

from ._common import check_positive, solve_options
from .choose import choose_gradient
from .cnf import CNF
from .data import Splits, load
from .distributed import World, join, shard
from .progress import Progress

__all__ = ["CNFConfig", "evaluate_nll", "load_checkpoint", "train_cnf"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class CNFConfig:
    """What a CNF training run does (the options of ``symode train cnf``)."""

    data: str = "moons"
    gradient: str = "symplectic_adjoint"
    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    iterations: int = 200
    batch_size: int = 512
    lr: float = 1e-3
    seed: int = 0
    hidden: tuple[int, ...] = (64, 64, 64)
    blocks: int = 1
    layer: str = "concatsquash"
    activation: str = "softplus"
    trace: str = "hutchinson"
    time: float = 0.5
    learn_time: bool = True
    kinetic: float = 0.0
    jacobian: float = 0.0
    eval_every: int = 50
    eval_size: int = 2000
    checkpoint_every: int = 0
    memory_budget: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    n_train: int = 20000
    plots: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        check_positive(self, "iterations", "batch_size", "eval_size", "blocks")
        self.hidden = tuple(int(h) for h in self.hidden)
        if (self.gradient == "auto") != (self.memory_budget is not None):
            raise ValueError(
                "gradient='auto' and memory_budget go together: give both (e.g. --gradient auto --memory-budget 2GiB) "
                f"or neither; got gradient={self.gradient!r}, memory_budget={self.memory_budget!r}"
            )


def _model(config: CNFConfig, dim: int, device: str) -> CNF:
    torch.manual_seed(config.seed)  # the initial weights
    model = CNF(
        dim,
        config.hidden,
        blocks=config.blocks,
        layer=config.layer,
        activation=config.activation,
        trace=config.trace,
        time=config.time,
        learn_time=config.learn_time,
        regularise=bool(config.kinetic or config.jacobian),
    )
    return model.to(device=device, dtype=_DTYPES[config.dtype])


def evaluate_nll(model: CNF, x: torch.Tensor, config: CNFConfig, batch: int = 1000) -> float:
    """The mean negative log-likelihood of ``x`` in nats: the exact trace up to 8 dimensions,
    else Hutchinson's estimate with a fixed seed."""
    generator = torch.Generator().manual_seed(12345)
    trace = "exact" if model.dim <= 8 else None
    total = 0.0
    with torch.no_grad():
        for chunk in x.split(batch):
            chunk = chunk.to(model.log_time.device)
            log_p, _, _ = model.log_prob(chunk, generator=generator, trace=trace, **solve_options(config))
            total += float(log_p.sum())
    return -total / len(x)


class _Run:
    """The state of a run: the model, the optimizer, the generators and the history."""

    def __init__(self, config: CNFConfig, data: Splits, world: World):
        self.config, self.data, self.world = config, data, world
        self.model = _model(config, data.dim, world.device)
        self.trained = world.wrap(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.batches = torch.Generator().manual_seed(config.seed)  # the same global batches on every rank
        self.noise = torch.Generator().manual_seed(config.seed + 1 + world.rank)
        self.iteration = 0
        self.history: dict[str, list[Any]] = {"loss": [], "val_nll": [], "steps": [], "seconds": []}
        self.gradient: Any = config.gradient if config.gradient != "auto" else self._choose()

    def _choose(self) -> Any:
        """``gradient="auto"``: the fastest exact method that fits the memory budget, from a probe
        of the first block on a batch (the steps counted once and multiplied by the blocks)."""
        c = self.config
        batch = shard(self.data.train[: c.batch_size], self.world).to(self.world.device)
        block = self.model.blocks[0]
        zero = torch.zeros(batch.shape[0], dtype=batch.dtype, device=batch.device)
        state = (batch, zero, zero, zero) if c.kinetic or c.jacobian else (batch, zero)
        block.noise = torch.randn(batch.shape, generator=torch.Generator().manual_seed(0), dtype=batch.dtype)
        end = self.model.log_time[0].detach().exp()
        t = torch.stack([torch.zeros_like(end), end])
        options = solve_options(c)
        with torch.no_grad():
            probe = symode.solve(block, state, t, **options).stats.num_accepted
        device = None if self.world.device == "cpu" else self.world.device
        assert c.memory_budget is not None  # checked by CNFConfig
        choice = choose_gradient(
            block, state, t, memory_budget=c.memory_budget, expected_steps=probe * c.blocks, device=device, **options
        )
        return choice.gradient

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        c = self.config
        log_p, regs, stats = self.trained(x, gradient=self.gradient, generator=self.noise, **solve_options(c))
        loss = -log_p.mean() + c.kinetic * regs[0].mean() + c.jacobian * regs[1].mean()
        return loss, sum(s.num_accepted for s in stats)

    def step(self) -> tuple[float, int]:
        data = self.data.train
        index = torch.randint(len(data), (self.config.batch_size,), generator=self.batches)
        x = shard(data[index], self.world).to(self.world.device)
        self.optimizer.zero_grad()
        loss, steps = self.loss(x)
        loss.backward()  # with several processes, DDP averages the gradients here
        self.optimizer.step()
        self.iteration += 1
        return self.world.mean(float(loss.detach())), steps

    def state(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batches": self.batches.get_state(),
            "noise": self.noise.get_state(),
            "history": self.history,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.set_state(state["batches"])
        self.noise.set_state(state["noise"])
        self.iteration, self.history = state["iteration"], state["history"]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`train_cnf` (``weights_only=True``: no code is run)."""
    return torch.load(path, weights_only=True)


def train_cnf(
    config: CNFConfig,
    out: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    stream: TextIO | None = None,
    quiet: bool = False,
    stop_after: int | None = None,
) -> tuple[CNF, dict[str, Any]]:
    """Train a CNF as ``config`` says; returns the model and the metrics (also written to
    ``out/metrics.json`` when ``out`` is given). ``resume``: a checkpoint to continue from
    (its configuration must equal ``config``). ``stop_after``: stop after that iteration, as
    an interrupted run would (for resuming)."""
    data = load(config.data, n_train=config.n_train, seed=config.seed, dtype=_DTYPES[config.dtype])
    world = join(config.device)
    try:
        run = _Run(config, data, world)
        if resume is not None:
            state = load_checkpoint(resume)
            if state["config"] != dataclasses.asdict(config):
                raise ValueError(f"resume: the checkpoint {resume} was written with another configuration")
            run.restore(state)
        directory = None if out is None or not world.main else Path(out)
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        label = f"cnf {config.data}" + (f" ({world.size} processes)" if world.size > 1 else "")
        progress = Progress(config.iterations, stream=stream, quiet=quiet or not world.main, label=label)
        if data.note:
            progress.note(f"data: {data.note}")
        last = config.iterations if stop_after is None else min(stop_after, config.iterations)
        while run.iteration < last:
            _iteration(run, progress, directory)
        progress.close()
        metrics = _finish(run, data, directory) if world.main else {}
        world.barrier()
    finally:
        world.leave()
    return run.model, metrics


def _iteration(run: _Run, progress: Progress, directory: Path | None) -> None:
    """One training step, and what follows it: the held-out NLL, the progress, a checkpoint."""
    config = run.config
    start = time.perf_counter()
    loss, steps = run.step()
    run.history["seconds"].append(time.perf_counter() - start)
    run.history["loss"].append(loss)
    run.history["steps"].append(steps)
    i = run.iteration
    if run.world.main and config.eval_every and (i % config.eval_every == 0 or i == config.iterations):
        nll = evaluate_nll(run.model, run.data.val[: config.eval_size], config)
        run.history["val_nll"].append([i, nll])
        progress.note(f"iteration {i}: held-out NLL {nll:.4f} nats")
    progress.update(i, loss=loss, steps=steps)
    if directory is not None and config.checkpoint_every and i % config.checkpoint_every == 0:
        torch.save(run.state(), directory / "checkpoint.pt")


def _finish(run: _Run, data: Splits, directory: Path | None) -> dict[str, Any]:
    """Rank 0: the metrics, and with a directory the checkpoint, ``metrics.json`` and plots."""
    config = run.config
    finished = run.iteration == config.iterations
    metrics: dict[str, Any] = _metrics(run, data) if finished else {"iteration": run.iteration}
    if directory is not None:
        torch.save(run.state(), directory / "checkpoint.pt")
        if finished:
            (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
            if config.plots:
                from .plots import plot_cnf

                plots: list[str] = plot_cnf(run.model, data, config, directory)
                metrics["plots"] = plots
    return metrics


def _metrics(run: _Run, data: Splits) -> dict[str, Any]:
    config = run.config
    x = data.train[: config.batch_size].to(run.world.device)

    def iteration() -> None:
        generator = torch.Generator().manual_seed(0)
        log_p, _, _ = run.model.log_prob(x, gradient=run.gradient, generator=generator, **solve_options(config))
        (-log_p.mean()).backward()
        run.model.zero_grad()

    device = run.world.device
    memory = peak_memory(iteration, device=device if device != "cpu" else None).peak_bytes
    seconds = run.history["seconds"]
    return {
        "test_nll": evaluate_nll(run.model, data.test[: config.eval_size], config),
        "val_nll": run.history["val_nll"],
        "train_loss": run.history["loss"],
        "peak_memory_bytes": memory,
        "time_per_iteration_s": statistics.median(seconds) if seconds else None,
        "steps_per_solve_last_10": statistics.mean(run.history["steps"][-10:]) / config.blocks,
        "iterations": run.iteration,
        "data_note": data.note,
        "config": dataclasses.asdict(config),
        "processes": run.world.size,
        "gradient": repr(run.gradient) if not isinstance(run.gradient, str) else run.gradient,
        "torch": str(torch.__version__),
    }

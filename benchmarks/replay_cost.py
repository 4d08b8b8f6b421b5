"""What replaying a stochastic f's random numbers costs: memory and time of one training
iteration of the symplectic adjoint (and checkpointing) with a dropout MLP in training mode
(random numbers replayed) against the same MLP in eval mode (nothing to replay).

The field: ``symode.bench.MLPField``-like, 32 -> 256 -> 256 -> 32, tanh, with Dropout(0.3)
after each hidden layer; batch 64, float32, rk4 with fixed steps 1/N on [0, 1]; loss the mean
of y(1)^2. Memory: the bench's deterministic profiler measure (``symode.bench.peak_memory``);
time: the median over interleaved repeats, reported as the ratio train / eval measured in the
same run.

    python benchmarks/replay_cost.py                 # N = 10 100, 15 repeats (~1 minute)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import symode
from symode.bench import peak_memory


class DropoutMLP(torch.nn.Module):
    def __init__(self, dim: int, width: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, width),
            torch.nn.Tanh(),
            torch.nn.Dropout(0.3),
            torch.nn.Linear(width, width),
            torch.nn.Tanh(),
            torch.nn.Dropout(0.3),
            torch.nn.Linear(width, dim),
        )

    def forward(self, t, y):
        return self.net(y)


def iteration(field, y0, n, gradient):
    ys = symode.odeint(
        field, y0, torch.tensor([0.0, 1.0]), method="rk4", options={"step_size": 1.0 / n}, gradient=gradient
    )
    ys[-1].pow(2).mean().backward()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--gradients", nargs="+", default=["symplectic_adjoint", "checkpoint"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    field = DropoutMLP(32, 256)
    y0 = torch.randn(64, 32, requires_grad=True)
    print(
        "| gradient | N | peak bytes eval | peak bytes train (replay) | extra bytes | extra per step "
        "| time train / eval |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for gradient in args.gradients:
        for n in args.steps:
            peaks = {}
            for mode in ("eval", "train"):
                field.train(mode == "train")
                peaks[mode] = peak_memory(iteration, field, y0, n, gradient).peak_bytes
            times: dict[str, list[float]] = {"eval": [], "train": []}
            for k in range(args.repeats + 1):
                for mode in ("eval", "train") if k % 2 else ("train", "eval"):
                    field.train(mode == "train")
                    start = time.perf_counter()
                    iteration(field, y0, n, gradient)
                    if k:  # the first round warms up
                        times[mode].append(time.perf_counter() - start)
            ratio = statistics.median(times["train"]) / statistics.median(times["eval"])
            extra = peaks["train"] - peaks["eval"]
            print(
                f"| {gradient} | {n} | {peaks['eval']} | {peaks['train']} | {extra} | {extra / n:.0f} | {ratio:.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Float32 round-off in the gradient: the symplectic adjoint against backprop and the
continuous adjoint, each against the float64 gradient on the same grid.

The problem: an MLP vector field (``symode.bench.MLPField``: 16 -> 64 -> 64 -> 16, tanh) on
``t in [0, 1]`` with fixed steps ``1/N`` (exactly ``N`` steps), a batch of 64 random initial
states, ``loss = sum(w * y(1))`` with a fixed random ``w``. For each tableau, ``N`` and seed
(the seed draws the weights, ``y0`` and ``w``):

* the truth: backprop's gradient in float64 (the same weights, ``y0`` and grid, converted);
* each gradient method's gradient in float32; its error: the max over the parameter tensors
  and ``y0`` of ``||g - g_ref||_2 / ||g_ref||_2``.

The continuous adjoint's backward solve takes the same fixed steps (``FixedSteps(step_size=1/N)``),
so its error is its discretisation error plus round-off; on this problem, with rk4, the
discretisation part is below float32's round-off already at the smallest ``N``, so its error
is round-off dominated too (it does not shrink with ``N``). The exact methods' error is
round-off only, which grows with ``N``.

Printed: a markdown table, per tableau and ``N``, of the median (and max) error over the seeds
per method, and the ratios of the symplectic adjoint's median to backprop's and to the
continuous adjoint's.

    python benchmarks/rounding.py                    # dopri5 and rk4, N = 10 100 1000, seeds 0-4 (~3 minutes)
    python benchmarks/rounding.py --steps 10 100 --seeds 0 1   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import symode
from symode.bench import MLPField
from symode.gradients import Backprop, Checkpoint, ContinuousAdjoint, SymplecticAdjoint


def gradients(field: torch.nn.Module, y0: torch.Tensor, w: torch.Tensor, method: str, n: int, gradient):
    y0 = y0.detach().clone().requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=y0.dtype)
    ys = symode.odeint(field, y0, t, method=method, options={"step_size": 1.0 / n}, gradient=gradient)
    loss = (ys[-1] * w).sum()
    return torch.autograd.grad(loss, [y0, *field.parameters()])


def error(grads, reference) -> float:
    return max(float((g.double() - r).norm() / r.norm()) for g, r in zip(grads, reference))


def contestants(n: int) -> dict[str, object]:
    return {
        "backprop": Backprop(),
        "checkpoint": Checkpoint(),
        "symplectic_adjoint": SymplecticAdjoint(),
        "adjoint": ContinuousAdjoint(steps=symode.FixedSteps(step_size=1.0 / n)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["dopri5", "rk4"])
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 100, 1000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    names = list(contestants(1))
    print("| method | N | " + " | ".join(f"{n} median (max)" for n in names) + " | SA / backprop | SA / adjoint |")
    print("| --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- |")
    verdict = True
    for method in args.methods:
        for n in args.steps:
            errors: dict[str, list[float]] = {name: [] for name in names}
            for seed in args.seeds:
                torch.manual_seed(seed)
                field64 = MLPField(args.dim, args.width, depth=2, activation="tanh").double()
                y0 = torch.randn(args.batch, args.dim, dtype=torch.float64)
                w = torch.randn(args.batch, args.dim, dtype=torch.float64)
                reference = gradients(field64, y0, w, method, n, Backprop())
                field32 = MLPField(args.dim, args.width, depth=2, activation="tanh")
                field32.load_state_dict({k: v.float() for k, v in field64.state_dict().items()})
                for name, gradient in contestants(n).items():
                    grads = gradients(field32, y0.float(), w.float(), method, n, gradient)
                    errors[name].append(error(grads, reference))
                print(f"{method} N={n} seed={seed} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
            med = {name: statistics.median(e) for name, e in errors.items()}
            cells = " | ".join(f"{med[name]:.2e} ({max(errors[name]):.2e})" for name in names)
            sa = med["symplectic_adjoint"]
            verdict &= sa <= med["backprop"] and sa <= med["adjoint"]
            print(f"| {method} | {n} | {cells} | {sa / med['backprop']:.2f} | {sa / med['adjoint']:.2f} |", flush=True)
    print(
        f"\nsymplectic adjoint's median <= backprop's and <= the continuous adjoint's in every row: {verdict}"
        f"  ({time.perf_counter() - start:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

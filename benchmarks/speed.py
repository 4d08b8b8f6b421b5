"""Time per training iteration of every exact gradient method, as ratios to backprop.

The compute-bound case: an MLP vector field 43 -> 860 -> 860 -> 43 (softplus,
``symode.bench.MLPField``), batch 256, float32, rk4 with 50 fixed steps on [0, 1], loss = mean
square of y(1), one forward + backward per iteration. The methods take turns (A B C ... A B C
..., ``symode.bench.interleave``) after one warm-up each, so that their ratios are measured
under the same machine conditions; the median of the repeats is reported. Theory
(recomputation plus one extra evaluation per stage): symplectic adjoint ~1.6x backprop, with
stored stages ~1.33x.

    python benchmarks/speed.py [--repeats 5] [--threads 1] [--batch 256] [--steps 50] [--clock cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import symode
from symode.bench import MLPField, interleave


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=860)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--method", default="rk4")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: time.perf_counter; cpu: the process's CPU time (time.process_time), steadier "
        "on a shared machine for a single-threaded run (default: wall)",
    )
    args = p.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    func = MLPField(43, args.width)
    y0 = torch.randn(args.batch, 43, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    methods = {
        "backprop": symode.Backprop(),
        "checkpoint": symode.Checkpoint(),
        "symplectic_adjoint": symode.SymplecticAdjoint(),
        "symplectic_adjoint(store_stages)": symode.SymplecticAdjoint(store_stages=True),
    }

    def iteration(gradient):
        ys = symode.odeint(func, y0, t, method=args.method, options={"step_size": 1.0 / args.steps}, gradient=gradient)
        ys[-1].pow(2).mean().backward()

    for gradient in methods.values():
        iteration(gradient)  # warm-up
    times = dict(
        zip(methods, interleave([lambda g=g: iteration(g) for g in methods.values()], args.repeats, clock=clock))
    )
    ref = statistics.median(times["backprop"])
    print(
        f"MLP 43 -> {args.width} -> {args.width} -> 43 softplus, batch {args.batch}, {args.method} "
        f"{args.steps} steps, float32, {args.threads} thread(s), median of {args.repeats}, interleaved, "
        f"{args.clock} clock\n"
    )
    print("| method | median s | x backprop |\n| --- | ---: | ---: |")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {med / ref:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

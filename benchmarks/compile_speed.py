"""What ``compile=True`` buys: time per training iteration, eager against compiled, and what
the first compilation costs, on a network small enough for per-operation overhead to dominate.

The problem: ``dy/dt = MLP(y)``, MLP 2 -> 16 -> 2 (tanh), batch 16, on [0, 1], backprop
through the solver (one forward + backward per iteration):

* ``rk4`` and ``rk38``: 200 fixed steps (``FixedSteps(step_size=1/200)``);
* ``dopri5``: adaptive steps, rtol = atol = 1e-8 (the step counts are printed).

Per method, the eager and the compiled iteration take turns (``symode.bench.interleave``)
for ``--repeats`` rounds after a warm-up that compiles; reported: the medians, the speed-up
eager / compiled (median over rounds of the per-round ratio, with its range) and the
gradient's relative difference compiled vs eager.

The first compilation is timed in fresh processes: the first compiled iteration with an empty
inductor cache (``TORCHINDUCTOR_CACHE_DIR`` set to a new directory: a cold start), then again
in a second process with that cache (a warm start), each minus the process's eager iteration.

    python benchmarks/compile_speed.py [--methods rk4 rk38 dopri5] [--repeats 15] [--clock cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import symode
from symode.bench import MLPField, interleave, machine

STEPS = 200
TOL = 1e-8


def case(method: str):
    """``(func, y0, run(compile) -> None)``: one training iteration of the problem."""
    torch.manual_seed(0)
    func = MLPField(2, 16, depth=1, activation="tanh")
    y0 = torch.randn(16, 2, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    tableau = symode.get_tableau(method)
    steps = symode.AdaptiveSteps(rtol=TOL, atol=TOL) if tableau.adaptive else symode.FixedSteps(step_size=1 / STEPS)

    def run(compile: bool) -> int:
        sol = symode.solve(func, y0, t, method=method, steps=steps, compile=compile)
        sol.ys[-1].pow(2).mean().backward()
        return sol.stats.num_accepted

    return func, y0, run


def gradient(func, y0, run, compile: bool) -> torch.Tensor:
    func.zero_grad()
    y0.grad = None
    run(compile)
    return torch.cat([y0.grad.reshape(-1)] + [p.grad.reshape(-1) for p in func.parameters()])


def first_compile(method: str) -> dict:
    """In this (fresh) process: seconds of the first compiled iteration minus an eager one."""
    run = case(method)[2]
    start = time.perf_counter()
    run(False)
    eager = time.perf_counter() - start
    start = time.perf_counter()
    run(True)
    return {"first_compiled_s": time.perf_counter() - start, "eager_s": eager}


def child(method: str, cache: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    out = subprocess.run(
        [sys.executable, __file__, "--child", method], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(method: str, repeats: int, clock) -> dict:
    func, y0, run = case(method)
    g_eager, g_compiled = gradient(func, y0, run, False), gradient(func, y0, run, True)  # warm-up
    steps = run(False), run(True)
    eager, compiled = interleave([lambda: run(False), lambda: run(True)], repeats, clock=clock)
    rounds = [a / b for a, b in zip(eager, compiled)]
    with tempfile.TemporaryDirectory() as cache:
        cold, warm = child(method, cache), child(method, cache)
    return {
        "method": method,
        "steps": "/".join(map(str, steps)),
        "eager_ms": statistics.median(eager) * 1e3,
        "compiled_ms": statistics.median(compiled) * 1e3,
        "speedup": statistics.median(rounds),
        "speedup_min": min(rounds),
        "speedup_max": max(rounds),
        "grad_rel_diff": float((g_compiled - g_eager).norm() / g_eager.norm()),
        "cold_compile_s": cold["first_compiled_s"] - cold["eager_s"],
        "warm_compile_s": warm["first_compiled_s"] - warm["eager_s"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["rk4", "rk38", "dopri5"])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or the process's CPU time (steadier when other processes share the CPUs)",
    )
    p.add_argument("--child", metavar="METHOD", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(first_compile(args.child)))
        return 0
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    m = machine()
    print(
        f"MLP 2-16-2 tanh, batch 16, backprop; {args.threads} thread(s), {args.clock} clock, median of "
        f"{args.repeats}, interleaved; {m['nproc']} CPUs, {m['cpu']}, torch {m['torch']}\n"
    )
    print(
        "| method | steps eager/compiled | eager | compiled | speed-up eager/compiled (per-round range) "
        "| grad rel. diff "
        "| first compile, cold cache | warm cache |"
    )
    print("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for method in args.methods:
        r = measure(method, args.repeats, clock)
        print(
            f"| {method} | {r['steps']} | {r['eager_ms']:.1f} ms | {r['compiled_ms']:.1f} ms | {r['speedup']:.2f}x "
            f"({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) | {r['grad_rel_diff']:.1e} | "
            f"{r['cold_compile_s']:.1f} s | {r['warm_compile_s']:.1f} s |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time (and memory) of symode against the peers' own calls, as ratios measured in one run.

Two cases, each timed with the contestants taking turns (A B A B ...,
``symode.bench.interleave``) after a warm-up, the median of the repeats reported with the ratio
symode / peer and the range of the per-round ratios:

* ``overhead``: per-step overhead on a tiny network, where the Python work per call of ``f``
  dominates: MLP 2 -> 16 -> 2 (tanh), batch 16, 200 fixed steps of Kutta's 3/8 rule on
  [0, 1] (torchdiffeq's ``"rk4"``, symode's ``"rk38"``), one forward + backward.
  symode's backprop, eager and with ``compile=True``, against ``torchdiffeq.odeint``
  (target: at most 0.7x its time).
* ``compute``: the compute-bound MLP 43 -> 860 -> 860 -> 43 (softplus), batch 256, classical
  rk4, 50 fixed steps (``symode.bench.MLPField``): symode's symplectic adjoint against the
  authors' ``torch_symplectic_adjoint.odeint_symplectic_adjoint`` (target: at most 0.9x its
  time and no more memory), with the peak memory of both (``symode.bench.peak_memory``,
  measured in separate runs).

The peers are called directly through their public functions (not through
``symode.bench.peers``, whose wrapper would add a Python call per evaluation to the peer's
time), on the same grid: every peer and symode step from t = 0 by exactly ``1/N``. A peer that is not
installed is reported and skipped. Install them beside symode with
``pip install torchdiffeq==0.2.5`` and the authors' code from its public repository (branch
``beta``; see ``symode.bench.peers``).

    python benchmarks/peers_speed.py [--case overhead compute] [--repeats 30 9] [--threads 1] [--clock cpu]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch

import symode
from symode.bench import MLPField, interleave, machine, peak_memory


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        print(f"  ({module} is not installed: {exc}; skipped)")
        return None


def _cases(name: str):
    """(description, func, y0, t, {label: iteration}) of a case; the first label is symode's."""
    torch.manual_seed(0)
    t = torch.tensor([0.0, 1.0])
    if name == "overhead":
        func, y0, steps = MLPField(2, 16, depth=1, activation="tanh"), torch.randn(16, 2, requires_grad=True), 200
        desc = "MLP 2-16-2 tanh, batch 16, 200 steps of the 3/8 rule, backprop"
        runs = {
            "symode odeint (backprop)": lambda: symode.odeint(
                func, y0, t, method="rk38", options={"step_size": 1.0 / steps}
            ),
            "symode odeint (backprop), compile=True": lambda: symode.odeint(
                func, y0, t, method="rk38", options={"step_size": 1.0 / steps}, compile=True
            ),
        }
        tdq = _optional("torchdiffeq")
        if tdq is not None:
            runs["torchdiffeq odeint"] = lambda: tdq.odeint(
                func, y0, t, method="rk4", options={"step_size": 1.0 / steps}
            )
    elif name == "compute":
        func, y0, steps = MLPField(43, 860), torch.randn(256, 43, requires_grad=True), 50
        desc = "MLP 43-860-860-43 softplus, batch 256, rk4 50 steps, symplectic adjoint"
        runs = {
            "symode symplectic adjoint": lambda: symode.odeint_symplectic_adjoint(
                func, y0, t, method="rk4", options={"step_size": 1.0 / steps}
            )
        }
        tsa = _optional("torch_symplectic_adjoint")
        if tsa is not None:
            grid = torch.linspace(0.0, 1.0, steps + 1)  # its fixed-step methods step once per output interval

            def authors():
                return tsa.odeint_symplectic_adjoint(
                    func, y0, grid, method="rk4", adjoint_params=tuple(func.parameters())
                )[[0, -1]]

            runs["authors odeint_symplectic_adjoint"] = authors
    else:
        raise ValueError(f"unknown case {name!r}")
    return desc, func, y0, runs


def _iteration(solve):
    def run():
        ys = solve()
        ys[-1].pow(2).mean().backward()

    return run


def measure(name: str, repeats: int, memory: bool, clock) -> None:
    desc, func, y0, runs = _cases(name)
    iterations = {label: _iteration(solve) for label, solve in runs.items()}
    print(f"\n### {name}: {desc}, {torch.get_num_threads()} thread(s), median of {repeats}, interleaved\n")
    grads = {}
    for label, it in iterations.items():  # warm-up (and compilation), and the gradients to compare
        func.zero_grad()
        y0.grad = None
        it()
        grads[label] = torch.cat([y0.grad.reshape(-1)] + [p.grad.reshape(-1) for p in func.parameters()])
    times = dict(zip(iterations, interleave(list(iterations.values()), repeats, clock=clock)))
    labels = list(iterations)
    ours = labels[0]
    peers = [label for label in labels if not label.startswith("symode")]
    ref = peers[0] if peers else ours
    print(f"| run | median | x {ref} (median; per-round min-max) | gradient rel. diff to {ours} |")
    print("| --- | ---: | --- | ---: |")
    for label in labels:
        med = statistics.median(times[label])
        rounds = [a / b for a, b in zip(times[label], times[ref])]
        diff = float((grads[label] - grads[ours]).norm() / grads[ours].norm())
        ratio = med / statistics.median(times[ref])
        print(f"| {label} | {med * 1e3:.1f} ms | {ratio:.3f} ({min(rounds):.3f}-{max(rounds):.3f}) | {diff:.1e} |")
    if memory:
        print("\n| run | peak memory (MiB) |\n| --- | ---: |")
        for label, it in iterations.items():
            print(f"| {label} | {peak_memory(it).peak_mib:.2f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", nargs="+", choices=("overhead", "compute"), default=["overhead", "compute"])
    p.add_argument(
        "--repeats",
        type=int,
        nargs="+",
        default=None,
        help="repeats per case, in --case order (default: 30 for overhead, 9 for compute)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs of the compute case")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: time.perf_counter; cpu: the process's CPU time (time.process_time), steadier "
        "on a shared machine for a single-threaded run (default: wall)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    defaults = {"overhead": 30, "compute": 9}
    repeats = args.repeats or [defaults[c] for c in args.case]
    if len(repeats) != len(args.case):
        p.error(f"--repeats takes one number per case: {len(args.case)} case(s), {len(repeats)} number(s)")
    print(f"torch {torch.__version__}, symode {machine()['symode']}")
    for case, n in zip(args.case, repeats):
        measure(
            case,
            n,
            memory=case == "compute" and not args.no_memory,
            clock=time.perf_counter if args.clock == "wall" else time.process_time,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

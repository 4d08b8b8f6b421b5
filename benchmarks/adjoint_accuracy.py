"""The symplectic adjoint against the continuous adjoint at equal gradient accuracy, on a
trained continuous normalizing flow (the paper's claim, in small).

A CNF is trained on moons with ``symode.train`` (the defaults of ``symode train cnf``, float32)
for each of ``--at`` iterations. At each point, one batch of 512 test points, one Hutchinson
noise draw and the training solver (dopri5, rtol = atol = 1e-5) define the loss. The reference
is its exact gradient: backprop in float64 through the same solve. Then, in float32:

* the symplectic adjoint: the exact gradient, so its error is float32 round-off;
* the continuous adjoint with its backward tolerance swept (``--adjoint-tols``): the error
  falls with the tolerance, and the time rises.

Each row gives the gradient's relative error (``||g - g_ref|| / ||g_ref||`` over all
parameters), the median time of an iteration (interleaved repeats) and the backward
evaluations of ``f``. The continuous adjoint matches the symplectic adjoint's accuracy at the
first tolerance whose error is at most the symplectic adjoint's.

    python benchmarks/adjoint_accuracy.py                 # ~5 minutes on 2 CPUs
    python benchmarks/adjoint_accuracy.py --at 0 100 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

import symode
from symode.bench import interleave, rel_diffs
from symode.train import CNFConfig, load, train_cnf


def loss_and_grads(model, x, gradient, generator_seed: int, steps, method="dopri5"):
    generator = torch.Generator().manual_seed(generator_seed)
    log_p, _, stats = model.log_prob(x, gradient=gradient, generator=generator, method=method, steps=steps)
    loss = -log_p.mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return grads, sum(s.nfe_backward for s in stats), sum(s.num_accepted for s in stats)


def measure(model, x, tolerances, repeats: int) -> list[dict]:
    steps = symode.AdaptiveSteps(rtol=1e-5, atol=1e-5)
    reference64 = copy.deepcopy(model).double()
    ref, _, n_steps = loss_and_grads(reference64, x.double(), "backprop", 0, steps)
    methods: list[tuple[str, object]] = [("symplectic adjoint", symode.SymplecticAdjoint())]
    methods += [
        (f"continuous adjoint, tol {tol:g}", symode.ContinuousAdjoint(rtol=tol, atol=tol)) for tol in tolerances
    ]
    rows = []
    for name, gradient in methods:
        grads, nfe_backward, _ = loss_and_grads(model, x, gradient, 0, steps)
        rows.append({"method": name, "error": rel_diffs(grads, ref)[1], "nfe_backward": nfe_backward, "steps": n_steps})
    fns = [lambda g=gradient: loss_and_grads(model, x, g, 0, steps) for _, gradient in methods]
    times = interleave(fns, repeats)
    for row, t in zip(rows, times):
        row["seconds"] = statistics.median(t)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--at", type=int, nargs="+", default=[0, 200], help="training iterations to measure at")
    parser.add_argument("--adjoint-tols", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x = load("moons", seed=0).test[:512]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for iterations in args.at:
        if iterations:
            model, _ = train_cnf(CNFConfig(data="moons", iterations=iterations, eval_every=0, plots=False), quiet=True)
        else:
            model, _ = train_cnf(CNFConfig(data="moons", iterations=1, lr=0.0, eval_every=0, plots=False), quiet=True)
        rows = measure(model, x, args.adjoint_tols, args.repeats)
        sa = rows[0]
        print(f"\n### after {iterations} training iterations ({sa['steps']} forward steps per solve)\n")
        print("| gradient | relative error | time per iteration | x symplectic adjoint | backward evaluations of f |")
        print("| --- | --- | --- | --- | --- |")
        for row in rows:
            ratio = row["seconds"] / sa["seconds"]
            print(
                f"| {row['method']} | {row['error']:.1e} | {row['seconds'] * 1e3:.0f} ms | {ratio:.2f} | "
                f"{row['nfe_backward']} |"
            )
        matched = next((row for row in rows[1:] if row["error"] <= sa["error"]), None)
        if matched is None:
            print("\nno continuous-adjoint tolerance tried reached the symplectic adjoint's error")
        else:
            print(f"\nequal accuracy: {matched['method']}, {matched['seconds'] / sa['seconds']:.2f}x the time")


if __name__ == "__main__":
    main()

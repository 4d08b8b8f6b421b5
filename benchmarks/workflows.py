"""Every gradient method on every training workflow: the results page's per-workflow table.

Each workflow of ``symode train`` (``cnf``, ``kdv``, ``cahn-hilliard``, ``latent-ode``) is
trained once per gradient method, from the same seed, one run after another in this process's
shell (so their times are comparable), and its ``metrics.json`` is read back. The table gives
the final held-out metric, the deterministic peak memory of one training iteration
(``symode.bench.peak_memory``), the median time per iteration and the steps per solve.

    python benchmarks/workflows.py                                   # all four, the short runs
    python benchmarks/workflows.py --workflows cnf --iterations 1000 --gradients backprop symplectic_adjoint
    python benchmarks/workflows.py --out /tmp/runs                   # keep the runs' directories

``--threads`` (default 1) sets ``OMP_NUM_THREADS`` and torch's threads of every run, so that
two runs do not compete for the shared cores and the times are each run's own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: each workflow: the metric reported and the run's default iterations (short enough for CPUs)
WORKFLOWS = {
    "cnf": ("test_nll", "test NLL", 200),
    "kdv": ("test_rollout_mse", "held-out rollout MSE", 60),
    "cahn-hilliard": ("test_rollout_mse", "held-out rollout MSE", 40),
    "latent-ode": ("test_interpolation_mse", "held-out interpolation MSE", 150),
}
GRADIENTS = ["backprop", "checkpoint", "symplectic_adjoint", "adjoint"]


def train(workflow: str, gradient: str, iterations: int, seed: int, out: Path, threads: int) -> dict:
    command = [sys.executable, "-m", "symode", "train", workflow, "--gradient", gradient]
    command += ["--iterations", str(iterations), "--seed", str(seed), "--quiet", "--out", str(out)]
    command += [] if workflow == "latent-ode" else ["--no-plots"]  # the latent ODE draws no plots
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_s"] = time.perf_counter() - start
    metrics["command"] = " ".join(["symode", *command[3:11]])
    return metrics


def row(workflow: str, gradient: str, metrics: dict) -> str:
    key, label, _ = WORKFLOWS[workflow]
    value = f"{label} {metrics[key]:.5g}"
    if "untrained_" + key.removeprefix("test_") in metrics:
        value += f" (untrained {metrics['untrained_' + key.removeprefix('test_')]:.3g})"
    memory = metrics.get("peak_memory_bytes")
    memory_text = f"{memory / 1e6:.1f} MB" if memory else "-"
    steps = metrics.get("steps_per_solve_last_10")
    return (
        f"| {workflow} | {gradient} | {value} | {memory_text} | {metrics['time_per_iteration_s']:.3f} s "
        f"| {steps:.1f} | {metrics['wall_s']:.0f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflows", nargs="+", default=list(WORKFLOWS), choices=list(WORKFLOWS))
    parser.add_argument("--gradients", nargs="+", default=GRADIENTS)
    parser.add_argument("--iterations", type=int, default=None, help="default: each workflow's short run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="keep each run's directory here")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="symode-workflows-"))
    columns = ["workflow", "gradient", "final metric", "peak memory of an iteration", "time per iteration"]
    print("| " + " | ".join([*columns, "steps per solve", "wall"]) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for workflow in args.workflows:
        iterations = args.iterations or WORKFLOWS[workflow][2]
        for gradient in args.gradients:
            metrics = train(workflow, gradient, iterations, args.seed, root / f"{workflow}-{gradient}", args.threads)
            print(row(workflow, gradient, metrics), flush=True)
        print(f"<!-- {workflow}: {metrics['command']} (G = each gradient) -->", flush=True)


if __name__ == "__main__":
    main()

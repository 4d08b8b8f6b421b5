"""Peak memory of one training iteration: symplectic adjoint vs backprop through the solver.

What is measured
    For each number of fixed steps N and each gradient method (``backprop``,
    ``symplectic_adjoint``), in the same process, the peak of torch allocations during ONE
    training iteration, above what was allocated when the iteration started, with
    ``symode.profiling.peak_memory`` (the deterministic profiler measure of
    ``shared/design/measuring.md``; on CUDA, ``max_memory_allocated``). The iteration is::

        ys = symode.odeint(f, y0, t=[0, 1], method=..., options={"step_size": 1/N},
                           gradient=...)
        loss = ys[-1].pow(2).mean()
        loss.backward()

    ``f`` is an MLP vector field ``43 -> W -> W -> 43`` with softplus (MINIBOONE's shape in
    the paper, W = 860 by default), ignoring ``t``. Parameters, ``y0`` (which requires grad)
    and ``t`` are created outside the measured call; every ``.grad`` is set to ``None``
    before each measurement, so the gradients allocated by the backward pass (``|theta|``
    plus ``|y|`` for ``y0``) are counted in every figure.

Reported
    * peak MiB of each method, and the ratio backprop / symplectic adjoint;
    * the per-step growth, fitted between consecutive N: ``(P(N2) - P(N1)) / (N2 - N1)``
      in bytes, in units of the state's bytes ``|y| = batch * 43 * itemsize`` for the
      symplectic adjoint (theory: one checkpoint per step, 1.0), and in units of one network
      use's activations ``A`` for backprop (theory: s = 4 network uses per rk4 step, ~4.0);
    * the symplectic adjoint's floor (measuring.md)
      ``N |y| + 2 s |y| + A + |theta|`` (checkpoints, stage states and stage cotangents, one
      network use's graph, the parameter gradient) and measured / floor.

One network use's activations ``A``
    Counted, not estimated: we run one forward of ``f`` on the batch under
    ``torch.autograd.graph.saved_tensors_hooks`` and sum the bytes of the distinct storages
    that autograd saves for the backward, excluding the parameters (they exist anyway: the
    linear layers save views of their weights). For this MLP that is the input (batch x 43),
    both pre-activations and both softplus outputs (4 x batch x W): what every use of ``f``
    in backprop's graph keeps alive. As a cross-check the script also measures, with the
    profiler, the peak of one forward of ``f`` whose output (and so its graph) is kept:
    that is ``A`` minus the input (allocated outside) plus the output (batch x 43); the two
    figures are printed side by side.

Run ``python benchmarks/memory.py --help``; the defaults reproduce the table recorded in
``benchmarks/RESULTS.md`` (a few seconds per case on a 2-core CPU, most of it the profiler).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch

import symode
from symode.problems import MLPField
from symode.profiling import peak_memory

DIM = 43
MiB = 2**20
METHODS = ("backprop", "symplectic_adjoint")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def num_stages(method: str) -> int:
    """Stages that influence the solution (a trailing zero-weight stage is never swept)."""
    return len(symode.get_tableau(method).solution_stages)


def saved_activation_bytes(func: torch.nn.Module, y: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves in one forward of ``func`` on ``y``,
    parameters excluded (the input ``y`` is included)."""
    param_storages = {p.untyped_storage().data_ptr() for p in func.parameters()}
    saved: dict[int, int] = {}

    def pack(x):
        if isinstance(x, torch.Tensor):
            ptr = x.untyped_storage().data_ptr()
            if ptr not in param_storages:
                saved[ptr] = x.untyped_storage().nbytes()
        return x

    x = y.detach().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = func(torch.zeros((), dtype=y.dtype, device=y.device), x)
    del out
    return sum(saved.values())


def graph_peak_bytes(func: torch.nn.Module, y: torch.Tensor, device) -> int:
    """Profiler peak of one forward of ``func`` on ``y`` whose output (with its graph) is kept."""
    x = y.detach().requires_grad_(True)
    t = torch.zeros((), dtype=y.dtype, device=y.device)

    def one_use():
        with torch.enable_grad():
            return func(t, x)

    r = peak_memory(one_use, device=device)
    del r
    return peak_memory(one_use, device=device).peak_bytes


def training_iteration(func, y0, t, n_steps: int, method: str, gradient: str) -> float:
    ys = symode.odeint(func, y0, t, method=method, options={"step_size": 1.0 / n_steps},
                       gradient=gradient)
    loss = ys[-1].pow(2).mean()
    loss.backward()
    return loss.item()


def measure(func, y0, t, n_steps: int, method: str, gradient, device,
            iteration=training_iteration) -> tuple[int, object, torch.Tensor]:
    """Peak bytes of one training iteration, what ``iteration`` returned (the loss, by
    default) and the gradient (flattened)."""
    func.zero_grad(set_to_none=True)
    y0.grad = None
    r = peak_memory(iteration, func, y0, t, n_steps, method, gradient, device=device)
    grad = torch.cat([y0.grad.reshape(-1)] + [p.grad.reshape(-1) for p in func.parameters()])
    func.zero_grad(set_to_none=True)
    y0.grad = None
    return r.peak_bytes, r.result, grad


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def setup(args):
    """The problem of ``args`` and its sizes: ``(func, y0, t, device, profiler device, |y|,
    |theta|, A = one network use's saved activations, s)``."""
    torch.manual_seed(args.seed)
    dtype = DTYPES[args.dtype]
    device = torch.device(args.device)
    func = MLPField(DIM, args.width).to(device=device, dtype=dtype)
    y0 = torch.randn(args.batch, DIM, dtype=dtype, device=device).requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=dtype, device=device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    state = args.batch * DIM * itemsize
    theta = sum(p.numel() for p in func.parameters()) * itemsize
    pdev = None if device.type == "cpu" else device
    return (func, y0, t, device, pdev, state, theta, saved_activation_bytes(func, y0),
            num_stages(args.method))


def run(args) -> dict:
    func, y0, t, device, pdev, state, theta, act, s = setup(args)
    act_graph = graph_peak_bytes(func, y0, device)

    # warm-up (first profiler start, lazy initialisations), not recorded
    for g in METHODS:
        measure(func, y0, t, min(args.steps), args.method, g, pdev)

    rows = []
    for n in args.steps:
        row = {"N": n}
        grads = {}
        for g in METHODS:
            peak, loss, grad = measure(func, y0, t, n, args.method, g, pdev)
            again, _, _ = measure(func, y0, t, n, args.method, g, pdev) if args.repeat_check else (peak, 0, 0)
            row[g] = peak
            row[g + "_repeat_identical"] = again == peak
            row["loss_" + g] = loss
            grads[g] = grad
        b, sa = grads["backprop"], grads["symplectic_adjoint"]
        row["grad_rel_diff"] = float((b - sa).norm() / b.norm())
        row["ratio"] = row["backprop"] / row["symplectic_adjoint"]
        row["floor"] = n * state + 2 * s * state + act + theta
        row["sa_over_floor"] = row["symplectic_adjoint"] / row["floor"]
        rows.append(row)

    slopes = []
    for r1, r2 in zip(rows, rows[1:]):
        dn = r2["N"] - r1["N"]
        sa = (r2["symplectic_adjoint"] - r1["symplectic_adjoint"]) / dn
        bp = (r2["backprop"] - r1["backprop"]) / dn
        slopes.append({"N1": r1["N"], "N2": r2["N"], "sa_bytes": sa, "sa_states": sa / state,
                       "bp_bytes": bp, "bp_activations": bp / act, "bp_states": bp / state})

    return {
        "config": {"dim": DIM, "width": args.width, "batch": args.batch, "dtype": args.dtype,
                   "method": args.method, "stages": s, "steps": list(args.steps), "device": str(device),
                   "seed": args.seed, "threads": torch.get_num_threads()},
        "sizes": {"state_bytes": state, "theta_bytes": theta, "activation_bytes": act,
                  "graph_peak_bytes": act_graph},
        "rows": rows, "slopes": slopes, "machine": machine(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
    }


def to_markdown(res: dict) -> str:
    c, z = res["config"], res["sizes"]
    lines = []
    lines.append(f"MLP {c['dim']} -> {c['width']} -> {c['width']} -> {c['dim']} (softplus), batch {c['batch']}, "
                 f"{c['dtype']}, {c['method']} (s = {c['stages']}), t in [0, 1], step_size 1/N, "
                 f"device {c['device']}, {c['threads']} thread(s).")
    lines.append("")
    lines.append(f"- state |y| = {z['state_bytes']:,} B; parameters |theta| = {z['theta_bytes']:,} B "
                 f"({z['theta_bytes'] / MiB:.3f} MiB)")
    lines.append(f"- one network use's activations A (saved tensors, counted) = {z['activation_bytes']:,} B "
                 f"({z['activation_bytes'] / MiB:.3f} MiB); profiler peak of one forward keeping its graph "
                 f"= {z['graph_peak_bytes']:,} B (A - input + output = "
                 f"{z['activation_bytes']:,} - {z['state_bytes']:,} + {z['state_bytes']:,})")
    lines.append("")
    lines.append("| N | backprop (MiB) | symplectic adjoint (MiB) | backprop / SA | SA floor (MiB) "
                 "| SA / floor | grad rel. diff | repeat identical |")
    lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |")
    for r in res["rows"]:
        rep = "yes" if (r["backprop_repeat_identical"] and r["symplectic_adjoint_repeat_identical"]) else "NO"
        lines.append(f"| {r['N']} | {r['backprop'] / MiB:.3f} | {r['symplectic_adjoint'] / MiB:.3f} "
                     f"| {r['ratio']:.1f} | {r['floor'] / MiB:.3f} | {r['sa_over_floor']:.3f} "
                     f"| {r['grad_rel_diff']:.1e} | {rep} |")
    lines.append("")
    lines.append("Per-step growth, fitted between consecutive N:")
    lines.append("")
    lines.append("| N1 -> N2 | SA (B/step) | SA (states \\|y\\|/step) | backprop (B/step) "
                 "| backprop (activations A/step) | backprop (states/step) |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for s in res["slopes"]:
        lines.append(f"| {s['N1']} -> {s['N2']} | {s['sa_bytes']:,.1f} | {s['sa_states']:.3f} "
                     f"| {s['bp_bytes']:,.1f} | {s['bp_activations']:.3f} | {s['bp_states']:.1f} |")
    return "\n".join(lines)


def add_run_arguments(p: argparse.ArgumentParser, repeat_check_help: str) -> None:
    """The options every memory benchmark shares: device, seed, threads, the repeat check."""
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a shared 2-core machine two threads are often "
                        "10x slower; the memory figures do not depend on it)")
    p.add_argument("--no-repeat-check", dest="repeat_check", action="store_false", help=repeat_check_help)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[25, 100, 200], help="numbers of fixed steps N")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--width", type=int, default=860, help="hidden width W of the MLP 43 -> W -> W -> 43")
    p.add_argument("--method", default="rk4", help="a fixed-step method name (symode.TABLEAUS)")
    add_run_arguments(p, "do not measure every case twice to check that the figure is identical")
    p.add_argument("--out", help="write the record here: markdown if PATH ends in .md, else JSON")
    args = p.parse_args(argv)
    args.steps = sorted(args.steps)
    torch.set_num_threads(args.threads)

    run_and_record(args, run, to_markdown)
    return 0


def run_and_record(args, run, to_markdown, json_extra=None) -> dict:
    """Run, print the markdown table and the machine line, and write ``--out`` (markdown if
    it ends in .md, else JSON, with ``json_extra(res)`` merged in)."""
    start = time.perf_counter()
    res = run(args)
    res["wall_s"] = round(time.perf_counter() - start, 1)
    md = to_markdown(res)
    print(md)
    m = res["machine"]
    print(f"\n{m['nproc']} CPUs, {m['cpu']}, torch {m['torch']}; {res['wall_s']} s")
    if args.out:
        with open(args.out, "w") as fh:
            if args.out.endswith(".md"):
                fh.write(f"Command: `{res['command']}`  \nMachine: {m['nproc']} CPUs, {m['cpu']}, "
                         f"torch {m['torch']}, Python {m['python']}  \nDate: {res['date']}; "
                         f"{res['wall_s']} s wall\n\n{md}\n")
            else:
                json.dump({**res, **(json_extra(res) if json_extra else {})}, fh, indent=2, default=str)
    return res


if __name__ == "__main__":
    sys.exit(main())

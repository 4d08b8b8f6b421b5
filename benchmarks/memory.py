"""Peak memory of one training iteration: symplectic adjoint vs backprop through the solver.

What is measured
    For each number of fixed steps N and each gradient method (``backprop``,
    ``symplectic_adjoint``), in the same process, the peak of torch allocations during ONE
    training iteration, above what was allocated when the iteration started, with
    ``symode.bench.peak_memory`` (the deterministic profiler measure of
    ``shared/design/measuring.md``; on CUDA, ``max_memory_allocated``). The iteration
    (``symode.bench.fixed_step_iteration``, measured by ``symode.bench.measure_iteration``) is::

        ys = symode.odeint(f, y0, t=[0, 1], method=..., options={"step_size": 1/N},
                           gradient=...)
        loss = ys[-1].pow(2).mean()
        loss.backward()

    ``f`` is an MLP vector field ``43 -> W -> W -> 43`` with softplus (MINIBOONE's shape in
    the paper, W = 860 by default), ignoring ``t``: ``symode.bench.MLPField``, built with
    ``y0`` and ``t`` by ``symode.bench.memory_case``. Parameters, ``y0`` (which requires grad)
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
    Counted, not estimated (``symode.bench.saved_activation_bytes``): we run one forward of ``f`` on the batch under
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
import sys

import torch

from symode.bench import DTYPES, MiB, add_run_arguments, measure_iteration, memory_case, peak_memory, run_and_record

METHODS = ("backprop", "symplectic_adjoint")


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


def run(args) -> dict:
    case = memory_case(args.width, args.batch, args.dtype, args.method, device=args.device, seed=args.seed)
    func, y0, t, device = case.func, case.y0, case.t, case.device
    state, theta, act, s = case.state_bytes, case.theta_bytes, case.activation_bytes, case.stages
    act_graph = graph_peak_bytes(func, y0, device)

    # warm-up (first profiler start, lazy initialisations), not recorded
    for g in METHODS:
        measure_iteration(func, y0, t, min(args.steps), args.method, g, device)

    rows = []
    for n in args.steps:
        row = {"N": n}
        grads = {}
        for g in METHODS:
            peak, (loss, _), grad = measure_iteration(func, y0, t, n, args.method, g, device)
            again = measure_iteration(func, y0, t, n, args.method, g, device)[0] if args.repeat_check else peak
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
        slopes.append(
            {
                "N1": r1["N"],
                "N2": r2["N"],
                "sa_bytes": sa,
                "sa_states": sa / state,
                "bp_bytes": bp,
                "bp_activations": bp / act,
                "bp_states": bp / state,
            }
        )

    return {
        "config": {
            "dim": case.dim,
            "width": args.width,
            "batch": args.batch,
            "dtype": args.dtype,
            "method": args.method,
            "stages": s,
            "steps": list(args.steps),
            "device": str(device),
            "seed": args.seed,
            "threads": torch.get_num_threads(),
        },
        "sizes": {"state_bytes": state, "theta_bytes": theta, "activation_bytes": act, "graph_peak_bytes": act_graph},
        "rows": rows,
        "slopes": slopes,
    }


def to_markdown(res: dict) -> str:
    c, z = res["config"], res["sizes"]
    lines = []
    lines.append(
        f"MLP {c['dim']} -> {c['width']} -> {c['width']} -> {c['dim']} (softplus), batch {c['batch']}, "
        f"{c['dtype']}, {c['method']} (s = {c['stages']}), t in [0, 1], step_size 1/N, "
        f"device {c['device']}, {c['threads']} thread(s)."
    )
    lines.append("")
    lines.append(
        f"- state |y| = {z['state_bytes']:,} B; parameters |theta| = {z['theta_bytes']:,} B "
        f"({z['theta_bytes'] / MiB:.3f} MiB)"
    )
    lines.append(
        f"- one network use's activations A (saved tensors, counted) = {z['activation_bytes']:,} B "
        f"({z['activation_bytes'] / MiB:.3f} MiB); profiler peak of one forward keeping its graph "
        f"= {z['graph_peak_bytes']:,} B (A - input + output = "
        f"{z['activation_bytes']:,} - {z['state_bytes']:,} + {z['state_bytes']:,})"
    )
    lines.append("")
    lines.append(
        "| N | backprop (MiB) | symplectic adjoint (MiB) | backprop / SA | SA floor (MiB) "
        "| SA / floor | grad rel. diff | repeat identical |"
    )
    lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |")
    for r in res["rows"]:
        rep = "yes" if (r["backprop_repeat_identical"] and r["symplectic_adjoint_repeat_identical"]) else "NO"
        lines.append(
            f"| {r['N']} | {r['backprop'] / MiB:.3f} | {r['symplectic_adjoint'] / MiB:.3f} "
            f"| {r['ratio']:.1f} | {r['floor'] / MiB:.3f} | {r['sa_over_floor']:.3f} "
            f"| {r['grad_rel_diff']:.1e} | {rep} |"
        )
    lines.append("")
    lines.append("Per-step growth, fitted between consecutive N:")
    lines.append("")
    lines.append(
        "| N1 -> N2 | SA (B/step) | SA (states \\|y\\|/step) | backprop (B/step) "
        "| backprop (activations A/step) | backprop (states/step) |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for s in res["slopes"]:
        lines.append(
            f"| {s['N1']} -> {s['N2']} | {s['sa_bytes']:,.1f} | {s['sa_states']:.3f} "
            f"| {s['bp_bytes']:,.1f} | {s['bp_activations']:.3f} | {s['bp_states']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
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


if __name__ == "__main__":
    sys.exit(main())

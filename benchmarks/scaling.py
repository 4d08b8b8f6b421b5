"""Scaling study: peak memory against steps N, stages s and network depth L.

What is measured
    The training iteration of ``benchmarks/memory.py`` (forward solve over ``t in [0, 1]``
    with ``step_size = 1/N``, ``loss = y(1)**2 mean``, ``loss.backward()``), its peak extra
    torch memory measured with ``symode.bench.peak_memory`` (exact bytes, deterministic;
    ``symode.bench.measure_iteration`` of ``symode.bench.fixed_step_iteration``), for
    ``backprop``, ``symplectic_adjoint`` and ``checkpoint``, in three sweeps that each vary
    one factor with the other two held fixed:

    (a) steps N (``--steps``), with ``--method`` (rk4) and ``--depth`` hidden layers;
    (b) stages s: the fixed-step tableaus ``--stage-methods`` (euler 1, midpoint 2, bosh3 3,
        rk4 4, dopri5 6, dopri8 13), with ``--fixed-steps`` N and ``--depth``;
    (c) depth L: the number of hidden layers ``--depths`` of the MLP, with ``--fixed-steps`` N
        and ``--method``.

    ``f`` is an MLP ``43 -> W -> ... -> W -> 43`` with L hidden layers of width W and softplus
    (L = 2 is ``memory.py``'s MLP). Any tableau can take fixed steps; s counts the network
    uses per step, which for every tableau of symode is ``len(solution_stages)``: an FSAL
    tableau (bosh3 4 stages, dopri5 7) evaluates its last stage once, as the next step's first
    (the script checks this against the solver's count of forward evaluations, ``s N + 1``
    for FSAL, ``s N`` otherwise; the extra FSAL evaluation at the end is unused but its graph
    is alive when backprop's forward pass ends).

Reported
    * per sweep, a markdown table: x, the peak of every gradient method (MiB), backprop / SA,
      the gradients' largest relative difference to backprop;
    * per sweep and method, the least-squares line ``peak = a + b x`` and the log-log slope
      (power-law exponent of ``peak`` in ``x``), and a summary table of the fitted slopes b
      against the theory, in bytes and in natural units. The theory
      (the README's table of gradient methods: backprop ``O(N s L)``, checkpoint
      ``O(N + s L)``, symplectic adjoint ``O(N + s + L)``), with ``|y|`` the state's bytes,
      ``A`` one network use's activations (counted from the tensors autograd saves,
      ``symode.bench.saved_activation_bytes``, as ``memory.py`` does), ``a_L`` and ``p_L``
      one hidden layer's activations and parameters:

      ========= ============ ============ ==================
      per       backprop     checkpoint   symplectic adjoint
      ========= ============ ============ ==================
      step      s A          |y|          |y|
      stage     N A          A            2 |y|
      layer     N s a_L      s a_L + p_L  a_L + p_L
      ========= ============ ============ ==================

      Backprop's peak comes at the start of its backward pass, with the whole graph alive and
      no hidden layer's weight gradient made yet (the backward then frees each use's
      activations, larger than |theta| here, as it makes the gradients), so no ``p_L``; the
      other two hold the parameter gradient accumulator beside one step's / one use's graph.
      (Were a layer's parameters larger than its activations, ``p_L > a_L``, the gradients in
      flight at the end of each ``autograd.grad`` would add one more ``p_L``.) The symplectic
      adjoint's ``2 |y|`` per stage is the stage state ``Y_i`` and the stage cotangent
      ``kappa_i``, both held at the start of its reverse sweep; a stage with ``b_i = 0`` gets
      its cotangent only later in the sweep, when earlier states are gone, so the script also
      fits its peak against the count of those vectors, ``s' + #{b_i != 0}`` (``|y|`` each).
      Backprop at an FSAL tableau (bosh3, dopri5) peaks instead at the end of its forward
      pass, holding ``(s N + 1) A``: the graph of the last, unused FSAL evaluation is still
      alive; its points sit about one A above the line of the others.

Usage::

    python benchmarks/scaling.py                          # the recorded run (~1.5 minutes, 1 thread)
    python benchmarks/scaling.py --quick                  # a smoke run on tiny sizes (seconds)
    python benchmarks/scaling.py --plot benchmarks --out record.md   # also benchmarks/scaling.png and a record

Options: ``--width``, ``--batch``, ``--dtype``, ``--steps``, ``--method``, ``--depth``,
``--stage-methods``, ``--fixed-steps``, ``--depths``, ``--gradients``, ``--device``, ``--seed``,
``--threads`` (default 1), ``--no-repeat-check``, ``--quick``, ``--plot DIR``, ``--out PATH``
(markdown if it ends in ``.md``, else JSON). Every option left out takes the default of the
full run, or with ``--quick`` of the smoke run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

import symode
from symode.bench import (
    DTYPES,
    MiB,
    MLPField,
    add_run_arguments,
    import_pyplot,
    measure_iteration,
    memory_case,
    network_uses_per_step,
    run_and_record,
    save_figure,
    saved_activation_bytes,
)

GRADIENTS = ("backprop", "symplectic_adjoint", "checkpoint")
LABELS = {"backprop": "backprop", "symplectic_adjoint": "SA", "checkpoint": "checkpoint"}
COLORS = {"backprop": "tab:red", "symplectic_adjoint": "tab:blue", "checkpoint": "tab:green"}

#: the defaults of the full run and of ``--quick``; an option given on the command line wins
FULL = {
    "width": 256,
    "batch": 256,
    "steps": [8, 16, 32, 64, 128],
    "method": "rk4",
    "depth": 2,
    "stage_methods": ["euler", "midpoint", "bosh3", "rk4", "dopri5", "dopri8"],
    "fixed_steps": 16,
    "depths": [1, 2, 4, 8],
}
QUICK = {
    "width": 32,
    "batch": 16,
    "steps": [2, 4, 8],
    "method": "rk4",
    "depth": 2,
    "stage_methods": ["euler", "midpoint", "rk4", "dopri5"],
    "fixed_steps": 4,
    "depths": [1, 2, 3],
}


# --------------------------------------------------------------------------------------
def forward_evaluations(method: str, n_steps: int) -> tuple[int, bool]:
    """Evaluations of ``f`` in a forward solve with ``n_steps`` fixed steps (no graph, tiny
    problem), and whether they are the ``s N (+ 1 if FSAL)`` that ``s = len(solution_stages)``
    network uses per step implies."""
    func = MLPField(2, 4, depth=1)
    with torch.no_grad():
        sol = symode.solve(
            func,
            torch.zeros(1, 2),
            torch.tensor([0.0, 1.0]),
            method=method,
            steps=symode.FixedSteps(step_size=1.0 / n_steps),
        )
    nfe = sol.stats.nfe_forward
    return nfe, nfe == network_uses_per_step(method) * n_steps + symode.get_tableau(method).fsal


def stage_vectors(method: str) -> int:
    """What the symplectic adjoint holds per stage at the start of its reverse sweep, in
    states: every stage state ``Y_i`` (``s'``) and the cotangent ``kappa_i = h b_i lam`` of
    every stage with ``b_i != 0``."""
    tableau = symode.get_tableau(method)
    return sum(1 + (tableau.b[i] != 0.0) for i in tableau.solution_stages)


def sweeps(args) -> list[dict]:
    """The three sweeps: each point says its x, the method, the steps and the depth."""
    return [
        {
            "name": "steps",
            "x": "N",
            "unit": "step",
            "fixed": f"{args.method} (s = {network_uses_per_step(args.method)}), L = {args.depth}",
            "points": [
                {"x": n, "label": str(n), "method": args.method, "steps": n, "depth": args.depth} for n in args.steps
            ],
        },
        {
            "name": "stages",
            "x": "s",
            "unit": "stage",
            "fixed": f"N = {args.fixed_steps}, L = {args.depth}",
            "points": sorted(
                (
                    {
                        "x": network_uses_per_step(m),
                        "label": f"{m} ({network_uses_per_step(m)})",
                        "method": m,
                        "steps": args.fixed_steps,
                        "depth": args.depth,
                    }
                    for m in args.stage_methods
                ),
                key=lambda p: p["x"],
            ),
        },
        {
            "name": "depth",
            "x": "L",
            "unit": "layer",
            "fixed": f"{args.method} (s = {network_uses_per_step(args.method)}), N = {args.fixed_steps}",
            "points": [
                {"x": d, "label": str(d), "method": args.method, "steps": args.fixed_steps, "depth": d}
                for d in args.depths
            ],
        },
    ]


def fit_line(xs, ys) -> tuple[float, float, float]:
    """Least squares ``y = a + b x``: ``(a, b, largest |residual| / y)``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")
    a = my - b * mx
    return a, b, max(abs(y - a - b * x) / y for x, y in zip(xs, ys))


def fit_power(xs, ys) -> float:
    """The exponent k of the least-squares power law ``y ~ c x^k`` (the log-log slope)."""
    return fit_line([math.log(x) for x in xs], [math.log(y) for y in ys])[1]


def fit(xs, ys, theory_bytes: float, formula: str, unit_bytes: float, unit: str) -> dict:
    """The line and the power law through ``(xs, ys)``, beside the theory's slope."""
    a, b, resid = fit_line(xs, ys)
    return {
        "intercept": a,
        "slope": b,
        "max_rel_residual": resid,
        "loglog_exponent": fit_power(xs, ys),
        "theory_bytes": theory_bytes,
        "theory": formula,
        "unit_bytes": unit_bytes,
        "unit": unit,
        "measured_over_theory": b / theory_bytes,
    }


def theory(sweep: str, gradient: str, z: dict) -> tuple[float, str, float, str]:
    """The theory's slope of one sweep for one method: ``(bytes, formula, natural unit in
    bytes, unit's name)``. ``z``: the sizes of the fixed problem (|y|, A, N, s, a_L, p_L)."""
    y, A, n, s, aL, pL = z["state"], z["act"], z["N"], z["s"], z["layer_act"], z["layer_params"]
    table = {
        ("steps", "backprop"): (s * A, f"s A = {s} A", A, "A"),
        ("steps", "checkpoint"): (y, "\\|y\\|", y, "\\|y\\|"),
        ("steps", "symplectic_adjoint"): (y, "\\|y\\|", y, "\\|y\\|"),
        ("stages", "backprop"): (n * A, f"N A = {n} A", A, "A"),
        ("stages", "checkpoint"): (A, "A", A, "A"),
        ("stages", "symplectic_adjoint"): (2 * y, "2 \\|y\\|", y, "\\|y\\|"),
        ("depth", "backprop"): (n * s * aL, f"N s a_L = {n * s} a_L", aL, "a_L"),
        ("depth", "checkpoint"): (s * aL + pL, f"s a_L + p_L = {s} a_L + p_L", aL, "a_L"),
        ("depth", "symplectic_adjoint"): (aL + pL, "a_L + p_L", aL + pL, "(a_L + p_L)"),
    }
    return table[(sweep, gradient)]


# --------------------------------------------------------------------------------------
def run(args) -> dict:
    # y0, t and the device of memory.py's case (its MLP replaced by one of depth d)
    case = memory_case(args.width, args.batch, args.dtype, args.method, device=args.device, seed=args.seed)
    y0, t, device, state = case.y0, case.t, case.device, case.state_bytes
    dtype = DTYPES[args.dtype]
    itemsize = torch.empty((), dtype=dtype).element_size()
    plan = sweeps(args)

    funcs, sizes = {}, {}
    for d in sorted({p["depth"] for sw in plan for p in sw["points"]}):
        torch.manual_seed(args.seed)
        funcs[d] = MLPField(case.dim, args.width, depth=d).to(device=device, dtype=dtype)
        sizes[d] = {
            "theta_bytes": sum(p.numel() for p in funcs[d].parameters()) * itemsize,
            "activation_bytes": saved_activation_bytes(funcs[d], y0),
        }
    # one hidden layer's activations and parameters: the (exact) per-layer increments
    one_layer = {
        "layer_act": 2 * args.batch * args.width * itemsize,
        "layer_params": (args.width * args.width + args.width) * itemsize,
    }
    fixed = sizes[args.depth]  # sweeps (a) and (b) use it
    nfe = {m: forward_evaluations(m, args.fixed_steps) for m in args.stage_methods}

    # warm-up (first profiler start, lazy initialisations), not recorded
    p0 = plan[0]["points"][0]
    for g in args.gradients:
        measure_iteration(funcs[p0["depth"]], y0, t, p0["steps"], p0["method"], g, device)

    results = []
    for sw in plan:
        rows = []
        for i, p in enumerate(sw["points"]):
            func = funcs[p["depth"]]
            row = {**p, "peak": {}, "grad_rel_diff": {}}
            grads = {}
            for g in args.gradients:
                peak, _, grads[g] = measure_iteration(func, y0, t, p["steps"], p["method"], g, device)
                row["peak"][g] = peak
                if args.repeat_check and i == 0:  # determinism: the first point of each sweep twice
                    row.setdefault("repeat_identical", {})[g] = (
                        measure_iteration(func, y0, t, p["steps"], p["method"], g, device)[0] == peak
                    )
                print(
                    f"  {sw['name']:6s} {sw['x']} = {p['label']:14s} {g:20s} {peak / MiB:10.3f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
            if "backprop" in grads:
                ref = grads["backprop"]
                row["grad_rel_diff"] = {
                    g: float((grads[g] - ref).norm() / ref.norm()) for g in args.gradients if g != "backprop"
                }
            del grads
            rows.append(row)

        z = {
            "state": state,
            "act": fixed["activation_bytes"],
            "N": args.fixed_steps,
            "s": network_uses_per_step(args.method),
            **one_layer,
        }
        xs = [r["x"] for r in rows]
        fits = {g: fit(xs, [r["peak"][g] for r in rows], *theory(sw["name"], g, z)) for g in args.gradients}
        extra = {}
        if sw["name"] == "stages" and "symplectic_adjoint" in args.gradients:
            # the symplectic adjoint against what it holds per stage: s' + #{b_i != 0} vectors
            for r in rows:
                r["stage_vectors"] = stage_vectors(r["method"])
            extra["symplectic_adjoint"] = fit(
                [r["stage_vectors"] for r in rows],
                [r["peak"]["symplectic_adjoint"] for r in rows],
                state,
                "\\|y\\|",
                state,
                "\\|y\\|",
            )
        results.append(
            {**{k: v for k, v in sw.items() if k != "points"}, "rows": rows, "fits": fits, "vector_fits": extra}
        )

    return {
        "config": {
            "dim": case.dim,
            "width": args.width,
            "batch": args.batch,
            "dtype": args.dtype,
            "method": args.method,
            "depth": args.depth,
            "steps": list(args.steps),
            "stage_methods": list(args.stage_methods),
            "fixed_steps": args.fixed_steps,
            "depths": list(args.depths),
            "gradients": list(args.gradients),
            "device": str(device),
            "seed": args.seed,
            "threads": torch.get_num_threads(),
        },
        "sizes": {
            "state_bytes": state,
            "activation_bytes": fixed["activation_bytes"],
            **one_layer,
            "per_depth": sizes,
            "nfe_forward": nfe,
        },
        "sweeps": results,
    }


# --------------------------------------------------------------------------------------
def to_markdown(res: dict) -> str:
    c, z = res["config"], res["sizes"]
    grads = c["gradients"]
    has_ratio = "backprop" in grads and "symplectic_adjoint" in grads
    n = c["fixed_steps"]
    lines = [
        f"MLP 43 -> {c['width']} x L -> 43 (L hidden layers of width {c['width']}, softplus), batch {c['batch']}, "
        f"{c['dtype']}, t in [0, 1], step_size 1/N, device {c['device']}, {c['threads']} thread(s).",
        "",
        f"- state |y| = {z['state_bytes']:,} B; at L = {c['depth']}: one network use's activations "
        f"A = {z['activation_bytes']:,} B ({z['activation_bytes'] / MiB:.3f} MiB = "
        f"{z['activation_bytes'] / z['state_bytes']:.1f} |y|)",
        f"- one hidden layer: activations a_L = 2 x batch x W x itemsize = {z['layer_act']:,} B, "
        f"parameters p_L = (W^2 + W) x itemsize = {z['layer_params']:,} B",
        "- per depth L: |theta| / A = "
        + ", ".join(f"{d}: {v['theta_bytes']:,} / {v['activation_bytes']:,} B" for d, v in z["per_depth"].items()),
        f"- forward evaluations of f at N = {n} (s N, or s N + 1 for FSAL): "
        + ", ".join(f"{m} {k}" + ("" if ok else " (NOT s N (+1))") for m, (k, ok) in z["nfe_forward"].items()),
        "",
    ]

    for sw in res["sweeps"]:
        lines.append(f"### Sweep {sw['x']}: peak MiB against {sw['name']} ({sw['fixed']})")
        lines.append("")
        hdr = " | ".join(f"{LABELS[g]} (MiB)" for g in grads)
        vectors = bool(sw["vector_fits"])
        lines.append(
            f"| {sw['x']} | {hdr} |"
            + (" backprop / SA |" if has_ratio else "")
            + (" s' + #{b != 0} | SA - that x \\|y\\| (B) |" if vectors else "")
            + " grad rel. diff. (max) | repeat identical |"
        )
        lines.append(
            "| --- | "
            + " | ".join("---:" for _ in grads)
            + " |"
            + (" ---: |" if has_ratio else "")
            + (" ---: | ---: |" if vectors else "")
            + " ---: | :---: |"
        )
        for r in sw["rows"]:
            cells = " | ".join(f"{r['peak'][g] / MiB:.3f}" for g in grads)
            ratio = f" {r['peak']['backprop'] / r['peak']['symplectic_adjoint']:.1f} |" if has_ratio else ""
            if vectors:
                rest = r["peak"]["symplectic_adjoint"] - r["stage_vectors"] * z["state_bytes"]
                ratio += f" {r['stage_vectors']} | {rest:,} |"
            diff = max(r["grad_rel_diff"].values(), default=0.0)
            rep = r.get("repeat_identical")
            rep = "" if rep is None else ("yes" if all(rep.values()) else "NO")
            lines.append(f"| {r['label']} | {cells} |{ratio} {diff:.1e} | {rep} |")
        lines.append("")
        lines.append(
            "Fit `peak = a + b "
            + sw["x"]
            + "` (least squares) and log-log exponent: "
            + "; ".join(
                f"{LABELS[g]} a = {f['intercept'] / MiB:.3f} MiB, b = {f['slope'] / MiB:.4f} MiB per {sw['unit']}, "
                f"max residual {f['max_rel_residual']:.1%}, exponent {f['loglog_exponent']:.2f}"
                for g, f in sw["fits"].items()
            )
            + "."
        )
        for g, f in sw["vector_fits"].items():
            lines.append(
                f"{LABELS[g]} against the stage vectors s' + #{{b != 0}}: b = {f['slope']:,.0f} B = "
                f"{f['slope'] / f['unit_bytes']:.3f} |y| per vector, max residual {f['max_rel_residual']:.1e}."
            )
        lines.append("")

    lines.append("### Fitted slopes against the theory")
    lines.append("")
    lines.append(
        "| per | method | fitted slope b (B) | in natural units | theory | theory (B) | measured / theory "
        "| log-log exponent |"
    )
    lines.append("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for sw in res["sweeps"]:
        for g, f in sw["fits"].items():
            lines.append(
                f"| {sw['unit']} ({sw['x']}) | {LABELS[g]} | {f['slope']:,.0f} "
                f"| {f['slope'] / f['unit_bytes']:.3f} {f['unit']} | {f['theory']} | {f['theory_bytes']:,.0f} "
                f"| {f['measured_over_theory']:.3f} | {f['loglog_exponent']:.2f} |"
            )
        for g, f in sw["vector_fits"].items():
            lines.append(
                f"| stage vector (s' + #{{b != 0}}) | {LABELS[g]} | {f['slope']:,.0f} "
                f"| {f['slope'] / f['unit_bytes']:.3f} {f['unit']} | {f['theory']} | {f['theory_bytes']:,.0f} "
                f"| {f['measured_over_theory']:.3f} | {f['loglog_exponent']:.2f} |"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
def write_plot(res: dict, directory: str) -> str:
    """One PNG, three panels: peak memory (log scale) against N and L (log scale) and s,
    every method, with its fitted straight line dashed."""
    plt = import_pyplot()
    if plt is None:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib (or pip install -e '.[bench]')")
    from matplotlib import ticker

    os.makedirs(directory, exist_ok=True)
    c = res["config"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for ax, sw in zip(axes, res["sweeps"]):
        xs = [r["x"] for r in sw["rows"]]
        dense = [xs[0] + (xs[-1] - xs[0]) * k / 100 for k in range(101)]
        for g, f in sw["fits"].items():
            ax.plot(
                xs,
                [r["peak"][g] / MiB for r in sw["rows"]],
                "o",
                color=COLORS[g],
                label=f"{LABELS[g]}: {f['slope'] / f['unit_bytes']:.3g} {f['unit'].replace(chr(92), '')}/{sw['unit']}",
            )
            ax.plot(dense, [(f["intercept"] + f["slope"] * x) / MiB for x in dense], "--", color=COLORS[g], lw=1)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        if sw["name"] != "stages":  # N and L double from point to point
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels(
            [r["label"] for r in sw["rows"]],
            fontsize=8,
            rotation=40 if sw["name"] == "stages" else 0,
            ha="right" if sw["name"] == "stages" else "center",
        )
        ax.set_xlabel(f"{sw['x']} ({sw['name']}; {sw['fixed']})")
        ax.set_ylabel("peak memory of one iteration (MiB)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, title="fitted slope", title_fontsize=8)
    fig.suptitle(
        f"symode peak memory: MLP 43 -> {c['width']} x L -> 43 softplus, batch {c['batch']}, {c['dtype']}, "
        f"t in [0, 1], step 1/N (profiler measure, exact bytes)",
        fontsize=10,
    )
    return save_figure(plt, fig, directory, "scaling.png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes (W 32, batch 16, N <= 8, L <= 3) for a smoke run of seconds"
    )
    p.add_argument("--width", type=int, help=f"hidden width W (default {FULL['width']})")
    p.add_argument("--batch", type=int, help=f"batch size (default {FULL['batch']})")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--steps", type=int, nargs="+", help=f"sweep (a): numbers of steps N (default {FULL['steps']})")
    p.add_argument("--method", help=f"fixed-step method of sweeps (a) and (c) (default {FULL['method']})")
    p.add_argument("--depth", type=int, help=f"hidden layers of sweeps (a) and (b) (default {FULL['depth']})")
    p.add_argument(
        "--stage-methods",
        nargs="+",
        help=f"sweep (b): tableaus (symode.TABLEAUS), taking fixed steps (default {FULL['stage_methods']})",
    )
    p.add_argument("--fixed-steps", type=int, help=f"N of sweeps (b) and (c) (default {FULL['fixed_steps']})")
    p.add_argument(
        "--depths", type=int, nargs="+", help=f"sweep (c): numbers of hidden layers L (default {FULL['depths']})"
    )
    p.add_argument("--gradients", nargs="+", choices=GRADIENTS, default=list(GRADIENTS))
    add_run_arguments(p, "do not measure the first point of every sweep twice to check that the bytes repeat")
    p.add_argument("--plot", metavar="DIR", help="write DIR/scaling.png (needs matplotlib)")
    p.add_argument("--out", help="write the record here: markdown if PATH ends in .md, else JSON")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.steps, args.depths = sorted(set(args.steps)), sorted(set(args.depths))
    if min(len(args.steps), len(args.stage_methods), len(args.depths)) < 2:
        p.error("every sweep needs at least two points to fit a slope")
    torch.set_num_threads(args.threads)

    res = run_and_record(args, run, to_markdown)
    if args.plot:
        print(f"wrote {write_plot(res, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory of one training iteration for every gradient method, against the theory.

What is measured
    For every configuration of every gradient method (``GRADIENT_METHODS[...].configurations()``;
    the memory-capped symplectic adjoint with ``max_checkpoints = --max-checkpoints`` = 10, so
    that N = 6 is below its cap and N = 12, 24, 48 grow past it) and each number of fixed rk4
    steps N, the peak of torch allocations during ONE training iteration, above what was
    allocated when it started, with ``symode.bench.peak_memory`` (the deterministic
    profiler measure; exact bytes). The iteration, as in ``benchmarks/memory.py``
    (``symode.bench.fixed_step_iteration``, measured by ``symode.bench.measure_iteration``)::

        sol = symode.solve(f, y0, t=[0, 1], method="rk4", steps=FixedSteps(step_size=1/N),
                           gradient=<configuration>)
        loss = sol.ys[-1].pow(2).mean()   # (the Solution is dropped before the backward,
        loss.backward()                   #  as odeint drops it: only its stats are kept)

    ``f`` is ``benchmarks/memory.py``'s MLP ``43 -> W -> W -> 43`` (softplus; ``symode.bench.MLPField``,
    built with ``y0`` and ``t`` by ``symode.bench.memory_case``), with a batch
    large enough that one network use's activations ``A`` exceed the parameters ``|theta|``
    (a network-dominated problem: at W = 860, ``A / |theta| ~ 4 B / W``). The parameters and
    ``y0`` (which requires grad) are created outside the measured call, every ``.grad`` is set
    to ``None`` before it, so the gradients the backward allocates are counted.

Reported
    * the peak of every configuration at every N (MiB), the gradient's relative difference to
      backprop's at the same N (``y0`` and parameters), and the backward NFE;
    * the growth per step between consecutive N, in bytes, in states ``|y|`` and in network
      uses' activations ``A`` (theory: backprop and one checkpoint s A; checkpoint and the
      symplectic adjoint |y|; with stored stages s' |y|; capped and continuous adjoint 0);
    * the ordering the theory predicts, per N: backprop ~ one checkpoint > checkpoint > symplectic
      adjoint >= continuous adjoint, each inequality said to hold or not, with ``N |y|``
      against ``s |theta|`` (the symplectic adjoint's stored states against the continuous
      adjoint's augmented stages, which carry the parameter integrals) and the N at which the
      two would cross, extrapolated from the symplectic adjoint's measured growth; and
      whether the capped variant is flat (identical bytes) over the N past its cap;
    * a census of the continuous adjoint's peak (at N = 3: its peak does not depend on N and
      is reached in the second step; the census checks that it finds the figure measured at
      the smallest N): the torch allocations alive at that moment, grouped by size (in units
      of the augmented state ``|z| = 2|y| + |theta|``) and by the lines of code and operator
      that allocated them, with the ordinal of each among its site's allocations (which
      evaluation of the augmented field made it: rk4 makes 4 per step). It reads the
      profiler's private event tree (``kineto_results.experimental_event_tree()``, torch
      2.13); if that is unavailable it says so and the rest of the output is unaffected.

Every configuration is measured again at the smallest N to check that the bytes are identical.
Run ``python benchmarks/methods.py --help``; the defaults (W = 860, batch 512, float32, rk4,
N = 6 12 24 48, cap 10, 1 thread) reproduce the section "Memory of every gradient method"
of ``benchmarks/RESULTS.md``; almost all of the time is backprop and one
checkpoint at the largest N and the capped variant's recomputation.
"""

from __future__ import annotations

import argparse
import collections
import sys

import torch

from symode.bench import (
    DTYPES,
    MiB,
    add_run_arguments,
    fixed_step_iteration,
    measure_iteration,
    memory_case,
    quiet_stderr,
    run_and_record,
)
from symode.gradients import GRADIENT_METHODS, Backprop, Checkpoint, ContinuousAdjoint, OneCheckpoint, SymplecticAdjoint

#: steps of the census run of the continuous adjoint (its peak is reached in the second step)
CENSUS_STEPS = 3


# --------------------------------------------------------------------------------------
def configurations(max_checkpoints: int) -> list:
    """Every configuration of every gradient method; a memory cap is set to ``max_checkpoints``."""
    out = []
    for cls in GRADIENT_METHODS.values():
        for m in cls.configurations():
            if getattr(m, "max_checkpoints", None) is not None:
                m = type(m)(max_checkpoints=max_checkpoints)
            out.append(m)
    return out


def role(m) -> str:
    """The method's place in the ordering the theory predicts."""
    if isinstance(m, Backprop):
        return "backprop"
    if isinstance(m, OneCheckpoint):
        return "one_checkpoint"
    if isinstance(m, Checkpoint):
        return "checkpoint"
    if isinstance(m, SymplecticAdjoint):
        if m.max_checkpoints is not None:
            return "capped"
        return "stored_stages" if m.store_stages else "symplectic"
    if isinstance(m, ContinuousAdjoint):
        return "adjoint"
    return "other"


def theory_growth(m, s: int) -> str:
    return {
        "backprop": f"s A = {s} A",
        "one_checkpoint": f"s A = {s} A",
        "checkpoint": "|y|",
        "symplectic": "|y|",
        "stored_stages": f"s' |y| = {s} |y|",
        "capped": "0",
        "adjoint": "0",
    }.get(role(m), "?")


def measure(func, y0, t, n_steps: int, method: str, gradient, device):
    """Peak bytes of one training iteration, its stats and the gradient (flattened)."""
    peak, (_, stats), grad = measure_iteration(func, y0, t, n_steps, method, gradient, device)
    return peak, stats, grad


# --------------------------------------------------------------------------------------
def adjoint_census(func, y0, t, n_steps: int, method: str, gradient, sizes: dict) -> dict:
    """The allocations alive at the peak of one training iteration (CPU profiler, with
    stacks), grouped by (size, allocating line of code, operator)."""
    from torch.profiler import ProfilerActivity, profile

    func.zero_grad(set_to_none=True)
    y0.grad = None
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, with_stack=True)
    with quiet_stderr():
        prof.__enter__()
    try:
        fixed_step_iteration(func, y0, t, n_steps, method, gradient)
    finally:
        with quiet_stderr():
            prof.__exit__(None, None, None)
        func.zero_grad(set_to_none=True)
        y0.grad = None

    allocs = []

    def walk(e, frames, op):
        kind = type(e.typed[1]).__name__
        if kind == "_ExtraFields_Allocation":
            allocs.append((e.start_time_ns, e.typed[1].ptr, int(e.typed[1].alloc_size), frames, op))
            return
        name = e.name
        if ".py(" in name:  # a Python frame "file.py(line): function"
            frames = frames + (name,)
        elif name.startswith("aten::") and op is None:
            op = name
        for c in e.children:
            walk(c, frames, op)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root, (), None)
    allocs.sort(key=lambda a: a[0])
    live, total, peak, at_peak = {}, 0, 0, {}
    for ts, ptr, size, frames, op in allocs:
        if size > 0:
            live[ptr] = (size, frames, op, ts)
        else:
            live.pop(ptr, None)
        total += size
        if total > peak:
            peak, at_peak = total, dict(live)

    def where(frames):
        """The two innermost frames of symode, of this script, or torch's autograd/nn."""
        own = [f for f in frames if "symode" in f or "benchmarks" in f or "torch/nn" in f or "autograd" in f]
        own = (own or list(frames) or ["?"])[-2:]
        return " > ".join(f.split("/src/")[-1].split("site-packages/")[-1] for f in own)

    # the ordinal of every allocation among those of its site (same size, code, operator):
    # e.g. which of the backward's evaluations of the augmented field made a buffer still alive
    ordinal, seen = {}, collections.Counter()
    for ts, ptr, size, frames, op in allocs:
        if size > 0:
            key = (size, where(frames), op or "?")
            seen[key] += 1
            ordinal[(ts, ptr)] = seen[key]
    groups = collections.defaultdict(list)
    for ptr, (size, frames, op, ts) in at_peak.items():
        groups[(size, where(frames), op or "?")].append(ordinal[(ts, ptr)])
    z, th = sizes["augmented_bytes"], sizes["theta_bytes"]
    rows = [
        {
            "count": len(o),
            "bytes": size,
            "in_z": size / z,
            "in_theta": size / th,
            "where": w,
            "op": op,
            "ordinals": sorted(o),
            "of": seen[(size, w, op)],
        }
        for (size, w, op), o in sorted(groups.items(), key=lambda kv: -kv[0][0] * len(kv[1]))
    ]
    return {
        "peak_bytes": peak,
        "n_steps": n_steps,
        "rows": rows,
        "z_buffers": sum(r["count"] for r in rows if r["bytes"] == z),
        "z_bytes_total": sum(r["count"] * r["bytes"] for r in rows if r["bytes"] == z),
    }


# --------------------------------------------------------------------------------------
def run(args) -> dict:
    case = memory_case(args.width, args.batch, args.dtype, args.method, device=args.device, seed=args.seed)
    func, y0, t, device = case.func, case.y0, case.t, case.device
    state, theta, act, s = case.state_bytes, case.theta_bytes, case.activation_bytes, case.stages
    sizes = {"state_bytes": state, "theta_bytes": theta, "activation_bytes": act, "augmented_bytes": 2 * state + theta}
    configs = configurations(args.max_checkpoints)
    labels = [repr(m) for m in configs]

    # warm-up (first profiler start, lazy initialisations), not recorded; N = 2 is enough
    n0 = min(args.steps)
    measure(func, y0, t, 2, args.method, Backprop(), device)
    for m in configs:
        fixed_step_iteration(func, y0, t, 2, args.method, m)

    peaks = {lab: {} for lab in labels}
    nfe_bwd = {lab: {} for lab in labels}
    rel = {lab: {} for lab in labels}
    for n in args.steps:
        grads = {}
        for lab, m in zip(labels, configs):
            peak, stats, grad = measure(func, y0, t, n, args.method, m, device)
            peaks[lab][n] = peak
            nfe_bwd[lab][n] = stats.nfe_backward
            grads[lab] = grad
            print(f"  N = {n:4d}  {lab:40s} {peak / MiB:10.3f} MiB", file=sys.stderr, flush=True)
        ref = grads[repr(Backprop())]
        for lab in labels:
            rel[lab][n] = float((grads[lab] - ref).norm() / ref.norm())
        del grads, ref

    repeat = {}
    if args.repeat_check:  # determinism: every configuration again at the smallest N
        for lab, m in zip(labels, configs):
            repeat[lab] = measure(func, y0, t, n0, args.method, m, device)[0] == peaks[lab][n0]

    census = None
    if args.census and device.type == "cpu":
        ca = next(m for m in configs if role(m) == "adjoint")
        try:
            # the adjoint's peak does not depend on N (checked above): a few steps suffice
            census = adjoint_census(func, y0, t, CENSUS_STEPS, args.method, ca, sizes)
            census["config"] = repr(ca)
            census["matches_measured_peak"] = census["peak_bytes"] == peaks[repr(ca)][n0]
        except Exception as exc:  # private profiler API: report, do not fail the benchmark
            census = {"error": repr(exc)}

    return {
        "config": {
            "dim": case.dim,
            "width": args.width,
            "batch": args.batch,
            "dtype": args.dtype,
            "method": args.method,
            "stages": s,
            "steps": list(args.steps),
            "max_checkpoints": args.max_checkpoints,
            "device": str(device),
            "seed": args.seed,
            "threads": torch.get_num_threads(),
        },
        "sizes": sizes,
        "configurations": labels,
        "roles": {lab: role(m) for lab, m in zip(labels, configs)},
        "theory_growth": {lab: theory_growth(m, s) for lab, m in zip(labels, configs)},
        "peaks": peaks,
        "nfe_backward": nfe_bwd,
        "grad_rel_diff": rel,
        "repeat_identical": repeat,
        "census": census,
    }


# --------------------------------------------------------------------------------------
def ordering(res: dict) -> tuple[list[str], dict]:
    """The ordering the theory predicts, per N, as markdown lines, and a summary of what holds."""
    c, z = res["config"], res["sizes"]
    steps, peaks, roles = c["steps"], res["peaks"], res["roles"]
    by = collections.defaultdict(list)
    for lab, r in roles.items():
        by[r].append(lab)
    bp, oc, ck, sa = (by[r][0] for r in ("backprop", "one_checkpoint", "checkpoint", "symplectic"))
    adj, capped = by["adjoint"], by["capped"]
    state, theta, s = z["state_bytes"], z["theta_bytes"], c["stages"]
    tol = 0.05
    summary = {}
    lines = [
        f"| N | backprop ~ one ckpt (ratio, within {tol:.0%}) | backprop, one ckpt > ckpt | ckpt > SA "
        f"| SA >= CA | N\\|y\\| (MiB) | s\\|theta\\| (MiB) |",
        "| ---: | --- | --- | --- | --- | ---: | ---: |",
    ]

    def yes(b):
        return "**yes**" if b else "**NO**"

    for n in steps:
        r = peaks[oc][n] / peaks[bp][n]
        a = abs(r - 1) <= tol
        b = peaks[oc][n] > peaks[ck][n] and peaks[bp][n] > peaks[ck][n]
        cc = peaks[ck][n] > peaks[sa][n]
        ca = [peaks[sa][n] >= peaks[x][n] for x in adj]
        ca_txt = "; ".join(f"{yes(v)} ({peaks[sa][n] / MiB:.1f} vs {peaks[x][n] / MiB:.1f})" for v, x in zip(ca, adj))
        if len(set(peaks[x][n] for x in adj)) == 1:  # identical: say it once
            ca_txt = f"{yes(ca[0])} ({peaks[sa][n] / MiB:.1f} vs {peaks[adj[0]][n] / MiB:.1f}, both CA configs)"
        lines.append(
            f"| {n} | {yes(a)} ({r:.4f}) | {yes(b)} | {yes(cc)} ({peaks[ck][n] / peaks[sa][n]:.1f}x) "
            f"| {ca_txt} | {n * state / MiB:.2f} | {s * theta / MiB:.2f} |"
        )
        summary[n] = {"bp~oc": a, "oc>ck": b, "ck>sa": cc, "sa>=ca": all(ca)}

    out = (
        [
            "The ordering the theory predicts, checked per N (SA: symplectic adjoint, CA: continuous adjoint, "
            "ckpt: checkpoint; MiB in parentheses):",
            "",
        ]
        + lines
        + [""]
    )
    # where SA and CA cross: SA grows by its measured slope, CA is flat
    n1, n2 = steps[-2] if len(steps) > 1 else steps[0], steps[-1]
    slope = (peaks[sa][n2] - peaks[sa][n1]) / (n2 - n1) if n2 > n1 else float("nan")
    for x in adj:
        gap = peaks[x][n2] - peaks[sa][n2]
        if slope > 0 and gap > 0:
            cross = n2 + gap / slope
            out.append(
                f"- {x} vs SA: SA grows by {slope:,.0f} B = {slope / state:.3f} |y| per step and "
                f"{x} is flat, so SA >= CA from N ~ {cross:,.0f} on (extrapolated); "
                f"CA's peak is {peaks[x][n2] / theta:.2f} |theta| = {peaks[x][n2] / (s * theta):.2f} s|theta|."
            )
            summary.setdefault("crossover", {})[x] = cross
        else:
            out.append(f"- {x} vs SA at N = {n2}: CA {'<=' if gap <= 0 else '>'} SA.")
    flat = {}
    for x in capped:
        past = [n for n in steps if n > c["max_checkpoints"]]
        vals = {peaks[x][n] for n in past}
        flat[x] = len(vals) == 1
        above = [n for n in steps if peaks[x][n] > peaks[sa][n]]
        equal = [n for n in steps if peaks[x][n] == peaks[sa][n]]
        out.append(
            f"- {x}: {'flat' if flat[x] else 'NOT flat'} over N = {', '.join(map(str, past))} "
            f"(past its cap of {c['max_checkpoints']}): "
            + ", ".join(f"{peaks[x][n]:,} B" for n in past)
            + (
                f"; ABOVE the uncapped SA at N = {', '.join(map(str, above))}"
                if above
                else "; at or below the uncapped SA at every N"
            )
            + (f" (equal at N = {', '.join(map(str, equal))})." if equal else ".")
        )
    for x in adj:
        vals = {peaks[x][n] for n in steps}
        out.append(
            f"- {x}: {'flat' if len(vals) == 1 else 'NOT flat'} in N "
            f"({', '.join(f'{peaks[x][n]:,} B' for n in steps)})."
        )
    summary["capped_flat"] = flat
    return out, summary


def to_markdown(res: dict) -> str:
    c, z = res["config"], res["sizes"]
    steps, labels, peaks = c["steps"], res["configurations"], res["peaks"]
    state, theta, act = z["state_bytes"], z["theta_bytes"], z["activation_bytes"]
    lines = [
        f"MLP {c['dim']} -> {c['width']} -> {c['width']} -> {c['dim']} (softplus), batch {c['batch']}, "
        f"{c['dtype']}, {c['method']} (s = {c['stages']}), t in [0, 1], step_size 1/N, "
        f"device {c['device']}, {c['threads']} thread(s).",
        "",
        f"- state |y| = {state:,} B; parameters |theta| = {theta:,} B ({theta / MiB:.3f} MiB)",
        f"- one network use's activations A = {act:,} B ({act / MiB:.3f} MiB) = {act / theta:.2f} |theta| "
        + ("(network-dominated: A > |theta|)" if act > theta else "(NOT network-dominated: raise --batch)"),
        f"- augmented state of the continuous adjoint |z| = 2|y| + |theta| = {z['augmented_bytes']:,} B",
        "",
    ]
    hdr = " | ".join(f"N = {n}" for n in steps)
    lines.append(
        "Peak MiB of one training iteration (profiler measure; grad rel. diff. to backprop and backward NFE at each N):"
    )
    lines.append("")
    lines.append(
        f"| configuration | {hdr} | grad rel. diff. | NFE bwd |"
        + (" repeat identical |" if res["repeat_identical"] else "")
    )
    lines.append(
        "| --- | "
        + " | ".join("---:" for _ in steps)
        + " | ---: | ---: |"
        + (" :---: |" if res["repeat_identical"] else "")
    )
    for lab in labels:
        cells = " | ".join(f"{peaks[lab][n] / MiB:.3f}" for n in steps)
        rd = " / ".join(f"{res['grad_rel_diff'][lab][n]:.1e}" for n in steps)
        nfe = " / ".join(str(res["nfe_backward"][lab][n]) for n in steps)
        rep = ""
        if res["repeat_identical"]:
            rep = " yes |" if res["repeat_identical"][lab] else " NO |"
        lines.append(f"| {lab} | {cells} | {rd} | {nfe} |{rep}")
    lines.append("")
    lines.append("Growth per step between consecutive N (bytes; in states |y|; in network uses' activations A):")
    lines.append("")
    pairs = list(zip(steps, steps[1:]))
    lines.append("| configuration | theory | " + " | ".join(f"{a} -> {b}" for a, b in pairs) + " |")
    lines.append("| --- | --- | " + " | ".join("---:" for _ in pairs) + " |")
    for lab in labels:
        cells = []
        for a, b in pairs:
            g = (peaks[lab][b] - peaks[lab][a]) / (b - a)
            cells.append(f"{g:,.0f} B = {g / state:.2f} \\|y\\| = {g / act:.3f} A")
        theory = res["theory_growth"][lab].replace("|", "\\|")
        lines.append(f"| {lab} | {theory} | " + " | ".join(cells) + " |")
    lines.append("")
    ordl, _ = ordering(res)
    lines += ordl
    cen = res.get("census")
    if cen:
        lines.append("")
        if "error" in cen:
            lines.append(f"Census of the continuous adjoint's peak: unavailable ({cen['error']}).")
        else:
            zb = z["augmented_bytes"]
            lines.append(
                f"Census of the allocations alive at the peak of {cen['config']} at N = {cen['n_steps']} "
                f"(peak {cen['peak_bytes']:,} B = {cen['peak_bytes'] / MiB:.3f} MiB"
                + (
                    ", the figure measured at every N"
                    if cen.get("matches_measured_peak")
                    else ", NOT the figure measured above"
                )
                + "): "
                f"**{cen['z_buffers']} buffers of the augmented state's size |z|** "
                f"({cen['z_bytes_total'] / MiB:.2f} MiB, {cen['z_bytes_total'] / cen['peak_bytes']:.0%} of the peak)."
            )
            lines.append("")
            lines.append(
                "Ordinals: which of the allocations made at that site during the iteration are the ones "
                "alive (e.g. the k-th evaluation of the augmented field; rk4: 4 per step)."
            )
            lines.append("")
            lines.append("| count | bytes each | in \\|z\\| | allocated at | operator | ordinals alive (of) |")
            lines.append("| ---: | ---: | ---: | --- | --- | --- |")
            for r in cen["rows"]:
                if r["count"] * r["bytes"] < 0.002 * cen["peak_bytes"]:
                    continue
                lines.append(
                    f"| {r['count']} | {r['bytes']:,} | {r['bytes'] / zb:.3f} | `{r['where']}` | {r['op']} "
                    f"| {', '.join(map(str, r['ordinals']))} ({r['of']}) |"
                )
            rest = sum(
                r["count"] * r["bytes"] for r in cen["rows"] if r["count"] * r["bytes"] < 0.002 * cen["peak_bytes"]
            )
            lines.append(f"| ... | | | (smaller allocations, {rest:,} B in all) | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[6, 12, 24, 48],
        help="numbers of fixed steps N (the smallest below --max-checkpoints shows the cap arrive)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=512,
        help="batch size: large enough that one network use's activations exceed |theta|",
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--width", type=int, default=860, help="hidden width W of the MLP 43 -> W -> W -> 43")
    p.add_argument("--method", default="rk4", help="a fixed-step method name (symode.TABLEAUS)")
    p.add_argument(
        "--max-checkpoints",
        type=int,
        default=10,
        help="the cap of the capped symplectic adjoint (below the N given, so N grows past it)",
    )
    add_run_arguments(p, "do not measure every configuration again at the smallest N")
    p.add_argument(
        "--no-census", dest="census", action="store_false", help="skip the census of the continuous adjoint's peak"
    )
    p.add_argument("--out", help="write the record here: markdown if PATH ends in .md, else JSON")
    args = p.parse_args(argv)
    args.steps = sorted(set(args.steps))
    torch.set_num_threads(args.threads)

    run_and_record(args, run, to_markdown, lambda res: {"ordering": {str(k): v for k, v in ordering(res)[1].items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())

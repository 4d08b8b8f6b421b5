"""Time per training iteration against gradient error: symplectic adjoint vs continuous adjoint.

The question: *at equal gradient accuracy (1e-6 relative), is the symplectic adjoint faster
than the continuous adjoint on the default problem?* The default problem is ``symode
bench``'s (:func:`symode.bench.get_problem`, ``miniboone``: a CNF block shaped like
the paper's MINIBOONE model, d = 43, two hidden layers of 860, softplus, Hutchinson trace
inside f), dopri5 at rtol = atol = 1e-5, float32, the bench's batch (512).

What is measured
    * ``SymplecticAdjoint()``: the exact gradient of the discrete forward solve; its error is
      round-off.
    * ``ContinuousAdjoint(rtol=tol, atol=tol)`` and ``ContinuousAdjoint(rtol=tol, atol=tol,
      norm="seminorm")``, the forward solve at the problem's tolerance and the backward solve
      (the augmented system, adaptive, the forward's method and controller) at each ``tol`` of
      ``--tols``, loosest first. A norm's sweep stops tightening once ``--patience``
      consecutive tolerances have not brought the error below half the best error so far
      (the error has stopped falling: in float32 round-off sets the floor; in float64 the
      difference between the discrete solve's gradient and the continuous problem's).

    Gradient error, exactly as ``symode bench --reference-dtype float64`` defines it: the max
    over the parameter tensors of ``||g - g_ref||_2 / ||g_ref||_2``, where ``g_ref`` is
    backprop's gradient of the same problem converted to float64 on the accepted steps of the
    round's forward solve (``FixedSteps(grid=...)``): the exact gradient of the discrete
    solve up to float64 round-off (the bench's own functions: ``symode.bench.iteration``
    and ``symode.bench.rel_diffs``). Every method's forward solve takes the same steps (checked
    and reported). The error is measured in every iteration, the untimed first one and each
    timed one, and the table gives its maximum over them.

    Time: one first iteration of each configuration (the sweep; it also warms up), then
    ``--repeats`` timed rounds in which the configurations take turns
    (``symode.bench.interleave``, one round at a time; the order reversed every other round,
    so that a drift of the machine's speed favours no one), each round a new Hutchinson noise
    (``problem.resample(seed + 1 + k)``, as ``symode bench`` does), the same for every method
    in the round; the float64 reference of a round is computed after its turns and never
    timed. Reported: the median time per iteration (forward + backward), its ratio to the
    symplectic adjoint's median, and the median over rounds of the ratio within
    a round ("paired").

Conclusion
    The cheapest continuous-adjoint configuration whose error is <= ``--target`` (1e-6) in
    every iteration, against the symplectic adjoint: the target is met when the
    symplectic adjoint's error is within it too and its median time is the smaller. When the
    loosest tolerance swept already meets the accuracy, looser ones might be cheaper still:
    the script says so.

    python benchmarks/accuracy.py                             # the recorded run (float32; ~5 minutes on 2 shared cores)
    python benchmarks/accuracy.py --dtype float64 --repeats 3 --tols 1e-2 1e-3 1e-4 1e-5 1e-6 1e-7
                                                              # float64 throughout (~6 minutes)
    python benchmarks/accuracy.py --out record.md --plot accuracy.png    # also write the record and the figure
    python benchmarks/accuracy.py --batch 32 --repeats 1 --tols 1e-2 1e-5   # a quick look (~15 s)

Options: ``--problem`` (symode bench's problems), ``--batch``, ``--init-gain``, ``--t1``,
``--dtype``, ``--method``, ``--rtol``/``--atol`` (forward), ``--tols`` (backward, continuous
adjoint), ``--norms``, ``--patience``, ``--target``, ``--repeats``, ``--seed``, ``--threads``
(default 1), ``--out PATH`` (markdown if it ends in ``.md``, else JSON), ``--plot PATH.png``
(error against time; needs matplotlib, the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from symode import AdaptiveSteps, FixedSteps, get_tableau
from symode.bench import (
    DEFAULT_PROBLEM,
    DTYPES,
    PROBLEMS,
    get_problem,
    gradient_label,
    import_pyplot,
    interleave,
    iteration,
    rel_diffs,
    run_and_record,
    save_figure,
    source_state,
)
from symode.gradients import Backprop, ContinuousAdjoint, SymplecticAdjoint

DEFAULT_TOLS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)


# --------------------------------------------------------------------------------------
class Config:
    """One gradient configuration and what is measured of it."""

    def __init__(self, gradient, norm: str | None = None, tol: float | None = None):
        self.gradient, self.norm, self.tol = gradient, norm, tol
        self.label = gradient_label(gradient)
        self.errors: list[float] = []  # every iteration's gradient error (first, then rounds)
        self.errors_concat: list[float] = []
        self.nfe_backward: list[int] = []
        self.nfe_forward: list[int] = []
        self.num_accepted: list[int] = []
        self.same_steps: list[bool] = []  # forward steps identical to the symplectic adjoint's
        self.times_s: list[float] = []  # the timed rounds only

    def record(self, grads, stats, ref_grads, ref_grids) -> None:
        err, err_concat = rel_diffs(grads, ref_grads)
        self.errors.append(err)
        self.errors_concat.append(err_concat)
        self.nfe_backward.append(int(stats.nfe_backward))
        self.nfe_forward.append(int(stats.nfe_forward))
        self.num_accepted.append(int(stats.num_accepted))
        self.same_steps.append(
            len(stats.grids) == len(ref_grids) and all(torch.equal(a, b) for a, b in zip(stats.grids, ref_grids))
        )

    def as_dict(self) -> dict:
        d = {k: v for k, v in vars(self).items() if k != "gradient"}
        d["gradient"] = repr(self.gradient)
        return d


def reference_gradient(problem, solver: str, grids) -> tuple:
    """Backprop's gradient of ``problem`` in float64 on the given accepted steps (one grid a
    block): the exact gradient of the discrete solve, up to float64 round-off."""
    ref = problem.converted(torch.float64)
    _, grads, _ = iteration(ref, Backprop(), solver, [FixedSteps(grid=g) for g in grids])
    return grads


def _stopped_falling(errors: list[float], patience: int) -> bool:
    """Whether the last ``patience`` errors all failed to fall below half the best before them."""
    if patience <= 0 or len(errors) <= patience:
        return False
    best_before = min(errors[:-patience])
    return all(e > 0.5 * best_before for e in errors[-patience:])


def _med(xs):
    return statistics.median(xs) if xs else float("nan")


# --------------------------------------------------------------------------------------
def run(args) -> dict:
    dtype = DTYPES[args.dtype]
    problem = get_problem(
        args.problem, batch=args.batch, dtype=dtype, seed=args.seed, t1=args.t1, init_gain=args.init_gain
    )
    steps = AdaptiveSteps(rtol=args.rtol, atol=args.atol)
    solver = args.method
    device = torch.device("cpu")
    base_seed = problem.noise_seed
    start = time.perf_counter()
    source = source_state()

    def log(msg: str) -> None:
        el = int(time.perf_counter() - start)
        print(f"  [{el // 60}:{el % 60:02d}] {msg}", file=sys.stderr, flush=True)

    # 1. the sweep: one iteration of each configuration at the first noise (also the warm-up)
    sa = Config(SymplecticAdjoint())
    log(f"first iteration: {sa.label}")
    _, grads, stats = iteration(problem, sa.gradient, solver, steps)
    ref_grids = [g.clone() for g in stats.grids]
    log("reference gradient (float64 backprop on the same steps)")
    ref = reference_gradient(problem, solver, ref_grids)
    sa.record(grads, stats, ref, ref_grids)
    configs = [sa]
    stopped = {}
    for norm in args.norms:
        errors = []
        for tol in args.tols:
            c = Config(ContinuousAdjoint(rtol=tol, atol=tol, norm=norm), norm, tol)
            log(f"first iteration: {c.label}")
            _, grads, stats = iteration(problem, c.gradient, solver, steps)
            c.record(grads, stats, ref, ref_grids)
            configs.append(c)
            errors.append(c.errors[-1])
            if _stopped_falling(errors, args.patience):
                stopped[norm] = tol
                last = ", ".join(f"{e:.2e}" for e in errors[-args.patience - 1 :])
                log(f"{norm}: the error stopped falling ({last}): no tighter tolerance")
                break
    del grads, ref

    # 2. timed rounds: the configurations take turns, a new noise each round
    try:
        for k in range(args.repeats):
            if base_seed is not None:  # (the mlp problem draws no noise)
                problem.resample(base_seed + 1 + k)
            order = configs if k % 2 == 0 else configs[::-1]
            done: list = [None] * len(order)  # (grads, stats) of each turn of the round

            def turn(i: int, order=order, done=done) -> None:
                done[i] = iteration(problem, order[i].gradient, solver, steps)[1:]

            def announce(_: int, i: int, k=k, order=order) -> None:
                log(f"round {k + 1}/{args.repeats}: {order[i].label}")

            times = interleave([lambda i=i: turn(i) for i in range(len(order))], 1, device=device, announce=announce)
            ref_grids = [g.clone() for g in done[order.index(sa)][1].grids]
            ref = reference_gradient(problem, solver, ref_grids)  # untimed, after the round's turns
            for c, ts, (grads, stats) in zip(order, times, done):
                c.times_s.extend(ts)
                c.record(grads, stats, ref, ref_grids)
            del ref, done, grads
    finally:
        if base_seed is not None:
            problem.resample(base_seed)

    rows = []
    sa_med = _med(sa.times_s)
    for c in configs:
        d = c.as_dict()
        d["method"] = "symplectic adjoint" if c is sa else f"continuous adjoint ({c.norm})"
        d["error_max"] = max(c.errors)
        d["error_first"] = c.errors[0]
        d["median_time_s"] = _med(c.times_s)
        d["ratio_to_sa"] = d["median_time_s"] / sa_med
        d["ratio_to_sa_paired"] = _med([a / b for a, b in zip(c.times_s, sa.times_s)])
        rows.append(d)
    info = dict(problem.description)
    info.update(
        problem=args.problem,
        solver=f"{get_tableau(solver).name}, adaptive, rtol={args.rtol:g}, atol={args.atol:g}",
        dtype=args.dtype,
        reference="backprop in float64 on the same accepted steps",
        source=source,
        repeats=args.repeats,
        threads=torch.get_num_threads(),
        target=args.target,
        tols=list(args.tols),
        norms=list(args.norms),
        patience=args.patience,
        stopped=stopped,
        load_average_1min=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    )
    return {"info": info, "rows": rows, "conclusion": conclusion(rows, args.target, args.tols)}


def conclusion(rows: list[dict], target: float, tols) -> dict:
    """The cheapest continuous-adjoint configuration within ``target`` against the symplectic
    adjoint; ``met``: the symplectic adjoint is within it and faster (median)."""
    sa = rows[0]
    within = [r for r in rows[1:] if r["error_max"] <= target]
    out = {
        "target": target,
        "sa_error": sa["error_max"],
        "sa_median_s": sa["median_time_s"],
        "sa_nfe_backward": sa["nfe_backward"][0],
        "sa_within": sa["error_max"] <= target,
    }
    if not within:
        out.update(cheapest=None, met=out["sa_within"])
        return out
    best = min(within, key=lambda r: r["median_time_s"])
    loosest = max(tols)
    out.update(
        cheapest={
            k: best[k]
            for k in ("label", "norm", "tol", "error_max", "median_time_s", "ratio_to_sa", "ratio_to_sa_paired")
        },
        cheapest_nfe_backward=best["nfe_backward"][0],
        ratio=best["median_time_s"] / sa["median_time_s"],
        met=out["sa_within"] and sa["median_time_s"] < best["median_time_s"],
        loosest_within=any(r["tol"] == loosest for r in within),
    )
    return out


# --------------------------------------------------------------------------------------
def _nfe(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def to_markdown(res: dict) -> str:
    i, rows, c = res["info"], res["rows"], res["conclusion"]
    n_iter = len(rows[0]["errors"])
    lines = [
        f"{i['summary']}, {i['parameters']:,} parameters, batch {i['y0_shape'][0]}, {i['solver']} (forward), "
        f"{i['dtype']}, {i['threads']} thread(s); gradient error = max over the parameter tensors of "
        f"||g - g_ref|| / ||g_ref||, g_ref = {i['reference']}, max over {n_iter} iterations "
        f"(noise draws); time = median of {i['repeats']} interleaved iterations (forward + backward). "
        f"symode at {i['source']}.",
        "",
    ]
    lines.append("| method | adjoint tol | gradient error | NFE bwd | median s | x SA | x SA (paired) |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        tol = "-" if r["tol"] is None else f"{r['tol']:.0e}"
        lines.append(
            f"| {r['method']} | {tol} | {r['error_max']:.2e} | {_nfe(r['nfe_backward'])} "
            f"| {r['median_time_s']:.3f} | {r['ratio_to_sa']:.2f} | {r['ratio_to_sa_paired']:.2f} |"
        )
    lines.append("")
    fwd = sorted({n for r in rows for n in r["nfe_forward"]})
    acc = sorted({n for r in rows for n in r["num_accepted"]})
    same = all(all(r["same_steps"]) for r in rows)
    lines.append(
        f"Forward: {'/'.join(map(str, acc))} accepted steps, NFE {'/'.join(map(str, fwd))} (over the "
        f"noise draws); every method's forward solve took {'the same' if same else 'NOT always the same'} "
        f"steps as the symplectic adjoint's in every iteration."
    )
    for norm, tol in i["stopped"].items():
        lines.append(
            f"Continuous adjoint ({norm}): the sweep stopped after {tol:.0e}: the error had not fallen "
            f"below half its best for {i['patience']} tolerances."
        )
    lines.append("")
    t = c["target"]
    if c["cheapest"] is None:
        lines.append(
            f"**No continuous-adjoint configuration reached {t:g}** (the symplectic adjoint's error: "
            f"{c['sa_error']:.2e}); target {'met' if c['met'] else 'NOT met'}."
        )
    else:
        b = c["cheapest"]
        verdict = "MET" if c["met"] else "NOT MET"
        lines.append(
            f"**Target {verdict}.** At gradient error <= {t:g}: the cheapest continuous-adjoint "
            f"configuration is `{b['label']}` (error {b['error_max']:.2e}, {c['cheapest_nfe_backward']} "
            f"backward NFE, {b['median_time_s']:.3f} s); the symplectic adjoint: error "
            f"{c['sa_error']:.2e}, {c['sa_nfe_backward']} backward NFE, {c['sa_median_s']:.3f} s. "
            f"Time continuous / symplectic = **{c['ratio']:.2f}** (paired {b['ratio_to_sa_paired']:.2f}; "
            f"> 1: the symplectic adjoint is faster)."
        )
        if c["loosest_within"]:
            lines.append(
                f"The loosest adjoint tolerance swept ({max(i['tols']):.0e}) is already within {t:g}: a "
                f"looser one may be cheaper still."
            )
    return "\n".join(lines)


def write_plot(plt, path: str, res: dict) -> str:
    """Gradient error against median time: the symplectic adjoint and one line per norm."""
    fig, ax = plt.subplots(figsize=(7, 5))
    sa, rows = res["rows"][0], res["rows"][1:]
    ax.scatter(
        [sa["median_time_s"]],
        [sa["error_max"]],
        marker="*",
        s=160,
        color="tab:red",
        label="symplectic adjoint",
        zorder=3,
    )
    for norm, color in (("default", "tab:blue"), ("seminorm", "tab:green")):
        rs = [r for r in rows if r["norm"] == norm]
        if not rs:
            continue
        ax.plot(
            [r["median_time_s"] for r in rs],
            [r["error_max"] for r in rs],
            "o-",
            color=color,
            label=f"continuous adjoint ({norm})",
        )
        for r in rs:
            ax.annotate(
                f"{r['tol']:.0e}",
                (r["median_time_s"], r["error_max"]),
                fontsize=7,
                xytext=(4, 4 if norm == "default" else -10),
                textcoords="offset points",
                color=color,
            )
    ax.axhline(res["conclusion"]["target"], color="gray", ls="--", lw=1, label="target")
    ax.set_yscale("log")
    ax.set_xlabel("time per iteration (s, median)")
    ax.set_ylabel("gradient rel. error (max over iterations)")
    i = res["info"]
    ax.set_title(f"{i['summary']}, batch {i['y0_shape'][0]}\n{i['solver']}, {i['dtype']}", fontsize=8)
    ax.legend(fontsize=8)
    directory, filename = os.path.split(os.path.abspath(path))
    return save_figure(plt, fig, directory, filename)


# --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--problem",
        choices=list(PROBLEMS),
        default=DEFAULT_PROBLEM,
        help="symode bench's problems (default: %(default)s)",
    )
    p.add_argument("--batch", type=int, default=None, help="(default: the problem's, symode bench's: miniboone 512)")
    p.add_argument("--init-gain", type=float, default=None, help="as symode bench's (default: the problem's)")
    p.add_argument("--t1", type=float, default=1.0, help="integrate over [0, t1] (default: 1)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--method", default="dopri5", help="an adaptive Runge-Kutta method (default: %(default)s)")
    p.add_argument("--rtol", type=float, default=1e-5, help="forward tolerance (default: %(default)s)")
    p.add_argument("--atol", type=float, default=1e-5, help="forward tolerance (default: %(default)s)")
    p.add_argument(
        "--tols",
        type=float,
        nargs="+",
        default=list(DEFAULT_TOLS),
        help="the continuous adjoint's backward rtol = atol, swept loosest first (default: 1e-2 ... 1e-9)",
    )
    p.add_argument("--norms", nargs="+", choices=("default", "seminorm"), default=["default", "seminorm"])
    p.add_argument(
        "--patience",
        type=int,
        default=3,
        help="stop tightening after this many tolerances that do not halve the best error (0: sweep "
        "them all; default %(default)s)",
    )
    p.add_argument("--target", type=float, default=1e-6, help="the accuracy of the comparison (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1: steadier on a shared machine)"
    )
    p.add_argument("--out", help="write the record here: markdown if PATH ends in .md, else JSON")
    p.add_argument("--plot", metavar="PATH.png", help="write the error-vs-time figure (needs matplotlib)")
    args = p.parse_args(argv)
    args.tols = sorted(set(args.tols), reverse=True)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if not get_tableau(args.method).adaptive:
        p.error(f"--method {args.method}: an adaptive method is needed")
    plt = None
    if args.plot:
        plt = import_pyplot()
        if plt is None:
            p.error("--plot needs matplotlib: pip install matplotlib (or pip install -e '.[bench]')")
    torch.set_num_threads(args.threads)

    res = run_and_record(args, run, to_markdown)
    if plt is not None:
        print(f"wrote {write_plot(plt, args.plot, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

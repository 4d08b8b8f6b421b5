"""Stiff problems: symode's implicit methods against scipy's Radau and BDF, and the memory and
time of their gradients.

Part 1 (``--part accuracy``): Robertson's kinetics over [0, 1e5], Van der Pol with mu = 1000
over [0, 1500] and a stiff linear system (eigenvalues from -1 to -1e4, 20 states) over [0, 10];
for rtol 1e-3 .. 1e-8 (atol = rtol * 1e-4 for Robertson, rtol elsewhere) each method's error
against scipy's Radau at rtol 1e-12, in units of the tolerance (max over outputs and
components), its accepted steps and Jacobian evaluations, and the same for scipy's Radau and BDF.
dopri5 is tried too, and stops at 20,000 steps.

Part 2 (``--part gradients``): a neural ODE with stiff dynamics, ``f(y) = MLP(y) - D y`` with
``D`` from 1 to 1e4 (20 states, batch 16, width 64), fixed steps of sdirk2 and kvaerno5 over
[0, 1] with N steps (``Newton(jacobian="batched")``: the samples are independent); one training
iteration (solve, loss, backward) per gradient method: peak
memory (``symode.bench.peak_memory``, deterministic) and median time of interleaved repeats.

Part 3 (``--torchdiffeq-src PATH``): the same iteration through torchdiffeq's implicit methods
(its development version, which has them: a source tree at PATH, e.g. ``git archive`` of its
repository; the release on PyPI has none), which differentiates through its Broyden
iterations: memory, time, and the relative difference of its solution and gradient from
symode's (stages held to 1e-12).

Part 4 (``--part krylov``): a state whose numbers all interact, the heat equation with a
reaction term (``u_t = k u_xx + w sin(u) cos(t)``, ``k = 0.01``, ``n`` grid points: eigenvalues
down to ``-0.04 (n + 1)^2``) over [0, 1], kvaerno5 at rtol 1e-6, one training iteration with
the symplectic adjoint and with backprop, by the dense Jacobian (``n`` products and an ``n x n``
LU per Jacobian) and matrix-free (``Newton(jacobian="krylov")``): steps, Jacobians (or points
linearised at), Newton iterations, time, peak memory, and the gradient's relative difference.

    python benchmarks/stiff.py                       # parts 1 and 2, ~10 minutes on 2 CPUs
    python benchmarks/stiff.py --part gradients --steps 10 20 40
    python benchmarks/stiff.py --part krylov --sizes 64 256 512
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

import symode
from symode.bench import MLPField, interleave, peak_memory

F64 = torch.float64


def robertson(t, y):
    y1, y2, y3 = y.unbind(-1)
    return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2**2, 3e7 * y2**2], -1)


def van_der_pol(t, y):
    return torch.stack([y[..., 1], 1000.0 * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], -1)


_gen = torch.Generator().manual_seed(0)
_Q = torch.linalg.qr(torch.randn(20, 20, generator=_gen, dtype=F64))[0]
LINEAR = _Q @ torch.diag(-torch.logspace(0, 4, 20, dtype=F64)) @ _Q.T


def linear(t, y):
    return y @ LINEAR.T


PROBLEMS = {  # name: (f, y0, output times, atol / rtol)
    "robertson": (robertson, [1.0, 0.0, 0.0], [0.0, 1e-2, 1.0, 1e2, 1e4, 1e5], 1e-4),
    "van der pol": (van_der_pol, [2.0, 0.0], list(np.linspace(0, 1500, 7)), 1.0),
    "stiff linear": (linear, list(np.ones(20)), list(np.linspace(0, 10, 6)), 1.0),
}


def _scipy(f, y0, t, method, rtol, atol):
    def rhs(s, y):
        return f(None, torch.as_tensor(y)).numpy()

    start = time.perf_counter()
    out = solve_ivp(rhs, (t[0], t[-1]), y0, method, t_eval=t, rtol=rtol, atol=atol)
    return out.y.T, out, time.perf_counter() - start


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def accuracy(rtols) -> None:
    for name, (f, y0, t, atol_factor) in PROBLEMS.items():
        ref = _scipy(f, y0, t, "Radau", 1e-12, 1e-12 * min(atol_factor, 1.0))[0]
        y0_, t_ = torch.tensor(y0, dtype=F64), torch.tensor(t, dtype=F64)
        print(f"\n### {name}\n")
        print(_row("method", "rtol", "error (tolerance units)", "accepted steps", "Jacobians", "time"))
        print(_row(*["---"] * 6))
        for rtol in rtols:
            atol = rtol * atol_factor
            for method in ("kvaerno3", "kvaerno4", "kvaerno5"):
                steps = symode.AdaptiveSteps(rtol=rtol, atol=atol, interpolate=False, max_num_steps=50_000)
                start = time.perf_counter()
                with torch.no_grad():
                    sol = symode.solve(f, y0_, t_, method=method, steps=steps)
                seconds = time.perf_counter() - start
                units = np.abs(sol.ys.numpy() - ref) / (atol + rtol * np.abs(ref))
                stats = sol.stats
                print(
                    _row(
                        method,
                        f"{rtol:g}",
                        f"{units.max():.2f}",
                        stats.num_accepted,
                        stats.num_jacobians,
                        f"{seconds:.2f} s",
                    )
                )
            for method in ("Radau", "BDF"):
                ys, out, seconds = _scipy(f, y0, t, method, rtol, atol)
                units = np.abs(ys - ref) / (atol + rtol * np.abs(ref))
                # scipy reports evaluations of f, not steps
                print(
                    _row(
                        f"scipy {method}",
                        f"{rtol:g}",
                        f"{units.max():.2f}",
                        f"- (nfev {out.nfev})",
                        out.njev,
                        f"{seconds:.2f} s",
                    )
                )
        try:
            steps = symode.AdaptiveSteps(rtol=1e-6, atol=1e-6 * atol_factor, max_num_steps=20_000)
            symode.solve(f, y0_, t_, steps=steps)
            print("\ndopri5 (rtol 1e-6): finished")
        except symode.SolveError as e:
            print(f"\ndopri5 (rtol 1e-6): {e}")


class StiffNeural(torch.nn.Module):
    def __init__(self, dim: int = 20, width: int = 64, stiffest: float = 4.0):
        super().__init__()
        self.net = MLPField(dim, width).to(F64)
        self.register_buffer("decay", torch.logspace(0, stiffest, dim, dtype=F64))

    def forward(self, t, y):
        return self.net(t, y) - self.decay * y


def gradients(steps_list, repeats: int) -> None:
    torch.manual_seed(0)
    func = StiffNeural()
    y0 = torch.randn(16, 20, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    print("\n### a neural ODE with stiff dynamics (20 states, batch 16, MLP width 64, decay 1 .. 1e4)\n")
    print("| method | N | gradient | peak memory | time per iteration | x backprop |")
    print("| --- | --- | --- | --- | --- | --- |")
    for method in ("sdirk2", "kvaerno5"):
        for n in steps_list:

            def iteration(gradient, n=n, method=method):
                steps = symode.FixedSteps(step_size=1.0 / n)
                newton = symode.Newton(jacobian="batched")  # the samples are independent
                sol = symode.solve(func, y0, t, method=method, steps=steps, gradient=gradient, newton=newton)
                sol.ys[-1].pow(2).mean().backward()

            gradients_ = ["backprop", "checkpoint", "symplectic_adjoint"]
            memory = [peak_memory(iteration, g).peak_bytes for g in gradients_]
            times = interleave([lambda g=g: iteration(g) for g in gradients_], repeats)
            medians = [statistics.median(x) for x in times]
            for g, m, s in zip(gradients_, memory, medians):
                print(f"| {method} | {n} | {g} | {m / 1e6:.2f} MB | {s:.3f} s | {s / medians[0]:.2f} |")


class Heat(torch.nn.Module):
    """``u_t = k u_xx + w sin(u) cos(t)`` on ``n`` interior points of [0, 1], zero at the ends."""

    def __init__(self, n: int):
        super().__init__()
        self.dx = 1.0 / (n + 1)
        self.k = torch.nn.Parameter(torch.tensor(0.01, dtype=F64))
        self.w = torch.nn.Parameter(torch.tensor(0.5, dtype=F64))

    def forward(self, t, u):
        padded = torch.nn.functional.pad(u, (1, 1))
        return self.k * (padded[2:] - 2 * u + padded[:-2]) / self.dx**2 + self.w * torch.sin(u) * torch.cos(t)


def krylov(sizes) -> None:
    print("\n### the heat equation: dense Jacobian against matrix-free (kvaerno5, rtol 1e-6, over [0, 1])\n")
    print("| n | Jacobian | gradient | steps | Jacobians | Newton iterations | time | peak memory | vs dense |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in sizes:
        _heat_rows(n)


def _heat_rows(n: int) -> None:
    func = Heat(n)
    x = torch.linspace(0, 1, n + 2, dtype=F64)[1:-1]
    y0 = (torch.sin(torch.pi * x) + 0.3 * torch.sin(3 * torch.pi * x)).requires_grad_(True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    reference = {}
    for jacobian in ("dense", "krylov"):
        for gradient in ("symplectic_adjoint", "backprop"):
            out = {}

            def iteration(gradient=gradient, jacobian=jacobian, out=out):
                steps = symode.AdaptiveSteps(rtol=1e-6, atol=1e-8, interpolate=False)
                newton = symode.Newton(jacobian=jacobian)
                sol = symode.solve(func, y0, t, method="kvaerno5", steps=steps, gradient=gradient, newton=newton)
                grads = torch.autograd.grad(sol.ys[-1].pow(2).sum(), [y0, *func.parameters()])
                out["stats"], out["grad"] = sol.stats, torch.cat([g.reshape(-1) for g in grads])

            start = time.perf_counter()
            iteration()
            seconds = time.perf_counter() - start
            # the profiler logs every op, and matrix-free backprop's log outgrows 24 GB beyond n = 256
            measured = jacobian == "dense" or gradient == "symplectic_adjoint" or n <= 256
            memory = f"{peak_memory(iteration).peak_bytes / 1e6:.2f} MB" if measured else "not measured"
            grad = reference.setdefault(gradient, out["grad"])
            difference = float((out["grad"] - grad).norm() / grad.norm())
            st = out["stats"]
            print(
                f"| {n} | {jacobian} | {gradient} | {st.num_accepted} | {st.num_jacobians} | "
                f"{st.num_newton_iters} | {seconds:.2f} s | {memory} | {difference:.1e} |"
            )


def against_torchdiffeq(source: str, steps_list, repeats: int) -> None:
    import sys

    sys.path.insert(0, source)
    import torchdiffeq
    from torchdiffeq._impl.odeint import SOLVERS

    if "sdirk2" not in SOLVERS:
        raise SystemExit(f"torchdiffeq at {torchdiffeq.__file__} has no implicit methods: give its development source")
    torch.manual_seed(0)
    func = StiffNeural(dim=8, width=32, stiffest=3.0)
    y0 = torch.randn(4, 8, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    tight = symode.Newton(rtol=1e-12, atol=1e-12, max_iters=100)
    problem = "8 states, batch 4, width 32, decay 1 .. 1e3"
    print(f"\n### against torchdiffeq {torchdiffeq.__version__} from {source}, {problem}\n")
    print(
        _row("method", "N", "library, gradient", "peak memory", "time per iteration", "solution diff", "gradient diff")
    )
    print(_row(*["---"] * 7))
    for method in ("sdirk2", "radauIIA5", "gl4"):
        for n in steps_list:

            def ours(gradient, n=n, method=method, newton=None):
                sol = symode.solve(
                    func,
                    y0,
                    t,
                    method=method,
                    steps=symode.FixedSteps(step_size=1.0 / n),
                    gradient=gradient,
                    newton=newton,
                )
                loss = sol.ys[-1].pow(2).mean()
                return sol.ys[-1], torch.autograd.grad(loss, [y0, *func.parameters()])

            def theirs(n=n, method=method):
                ys = torchdiffeq.odeint(func, y0, t, method=method, options={"step_size": 1.0 / n})
                loss = ys[-1].pow(2).mean()
                return ys[-1], torch.autograd.grad(loss, [y0, *func.parameters()])

            ref_y, ref_g = ours("backprop", newton=tight)
            ref_g = torch.cat([g.reshape(-1) for g in ref_g])
            runs = [
                ("torchdiffeq, backprop", theirs),
                ("symode, backprop", lambda f=ours: f("backprop")),
                ("symode, symplectic adjoint", lambda f=ours: f("symplectic_adjoint")),
            ]
            times = interleave([fn for _, fn in runs], repeats)
            for (label, fn), seconds in zip(runs, times):
                memory = peak_memory(fn).peak_bytes
                y, g = fn()
                g = torch.cat([x.reshape(-1) for x in g])
                y_diff = float((y - ref_y).detach().norm() / ref_y.detach().norm())
                g_diff = float((g - ref_g).norm() / ref_g.norm())
                print(
                    _row(
                        method,
                        n,
                        label,
                        f"{memory / 1e6:.2f} MB",
                        f"{statistics.median(seconds):.3f} s",
                        f"{y_diff:.1e}",
                        f"{g_diff:.1e}",
                    )
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["accuracy", "gradients", "both", "krylov"], default="both")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512], help="grid points, --part krylov")
    parser.add_argument("--rtols", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torchdiffeq-src", default=None, help="a torchdiffeq source tree with implicit methods")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.part in ("accuracy", "both"):
        accuracy(args.rtols)
    if args.part in ("gradients", "both"):
        gradients(args.steps, args.repeats)
    if args.part == "krylov":
        krylov(args.sizes)
    if args.torchdiffeq_src is not None:
        against_torchdiffeq(args.torchdiffeq_src, args.steps, args.repeats)


if __name__ == "__main__":
    main()

"""Dense output against torchdiffeq 0.2.5, in one run: the cost of many output times, a latent
ODE's training iteration, and the symplectic adjoint's memory with many interpolated outputs.

Parts (``--parts``, default all three):

* ``nfe``: torchdiffeq's ode_demo dynamics (``dy/dt = y**3 A``, ``A = [[-0.1, 2], [-2, -0.1]]``,
  ``y0 = [2, 0]``, ``t`` in [0, 25]), dopri5 at rtol 1e-7, atol 1e-9, with 2, 100, 1000 and 10000
  output times: the evaluations of ``f`` of symode (interpolated outputs, the default), of symode
  with ``interpolate=False`` (every output a step end) and of torchdiffeq; and the largest
  difference of symode's outputs from scipy's RK45 dense output (the same method, steps and
  extension) and from scipy's DOP853 at 1e-13.
* ``latent``: the latent ODE of torchdiffeq's ``examples/latent_ode.py`` (the same sizes: a
  recognition RNN of 25 units over 100 observation times of 1000 noisy spirals, latent
  dimension 4, an ODE function 4 -> 20 -> 20 -> 4 with ELU, a decoder 4 -> 20 -> 2, dopri5 at
  torchdiffeq's default tolerances), written here: one training iteration (forward, ELBO,
  backward) at fixed parameters, timed as the median of interleaved repeats, and the
  evaluations of ``f`` per forward solve, for torchdiffeq's ``odeint`` and ``odeint_adjoint`` and
  symode's backprop, symplectic adjoint and continuous adjoint. Times are reported as ratios to
  torchdiffeq's ``odeint``, measured in the same run.
* ``memory``: the symplectic adjoint's peak memory (``symode.bench.peak_memory``, deterministic)
  with 2 and with 1000 interpolated output times on one problem (an MLP field, fixed
  tolerance), the difference against what the outputs and the loss on them take by themselves
  (the same loss on a tensor of 1000 outputs that requires grad), in units of ``1000 |y|``.

    python benchmarks/dense_output.py                     # all parts (~2 minutes)
    python benchmarks/dense_output.py --parts nfe --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

import symode
from symode.bench import peak_memory

_A = [[-0.1, 2.0], [-2.0, -0.1]]


def nfe_part() -> None:
    import torchdiffeq

    A = torch.tensor(_A, dtype=torch.float64)
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return (y**3) @ A

    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    print(
        "| output times | symode (interpolated) | symode (interpolate=False) | torchdiffeq | symode / torchdiffeq "
        "| max diff vs scipy RK45 | max error vs DOP853 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in (2, 100, 1000, 10000):
        t = torch.linspace(0.0, 25.0, n, dtype=torch.float64)
        counts = []
        for run in (
            lambda t=t: symode.odeint(f, y0, t, rtol=1e-7, atol=1e-9),
            lambda t=t: symode.odeint(f, y0, t, rtol=1e-7, atol=1e-9, options={"interpolate": False}),
            lambda t=t: torchdiffeq.odeint(f, y0, t, rtol=1e-7, atol=1e-9),
        ):
            calls[0] = 0
            ys = run()
            counts.append(calls[0])
            if len(counts) == 1:
                ours = ys.numpy()
        twin = np.abs(ours - _scipy("RK45", t.numpy(), y0.numpy(), 1e-7, 1e-9)).max()
        truth = np.abs(ours - _scipy("DOP853", t.numpy(), y0.numpy(), 1e-13, 1e-13)).max()
        ratio = counts[0] / counts[2]
        print(f"| {n} | {counts[0]} | {counts[1]} | {counts[2]} | {ratio:.3f} | {twin:.1e} | {truth:.1e} |")


def _scipy(method, t, y0, rtol, atol):
    from scipy.integrate import solve_ivp

    A = np.array(_A)
    return solve_ivp(lambda s, y: (y**3) @ A, (t[0], t[-1]), y0, method, t_eval=t, rtol=rtol, atol=atol).y.T


# ----------------------------------------------------------------------------------------------
class LatentODEFunc(torch.nn.Module):
    def __init__(self, latent: int = 4, hidden: int = 20):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(latent, hidden),
            torch.nn.ELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ELU(),
            torch.nn.Linear(hidden, latent),
        )
        self.nfe = 0

    def forward(self, t, z):
        self.nfe += 1
        return self.net(z)


class Recognition(torch.nn.Module):
    """An Elman RNN read backward in time; its last output gives the mean and log-variance of z0."""

    def __init__(self, latent: int = 4, obs: int = 2, hidden: int = 25):
        super().__init__()
        self.hidden = hidden
        self.i2h = torch.nn.Linear(obs + hidden, hidden)
        self.h2o = torch.nn.Linear(hidden, 2 * latent)

    def forward(self, x):  # x: (batch, time, obs)
        h = x.new_zeros(x.shape[0], self.hidden)
        for k in reversed(range(x.shape[1])):
            h = torch.tanh(self.i2h(torch.cat([x[:, k], h], dim=-1)))
        return self.h2o(h).chunk(2, dim=-1)


def spirals(n: int = 1000, total: int = 1000, samples: int = 100, noise: float = 0.3, seed: int = 0):
    """Noisy Archimedean spirals (half clockwise), each observed at ``samples`` consecutive
    points from a random start, the observation times shared: ``(ts, x)``."""
    gen = np.random.default_rng(seed)
    ts_all = np.linspace(0.0, 6 * np.pi, total)
    r = 0.3 * ts_all
    x = []
    for i in range(n):
        sign = 1.0 if i % 2 else -1.0
        curve = np.stack([r * np.cos(sign * ts_all), r * np.sin(sign * ts_all)], axis=1)
        start = gen.integers(0, total - 2 * samples)
        x.append(curve[start : start + samples] + noise * gen.standard_normal((samples, 2)))
    return torch.tensor(ts_all[:samples], dtype=torch.float32), torch.tensor(np.stack(x), dtype=torch.float32)


def latent_part(repeats: int) -> None:
    import torchdiffeq

    torch.manual_seed(0)
    func, rec = LatentODEFunc(), Recognition()
    dec = torch.nn.Sequential(torch.nn.Linear(4, 20), torch.nn.ReLU(), torch.nn.Linear(20, 2))
    ts, x = spirals()
    eps = torch.randn(x.shape[0], 4)
    params = list(func.parameters())
    solvers = {
        "torchdiffeq odeint": lambda z0: torchdiffeq.odeint(func, z0, ts),
        "torchdiffeq odeint_adjoint": lambda z0: torchdiffeq.odeint_adjoint(func, z0, ts),
        "symode backprop": lambda z0: symode.odeint(func, z0, ts),
        "symode symplectic_adjoint": lambda z0: symode.odeint(func, z0, ts, gradient="symplectic_adjoint"),
        "symode adjoint": lambda z0: symode.odeint_adjoint(func, z0, ts, adjoint_params=params),
    }

    def iteration(solve):
        mean, logvar = rec(x)
        z0 = mean + eps * torch.exp(0.5 * logvar)
        func.nfe = 0
        pred = dec(solve(z0).permute(1, 0, 2))
        forward_nfe = func.nfe
        logpx = -0.5 * (((x - pred) / 0.3) ** 2).sum(dim=(1, 2))
        kl = 0.5 * (mean**2 + logvar.exp() - logvar - 1).sum(-1)
        loss = (kl - logpx).mean()
        loss.backward()
        for p in (*func.parameters(), *rec.parameters(), *dec.parameters()):
            p.grad = None
        return forward_nfe, func.nfe - forward_nfe

    counts = {name: iteration(solve) for name, solve in solvers.items()}
    times: dict[str, list[float]] = {name: [] for name in solvers}
    names = list(solvers)
    for k in range(repeats):
        for name in names if k % 2 else reversed(names):
            start = time.perf_counter()
            iteration(solvers[name])
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times[names[0]])
    print("| gradient | nfe forward | nfe backward | time per iteration (s) | time / torchdiffeq odeint |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        med = statistics.median(times[name])
        print(f"| {name} | {counts[name][0]} | {counts[name][1]} | {med:.3f} | {med / base:.2f} |")


# ----------------------------------------------------------------------------------------------
def memory_part() -> None:
    torch.manual_seed(0)
    dim, width, batch = 16, 64, 32
    net = torch.nn.Sequential(torch.nn.Linear(dim, width), torch.nn.Tanh(), torch.nn.Linear(width, dim))
    y0 = torch.randn(batch, dim, requires_grad=True)
    state_bytes = batch * dim * 4

    def iteration(n):
        t = torch.linspace(0.0, 2.0, n)
        sol = symode.solve(
            lambda s, y: net(y),
            y0,
            t,
            steps=symode.AdaptiveSteps(rtol=1e-5, atol=1e-7),
            gradient="symplectic_adjoint",
            adjoint_params=tuple(net.parameters()),
        )
        sol.ys.pow(2).mean().backward()
        return sol.stats.num_accepted

    def outputs_and_loss(n):  # the outputs alone, as a tensor that requires grad, and the same loss on them
        ys = torch.zeros(n, batch, dim).requires_grad_(True)
        ys.pow(2).mean().backward()

    few, many = peak_memory(iteration, 2), peak_memory(iteration, 1000)
    assert few.result == many.result  # the same steps
    extra = many.peak_bytes - few.peak_bytes
    own = peak_memory(outputs_and_loss, 1000).peak_bytes - peak_memory(outputs_and_loss, 2).peak_bytes
    unit = 1000 * state_bytes
    print(
        "| output times | accepted steps | peak bytes | extra over 2 outputs | in 1000 |y| | of which the outputs and "
        "the loss on them alone | the rest, in 1000 |y| |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| 2 | {few.result} | {few.peak_bytes} | | | | |")
    print(
        f"| 1000 | {many.result} | {many.peak_bytes} | {extra} | {extra / unit:.3f} | {own} ({own / unit:.3f}) "
        f"| {(extra - own) / unit:.3f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=["nfe", "latent", "memory"], default=["nfe", "latent", "memory"])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for part in args.parts:
        print(f"\n### {part}\n")
        if part == "nfe":
            nfe_part()
        elif part == "latent":
            latent_part(args.repeats)
        else:
            memory_part()
    return 0


if __name__ == "__main__":
    sys.exit(main())

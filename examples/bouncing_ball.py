"""Learn a bouncing ball's restitution coefficient from its bounce times, with events and the
symplectic adjoint.

The ball falls from 10 m under gravity and a quadratic air drag ``c v |v|``. When its height
reaches 0 (an event, ``symode.Event(height, direction=-1)``) it bounces: a jump map leaves it
with ``-e`` times its speed, and the solve goes on from there.
The data are the times of the first bounces of a ball with ``e = 0.8`` and ``c = 0.02``; the
model, started at ``e = 0.5`` and ``c = 0.05``, learns both from them (Gauss-Newton), each
gradient taken through every bounce: through the event times (the implicit function theorem)
and the solves between them (the symplectic adjoint by default).

    python examples/bouncing_ball.py                    # train, 3 bounces, and print e
    python examples/bouncing_ball.py --check            # the gradient by every exact method, and memory
    python examples/bouncing_ball.py --gradient backprop --bounces 5
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import symode
from symode.gradients import GRADIENT_METHODS

F64 = torch.float64
GRAVITY = 9.81
TRUE_RESTITUTION, TRUE_DRAG = 0.8, 0.02
HEIGHT = 10.0


def height(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y[0]


class Ball(torch.nn.Module):
    """``y = (height, speed)``: ``h' = v``, ``v' = -g - c v |v|``. The parameters: the
    restitution ``e = sigmoid(logit)`` and the drag coefficient ``c = softplus(rho)``, which
    keep them in (0, 1) and (0, inf)."""

    def __init__(self, restitution: float, drag: float):
        super().__init__()
        self.logit = torch.nn.Parameter(torch.tensor(math.log(restitution / (1 - restitution)), dtype=F64))
        self.rho = torch.nn.Parameter(torch.tensor(math.log(math.expm1(drag)), dtype=F64))

    @property
    def restitution(self) -> torch.Tensor:
        return torch.sigmoid(self.logit)

    @property
    def drag(self) -> torch.Tensor:
        return torch.nn.functional.softplus(self.rho)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        v = y[1:2]
        return torch.cat([v, -GRAVITY - self.drag * v * v.abs()])

    def bounce(self, y: torch.Tensor) -> torch.Tensor:
        """The jump map at the ground: the height stays, the speed turns and shrinks by e."""
        return torch.cat([y[:1], -self.restitution * y[1:]])


def bounce_times(ball: Ball, bounces: int, gradient, rtol: float = 1e-8, atol: float = 1e-10) -> torch.Tensor:
    """The times of the first ``bounces`` bounces: solve to the event, jump, solve on."""
    t = torch.zeros((), dtype=F64)
    y = torch.tensor([HEIGHT, 0.0], dtype=F64)
    event = symode.Event(height, direction=-1)  # landing only: leaving the ground is not an event
    times = []
    for k in range(bounces):
        sol = symode.solve(
            ball,
            y,
            torch.stack([t, t.detach() + 100.0]),
            steps=symode.AdaptiveSteps(rtol=rtol, atol=atol),
            gradient=gradient,
            event=event,
        )
        if sol.event is None:
            raise RuntimeError(f"bounce {k + 1} did not happen within 100 s")
        t, y = sol.ts[-1], ball.bounce(sol.ys[-1])
        times.append(t)
    return torch.stack(times)


def data(bounces: int) -> torch.Tensor:
    with torch.no_grad():
        return bounce_times(Ball(TRUE_RESTITUTION, TRUE_DRAG), bounces, "backprop", rtol=1e-10, atol=1e-12)


def train(bounces: int, iterations: int, gradient: str) -> Ball:
    """Fit e and c to the bounce times by Gauss-Newton: each iteration differentiates every
    bounce time (one backward pass per bounce, through all the solves before it) and solves
    the linearised least-squares problem. (Two parameters that three bounce times nearly
    confuse: plain gradient descent crawls along the valley.)"""
    observed = data(bounces)
    ball = Ball(restitution=0.5, drag=0.05)
    params = list(ball.parameters())
    print(f"observed bounce times: {[round(x, 6) for x in observed.tolist()]}")
    start = time.perf_counter()
    for i in range(iterations + 1):
        residuals = bounce_times(ball, bounces, gradient) - observed
        print(
            f"iteration {i:3d}  loss {residuals.pow(2).mean().item():.3e}  e = {ball.restitution.item():.9f}  "
            f"drag = {ball.drag.item():.9f}"
        )
        if i == iterations:
            break
        jacobian = torch.stack(
            [torch.stack(torch.autograd.grad(r, params, retain_graph=k < bounces - 1)) for k, r in enumerate(residuals)]
        )
        step = torch.linalg.lstsq(jacobian, -residuals.detach().unsqueeze(1)).solution.squeeze(1)
        with torch.no_grad():
            for p, s in zip(params, step):
                p += s
    print(
        f"learned e = {ball.restitution.item():.9f} (truth {TRUE_RESTITUTION}), drag = {ball.drag.item():.9f} "
        f"(truth {TRUE_DRAG}); {time.perf_counter() - start:.1f} s"
    )
    return ball


def check(bounces: int) -> list[tuple[str, float, int | None]]:
    """The gradient of the loss by every exact gradient method, as its largest relative
    difference from backprop's, and the peak memory of backprop and the symplectic adjoint
    (symode.bench.peak_memory: exact bytes)."""
    from symode.bench import peak_memory

    observed = data(bounces)

    def gradients(gradient) -> list[torch.Tensor]:
        ball = Ball(restitution=0.5, drag=0.05)
        loss = (bounce_times(ball, bounces, gradient) - observed).pow(2).mean()
        return list(torch.autograd.grad(loss, list(ball.parameters())))

    reference = gradients("backprop")
    rows = []
    for name, cls in sorted(GRADIENT_METHODS.items()):
        for method in cls.configurations() if cls.exact else []:
            grads = gradients(method)
            diff = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) for a, b in zip(grads, reference))
            memory = peak_memory(gradients, method).peak_bytes if name in ("backprop", "symplectic_adjoint") else None
            rows.append((repr(method), diff, memory))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bounces", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--gradient", default="symplectic_adjoint")
    parser.add_argument("--check", action="store_true", help="compare the gradient methods and their memory")
    args = parser.parse_args()
    if args.check:
        print("| gradient method | max relative difference from backprop | peak memory (bytes) |")
        print("| --- | --- | --- |")
        for name, diff, memory in check(args.bounces):
            print(f"| {name} | {diff:.1e} | {'' if memory is None else f'{memory:,}'} |")
    else:
        train(args.bounces, args.iterations, args.gradient)


if __name__ == "__main__":
    main()

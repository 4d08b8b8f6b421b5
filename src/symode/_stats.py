"""What a solve reports besides its states: the counts (``Stats``) and the failure
(``SolveError``). A leaf module: every other module may import it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Stats", "SolveError"]


class SolveError(RuntimeError):
    """A solve that cannot succeed: step size underflow, too many steps, non-finite state.

    Attributes:
        t: the time reached.
        num_steps: the accepted steps taken until then.
    """

    def __init__(self, message: str, t: float, num_steps: int):
        super().__init__(message)
        self.t = t
        self.num_steps = num_steps


@dataclass
class Stats:
    """Counts of one solve. The backward counts fill in when the backward pass runs.

    Attributes:
        num_accepted: accepted steps.
        num_rejected: rejected trial steps (adaptive steps only).
        nfe_forward: evaluations of ``f`` in the forward solve.
        nfe_backward: every evaluation of ``f`` in the backward pass (recomputation and
            vector-Jacobian products).
        nfe_backward_vjp: those backward evaluations that were differentiated (one network
            use each in the autograd graph).
        num_jacobians: Jacobians of ``f`` formed for Newton's method (implicit methods).
        num_newton_iters: Newton iterations on the stage equations (implicit methods).
    """

    num_accepted: int = 0
    num_rejected: int = 0
    nfe_forward: int = 0
    nfe_backward: int = 0
    nfe_backward_vjp: int = 0
    num_jacobians: int = 0
    num_newton_iters: int = 0

    @property
    def num_steps(self) -> int:
        """Accepted plus rejected steps."""
        return self.num_accepted + self.num_rejected

    def count(self, counter: str, n: int = 1) -> None:
        """Add ``n`` to the counter named ``counter`` (``"nfe_forward"``, ...)."""
        setattr(self, counter, getattr(self, counter) + n)

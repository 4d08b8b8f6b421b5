"""Tests for the binomial (revolve) checkpointing schedule in symode.gradients._revolve."""

import functools
import time

import pytest

from symode.gradients._revolve import _split_bounds, optimal_recomputations, reverse, split


@functools.cache
def brute_force(n, s):
    """T(n, s) straight from the recurrence."""
    if n == 1:
        return 0
    if s == 0:
        return n * (n - 1) // 2
    return min(m + brute_force(n - m, s - 1) + brute_force(m, s) for m in range(1, n))


class State:
    """A stand-in for a large tensor: knows its index, counts live instances (index > 0)."""

    live = 0

    def __init__(self, index):
        self.index = index
        if index > 0:
            State.live += 1

    def __del__(self):
        if self.index > 0:
            State.live -= 1


def run_reverse(n, slots):
    """Drive `reverse` with instrumented states; return (recomputed, calls, forward, peak)."""
    assert State.live == 0
    y0 = State(0)
    calls = []
    forward = [0]
    peak = [0]

    def advance(i, j, y):
        assert isinstance(y, State) and y.index == i
        assert 0 <= i < j < n
        # Every live state other than y_0 is a stored checkpoint at this point.
        assert State.live <= slots
        forward[0] += j - i
        out = State(j)
        peak[0] = max(peak[0], State.live)
        return out

    def step_back(i, y):
        assert isinstance(y, State) and y.index == i
        # Besides y_0 and the state being stepped back from, at most `slots` are alive.
        assert State.live - (1 if i > 0 else 0) <= slots
        calls.append(i)

    recomputed = reverse(n, slots, y0, advance, step_back)
    assert State.live == 0, "driver kept references to freed states"
    return recomputed, calls, forward[0], peak[0]


@pytest.mark.parametrize("slots", range(6))
def test_reverse_schedule_is_correct_and_optimal(slots):
    for n in range(1, 41):
        recomputed, calls, forward, peak = run_reverse(n, slots)
        assert calls == list(range(n - 1, -1, -1))
        assert recomputed == forward == optimal_recomputations(n, slots) == brute_force(n, slots)
        assert peak <= slots + 1  # stored checkpoints plus one transient state


def test_closed_form_matches_recurrence():
    for s in range(7):
        for n in range(1, 61):
            assert optimal_recomputations(n, s) == brute_force(n, s), (n, s)


def test_split_range_is_exactly_the_optimal_set():
    for s in range(1, 7):
        for n in range(2, 61):
            costs = {m: m + brute_force(n - m, s - 1) + brute_force(m, s) for m in range(1, n)}
            best = min(costs.values())
            optimal = [m for m, cost in costs.items() if cost == best]
            lo, hi = _split_bounds(n, s)
            assert optimal == list(range(lo, hi + 1)), (n, s)
            assert split(n, s) == hi


def test_enough_slots_means_single_forward_sweep():
    for n in range(1, 30):
        for slots in (n - 1, n, 10 * n, 10**9):
            recomputed, calls, forward, _ = run_reverse(n, slots)
            assert recomputed == forward == max(n - 1, 0)
            assert calls == list(range(n - 1, -1, -1))


def test_large_case_is_fast():
    n, slots = 10**4, 10
    count = [0, 0]

    def advance(i, j, y):
        assert y == i
        count[0] += j - i
        return j

    def step_back(i, y):
        assert y == i == n - 1 - count[1]
        count[1] += 1

    start = time.perf_counter()
    recomputed = reverse(n, slots, 0, advance, step_back)
    elapsed = time.perf_counter() - start
    assert count[1] == n
    assert recomputed == count[0] == optimal_recomputations(n, slots)
    assert elapsed < 1.0

    start = time.perf_counter()
    for s in (0, 1, 2, 10, 50):
        optimal_recomputations(10**5, s)
        if s:
            split(10**5, s)
    assert time.perf_counter() - start < 0.1


def test_known_values():
    # Values for T(n, s): s = 0 is quadratic, plenty of slots is n - 1.
    assert optimal_recomputations(1, 0) == 0
    assert optimal_recomputations(10, 0) == 45
    assert optimal_recomputations(10, 8) == 9
    assert optimal_recomputations(10, 100) == 9
    # beta(c, r) = C(c + r, c): with s = 1 (c = 2), n = 6 = beta(2, 2) needs r = 2:
    # T = 2 * 6 - C(4, 3) = 8.
    assert optimal_recomputations(6, 1) == 8 == brute_force(6, 1)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: optimal_recomputations(0, 1), "n"),
        (lambda: optimal_recomputations(-3, 1), "n"),
        (lambda: optimal_recomputations(2.0, 1), "n"),  # type: ignore[arg-type]
        (lambda: optimal_recomputations(True, 1), "n"),
        (lambda: optimal_recomputations(5, -1), "slots"),
        (lambda: optimal_recomputations(5, "2"), "slots"),  # type: ignore[arg-type]
        (lambda: split(1, 1), "n"),
        (lambda: split(5, 0), "slots"),
        (lambda: reverse(0, 1, 0, None, None), "n"),  # type: ignore[arg-type]
        (lambda: reverse(3, -1, 0, None, None), "slots"),  # type: ignore[arg-type]
        (lambda: reverse(3, 1.5, 0, None, None), "slots"),  # type: ignore[arg-type]
    ],
)
def test_input_validation(call, name):
    with pytest.raises(ValueError, match=rf"^{name} must be an int"):
        call()

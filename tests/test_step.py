"""One Runge-Kutta step (``symode._runge_kutta``) against a recording mock field.

Every tableau of the catalogue is stepped once on the linear non-autonomous field
``f(t, y) = A y + t`` (float64). The field records every ``(t, y)`` it is handed, so the test
sees exactly which stages are evaluated, at which times and from which states. The stage
states, the solution and the error estimate are recomputed independently in numpy from the
tableau's raw ``a``, ``b`` and ``b_err`` (not from the derived ``a_sums``/``b_sum`` that
``rk_step`` uses):

    Y_i = y + h sum_{j<i} a_ij k_j,   k_i = f(t + c_i h, Y_i),
    y_next = y + h sum_i b_i k_i,      error = h sum_i b_err_i k_i.

The catalogue is parametrized over, so a tableau added to ``symode.TABLEAUS`` is tested
automatically; one custom pair (``ERROR_STAGE``) adds the case the catalogue lacks.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from symode import TABLEAUS, ButcherTableau
from symode._runge_kutta import combine, rk_step, stage_state, stage_time

F64 = torch.float64

# Besides the catalogue: a non-FSAL pair whose last stage only feeds the error estimate (the
# explicit midpoint rule, with Kutta's 3rd-order method embedded), the case where a step
# without error estimate skips a stage; in the catalogue only FSAL tableaus have such a stage,
# and those evaluate it anyway.
ERROR_STAGE = ButcherTableau(
    "midpoint_kutta3",
    c=(0, Fraction(1, 2), 1),
    a=((), (Fraction(1, 2),), (-1, 2)),
    b=(0, 1, 0),
    order=2,
    b_err=(-Fraction(1, 6), Fraction(1, 3), -Fraction(1, 6)),
    error_order=3,
)
# the explicit step; an implicit tableau's steps solve their stages instead (tests/test_implicit.py)
CASES = {**{name: tab for name, tab in TABLEAUS.items() if not tab.implicit}, ERROR_STAGE.name: ERROR_STAGE}
NAMES = list(CASES)
ADAPTIVE = [name for name, tab in CASES.items() if tab.adaptive]
FIXED = [name for name, tab in CASES.items() if not tab.adaptive]
FSAL = [name for name, tab in CASES.items() if tab.fsal]

# Steps t -> t_next for which t + (t_next - t) != t_next in floating point: a stage with
# c_i == 1 evaluated at t + h would then differ from t_next (checked in _check_pair).
PAIRS = [(0.2, 0.9), (0.9, 0.2)]
PAIR_IDS = ["forward", "backward"]

REL = 1e-14  # agreement of the step's arithmetic with the independent numpy recomputation

_gen = torch.Generator().manual_seed(1234)
A = 0.5 * torch.randn(3, 3, generator=_gen, dtype=F64)
A_NP = A.numpy().copy()
Y0 = torch.tensor([1.0, -0.5, 2.0], dtype=F64)


class RecordingField:
    """``f(t, y) = A y + t``, recording every ``(float(t), y.clone())`` it is called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, torch.Tensor]] = []

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append((float(t), y.clone()))
        return A @ y + t

    def rhs(self, t: float, y: torch.Tensor, dt=None) -> torch.Tensor:
        """The ``rhs(t, y, dt=None)`` that ``rk_step`` takes (a Python float time)."""
        return self(torch.tensor(t, dtype=F64), y)


def fresh_f(t: float, y: torch.Tensor) -> torch.Tensor:
    """The field evaluated afresh, without recording."""
    return A @ y + torch.tensor(t, dtype=F64)


def _check_pair(t: float, t_next: float) -> None:
    assert t + 1.0 * (t_next - t) != t_next, "the pair does not discriminate t_next from t + h"


def expected_stage_time(tableau: ButcherTableau, i: int, t: float, t_next: float) -> float:
    """The documented rule: ``t + c_i h``, and exactly ``t_next`` where ``c_i == 1``."""
    h = t_next - t
    return t_next if tableau.c[i] == 1.0 else t + tableau.c[i] * h


def reference_step(tableau: ButcherTableau, t: float, t_next: float, y: torch.Tensor):
    """Every stage state/derivative, the solution and the error estimate, in numpy float64
    straight from the tableau's ``a``, ``b`` and ``b_err``."""
    s = tableau.num_stages
    a = np.array(tableau.a, dtype=np.float64)
    b = np.array(tableau.b, dtype=np.float64)
    c = np.array(tableau.c, dtype=np.float64)
    h = t_next - t
    y_np = y.numpy()
    Y = np.zeros((s, y_np.size))
    K = np.zeros((s, y_np.size))
    for i in range(s):
        Y[i] = y_np + h * (a[i, :i] @ K[:i])
        K[i] = A_NP @ Y[i] + (t + c[i] * h)
    y_next = y_np + h * (b @ K)
    # the size of the terms summed: the scale that rounding is relative to
    stage_scale = np.abs(y_np) + abs(h) * (np.abs(a) @ np.abs(K))
    sol_scale = np.abs(y_np) + abs(h) * (np.abs(b) @ np.abs(K))
    err = err_scale = None
    if tableau.adaptive:
        b_err = np.array(tableau.b_err, dtype=np.float64)
        err = h * (b_err @ K)
        err_scale = abs(h) * (np.abs(b_err) @ np.abs(K))
    return Y, K, y_next, err, stage_scale, sol_scale, err_scale


def assert_close(actual: torch.Tensor, expected: np.ndarray, scale: np.ndarray, what: str) -> None:
    actual_np = actual.detach().numpy()
    bound = REL * (np.max(scale) + 1e-300)
    diff = np.max(np.abs(actual_np - expected))
    assert diff <= bound, f"{what}: |difference| {diff:.3g} > {bound:.3g}\n{actual_np}\nvs\n{expected}"


def default_stages(tableau: ButcherTableau, with_error: bool) -> list[int]:
    """``rk_step``'s documented rule for the stages evaluated by default."""
    s = tableau.num_stages
    return list(range(s)) if (with_error or tableau.fsal) else list(tableau.solution_stages)


# --------------------------------------------------------------------------------------


def test_cases_cover_every_kind():
    assert ADAPTIVE and FIXED and FSAL
    assert any(not CASES[n].fsal for n in ADAPTIVE)
    assert not ERROR_STAGE.fsal and ERROR_STAGE.solution_stages == (0, 1)


@pytest.mark.parametrize("t,t_next", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_step_matches_independent_recomputation(name, t, t_next):
    tableau = CASES[name]
    _check_pair(t, t_next)
    field = RecordingField()
    with_error = tableau.adaptive
    y = Y0.clone()
    y_next, err, ks, _ = rk_step(field.rhs, tableau, t, t_next, y, with_error=with_error)
    stages = default_stages(tableau, with_error)
    Y_ref, _, y_next_ref, err_ref, stage_scale, sol_scale, err_scale = reference_step(tableau, t, t_next, Y0)

    # one call per evaluated stage, in order, at the documented times (bitwise)
    assert len(field.calls) == len(stages)
    times = [tc for tc, _ in field.calls]
    assert times == [expected_stage_time(tableau, i, t, t_next) for i in stages]
    for i, (tc, _) in zip(stages, field.calls):
        if tableau.c[i] == 1.0:
            assert tc == t_next  # not t + h, which differs here by rounding
    # the stage inputs: y + h sum_j a_ij k_j
    for i, (_, Yi) in zip(stages, field.calls):
        assert_close(Yi, Y_ref[i], stage_scale[i], f"stage state {i}")
    # ks[i] is f at the recorded stage (bitwise); not evaluated: None
    for i in range(tableau.num_stages):
        if i in stages:
            tc, Yi = field.calls[stages.index(i)]
            assert torch.equal(ks[i], fresh_f(tc, Yi))
        else:
            assert ks[i] is None
    # the solution and the error estimate
    assert y_next.dtype == F64 and y_next.shape == Y0.shape
    assert_close(y_next, y_next_ref, sol_scale, "y_next")
    if tableau.adaptive:
        assert_close(err, err_ref, err_scale, "error estimate")
        assert float(err.abs().max()) > 0
    else:
        assert err is None
    assert torch.equal(y, Y0)  # the input state is not modified in place


@pytest.mark.parametrize("name", NAMES)
def test_without_error_evaluates_only_the_solution_stages(name):
    tableau = CASES[name]
    t, t_next = PAIRS[0]
    field = RecordingField()
    y_next, err, ks, _ = rk_step(field.rhs, tableau, t, t_next, Y0, with_error=False)
    stages = default_stages(tableau, with_error=False)
    assert len(field.calls) == len(stages)
    assert [tc for tc, _ in field.calls] == [expected_stage_time(tableau, i, t, t_next) for i in stages]
    assert [i for i, k in enumerate(ks) if k is not None] == stages
    assert err is None
    # the skipped stages have b_i == 0 and feed no stage that is used: the solution is unchanged
    _, _, y_next_ref, _, _, sol_scale, _ = reference_step(tableau, t, t_next, Y0)
    assert_close(y_next, y_next_ref, sol_scale, "y_next without error")
    skipped = set(range(tableau.num_stages)) - set(stages)
    for i in skipped:
        assert tableau.b[i] == 0.0
        assert all(tableau.a[j][i] == 0.0 for j in stages)


@pytest.mark.parametrize(
    "name,with_error",
    [(n, False) for n in NAMES] + [(n, True) for n in ADAPTIVE],
    ids=[f"{n}-no_error" for n in NAMES] + [f"{n}-with_error" for n in ADAPTIVE],
)
def test_given_k1_skips_the_first_evaluation(name, with_error):
    tableau = CASES[name]
    t, t_next = PAIRS[0]
    plain = RecordingField()
    out_plain = rk_step(plain.rhs, tableau, t, t_next, Y0, with_error=with_error)
    field = RecordingField()
    k1 = fresh_f(t, Y0)
    y_next, err, ks, _ = rk_step(field.rhs, tableau, t, t_next, Y0, k1, with_error=with_error)
    stages = default_stages(tableau, with_error)
    assert stages[0] == 0
    assert len(field.calls) == len(stages) - 1
    assert all(not (tc == t and torch.equal(Yi, Y0)) for tc, Yi in field.calls)
    assert ks[0] is k1
    # the same k1 as the evaluation would give: the step is bit for bit the same
    assert torch.equal(y_next, out_plain[0])
    if with_error:
        assert torch.equal(err, out_plain[1])
    assert [tc for tc, _ in field.calls] == [tc for tc, _ in plain.calls[1:]]


@pytest.mark.parametrize("with_error", [True, False], ids=["with_error", "no_error"])
@pytest.mark.parametrize("name", FSAL)
def test_fsal_last_stage_is_the_solution(name, with_error):
    tableau = CASES[name]
    t, t_next = PAIRS[0]
    field = RecordingField()
    y_next, _, ks, Ys = rk_step(field.rhs, tableau, t, t_next, Y0, with_error=with_error)
    assert Ys[-1] is y_next
    # the last stage was evaluated at exactly (t_next, y_next): it is the next step's k1
    tc, Y_last = field.calls[-1]
    assert tc == t_next
    assert torch.equal(Y_last, y_next)
    assert torch.equal(ks[-1], fresh_f(t_next, y_next))
    # and the y_next it gives agrees with y + h sum b_i k_i (b_s = 0, a_s = b)
    _, _, y_next_ref, _, _, sol_scale, _ = reference_step(tableau, t, t_next, Y0)
    assert_close(y_next, y_next_ref, sol_scale, "FSAL y_next")
    # a second step started from it with k1 = ks[-1] does not evaluate (t_next, y_next) again
    second = RecordingField()
    rk_step(second.rhs, tableau, t_next, t_next + 0.3, y_next, ks[-1], with_error=with_error)
    assert len(second.calls) == len(default_stages(tableau, with_error)) - 1


@pytest.mark.parametrize("name", NAMES)
def test_keep_stage_states(name):
    tableau = CASES[name]
    t, t_next = PAIRS[1]
    with_error = tableau.adaptive
    field = RecordingField()
    _, _, _, Ys = rk_step(field.rhs, tableau, t, t_next, Y0, with_error=with_error, keep_stage_states=True)
    stages = default_stages(tableau, with_error)
    for i in range(tableau.num_stages):
        if i in stages:
            assert torch.equal(Ys[i], field.calls[stages.index(i)][1])
        else:
            assert Ys[i] is None
    assert Ys[0] is Y0
    # the documented stage_state gives the same states from the same ks
    _, _, ks, _ = rk_step(fresh_f_rhs, tableau, t, t_next, Y0, with_error=with_error)
    for i in stages[1:]:
        assert torch.equal(stage_state(tableau, i, Y0, t_next - t, ks), Ys[i])
    # without keep_stage_states the states are dropped, but for an FSAL last stage
    field = RecordingField()
    _, _, _, Ys = rk_step(field.rhs, tableau, t, t_next, Y0, with_error=with_error)
    for i in range(tableau.num_stages):
        if tableau.fsal and i == tableau.num_stages - 1:
            assert Ys[i] is not None
        else:
            assert Ys[i] is None


def fresh_f_rhs(t: float, y: torch.Tensor, dt=None) -> torch.Tensor:
    return fresh_f(t, y)


@pytest.mark.parametrize("name", NAMES)
def test_stage_time(name):
    tableau = CASES[name]
    for t, t_next in PAIRS:
        h = t_next - t
        for i in range(tableau.num_stages):
            assert stage_time(tableau, i, t, t_next, h) == expected_stage_time(tableau, i, t, t_next)


@pytest.mark.parametrize("name", NAMES)
def test_time_carriers_leave_the_values_bitwise_unchanged(name):
    """With ``dts`` (zero-valued gradient carriers of the end times) the step computes
    bit for bit the values it computes without them (module docstring)."""
    tableau = CASES[name]
    t, t_next = PAIRS[0]
    with_error = tableau.adaptive
    plain = rk_step(fresh_f_rhs, tableau, t, t_next, Y0, with_error=with_error)
    dts = (torch.zeros((), dtype=F64, requires_grad=True), torch.zeros((), dtype=F64, requires_grad=True))
    seen = []

    def rhs(tc, y, dt=None):
        seen.append(dt)
        return fresh_f(tc, y)

    carried = rk_step(rhs, tableau, t, t_next, Y0, with_error=with_error, dts=dts)
    assert torch.equal(carried[0], plain[0])
    if with_error:
        assert torch.equal(carried[1], plain[1])
    assert len(seen) == len(default_stages(tableau, with_error))
    assert all(d is not None and float(d.detach()) == 0.0 for d in seen)
    assert carried[0].requires_grad


@pytest.mark.parametrize("name", FIXED)
def test_fixed_step_tableau_has_no_error_estimate(name):
    tableau = CASES[name]
    with pytest.raises(ValueError, match="takes fixed steps"):
        rk_step(fresh_f_rhs, tableau, 0.0, 0.1, Y0, with_error=True)


# --------------------------------------------------------------------------------------
# combine


def _relative_form(weights: dict[int, float]):
    """``(p, w_p, ((j, w_j / w_p), ...))`` relative to the largest |w_p| (the documented form)."""
    p = max(weights, key=lambda j: abs(weights[j]))
    return p, weights[p], tuple((j, w / weights[p]) for j, w in weights.items() if j != p)


def _random_ks(n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(5, generator=gen, dtype=F64) for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_combine_random_weights(seed):
    rng = np.random.default_rng(seed)
    n = 6
    ks = _random_ks(n, seed)
    used = sorted(rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False).tolist())
    weights = {j: float(rng.uniform(-3, 3)) for j in used}
    h = float(rng.uniform(-0.5, 0.5))
    y = torch.randn(5, generator=torch.Generator().manual_seed(100 + seed), dtype=F64)
    ks_given = [k if j in weights else None for j, k in enumerate(ks)]  # unused entries are never read
    form = _relative_form(weights)

    K = np.stack([k.numpy() for k in ks])
    w = np.zeros(n)
    for j, wj in weights.items():
        w[j] = wj
    increment = h * (w @ K)
    scale = np.abs(y.numpy()) + abs(h) * (np.abs(w) @ np.abs(K))
    assert_close(combine(y, h, form, ks_given), y.numpy() + increment, scale, "combine(y, ...)")
    assert_close(combine(None, h, form, ks_given), increment, scale, "combine(None, ...)")
    # h as a 0-dim tensor (a compiled step) gives the same values
    assert_close(
        combine(y, torch.tensor(h, dtype=F64), form, ks_given),
        y.numpy() + increment,
        scale,
        "combine(y, tensor h, ...)",
    )


def test_combine_with_a_tableau_b_sum():
    tableau = TABLEAUS["dopri5"]
    ks = _random_ks(tableau.num_stages, 7)
    h = 0.37
    y = torch.linspace(-1, 1, 5, dtype=F64)
    b = np.array(tableau.b)
    K = np.stack([k.numpy() for k in ks])
    # the derived form describes exactly the nonzero b_i
    p, wp, rest = tableau.b_sum
    described = {p: wp, **{j: r * wp for j, r in rest}}
    assert sorted(described) == [i for i in range(tableau.num_stages) if b[i] != 0.0]
    for j, wj in described.items():
        assert wj == pytest.approx(b[j], rel=1e-15)
    assert all(abs(wp) >= abs(wj) for wj in described.values())
    ks_given = [k if b[j] != 0.0 else None for j, k in enumerate(ks)]
    scale = np.abs(y.numpy()) + h * (np.abs(b) @ np.abs(K))
    assert_close(combine(y, h, tableau.b_sum, ks_given), y.numpy() + h * (b @ K), scale, "b_sum")
    assert_close(combine(None, h, tableau.b_sum, ks_given), h * (b @ K), scale, "b_sum increment")
    b_err = np.array(tableau.b_err)
    err_scale = h * (np.abs(b_err) @ np.abs(K))
    assert_close(combine(None, h, tableau.b_err_sum, ks), h * (b_err @ K), err_scale, "b_err_sum")


def test_combine_without_weights_returns_y():
    y = torch.ones(3, dtype=F64)
    assert combine(y, 0.5, None, []) is y


def test_combine_time_carrier_gradient():
    """``dh``: a zero-valued tensor whose gradient is that of ``h``: the value is unchanged and
    d(out)/d(dh) = sum_j w_j k_j."""
    ks = _random_ks(3, 11)
    weights = {0: 0.25, 2: -1.5}
    form = _relative_form(weights)
    y = torch.ones(5, dtype=F64)
    dh = torch.zeros((), dtype=F64, requires_grad=True)
    out = combine(y, 0.1, form, ks, dh)
    assert torch.equal(out.detach(), combine(y, 0.1, form, ks))
    (grad,) = torch.autograd.grad(out.sum(), dh)
    expected = float(sum(w * ks[j].sum() for j, w in weights.items()))
    assert float(grad) == pytest.approx(expected, rel=1e-14)

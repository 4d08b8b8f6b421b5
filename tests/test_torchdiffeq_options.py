"""torchdiffeq's options and behaviours that symode now has: ``method=None``, ``heun3``, fixed
steps on the output grid, ``min_step``/``max_step``, ``step_t``, a callable ``norm``, the step
callbacks, and the PID controller. Checked against torchdiffeq 0.2.5 itself where it is
installed (its steps seen through its own callbacks), against the documented semantics
otherwise, and under every exact gradient method against backprop."""

import math

import pytest
import torch

import symode
from fields import Field
from symode.gradients import GRADIENT_METHODS

F64 = torch.float64
EXACT = [m for name, cls in sorted(GRADIENT_METHODS.items()) if cls.exact for m in cls.configurations()]


def _swirl(t, y):
    return torch.stack([-y[..., 1], y[..., 0]], dim=-1) * (1 + 0.5 * torch.cos(t))


Y0 = torch.tensor([1.0, 0.0], dtype=F64)
T = torch.tensor([0.0, 0.4, 1.0, 2.0], dtype=F64)


class Recorder(torch.nn.Module):
    """A field with torchdiffeq's step callbacks, recording what they are told."""

    def __init__(self):
        super().__init__()
        self.tried, self.accepted, self.rejected = [], [], []

    def forward(self, t, y):
        return _swirl(t, y)

    def callback_step(self, t0, y0, dt):
        self.tried.append((float(t0), float(dt)))

    def callback_accept_step(self, t0, y0, dt):
        self.accepted.append((float(t0), float(dt)))

    def callback_reject_step(self, t0, y0, dt):
        self.rejected.append((float(t0), float(dt)))


def test_method_none_is_dopri5():
    assert torch.equal(symode.odeint(_swirl, Y0, T, method=None), symode.odeint(_swirl, Y0, T))


def test_heun3_and_fixed_steps_on_the_output_grid_match_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    ours = symode.odeint(_swirl, Y0, T, method="heun3", options={"step_size": 0.1})
    theirs = torchdiffeq.odeint(_swirl, Y0, T, method="heun3", options={"step_size": 0.1})
    # torchdiffeq steps on one grid from t[0] and interpolates the outputs; symode ends a step on each
    assert (ours - theirs).abs().max() < 1e-3
    # without a step size both take one step per output interval: the same arithmetic
    for ours_name, theirs_name in (("euler", "euler"), ("midpoint", "midpoint"), ("heun3", "heun3"), ("rk38", "rk4")):
        ours = symode.odeint(_swirl, Y0, T, method=ours_name)
        theirs = torchdiffeq.odeint(_swirl, Y0, T, method=theirs_name)
        torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=1e-14)


def test_step_callbacks_see_every_trial_step():
    func = Recorder()
    sol = symode.solve(func, Y0, T, steps=symode.AdaptiveSteps(rtol=1e-9, atol=1e-9, first_step=0.5))
    stats = sol.stats
    assert stats.num_rejected > 0  # the first step is too large: both kinds are seen
    assert len(func.tried) == stats.num_accepted + stats.num_rejected
    assert len(func.accepted) == stats.num_accepted and len(func.rejected) == stats.num_rejected
    ends = [t0 + dt for t0, dt in func.accepted]
    assert ends == pytest.approx(sol.grid[1:].tolist(), abs=1e-15)
    # fixed steps: callback_step only, once per step (as torchdiffeq's fixed-grid solvers)
    func = Recorder()
    symode.odeint(func, Y0, T, method="rk4", options={"step_size": 0.25})
    assert len(func.tried) == 2 + 3 + 4 and not func.accepted and not func.rejected  # per output interval


def test_callbacks_agree_with_torchdiffeq_on_when_they_are_called():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    counts = []
    for odeint in (symode.odeint, torchdiffeq.odeint):
        func = Recorder()
        odeint(func, Y0, T[[0, -1]], rtol=1e-6, atol=1e-8)
        counts.append((len(func.tried), len(func.accepted) + len(func.rejected)))
    for tried, decided in counts:
        assert tried == decided  # each trial step is announced, then accepted or rejected
    # the same number of steps up to the error weights' difference (docs/migrating.md)
    assert abs(counts[0][0] - counts[1][0]) <= 0.2 * counts[1][0]


def test_step_t_forces_step_ends_as_in_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    forced = [0.123, 0.77, 1.5]
    for odeint in (symode.odeint, torchdiffeq.odeint):
        func = Recorder()
        odeint(func, Y0, T, rtol=1e-5, atol=1e-7, options={"step_t": torch.tensor(forced, dtype=F64)})
        ends = [t0 + dt for t0, dt in func.accepted]
        for s in forced:
            assert min(abs(e - s) for e in ends) < 1e-12, (odeint, s)
    sol = symode.solve(_swirl, Y0, T, steps=symode.AdaptiveSteps(rtol=1e-5, atol=1e-7, step_t=forced))
    assert all(s in sol.grid.tolist() for s in forced)
    # the times are not outputs, and points outside the span are ignored
    out = symode.odeint(_swirl, Y0, T, rtol=1e-5, atol=1e-7, options={"step_t": [-1.0, *forced, 9.0]})
    assert out.shape == (len(T), 2)


def test_min_and_max_step():
    clipped = symode.AdaptiveSteps(rtol=1e-6, atol=1e-8, interpolate=False)
    free = symode.solve(_swirl, Y0, T[[0, -1]], steps=clipped).grid
    assert free.diff().max() > 0.2
    bounded = symode.solve(_swirl, Y0, T[[0, -1]], steps=symode.AdaptiveSteps(rtol=1e-6, atol=1e-8, max_step=0.1)).grid
    assert bounded.diff().max() <= 0.1 + 1e-15
    # a step of min_step is taken whatever its error (torchdiffeq's semantics): with a tolerance no step
    # meets, every step is min_step
    floor = symode.solve(
        _swirl, Y0, T[[0, -1]], steps=symode.AdaptiveSteps(rtol=1e-14, atol=1e-14, min_step=0.25, first_step=0.25)
    )
    assert floor.grid.diff().tolist() == pytest.approx([0.25] * 8) and floor.stats.num_rejected == 0
    for bad in ({"min_step": -1.0}, {"max_step": 0.0}, {"min_step": 0.5, "max_step": 0.1}, {"min_step": math.inf}):
        with pytest.raises(ValueError, match=r"min_step|max_step"):
            symode.AdaptiveSteps(**bad)


def test_callable_norm_gets_the_state_in_its_structure():
    seen = []

    def inf_norm(x):
        seen.append(type(x))
        parts = x if isinstance(x, tuple) else (x,)
        return torch.stack([p.abs().max() for p in parts]).max()

    rms = symode.solve(_swirl, Y0, T, steps=symode.AdaptiveSteps(rtol=1e-6, atol=1e-8)).stats
    inf = symode.solve(_swirl, Y0, T, steps=symode.AdaptiveSteps(rtol=1e-6, atol=1e-8, norm=inf_norm)).stats
    assert inf.num_accepted > rms.num_accepted  # the max norm is the stricter one
    assert set(seen) == {torch.Tensor}
    seen.clear()
    xs = symode.odeint(
        lambda t, s: (s[1], -s[0]), (Y0[:1], Y0[1:]), T, rtol=1e-6, atol=1e-8, options={"norm": inf_norm}
    )
    assert set(seen) == {tuple} and isinstance(xs, tuple)
    with pytest.raises(TypeError, match="norm must be a callable"):
        symode.AdaptiveSteps(norm="max")
    with pytest.raises(ValueError, match="norm must return a scalar"):
        symode.odeint(_swirl, Y0, T, options={"norm": lambda x: x.abs()})


def test_pid_controller():
    steps = symode.AdaptiveSteps(controller="pid")
    assert steps.gains == pytest.approx((1 / 9, 1 / 18, 1 / 18))
    # the factor: safety r_n^(-(i+p+d)/k) r_{n-1}^((p+2d)/k) r_{n-2}^(-d/k)
    k, (i, p, d) = 5, steps.gains
    expected = 0.9 * 0.5 ** (-(i + p + d) / k) * 0.8 ** ((p + 2 * d) / k) * 0.3 ** (-d / k)
    assert steps.factor(0.5, 0.8, k, True, False, 0.3) == pytest.approx(expected, rel=1e-15)
    custom = symode.AdaptiveSteps(controller="pid", pcoeff=0.4, icoeff=0.3, dcoeff=0.0)
    pi = symode.AdaptiveSteps(controller="pi")
    assert custom.factor(0.5, 0.8, k, True, False, 0.3) == pytest.approx(pi.factor(0.5, 0.8, k, True, False))
    with pytest.raises(ValueError, match="controller='pid'"):
        symode.AdaptiveSteps(pcoeff=0.1)
    ys = symode.odeint(_swirl, Y0, T, rtol=1e-8, atol=1e-10, options={"controller": "pid", "dcoeff": 0.1})
    exact = torch.stack([torch.cos(T + 0.5 * torch.sin(T)), torch.sin(T + 0.5 * torch.sin(T))], dim=-1)
    torch.testing.assert_close(ys, exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"step_t": [0.3, 1.1]},
        {"min_step": 0.05, "max_step": 0.3},
        {"norm": lambda x: x.abs().max()},
        {"controller": "pid"},
    ],
    ids=["step_t", "min_max_step", "norm", "pid"],
)
def test_options_under_every_exact_method(options):
    func = Field(dim=2, hidden=6, seed=1)
    y0 = torch.tensor([[0.3, -0.2]], dtype=F64)
    t = torch.linspace(0.0, 2.0, 9, dtype=F64)

    def grads(gradient):
        y0_ = y0.clone().requires_grad_(True)
        t_ = t.clone().requires_grad_(True)
        ys = symode.odeint(func, y0_, t_, rtol=1e-6, atol=1e-8, options=options, gradient=gradient)
        return torch.autograd.grad((ys**2).sum(), (y0_, t_, *func.parameters()))

    reference = grads("backprop")
    for gradient in EXACT:
        for g, r in zip(grads(gradient), reference):
            assert ((g - r).norm() / r.norm()).item() < 1e-12, (gradient, options)


@pytest.mark.parametrize("interp", ["linear", "cubic"])
def test_fixed_grid_interpolation_matches_torchdiffeq(interp):
    """torchdiffeq's fixed grids ignore the output times and interpolate them (interp); so does
    symode with interp given, to round-off (its rk4 is symode's rk38)."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    t = torch.tensor([0.0, 0.15, 0.4, 1.0, 2.0], dtype=F64)
    for ours_name, theirs_name in (("rk38", "rk4"), ("euler", "euler"), ("midpoint", "midpoint"), ("heun3", "heun3")):
        ours = symode.odeint(_swirl, Y0, t, method=ours_name, options={"step_size": 0.1, "interp": interp})
        theirs = torchdiffeq.odeint(_swirl, Y0, t, method=theirs_name, options={"step_size": 0.1, "interp": interp})
        torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=1e-14)

    def grid(func, y0, t):
        return torch.linspace(float(t[0]), float(t[-1]), 7, dtype=F64)

    ours = symode.odeint(_swirl, Y0, t, method="rk38", options={"grid_constructor": grid, "interp": interp})
    theirs = torchdiffeq.odeint(_swirl, Y0, t, method="rk4", options={"grid_constructor": grid, "interp": interp})
    torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=1e-14)
    # without interp, the constructed grid gets the output times added (symode's fixed steps)
    sol_grid = symode.solve(_swirl, Y0, t, method="rk38", steps=symode.FixedSteps(grid=grid(None, None, t))).grid
    assert all(v in sol_grid.tolist() for v in t.tolist())
    with pytest.raises(ValueError, match="interp must be"):
        symode.FixedSteps(step_size=0.1, interp="quadratic")
    with pytest.raises(ValueError, match="exclude each other"):
        symode.odeint(_swirl, Y0, t, method="rk4", options={"grid_constructor": grid, "step_size": 0.1})


@pytest.mark.parametrize("interp", ["linear", "cubic"])
def test_fixed_grid_interpolation_under_every_exact_method(interp):
    func = Field(dim=2, hidden=6, seed=1)
    y0 = torch.tensor([[0.3, -0.2]], dtype=F64)
    t = torch.tensor([0.0, 0.15, 0.4, 1.0, 1.77, 2.0], dtype=F64)

    def grads(gradient):
        y0_ = y0.clone().requires_grad_(True)
        t_ = t.clone().requires_grad_(True)
        ys = symode.odeint(func, y0_, t_, method="rk4", options={"step_size": 0.3, "interp": interp}, gradient=gradient)
        return torch.autograd.grad((ys**2).sum(), (y0_, t_, *func.parameters()))

    reference = grads("backprop")
    for gradient in EXACT:
        for g, r in zip(grads(gradient), reference):
            assert ((g - r).norm() / r.norm()).item() < 1e-12, gradient


class Piecewise(torch.nn.Module):
    """dy/dt = a (1 + b y) before t = 1 and -2 a (1 + b y) after it: a jump of f in time."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(1.0, dtype=F64))
        self.b = torch.nn.Parameter(torch.tensor(0.1, dtype=F64))

    def forward(self, t, y):
        return torch.where(t < 1.0, self.a, -2 * self.a) * (1 + self.b * y)


def _piecewise_exact(t):
    y1 = 10 * (math.exp(0.1) - 1)
    return 10 * (math.exp(0.1 * t) - 1) if t <= 1 else (y1 + 10) * math.exp(-0.2 * (t - 1)) - 10


def test_jump_t_and_perturb_against_the_closed_form_and_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = Piecewise()
    y0 = torch.tensor([0.0], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.5, 2.0], dtype=F64)
    exact = torch.tensor([[_piecewise_exact(float(s))] for s in t], dtype=F64)
    with torch.no_grad():
        plain = symode.odeint(func, y0, t, rtol=1e-8, atol=1e-10)
        jumped = symode.odeint(func, y0, t, rtol=1e-8, atol=1e-10, options={"jump_t": [1.0]})
        theirs = torchdiffeq.odeint(func, y0, t, rtol=1e-8, atol=1e-10, options={"jump_t": torch.tensor([1.0])})
    assert (jumped - exact).abs().max() < 1e-9 < (plain - exact).abs().max()
    torch.testing.assert_close(jumped, theirs, rtol=0, atol=1e-8)
    # fixed steps with 1.0 a grid point: perturb evaluates f on each step's own side, as torchdiffeq does
    grid = torch.linspace(0, 2, 21, dtype=F64)
    with torch.no_grad():
        perturbed = symode.odeint(func, y0, t, method="rk38", options={"grid": grid, "perturb": True})
        unperturbed = symode.odeint(func, y0, t, method="rk38", options={"grid": grid})
        theirs = torchdiffeq.odeint(
            func, y0, t, method="rk4", options={"grid_constructor": lambda f, y, s: grid, "perturb": True}
        )
    torch.testing.assert_close(perturbed, theirs, rtol=1e-14, atol=1e-14)
    assert (perturbed - exact).abs().max() < 1e-6 < (unperturbed - exact).abs().max()
    with pytest.raises(ValueError, match="perturb"):
        symode.odeint(func, y0, t, options={"perturb": True})
    with pytest.raises(ValueError, match="must not share"):
        symode.AdaptiveSteps(step_t=[1.0], jump_t=[1.0])


@pytest.mark.parametrize(
    "method, options",
    [
        ("dopri5", {"jump_t": [1.0]}),
        ("tsit5", {"jump_t": [1.0], "interpolate": False}),
        ("rk4", {"grid": [0.0, 1.0, 1.3, 2.0], "perturb": True}),
    ],
    ids=["jump_t", "jump_t_clipped", "perturb"],
)
def test_jumps_under_every_exact_method(method, options):
    """Every exact method evaluates f on the same side of the jump as the forward solve did."""
    func = Piecewise()
    y0 = torch.tensor([0.3], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.5, 2.0], dtype=F64)

    def grads(gradient):
        y0_ = y0.clone().requires_grad_(True)
        t_ = t.clone().requires_grad_(True)
        ys = symode.odeint(func, y0_, t_, method=method, rtol=1e-7, atol=1e-9, options=options, gradient=gradient)
        return torch.autograd.grad((ys**2).sum(), (y0_, t_, *func.parameters()))

    reference = grads("backprop")
    for gradient in EXACT:
        for g, r in zip(grads(gradient), reference):
            assert ((g - r).norm() / r.norm()).item() < 1e-12, gradient


def test_dtype_option_is_accepted():
    ys = symode.odeint(_swirl, Y0, T, options={"dtype": torch.float32})
    assert torch.equal(ys, symode.odeint(_swirl, Y0, T)) and ys.dtype == F64  # times stay float64
    with pytest.raises(TypeError, match="dtype"):
        symode.odeint(_swirl, Y0, T, options={"dtype": "float32"})


def test_adjoint_options_take_a_callable_norm():
    """A callable norm of the backward solve is handed (y, a, *dL/dθ_p); the seminorm written as one
    takes the same steps, and so gives the same gradient, as norm='seminorm'."""
    func = Field(dim=2, hidden=6, seed=1)
    y0 = torch.tensor([[0.3, -0.2]], dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    seen = []

    def seminorm(y, a, *grads):
        seen.append(len(grads))
        return torch.maximum(y.pow(2).mean().sqrt(), a.pow(2).mean().sqrt())

    def gradient(norm):
        ys = symode.odeint_adjoint(func, y0, t, rtol=1e-6, atol=1e-8, adjoint_options={"norm": norm})
        return torch.autograd.grad(ys.pow(2).sum(), (y0, *func.parameters()))

    for g, r in zip(gradient(seminorm), gradient("seminorm")):
        torch.testing.assert_close(g, r, rtol=1e-13, atol=1e-15)
    assert set(seen) == {len(list(func.parameters()))}
    with pytest.raises(ValueError, match="scalar"):
        gradient(lambda y, a, *g: y.abs())


class AdjointRecorder(Recorder):
    """A field with the forward callbacks and torchdiffeq's ``_adjoint`` callbacks."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2).double()
        self.adjoint = {"step": [], "accept": [], "reject": []}

    def forward(self, t, y):
        return self.lin(y) * (1 + 0.5 * torch.cos(t))

    def callback_step_adjoint(self, t0, y0, dt):
        self.adjoint["step"].append((float(t0), float(dt), y0))

    def callback_accept_step_adjoint(self, t0, y0, dt):
        self.adjoint["accept"].append((float(t0), float(dt)))

    def callback_reject_step_adjoint(self, t0, y0, dt):
        self.adjoint["reject"].append((float(t0), float(dt)))


def test_adjoint_callbacks_are_called_by_the_backward_solve_as_in_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    seen = {}
    for odeint in (symode.odeint_adjoint, torchdiffeq.odeint_adjoint):
        torch.manual_seed(0)
        func = AdjointRecorder()
        y0 = Y0.clone().requires_grad_(True)
        ys = odeint(func, y0, T, rtol=1e-6, atol=1e-8)
        forward_calls = len(func.tried)
        assert not func.adjoint["step"]  # nothing before the backward pass
        cotangent = torch.linspace(0.5, 2.0, ys.numel(), dtype=F64).reshape(ys.shape)
        ys.backward(cotangent)
        assert len(func.tried) == forward_calls  # the forward callbacks are not called backward
        steps = func.adjoint["step"]
        assert len(steps) == len(func.adjoint["accept"]) + len(func.adjoint["reject"])
        # the augmented state at torchdiffeq's positions: (adjoint of t, y, a, *dL/dparams)
        _, _, first_state = steps[0]
        assert steps[0][0] == pytest.approx(float(T[-1]), abs=1e-15)
        assert len(first_state) == 3 + len(list(func.parameters()))
        torch.testing.assert_close(first_state[1], ys[-1].detach(), rtol=0, atol=0)
        torch.testing.assert_close(first_state[2], cotangent[-1], rtol=0, atol=0)
        for p, g in zip(func.parameters(), first_state[3:]):
            assert g.shape == p.shape and not g.any()  # the parameter integrals start at zero
        # every output interval is crossed backwards: its end is the start of a step
        starts = [s[0] for s in steps]
        for t_k in T[1:].tolist():
            assert min(abs(s - t_k) for s in starts) < 1e-12
        seen[odeint] = steps
    ours, theirs = seen[symode.odeint_adjoint], seen[torchdiffeq.odeint_adjoint]
    assert abs(len(ours) - len(theirs)) <= 0.2 * len(theirs)  # their backward norm differs (docs/migrating.md)
    # symode's dt is signed (t0 + dt ends the step, backwards here); torchdiffeq's is its magnitude
    assert all(dt < 0 for _, dt, _ in ours) and all(dt > 0 for _, dt, _ in theirs)
    assert ours[0][2][0] is None  # the adjoint of t is not integrated by symode

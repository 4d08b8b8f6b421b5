"""Events: ``symode.odeint_event``, ``odeint(..., event_fn=...)`` and ``solve(..., event=...)``.

Truths: closed forms (a falling ball, a state moving at unit speed), scipy's ``solve_ivp``
events, torchdiffeq's ``odeint_event`` itself, backprop for every exact gradient method
(round-off in float64) and central finite differences for the event time's gradient.
"""

import math

import pytest
import torch

import symode
from fields import Field
from symode.gradients import GRADIENT_METHODS

EXACT = [m for name, cls in sorted(GRADIENT_METHODS.items()) if cls.exact for m in cls.configurations()]
EVERY = EXACT + [symode.ContinuousAdjoint(rtol=1e-12, atol=1e-12)]
ADAPTIVE = ["dopri5", "tsit5", "bosh3", "dopri8"]
F64 = torch.float64


def _tensor(x, grad=True):
    return torch.tensor(x, dtype=F64, requires_grad=grad)


def _fall(g):
    """h'' = -g as (h, v); g a tensor (a parameter of the field)."""

    def f(t, y):
        return torch.stack([y[1], -g * torch.ones_like(y[1])])

    return f


def _closed_form(h0, v0, g, wall=0.0):
    """The time the ball thrown up at v0 from h0 reaches the height ``wall`` on its way down."""
    return (v0 + torch.sqrt(v0**2 + 2 * g * (h0 - wall))) / g


def _height(t, y):
    return y[0]


@pytest.mark.parametrize("gradient", EVERY, ids=repr)
@pytest.mark.parametrize("method", ADAPTIVE + ["rk4"])
def test_falling_ball_event_time_and_gradient_equal_the_closed_form(method, gradient):
    """The ball's path is quadratic, so every method of order >= 2 follows it to round-off: the
    event time and its gradient in h0, v0 and g equal the closed form (target 1e-8)."""
    h0, v0, g = _tensor(2.0), _tensor(0.5), _tensor(9.81)
    steps = symode.FixedSteps(step_size=0.05) if method == "rk4" else symode.AdaptiveSteps(rtol=1e-8, atol=1e-10)
    sol = symode.solve(
        _fall(g),
        torch.stack([h0, v0]),
        torch.tensor([0.0, 10.0], dtype=F64),
        method=method,
        steps=steps,
        event=_height,
        gradient=gradient,
        adjoint_params=(g,),
    )
    exact = _closed_form(h0, v0, g)
    assert abs(sol.ts[-1].item() - exact.item()) < 1e-12
    ours = torch.autograd.grad(sol.ts[-1], (h0, v0, g))
    theirs = torch.autograd.grad(exact, (h0, v0, g))
    for a, b in zip(ours, theirs):
        assert abs(float(a - b)) < 1e-8 * max(1.0, abs(float(b)))
    # the state at the event: height 0, and the speed's gradient is that of -g t* + v0
    assert abs(sol.ys[-1][0].item()) < 1e-12
    assert sol.event == symode.EventHit(index=0, component=0, t=sol.ts[-1].item())


@pytest.mark.parametrize("gradient", EXACT, ids=repr)
def test_exact_methods_equal_backprop_on_a_neural_field(gradient):
    """A network's field, an event on one component reaching a level: the event time and state,
    and the gradients in y0, the parameters and t0, equal backprop's to round-off."""

    def run(grad):
        func = Field(dim=3, hidden=8, seed=1)
        y0 = torch.tensor([0.2, -0.1, 0.3], dtype=F64, requires_grad=True)
        t0 = torch.tensor(0.1, dtype=F64, requires_grad=True)
        t_event, ys = symode.odeint_event(
            func,
            y0,
            t0,
            event_fn=lambda t, y: y[0] - 0.6 - 0.05 * t,
            rtol=1e-7,
            atol=1e-9,
            gradient=grad,
        )
        loss = 3.0 * t_event + (ys[-1] ** 2).sum()
        grads = torch.autograd.grad(loss, (y0, t0, *func.parameters()))
        return t_event.detach(), ys.detach(), grads

    t_ref, ys_ref, ref = run("backprop")
    t_ours, ys_ours, ours = run(gradient)
    assert t_ref > 0.5  # the event happens inside the solve (the test is not vacuous)
    assert float(t_ours) == pytest.approx(float(t_ref), rel=1e-14)
    assert torch.allclose(ys_ours, ys_ref, rtol=1e-13, atol=1e-14)
    for a, b in zip(ours, ref):
        assert (a - b).abs().max() <= 1e-12 * b.abs().max()


def test_event_time_gradient_matches_finite_differences():
    """Backprop's event time gradient in y0 against central differences of the event time at
    tight tolerances (the steps change with y0: this checks the implicit function theorem)."""
    func = Field(dim=3, hidden=8, seed=1)

    def event_time(y0):
        t_event, _ = symode.odeint_event(
            func, y0, torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y[0] - 0.6, rtol=1e-12, atol=1e-13
        )
        return t_event

    y0 = torch.tensor([0.2, -0.1, 0.3], dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(event_time(y0), y0)
    eps = 1e-5
    with torch.no_grad():
        fd = torch.stack([(event_time(y0 + eps * e) - event_time(y0 - eps * e)) / (2 * eps) for e in torch.eye(3)])
    assert torch.allclose(grad, fd.to(F64), rtol=1e-6, atol=1e-8)


def test_event_time_equals_scipys():
    """Van der Pol, the first time x crosses 1.5 downwards: the event time equals scipy's
    (DOP853 with its event location, both at tight tolerances)."""
    integrate = pytest.importorskip("scipy.integrate")

    def vdp(t, y):
        return torch.stack([y[1], 2.0 * (1 - y[0] ** 2) * y[1] - y[0]])

    sol = symode.solve(
        vdp,
        torch.tensor([0.5, 0.0], dtype=F64),
        torch.tensor([0.0, 20.0], dtype=F64),
        steps=symode.AdaptiveSteps(rtol=1e-11, atol=1e-12),
        event=symode.Event(lambda t, y: y[0] - 1.5, direction=-1),
    )

    def crossing(t, y):
        return y[0] - 1.5

    crossing.terminal, crossing.direction = True, -1
    ref = integrate.solve_ivp(
        lambda t, y: [y[1], 2.0 * (1 - y[0] ** 2) * y[1] - y[0]],
        (0.0, 20.0),
        [0.5, 0.0],
        method="DOP853",
        rtol=1e-12,
        atol=1e-13,
        events=crossing,
    )
    assert sol.ts[-1].item() == pytest.approx(float(ref.t_events[0][0]), rel=1e-9)
    assert torch.allclose(sol.ys[-1], torch.tensor(ref.y_events[0][0]), atol=1e-8)


def _unit_speed(t, y):
    return torch.ones_like(y)


@pytest.mark.parametrize(("direction", "expected"), [(0, 0.5 * math.pi), (-1, 0.5 * math.pi), (1, 1.5 * math.pi)])
def test_direction(direction, expected):
    """y = t: cos(y) crosses zero downwards at pi/2 and upwards at 3 pi/2. (The steps are
    bounded: y = t is solved exactly, and a step over both crossings would see no change.)"""
    sol = symode.solve(
        _unit_speed,
        torch.zeros(1, dtype=F64),
        torch.tensor([0.0, 10.0], dtype=F64),
        steps=symode.AdaptiveSteps(max_step=0.5),
        event=symode.Event(lambda t, y: torch.cos(y), direction=direction),
    )
    assert sol.ts[-1].item() == pytest.approx(expected, rel=1e-14)


def test_several_events_and_a_batch_stop_at_the_first_crossing():
    """A batch of three states at unit speed, two event functions: the solve stops at the first
    crossing of any component of any of them, and says which."""
    y0 = torch.tensor([0.0, 0.3, -0.2], dtype=F64)
    events = [symode.Event(lambda t, y: y - 2.0), symode.Event(lambda t, y: (y - 1.5) * torch.tensor([1.0, 1.0, 1.0]))]
    sol = symode.solve(_unit_speed, y0, torch.tensor([0.0, 5.0], dtype=F64), event=events)
    # component 1 (from 0.3) reaches 1.5 first, at t = 1.2; then the first event's 2.0 at 1.7
    assert sol.event is not None and (sol.event.index, sol.event.component) == (1, 1)
    assert sol.ts[-1].item() == pytest.approx(1.2, rel=1e-14)
    assert torch.allclose(sol.ys[-1], y0 + 1.2, atol=1e-14)


def test_no_event_in_the_span_returns_the_solve_to_its_end():
    func = Field(dim=3)
    y0 = torch.tensor([0.2, -0.1, 0.3], dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    sol = symode.solve(func, y0, t, event=lambda t, y: y[0] - 100.0)
    assert sol.event is None
    assert torch.equal(sol.ts, t)
    assert torch.allclose(sol.ys, symode.solve(func, y0, t).ys, rtol=0, atol=1e-15)
    with pytest.raises(symode.SolveError, match="no event"):
        symode.odeint_event(
            func, y0, torch.tensor(0.0), event_fn=lambda t, y: y[0] - 100.0, options={"max_num_steps": 50}
        )


@pytest.mark.parametrize("gradient", ["backprop", "symplectic_adjoint"])
def test_reverse_time_and_t0_gradient(gradient):
    """Backwards from t0: the ball was at height 0 at t* = t0 + (v0 - sqrt(v0^2 + 2 g h0)) / g.
    With an autonomous field and event, moving t0 moves t* with it: dt*/dt0 = 1."""
    h0, v0, g = _tensor(2.0), _tensor(0.5), _tensor(9.81)
    t0 = _tensor(0.3)
    t_event, ys = symode.odeint_event(
        _fall(g),
        torch.stack([h0, v0]),
        t0,
        event_fn=_height,
        reverse_time=True,
        gradient=gradient,
        adjoint_params=(g,),
    )
    exact = t0 + (v0 - torch.sqrt(v0**2 + 2 * g * h0)) / g
    assert t_event.item() < t0.item()
    assert t_event.item() == pytest.approx(exact.item(), abs=1e-12)
    ours = torch.autograd.grad(t_event, (h0, v0, g, t0))
    theirs = torch.autograd.grad(exact, (h0, v0, g, t0))
    for a, b in zip(ours, theirs):
        assert float(a) == pytest.approx(float(b), rel=1e-9, abs=1e-12)
    assert ys.shape == (2, 2) and torch.equal(ys[0], torch.stack([h0, v0]).detach())


def test_event_function_parameters_get_their_gradient():
    """A learnable wall height w: dt*/dw by the implicit function theorem, against the closed form."""
    h0, v0, g, wall = _tensor(2.0), _tensor(0.5), _tensor(9.81), _tensor(0.4)
    sol = symode.solve(
        _fall(g),
        torch.stack([h0, v0]),
        torch.tensor([0.0, 10.0], dtype=F64),
        event=lambda t, y: y[0] - wall,
        gradient="symplectic_adjoint",
        adjoint_params=(g,),
    )
    exact = _closed_form(h0, v0, g, wall)
    (ours,) = torch.autograd.grad(sol.ts[-1], wall)
    (theirs,) = torch.autograd.grad(exact, wall)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-10)


@pytest.mark.parametrize("scale", [1e-10, 1e10])
def test_tiny_and_huge_spans(scale):
    """The ball dropped from h0 = scale with g = 1 lands at sqrt(2 scale): 1.4e-5 to 1.4e5."""
    h0, g = _tensor(scale), _tensor(1.0)
    sol = symode.solve(
        _fall(g),
        torch.stack([h0, torch.zeros((), dtype=F64)]),
        torch.tensor([0.0, 10 * math.sqrt(scale)], dtype=F64),
        steps=symode.AdaptiveSteps(rtol=1e-8, atol=1e-10 * scale),
        event=_height,
        adjoint_params=(g,),
        gradient="symplectic_adjoint",
    )
    assert sol.ts[-1].item() == pytest.approx(math.sqrt(2 * scale), rel=1e-12)
    (dh,) = torch.autograd.grad(sol.ts[-1], h0)
    assert float(dh) == pytest.approx(1 / math.sqrt(2 * scale), rel=1e-9)


def test_tuple_and_zero_dim_states():
    """A tuple of 0-dim tensors, as in torchdiffeq's bouncing ball: h' = v, v' = -g."""
    g = _tensor(9.81)
    h0, v0 = _tensor(2.0), _tensor(0.5)
    t_event, (hs, vs) = symode.odeint_event(
        lambda t, s: (s[1], -g * torch.ones_like(s[1])),
        (h0, v0),
        torch.tensor(0.0, dtype=F64),
        event_fn=lambda t, s: s[0],
        gradient="symplectic_adjoint",
        adjoint_params=(g,),
    )
    exact = _closed_form(h0, v0, g)
    assert hs.shape == (2,) and vs.shape == (2,)
    assert t_event.item() == pytest.approx(exact.item(), abs=1e-12)
    # the speed at the event: v0 - g t*, differentiated through t*
    (ours,) = torch.autograd.grad(vs[-1], h0)
    (theirs,) = torch.autograd.grad(v0 - g * exact, h0)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_states(dtype):
    """The event time is found in float64 on a low-precision interpolant: within the dtype's
    resolution of the closed form; the gradient too."""
    g = torch.tensor(9.81, dtype=dtype, requires_grad=True)
    y0 = torch.tensor([2.0, 0.5], dtype=dtype)
    eps = torch.finfo(dtype).eps
    sol = symode.solve(
        _fall(g),
        y0,
        torch.tensor([0.0, 10.0]),
        steps=symode.AdaptiveSteps(rtol=max(1e-6, float(eps)), atol=1e-6),
        event=_height,
        adjoint_params=(g,),
        gradient="symplectic_adjoint",
    )
    g64 = _tensor(9.81)
    exact = _closed_form(_tensor(2.0, False), _tensor(0.5, False), g64)
    assert sol.ts.dtype == torch.float32
    assert sol.ts[-1].item() == pytest.approx(exact.item(), rel=20 * float(eps))
    (ours,) = torch.autograd.grad(sol.ts[-1], g)
    (theirs,) = torch.autograd.grad(exact, g64)
    assert ours.dtype == dtype
    assert float(ours) == pytest.approx(float(theirs), rel=50 * float(eps))


@pytest.mark.parametrize("direction", [0, -1])
def test_a_component_at_zero_at_t0_is_not_an_event(direction):
    """A ball thrown up from the ground (height 0 at t0, as after a bounce) lands at 2 v0 / g."""
    g = _tensor(9.81)
    sol = symode.solve(
        _fall(g),
        torch.tensor([0.0, 3.0], dtype=F64),
        torch.tensor([0.0, 10.0], dtype=F64),
        event=symode.Event(_height, direction=direction),
    )
    assert sol.ts[-1].item() == pytest.approx(2 * 3.0 / 9.81, rel=1e-13)


def test_the_event_state_is_just_before_the_crossing():
    """The state returned has not crossed yet (or sits on zero): a solve restarted from it, after
    the bounce's jump map, does not meet the same crossing at its start."""
    g = _tensor(9.81)
    state, t0 = torch.tensor([2.0, 0.5], dtype=F64), 0.0
    times = []
    for _ in range(3):
        t_event, ys = symode.odeint_event(_fall(g), state, t0, event_fn=_height)
        assert ys[-1][0].item() >= 0.0
        state, t0 = ys[-1] * torch.tensor([1.0, -0.5], dtype=F64), t_event
        times.append(t_event.item())
    first = _closed_form(_tensor(2.0), _tensor(0.5), g).item()
    speed = 0.5 * math.sqrt(0.5**2 + 2 * 9.81 * 2.0)  # leaving the ground after the first bounce
    assert times == pytest.approx([first, first + 2 * speed / 9.81, first + 3 * speed / 9.81], rel=1e-12)


def test_tangential_event_is_an_error_when_differentiated():
    """g(t) = (y - 1)^3 with y = t crosses zero at t = 1 with a zero slope: the event time has no
    derivative. Without a gradient the event is still found."""
    y0 = torch.zeros(1, dtype=F64)
    t = torch.tensor([0.0, 3.0], dtype=F64)
    with torch.no_grad():
        sol = symode.solve(_unit_speed, y0, t, event=lambda t, y: (y - 1.0) ** 3)
    assert sol.ts[-1].item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="tangential"):
        symode.solve(_unit_speed, y0.requires_grad_(), t, event=lambda t, y: (y - 1.0) ** 3)


def test_double_backward_through_an_event_raises():
    h0, v0, g = _tensor(2.0), _tensor(0.5), _tensor(9.81)
    sol = symode.solve(_fall(g), torch.stack([h0, v0]), torch.tensor([0.0, 10.0], dtype=F64), event=_height)
    with pytest.raises(RuntimeError, match="double backward through an event"):
        torch.autograd.grad(sol.ts[-1], h0, create_graph=True)


@pytest.mark.parametrize("gradient", ["backprop", "symplectic_adjoint"])
def test_stochastic_func_is_refused(gradient):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 2)).double()

    def func(t, y):
        return 1.0 + 0.1 * net(y).tanh()  # at least 0.9: y[0] reaches 1 before t = 1.2

    y0 = torch.tensor([0.1, 0.2], dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="random numbers"):
        symode.odeint_event(func, y0, 0.0, event_fn=lambda t, y: y[0] - 1.0, gradient=gradient)
    net.eval()  # no dropout: the event is found, and differentiated as by backprop
    t_event, _ = symode.odeint_event(
        func, y0, 0.0, event_fn=lambda t, y: y[0] - 1.0, gradient=gradient, adjoint_params=tuple(net.parameters())
    )
    assert 0.75 < t_event.item() < 1.0
    assert torch.autograd.grad(t_event, y0)[0][0] < 0


class Buffered(torch.nn.Module):
    """A field whose speed is a buffer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("speed", torch.tensor([1.0, 2.0], dtype=F64))
        self.scale = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))

    def forward(self, t, y):
        return self.scale * self.speed * torch.cos(y)


@pytest.mark.parametrize("gradient", EXACT, ids=repr)
def test_module_buffers(gradient):
    func = Buffered()
    t_event, _ = symode.odeint_event(
        func, torch.zeros(2, dtype=F64), 0.0, event_fn=lambda t, y: y[1] - 1.0, gradient=gradient
    )
    (ours,) = torch.autograd.grad(t_event, func.scale)
    # y1' = 1.4 cos(y1) (scaled by s/0.7): t* = atanh(sin 1) / (2 s), so dt*/ds = -t*/s
    exact = math.atanh(math.sin(1.0)) / (2 * 0.7)
    assert t_event.item() == pytest.approx(exact, rel=1e-7)
    assert float(ours) == pytest.approx(-exact / 0.7, rel=1e-6)


def test_bad_events():
    with pytest.raises(ValueError, match="direction must be"):
        symode.Event(_height, direction=2)
    with pytest.raises(ValueError, match="tol must be"):
        symode.Event(_height, tol=-1.0)
    with pytest.raises(TypeError, match="fn must be callable"):
        symode.Event("height")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"event": "height"}, TypeError, "event must be"),
        ({"event": []}, ValueError, "non-empty"),
        ({"event": lambda t, y: 1.0}, TypeError, "tensor"),
        ({"event": _height, "dense": True}, ValueError, "exclude"),
        ({"event": _height, "t": [0.0, 1.0, 2.0]}, ValueError, r"\[t0, t_end\]"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    g = torch.tensor(9.81, dtype=F64)
    args = {"t": torch.tensor([0.0, 10.0], dtype=F64), **kwargs}
    with pytest.raises(error, match=match):
        symode.solve(_fall(g), torch.tensor([2.0, 0.5], dtype=F64), **args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "rk4"}, "step_size"),
        ({"method": "dopri5", "options": {"grid": [0.0, 1.0]}}, "step_size"),
        ({"method": "explicit_adams", "options": {"step_size": 0.1}}, "no events"),
        ({"method": "scipy_solver"}, "no events"),
    ],
)
def test_odeint_event_refusals(kwargs, match):
    with pytest.raises(ValueError, match=match):
        symode.odeint_event(_unit_speed, torch.zeros(1, dtype=F64), 0.0, event_fn=lambda t, y: y - 1.0, **kwargs)


def test_fixed_steps_event():
    """rk4 with a step size: the event is located on its Hermite interpolant (the solve is exact
    for y = t^2 / 2, a cubic interpolant represents it exactly)."""
    t_event, ys = symode.odeint_event(
        lambda t, y: t * torch.ones_like(y),
        torch.zeros(1, dtype=F64),
        torch.tensor(0.0, dtype=F64),
        event_fn=lambda t, y: y - 2.0,
        method="rk4",
        options={"step_size": 0.3},
    )
    assert t_event.item() == pytest.approx(2.0, rel=1e-13)
    assert float(ys[-1]) == pytest.approx(2.0, rel=1e-13)


class TorchdiffeqBall(torch.nn.Module):
    """torchdiffeq's bouncing-ball example's model (examples/bouncing_ball.py there): a tuple of
    shape-(1,) tensors (height, speed, log radius), the event where the ball's bottom reaches
    the ground, and its jump map (which lifts the ball by 1e-7 so that torchdiffeq does not stop
    at once)."""

    def __init__(self):
        super().__init__()
        self.gravity = torch.nn.Parameter(torch.tensor([9.8], dtype=F64))
        self.log_radius = torch.nn.Parameter(torch.log(torch.tensor([0.2], dtype=F64)))
        self.absorption = torch.nn.Parameter(torch.tensor([0.2], dtype=F64))
        self.t0 = torch.nn.Parameter(torch.tensor([0.0], dtype=F64))
        self.init_pos = torch.nn.Parameter(torch.tensor([10.0], dtype=F64))
        self.init_vel = torch.nn.Parameter(torch.tensor([0.0], dtype=F64))

    def forward(self, t, state):
        _, vel, log_radius = state
        return vel, -self.gravity, torch.zeros_like(log_radius)

    def event_fn(self, t, state):
        pos, _, log_radius = state
        return pos - torch.exp(log_radius)

    def bounce_times(self, lib, bounces=3, **kwargs):
        t0, state = self.t0, (self.init_pos, self.init_vel, self.log_radius)
        times = []
        for _ in range(bounces):
            t0, solution = lib.odeint_event(self, state, t0, event_fn=self.event_fn, atol=1e-8, rtol=1e-8, **kwargs)
            times.append(t0.reshape(-1))
            pos, vel, log_radius = (s[-1] for s in solution)
            state = (pos + 1e-7, -vel * (1 - self.absorption), log_radius)
        return torch.cat(times)


@pytest.mark.parametrize("adjoint", [False, True], ids=["odeint", "odeint_adjoint"])
def test_bouncing_ball_agrees_with_torchdiffeq(adjoint):
    """torchdiffeq's bouncing ball, 3 bounces: the same event times (torchdiffeq bisects to its
    atol, 1e-8) and the same gradients in every parameter (the initial time's included)."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    results = []
    for lib in (torchdiffeq, symode):
        model = TorchdiffeqBall()
        kwargs = {"odeint_interface": lib.odeint_adjoint} if adjoint else {}
        times = model.bounce_times(lib, **kwargs)
        grads = torch.autograd.grad(times.sum(), list(model.parameters()))
        results.append((times.detach(), grads))
    (theirs, their_grads), (ours, our_grads) = results
    assert torch.allclose(ours, theirs, rtol=0, atol=5e-8)
    for a, b in zip(our_grads, their_grads):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    # and exactly the closed form: the ball falls 10 - 0.2 from rest, and leaves each bounce at 0.8 of its speed
    first = math.sqrt(2 * (10.0 - 0.2) / 9.8)
    speed = 9.8 * first * 0.8
    expected = [first, first + 2 * speed / 9.8, first + 2 * speed / 9.8 + 2 * 0.8 * speed / 9.8]
    assert ours.tolist() == pytest.approx(expected, abs=1e-6)


def test_reverse_time_agrees_with_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = Field(dim=3, hidden=8, seed=2)
    y0 = torch.tensor([0.2, -0.1, 0.3], dtype=F64)

    def event_fn(t, y):
        return y[0] - 0.05

    results = []
    for lib in (torchdiffeq, symode):
        t_event, ys = lib.odeint_event(
            func, y0, torch.tensor(1.0, dtype=F64), event_fn=event_fn, reverse_time=True, rtol=1e-10, atol=1e-12
        )
        results.append((t_event.reshape(()), ys))
    (t_theirs, ys_theirs), (t_ours, ys_ours) = results
    assert t_ours.item() < 1.0
    assert t_ours.item() == pytest.approx(t_theirs.item(), abs=1e-10)
    assert torch.allclose(ys_ours, ys_theirs, atol=1e-9)


def _example(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bouncing_ball_example():
    """examples/bouncing_ball.py: after 3 bounces every exact method's gradient equals backprop's
    (target 1e-10), the symplectic adjoint takes less memory than backprop, and training with it
    recovers the restitution and drag the data were made with."""
    example = _example("bouncing_ball")
    rows = example.check(3)
    assert len(rows) == len(EXACT)
    assert all(diff <= 1e-10 for _, diff, _ in rows)
    memory = {name: peak for name, _, peak in rows if peak is not None}
    assert memory["SymplecticAdjoint()"] < memory["Backprop()"]
    ball = example.train(3, 5, "symplectic_adjoint")
    assert ball.restitution.item() == pytest.approx(0.8, rel=1e-6)
    assert ball.drag.item() == pytest.approx(0.02, rel=1e-5)


def test_symplectic_adjoint_memory_with_an_event():
    """The symplectic adjoint solving to an event takes what it takes solving to the same time
    on the same steps, plus a few states (the interpolant's slope, the event state's terms):
    its O(N + s + L) is kept. Deterministic profiler measure."""
    from symode.bench import peak_memory

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 16))
    y0 = (0.1 * torch.randn(32, 16)).requires_grad_(True)
    steps = symode.AdaptiveSteps(rtol=1e-5, atol=1e-7)
    params = tuple(net.parameters())

    def field(t, y):
        return net(y) + 0.5

    def to_event():
        event = lambda t, y: y[:, 0].mean() - 1.0
        sol = symode.solve(
            field,
            y0,
            torch.tensor([0.0, 50.0]),
            steps=steps,
            gradient="symplectic_adjoint",
            event=event,
            adjoint_params=params,
        )
        (sol.ys[-1].pow(2).mean() + sol.ts[-1]).backward()
        return sol.stats.num_accepted, sol.ts[-1].item()

    def to_time(t_end):
        sol = symode.solve(
            field, y0, torch.tensor([0.0, t_end]), steps=steps, gradient="symplectic_adjoint", adjoint_params=params
        )
        sol.ys[-1].pow(2).mean().backward()
        return sol.stats.num_accepted

    event = peak_memory(to_event)
    plain = peak_memory(to_time, event.result[1])
    assert event.result[0] == plain.result  # the same steps
    state = y0.numel() * y0.element_size()
    assert 0 <= event.peak_bytes - plain.peak_bytes <= 5 * state

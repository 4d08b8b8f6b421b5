"""A stochastic or stateful func under every gradient method: the exact methods' backward
passes replay the forward pass's random numbers and leave the module's buffers as the forward
pass left them, so each equals backprop with the same seed; the continuous adjoint, which
cannot replay, warns. Plus the closure check on every differentiated evaluation.

The truth for every exact method is backprop (float64, the same seed): its graph holds the
random numbers that were drawn."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import symode
from symode.gradients import GRADIENT_METHODS, Backprop

F64 = torch.float64
METHODS = [m for cls in GRADIENT_METHODS.values() for m in cls.configurations()]
EXACT = [pytest.param(m, id=repr(m)) for m in METHODS if m.exact]
REPLAYING = [pytest.param(m, id=repr(m)) for m in METHODS if m.exact and not isinstance(m, Backprop)]
APPROX = [pytest.param(m, id=repr(m)) for m in METHODS if not m.exact]
ALL = [pytest.param(m, id=repr(m)) for m in METHODS]
APIS = ["odeint", "solve"]


class Stochastic(torch.nn.Module):
    """``kind``: ``dropout`` (Dropout(0.3) in training mode), ``randn`` (additive noise from
    ``torch.randn``), ``late`` (noise only after t = 0.5: f(t0, y0) draws nothing)."""

    def __init__(self, kind: str, dim: int = 3, hidden: int = 16):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(dim, hidden, generator=gen, dtype=F64) / dim**0.5)
        self.b1 = torch.nn.Parameter(torch.randn(hidden, generator=gen, dtype=F64) * 0.1)
        self.w2 = torch.nn.Parameter(torch.randn(hidden, dim, generator=gen, dtype=F64) / hidden**0.5)
        self.drop = torch.nn.Dropout(0.3)
        self.kind = kind

    def forward(self, t, y):
        h = torch.tanh(y @ self.w1 + self.b1 + t)
        if self.kind == "dropout":
            h = self.drop(h)
        elif self.kind == "randn" or (self.kind == "late" and t > 0.5):
            h = h + 0.2 * torch.randn_like(h)
        return h @ self.w2 - 0.1 * y


#: solver settings: fixed steps (FSAL and not), adaptive with rejected steps (FSAL and not)
SETTINGS = {
    "rk4-fixed": {"method": "rk4", "options": {"step_size": 0.1}},
    "dopri5-fixed": {"method": "dopri5", "options": {"step_size": 0.25}},
    "dopri5-adaptive": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3},
    "dopri8-adaptive": {"method": "dopri8", "rtol": 3e-2, "atol": 3e-2},
    "bosh3-adaptive": {"method": "bosh3", "rtol": 3e-3, "atol": 3e-3},
}
T = [0.0, 0.4, 1.0]


def rk4_on_unit_interval(func, y0, gradient="backprop", step_size=0.1, **kw):
    """``symode.odeint`` from 0 to 1 with fixed rk4 steps."""
    t = torch.tensor([0.0, 1.0], dtype=F64)
    return symode.odeint(func, y0, t, method="rk4", options={"step_size": step_size}, gradient=gradient, **kw)


def _solve(api, func, y0, t, gradient, method, rtol=1e-7, atol=1e-9, options=None):
    if api == "odeint":
        return symode.odeint(func, y0, t, method=method, rtol=rtol, atol=atol, options=options, gradient=gradient), None
    options = dict(options or {})
    steps = symode.FixedSteps(**options) if "step_size" in options else symode.AdaptiveSteps(rtol=rtol, atol=atol)
    solution = symode.solve(func, y0, t, method=method, steps=steps, gradient=gradient)
    return solution.ys, solution.stats


def run(api, field, gradient, setting, seed=1, time_grad=False):
    """Solve with the generator seeded, differentiate a nonlinear loss of every output; return
    the outputs, the gradients (y0, t if asked, parameters), the next number the generator
    gives after backward(), and the solve's stats (solve API)."""
    y0 = torch.linspace(-1.0, 1.0, 12, dtype=F64).reshape(4, 3).requires_grad_(True)
    t = torch.tensor(T, dtype=F64, requires_grad=time_grad)
    torch.manual_seed(seed)
    ys, stats = _solve(api, field, y0, t, gradient, **SETTINGS[setting])
    loss = (ys**2).sum() + ys[-1].sin().sum()
    inputs = [y0, *([t] if time_grad else []), *field.parameters()]
    grads = torch.autograd.grad(loss, inputs)
    return ys.detach(), grads, torch.rand(3, dtype=F64), stats


def assert_equal_to_backprop(result, reference, rtol=1e-12):
    ys, grads, after, _ = result
    ys_ref, grads_ref, after_ref, _ = reference
    assert torch.equal(ys, ys_ref)  # the forward solve drew the same numbers: the same result, bit for bit
    for g, r in zip(grads, grads_ref):
        scale = float(r.abs().max())
        assert scale > 0
        assert float((g - r).abs().max()) <= rtol * scale, (float((g - r).abs().max()), scale)
    assert torch.equal(after, after_ref)  # backward() left the generator where backprop leaves it


# --------------------------------------------------------------------------------------
# random numbers: the exact methods replay them
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("kind", ["dropout", "randn", "late"])
@pytest.mark.parametrize("gradient", REPLAYING)
def test_stochastic_func_equals_backprop_with_the_same_seed(gradient, kind, setting):
    field = Stochastic(kind)
    reference = run("odeint", field, Backprop(), setting)
    assert_equal_to_backprop(run("odeint", field, gradient, setting), reference)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("gradient", REPLAYING)
def test_stochastic_func_with_time_gradient(api, gradient):
    field = Stochastic("dropout")
    reference = run(api, field, Backprop(), "dopri5-adaptive", time_grad=True)
    assert_equal_to_backprop(run(api, field, gradient, "dopri5-adaptive", time_grad=True), reference)


def test_adaptive_settings_reject_steps():
    """The adaptive settings above do exercise rejected trial steps (whose first stage the
    retry reuses) with a stochastic f."""
    for setting in ("dopri5-adaptive", "dopri8-adaptive", "bosh3-adaptive"):
        stats = run("solve", Stochastic("randn"), Backprop(), setting)[3]
        assert stats.num_rejected > 0, setting


@pytest.mark.parametrize("seed", [2, 3])
@pytest.mark.parametrize("gradient", REPLAYING)
def test_other_seeds_give_other_gradients_and_still_match(gradient, seed):
    field = Stochastic("dropout")
    first = run("odeint", field, gradient, "rk4-fixed", seed=1)
    other = run("odeint", field, gradient, "rk4-fixed", seed=seed)
    assert not torch.equal(first[1][0], other[1][0])  # the noise matters
    assert_equal_to_backprop(other, run("odeint", field, Backprop(), "rk4-fixed", seed=seed))


@pytest.mark.parametrize("gradient", REPLAYING)
def test_stochastic_tuple_state(gradient):
    lin = torch.nn.Linear(2, 2, dtype=F64)
    drop = torch.nn.Dropout(0.3)

    def f(t, y):
        a, b = y
        return (-a + drop(torch.tanh(lin(b))).sum(-1), drop(lin(b)) - 0.1 * a[..., None])

    def grads(g):
        y0 = (torch.ones(3, dtype=F64, requires_grad=True), torch.full((3, 2), 0.5, dtype=F64, requires_grad=True))
        torch.manual_seed(5)
        ys = rk4_on_unit_interval(f, y0, gradient=g, step_size=0.2, adjoint_params=tuple(lin.parameters()))
        loss = ys[0][-1].pow(2).sum() + ys[1][-1].pow(2).sum()
        return torch.autograd.grad(loss, [*y0, *lin.parameters()])

    for g, r in zip(grads(gradient), grads(Backprop())):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("gradient", APPROX)
def test_continuous_adjoint_warns_once_per_solve(api, gradient):
    field = Stochastic("dropout")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, grads, _, _ = run(api, field, gradient, "rk4-fixed")
    replay = [w for w in caught if "cannot replay" in str(w.message)]
    assert len(replay) == 1
    assert "gradient='symplectic_adjoint'" in str(replay[0].message)
    assert all(bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize("gradient", APPROX)
def test_continuous_adjoint_warns_of_late_random_numbers(gradient):
    with pytest.warns(UserWarning, match="cannot replay"):
        run("odeint", Stochastic("late"), gradient, "rk4-fixed")


@pytest.mark.parametrize("gradient", REPLAYING)
def test_compiled_steps_refuse_a_stochastic_func(gradient):
    y0 = torch.ones(2, 3, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match=r"compile=True.*compile=False"):
        symode.solve(Stochastic("dropout"), y0, torch.tensor([0.0, 1.0], dtype=F64), gradient=gradient, compile=True)


@pytest.mark.parametrize("gradient", REPLAYING)
def test_deterministic_func_records_no_generator_state(gradient):
    """A func that draws nothing costs nothing: no tape (the memory benchmark's bytes)."""
    field = Stochastic("none")
    reference = run("odeint", field, Backprop(), "dopri5-adaptive")
    assert_equal_to_backprop(run("odeint", field, gradient, "dopri5-adaptive"), reference)
    y0 = torch.ones(2, 3, dtype=F64, requires_grad=True)
    solution = symode.solve(field, y0, torch.tensor([0.0, 1.0], dtype=F64), gradient=gradient)
    assert _recorded_problem(solution.ys).rng_tape is None


def _recorded_problem(ys):
    """The ODEProblem that the recorded solve behind ``ys`` keeps for its backward pass."""
    node = ys.grad_fn
    while not hasattr(node, "problem"):
        node = node.next_functions[0][0]
    return node.problem


@pytest.mark.parametrize("setting", ["rk4-fixed", "dopri5-fixed", "dopri5-adaptive"])
def test_the_tape_keeps_about_one_generator_state_per_step(setting):
    field = Stochastic("randn")
    y0 = torch.ones(2, 3, dtype=F64, requires_grad=True)
    torch.manual_seed(0)
    kw = SETTINGS[setting]
    ys, stats = _solve("solve", field, y0, torch.tensor([0.0, 1.0], dtype=F64), "symplectic_adjoint", **kw)
    tape = _recorded_problem(ys).rng_tape
    kept = sum(len(marks) for marks in tape.marks)
    assert len(tape.marks) == stats.num_accepted
    # one state per step, plus one after the initial step heuristic and after each rejection
    assert kept <= stats.num_accepted + 1 + stats.num_rejected


# --------------------------------------------------------------------------------------
# buffers: BatchNorm in training mode
# --------------------------------------------------------------------------------------
class BatchNormField(torch.nn.Module):
    def __init__(self, counter: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.lin1 = torch.nn.Linear(3, 8, dtype=F64)
        self.bn = torch.nn.BatchNorm1d(8, dtype=F64)
        self.lin2 = torch.nn.Linear(8, 3, dtype=F64)
        self.counter = counter
        self.register_buffer("calls", torch.zeros((), dtype=F64))

    def forward(self, t, y):
        h = self.bn(torch.tanh(self.lin1(y)))
        if self.counter:  # an output that depends on a buffer f changes
            self.calls += 1
            h = h * (1 + 0.01 * self.calls)
        return self.lin2(h) - 0.1 * y


def _bn_run(api, field, gradient, setting="rk4-fixed"):
    y0 = torch.linspace(-1.0, 1.0, 15, dtype=F64).reshape(5, 3).requires_grad_(True)
    ys, _ = _solve(api, field, y0, torch.tensor([0.0, 0.5, 1.0], dtype=F64), gradient, **SETTINGS[setting])
    after_forward = {k: v.clone() for k, v in field.state_dict().items() if "bn." in k}
    grads = torch.autograd.grad((ys**2).sum(), [y0, *field.parameters()])
    return ys.detach(), grads, after_forward, {k: v.clone() for k, v in field.state_dict().items() if "bn." in k}


@pytest.mark.parametrize("setting", ["rk4-fixed", "dopri5-adaptive"])
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("gradient", ALL)
def test_batchnorm_training_buffers_and_gradient_equal_backprop(api, gradient, setting):
    base = BatchNormField().train()
    ref_field, field = copy.deepcopy(base), copy.deepcopy(base)
    ys_ref, grads_ref, forward_ref, backward_ref = _bn_run(api, ref_field, Backprop(), setting)
    context = pytest.warns(UserWarning, match="buffers") if not gradient.exact else warnings.catch_warnings()
    with context:
        if gradient.exact:
            warnings.simplefilter("error")
        ys, grads, after_forward, after_backward = _bn_run(api, field, gradient, setting)
    for name, value in forward_ref.items():
        assert torch.equal(after_forward[name], value), name  # the forward pass updated them as backprop's did
        assert torch.equal(after_backward[name], backward_ref[name]), name  # the backward pass left them so
    torch.testing.assert_close(ys, ys_ref, rtol=0, atol=0)
    if not gradient.exact:  # batch statistics couple the batch: its backward solve is far from exact here
        assert all(bool(torch.isfinite(g).all()) for g in grads)
        return
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12 * float(r.abs().max()))


@pytest.mark.parametrize("gradient", REPLAYING)
def test_buffer_the_output_depends_on_is_refused(gradient):
    field = BatchNormField(counter=True).train()
    y0 = torch.linspace(-1.0, 1.0, 15, dtype=F64).reshape(5, 3).requires_grad_(True)
    with pytest.raises(ValueError, match=r"output depends on them.*eval mode.*gradient='backprop'"):
        rk4_on_unit_interval(field, y0, gradient=gradient)


def test_buffer_the_output_depends_on_is_fine_with_backprop():
    field = BatchNormField(counter=True).train()
    y0 = torch.ones(5, 3, dtype=F64, requires_grad=True)
    ys = rk4_on_unit_interval(field, y0)
    ys.sum().backward()
    assert float(field.calls) == 40  # 10 steps of 4 stages, counted once each


class LateBuffer(torch.nn.Module):
    """Changes a buffer only after t = 0.5 (f(t0, y0) changes nothing)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2, dtype=F64)
        self.register_buffer("count", torch.zeros((), dtype=F64))

    def forward(self, t, y):
        if t > 0.5:
            self.count += 1
        return torch.tanh(self.lin(y)) * (1 + 0.01 * self.count)


@pytest.mark.parametrize("gradient", REPLAYING)
def test_buffer_changed_only_after_t0_is_refused(gradient):
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match=r"buffers during the forward solve but not in f\(t0, y0\)"):
        rk4_on_unit_interval(LateBuffer(), y0, gradient=gradient)


class NoiseBuffer(torch.nn.Module):
    """Hutchinson-style noise held in a buffer: fine, unless changed before backward()."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2, dtype=F64)
        self.register_buffer("noise", torch.tensor([0.3, -0.2], dtype=F64))

    def forward(self, t, y):
        return torch.tanh(self.lin(y)) + self.noise * y


@pytest.mark.parametrize("gradient", [pytest.param(m, id=repr(m)) for m in METHODS if not isinstance(m, Backprop)])
def test_buffer_changed_in_place_before_backward_is_refused(gradient):
    field = NoiseBuffer()
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    ys = rk4_on_unit_interval(field, y0, gradient=gradient)
    field.noise.normal_()
    with pytest.raises(RuntimeError, match=r"buffer of func \(shape \(2,\)\) was modified in place.*backward\(\)"):
        ys.sum().backward()


# --------------------------------------------------------------------------------------
# closures: every differentiated evaluation is checked
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("gradient", [pytest.param(m, id=repr(m)) for m in METHODS if not isinstance(m, Backprop)])
def test_tensor_first_used_after_t0_is_refused(gradient):
    lin = torch.nn.Linear(2, 2, dtype=F64)
    late = torch.tensor(0.5, dtype=F64, requires_grad=True)

    def f(t, y):
        out = torch.tanh(lin(y))
        return out * late if t > 0.5 else out

    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    ys = rk4_on_unit_interval(f, y0, gradient=gradient, adjoint_params=tuple(lin.parameters()))
    with pytest.warns(UserWarning, match=r"not among the parameters.*\(shapes \(\)\) in an evaluation of the backward"):
        ys.sum().backward()


@pytest.mark.parametrize("gradient", [pytest.param(m, id=repr(m)) for m in METHODS if not isinstance(m, Backprop)])
def test_module_tensor_first_used_after_t0_is_refused(gradient):
    """Without adjoint_params, a closure is an error, wherever it is first used."""
    late = torch.tensor(0.5, dtype=F64, requires_grad=True)
    lin = torch.nn.Linear(2, 2, dtype=F64)

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, t, y):
            out = torch.tanh(self.lin(y))
            return out * late if t > 0.5 else out

    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    ys = rk4_on_unit_interval(F(), y0, gradient=gradient)
    with pytest.raises(ValueError, match=r"not among the parameters.*adjoint_params=\(\.\.\.\)"):
        ys.sum().backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("gradient", REPLAYING)
def test_cuda_generator_is_replayed(gradient):
    field = Stochastic("dropout").cuda()

    def go(g):
        y0 = torch.ones(4, 3, dtype=F64, device="cuda", requires_grad=True)
        torch.manual_seed(3)
        ys = rk4_on_unit_interval(field, y0, gradient=g)
        return torch.autograd.grad(ys.pow(2).sum(), [y0, *field.parameters()])

    for g, r in zip(go(gradient), go(Backprop())):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)


class LateNoiseBatchNorm(BatchNormField):
    """BatchNorm in training mode and noise drawn only after t = 0.5: the forward solve is run
    again to record the random numbers, from the buffers as f(t0, y0) left them."""

    def forward(self, t, y):
        out = super().forward(t, y)
        return out + 0.1 * torch.randn_like(out) if t > 0.5 else out


@pytest.mark.parametrize("gradient", REPLAYING)
def test_late_noise_with_batchnorm_buffers_equal_backprop(gradient):
    base = LateNoiseBatchNorm().train()
    ref_field, field = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(4)
    ys_ref, grads_ref, forward_ref, backward_ref = _bn_run("odeint", ref_field, Backprop())
    torch.manual_seed(4)
    ys, grads, after_forward, after_backward = _bn_run("odeint", field, gradient)
    assert torch.equal(ys, ys_ref)
    for name, value in forward_ref.items():
        assert torch.equal(after_forward[name], value), name
        assert torch.equal(after_backward[name], backward_ref[name]), name
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12 * float(r.abs().max()))


def _dropout_grads(gradient, t, y0, dtype=F64, **kw):
    field = Stochastic("dropout").to(dtype)
    y0 = y0.to(dtype).requires_grad_(True)
    torch.manual_seed(1)
    ys = symode.odeint(field, y0, t.to(dtype), gradient=gradient, **kw)
    inputs = [y0, *field.parameters()]
    # one output time: backprop's graph reaches no parameter (None), the others give zeros
    grads = torch.autograd.grad(ys.pow(2).sum() + ys.sum(), inputs, allow_unused=True)
    return ys.detach(), [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


Y0 = torch.linspace(-1.0, 1.0, 12, dtype=F64).reshape(4, 3)
EDGE_CASES = {
    "decreasing-fixed": (torch.tensor([1.0, 0.3, 0.0], dtype=F64), {"method": "rk4", "options": {"step_size": 0.1}}),
    "decreasing-adaptive": (torch.tensor([1.0, 0.0], dtype=F64), {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3}),
    "one-output-time": (torch.tensor([0.0], dtype=F64), {"method": "dopri5"}),
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
@pytest.mark.parametrize("gradient", REPLAYING)
def test_stochastic_func_edge_cases_equal_backprop(gradient, case):
    t, kw = EDGE_CASES[case]
    ys, grads = _dropout_grads(gradient, t, Y0, **kw)
    ys_ref, grads_ref = _dropout_grads(Backprop(), t, Y0, **kw)
    assert torch.equal(ys, ys_ref)
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12 * max(float(r.abs().max()), 1.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gradient", REPLAYING)
def test_stochastic_func_in_low_precision_matches_backprop_to_its_rounding(gradient, dtype):
    """The same forward solve bit for bit; the gradient within a few units of the dtype's
    rounding of backprop's (without the replay it is off by tens of percent)."""
    kw = {"method": "rk4", "options": {"step_size": 0.25}}
    t = torch.tensor([0.0, 1.0], dtype=F64)
    ys, grads = _dropout_grads(gradient, t, Y0, dtype, **kw)
    ys_ref, grads_ref = _dropout_grads(Backprop(), t, Y0, dtype, **kw)
    assert torch.equal(ys, ys_ref)
    eps = torch.finfo(dtype).eps
    for g, r in zip(grads, grads_ref):
        assert float((g - r).abs().max()) <= 4 * eps * float(r.abs().max())


@pytest.mark.parametrize("gradient", REPLAYING)
def test_stochastic_func_with_0dim_state(gradient):
    def grads(g):
        torch.manual_seed(7)
        lin = torch.nn.Linear(1, 1, dtype=F64)
        drop = torch.nn.Dropout(0.3)

        def f(t, y):
            return drop(torch.tanh(lin(y.reshape(1, 1)))).reshape(())

        y0 = torch.tensor(0.5, dtype=F64, requires_grad=True)
        torch.manual_seed(1)
        ys = rk4_on_unit_interval(f, y0, gradient=g, adjoint_params=tuple(lin.parameters()))
        return torch.autograd.grad(ys.pow(2).sum(), [y0, *lin.parameters()])

    for g, r in zip(grads(gradient), grads(Backprop())):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)

"""The peer adapters (``symode.bench.peers``): the registry, missing peers, and — where a peer is
installed — its solution and gradient against symode's on the same small neural ODE.

In the repo's test environment the peers are not installed: the tests that run them skip.
Install them side by side (see ``shared/design/measuring.md``) to run those tests.
"""

import importlib.util
import subprocess
import sys

import pytest
import torch

import symode
from fields import CNF, Field
from symode.bench import PROBLEMS, PeerGradient, get_problem, iteration, peers, rel_diffs
from symode.bench.peers import PEERS, PeerUnsupported
from symode.gradients import GRADIENT_METHODS

DTYPE = torch.float64
PEER_MODULES = ("torchdiffeq", "TorchDiffEqPack", "torchode", "torch_symplectic_adjoint")
# fixed steps: dyadic times and step size are exact in float32 too (TorchDiffEqPack's times)
T_FIXED = torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)
H = 1 / 16


# --------------------------------------------------------------------------------------
# the registry, without any peer installed


def test_registry_is_well_formed():
    assert {
        "torchdiffeq:odeint",
        "torchdiffeq:odeint_adjoint",
        "torchdiffeqpack:odesolve",
        "torchdiffeqpack:aca",
        "torchode:backprop",
        "torchode:backsolve",
        "authors:odeint",
        "authors:odeint_adjoint",
        "authors:checkpoint",
        "authors:onecheckpoint",
        "authors:symplectic_adjoint",
    } <= set(PEERS)
    for name, peer in PEERS.items():
        assert peer.name == name and name.count(":") == 1
        assert peer.gradient in GRADIENT_METHODS, (name, peer.gradient)
        assert peer.exact == GRADIENT_METHODS[peer.gradient].exact, name
        assert "pip install" in peer.install
        assert peer.methods, name
        for ours, theirs in peer.methods.items():
            assert symode.get_tableau(ours).name == ours and isinstance(theirs, str)
        for ours, why in peer.unsupported.items():
            assert symode.get_tableau(ours).name == ours and ours not in peer.methods and why
        assert set(peer.adaptive) <= set(peer.methods.values()), name


def test_importing_peers_imports_no_peer():
    code = f"import sys, symode.bench.peers, symode; print([m for m in {PEER_MODULES!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_available_reports_missing_peers_with_an_install_hint(monkeypatch):
    report = peers.available()
    assert set(report) == set(PEERS)
    for name, reason in report.items():
        if importlib.util.find_spec(PEERS[name].module) is None:
            assert reason.startswith("not installed") and "pip install" in reason, (name, reason)
    # as in the repo's environment, whatever is installed here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda mod, *a: None if mod in PEER_MODULES else real(mod, *a))
    for name, reason in peers.available().items():
        assert reason.startswith("not installed") and "pip install" in reason, (name, reason)
    assert (
        "git+https://github.com/tksmatsubara/symplectic-adjoint-method@beta"
        in peers.available()["authors:symplectic_adjoint"]
    )
    with pytest.raises(RuntimeError, match="not installed"):
        peers.solve("torchdiffeq:odeint", Field(), torch.zeros(3, dtype=DTYPE), T_FIXED, method="dopri5")


def test_unsupported_configurations_say_why():
    y0, f = torch.zeros(3, dtype=DTYPE), Field()
    with pytest.raises(PeerUnsupported, match="3/8 rule"):
        peers.solve("torchdiffeq:odeint", f, y0, T_FIXED, method="rk4", step_size=H)
    with pytest.raises(PeerUnsupported, match="chooses its own steps"):
        peers.solve("torchdiffeq:odeint", f, y0, T_FIXED, method="dopri5", step_size=H)
    with pytest.raises(PeerUnsupported, match="must divide"):
        peers.solve("torchode:backprop", f, y0, T_FIXED, method="euler", step_size=0.3)
    with pytest.raises(PeerUnsupported, match="crashes"):
        peers.solve("authors:symplectic_adjoint", f, y0, T_FIXED, method="euler", step_size=H)
    with pytest.raises(PeerUnsupported, match="fails in its backward"):
        peers.solve("torchdiffeqpack:aca", f, y0, T_FIXED, method="rk4", step_size=H)
    with pytest.raises(PeerUnsupported, match="no 'dopri8'"):
        peers.solve("torchode:backprop", f, y0, T_FIXED, method="dopri8")
    with pytest.raises(ValueError, match="step_size"):
        peers.solve("authors:odeint", f, y0, T_FIXED, method="rk4")
    with pytest.raises(ValueError, match="unknown peer"):
        peers.solve("nope:odeint", f, y0, T_FIXED, method="rk4")
    assert peers.stats("torchode:backsolve") is None  # never solved


# --------------------------------------------------------------------------------------
# each installed peer against symode


def _needs(peer_name):
    peer = PEERS[peer_name]
    for mod in (peer.module, *peer.needs):
        pytest.importorskip(mod)


def _loss(ys):
    if isinstance(ys, tuple):
        return sum(_loss(y) for y in ys)
    weights = torch.linspace(0.5, 1.5, ys[1:].numel(), dtype=ys.dtype).reshape(ys[1:].shape)
    return (weights * ys[1:]).sum() + ys[-1].pow(2).sum()


def _grads(solver, make_field=Field, y0=None):
    """``(ys, [dL/dy0, dL/dθ...])`` of ``solver(func, y0)`` for a fresh field."""
    func = make_field()
    if y0 is None:
        y0 = torch.linspace(-1.0, 1.0, 6, dtype=DTYPE).reshape(2, 3).requires_grad_(True)
    ys = solver(func, y0)
    inputs = (list(y0) if isinstance(y0, tuple) else [y0]) + list(func.parameters())
    grads = torch.autograd.grad(_loss(ys), inputs, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
    ys = tuple(y.detach() for y in ys) if isinstance(ys, tuple) else ys.detach()
    return ys, grads


def _symode(method, *, step_size=None, rtol=1e-10, atol=1e-12, t=T_FIXED, gradient="backprop"):
    steps = symode.FixedSteps(step_size=step_size) if step_size else symode.AdaptiveSteps(rtol=rtol, atol=atol)
    return lambda f, y0: symode.solve(f, y0, t, method=method, steps=steps, gradient=gradient).ys


def _peer(name, method, *, step_size=None, rtol=1e-10, atol=1e-12, t=T_FIXED, **kw):
    return lambda f, y0: peers.solve(name, f, y0, t, method=method, rtol=rtol, atol=atol, step_size=step_size, **kw)


def _assert_close(a, b, rtol):
    (ya, ga), (yb, gb) = a, b
    ya = ya if isinstance(ya, tuple) else (ya,)
    yb = yb if isinstance(yb, tuple) else (yb,)
    for x, y in zip(ya, yb):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol)
    assert len(ga) == len(gb)
    for i, (x, y) in enumerate(zip(ga, gb)):
        scale = max(float(y.abs().max()), 1.0)
        assert float((x - y).abs().max()) <= rtol * scale, (i, float((x - y).abs().max()))


# (peer, symode method, peer step size or None, agreement expected)
# fixed steps on the same grid: round-off; adaptive: tight tolerances, different step sequences
CASES = [
    ("torchdiffeq:odeint", "rk38", H, 1e-12),
    ("torchdiffeq:odeint", "midpoint", 0.3, 1e-12),  # 0.3 does not divide 0.5: symode's grid via grid_constructor
    ("torchdiffeq:odeint", "dopri5", None, 1e-7),
    ("torchdiffeq:odeint", "dopri8", None, 1e-6),  # interpolated outputs: ~1e-7 here
    ("torchdiffeq:odeint_adjoint", "rk38", H, 1e-4),  # continuous adjoint: gradient error of the backward solve
    ("torchdiffeq:odeint_adjoint", "dopri5", None, 1e-7),
    # TorchDiffEqPack forms its weights times dt in float32 (dt is a float32 tensor)
    ("torchdiffeqpack:odesolve", "rk4", H, 1e-7),
    ("torchdiffeqpack:odesolve", "dopri5", None, 1e-6),
    ("torchdiffeqpack:odesolve", "bosh3", None, 1e-5),
    ("torchdiffeqpack:aca", "dopri5", None, 1e-6),
    ("torchdiffeqpack:aca", "bosh3", None, 1e-5),
    ("torchode:backprop", "heun", H, 1e-12),
    ("torchode:backprop", "dopri5", None, 1e-7),
    ("torchode:backsolve", "dopri5", None, 1e-7),
    ("authors:odeint", "rk4", 0.3, 1e-12),
    ("authors:odeint", "dopri5", None, 1e-7),
    ("authors:odeint_adjoint", "dopri5", None, 1e-7),
    ("authors:checkpoint", "rk4", H, 1e-12),
    ("authors:onecheckpoint", "rk4", H, 1e-12),
    ("authors:symplectic_adjoint", "rk4", 0.3, 1e-12),
    ("authors:symplectic_adjoint", "dopri5", None, 1e-7),
    ("authors:symplectic_adjoint", "dopri8", None, 1e-7),
]


@pytest.mark.parametrize("name, method, step_size, tol", CASES, ids=lambda v: str(v))
def test_peer_agrees_with_symode(name, method, step_size, tol):
    _needs(name)
    ours = _grads(_symode(method, step_size=step_size))
    theirs = _grads(_peer(name, method, step_size=step_size))
    _assert_close(theirs, ours, tol)
    counts = peers.stats(name)
    assert counts["nfe_forward"] > 0
    if PEERS[name].gradient == "backprop":
        assert counts["nfe_backward"] == 0
    else:
        assert counts["nfe_backward"] > 0


def test_torchdiffeq_rk4_is_the_three_eighths_rule():
    _needs("torchdiffeq:odeint")
    ys = _grads(_peer("torchdiffeq:odeint", "rk38", step_size=H))[0]
    classical = _grads(_symode("rk4", step_size=H))[0]
    three_eighths = _grads(_symode("rk38", step_size=H))[0]
    assert float((ys - three_eighths).abs().max()) < 1e-14 < float((ys - classical).abs().max())


def test_evaluation_counts():
    _needs("torchdiffeq:odeint")
    _grads(_peer("torchdiffeq:odeint", "rk38", step_size=H))
    assert peers.stats("torchdiffeq:odeint") == {"nfe_forward": 4 * 16, "nfe_backward": 0}
    _grads(_peer("torchdiffeq:odeint", "rk38", step_size=H, count=False))
    assert peers.stats("torchdiffeq:odeint") is None


def test_plain_function_with_adjoint_params():
    _needs("torchdiffeq:odeint_adjoint")
    module = Field()

    def plain(t, y):
        return module(t, y)

    y0 = torch.linspace(-1.0, 1.0, 3, dtype=DTYPE)
    params = list(module.parameters())
    ours = torch.autograd.grad(
        _loss(
            symode.solve(
                plain, y0, T_FIXED, method="rk38", steps=symode.FixedSteps(step_size=H), adjoint_params=params
            ).ys
        ),
        params,
    )
    theirs = torch.autograd.grad(
        _loss(
            peers.solve(
                "torchdiffeq:odeint_adjoint", plain, y0, T_FIXED, method="rk38", step_size=H, adjoint_params=params
            )
        ),
        params,
    )
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(PeerUnsupported, match="adjoint_params"):
        peers.solve("torchode:backsolve", plain, y0, T_FIXED, method="dopri5", adjoint_params=params)


# a continuous normalizing flow: a tuple state (z, log p) whose f calls autograd itself
CNF_CASES = [
    ("torchdiffeq:odeint", "dopri5", None),
    ("torchdiffeq:odeint_adjoint", "dopri5", None),
    ("torchdiffeqpack:odesolve", "rk4", H),
    ("torchdiffeqpack:aca", "dopri5", None),
    ("torchode:backprop", "dopri5", None),
    ("torchode:backsolve", "dopri5", None),
    ("authors:symplectic_adjoint", "dopri5", None),
    ("authors:checkpoint", "rk4", H),
]


@pytest.mark.parametrize("name, method, step_size", CNF_CASES, ids=lambda v: str(v))
def test_tuple_state(name, method, step_size):
    _needs(name)
    torch.manual_seed(0)
    z = torch.randn(5, 3, dtype=DTYPE)

    def y0():
        return (z.clone().requires_grad_(True), torch.zeros(5, dtype=DTYPE, requires_grad=True))

    ours = _grads(_symode(method, step_size=step_size, rtol=1e-9, atol=1e-10), CNF, y0())
    theirs = _grads(_peer(name, method, step_size=step_size, rtol=1e-9, atol=1e-10), CNF, y0())
    assert isinstance(theirs[0], tuple) and theirs[0][0].shape == (3, 5, 3) and theirs[0][1].shape == (3, 5)
    _assert_close(theirs, ours, 1e-5)


@pytest.mark.parametrize("name", sorted(PEERS))
def test_float32_state(name):
    """A float32 state with float32 times (the peers' usual setting) runs and agrees with symode."""
    _needs(name)
    t = T_FIXED.float()

    def make_field():
        return Field(dtype=torch.float32)

    y0 = torch.linspace(-1.0, 1.0, 6).reshape(2, 3).requires_grad_(True)
    ours = _grads(_symode("dopri5", rtol=1e-6, atol=1e-8, t=t), make_field, y0)
    theirs = _grads(_peer(name, "dopri5", rtol=1e-6, atol=1e-8, t=t), make_field, y0)
    assert theirs[0].dtype == torch.float32
    _assert_close(theirs, ours, 1e-4)


# --------------------------------------------------------------------------------------
# every installed peer on every bench problem, through the bench's own path


@pytest.mark.slow
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("name", sorted(PEERS))
def test_every_peer_runs_on_every_bench_problem(name, problem):
    """Each peer differentiates each bench problem (the CNFs stacked in blocks too), as
    ``symode bench --peers`` runs it: through a ``PeerGradient`` and the bench's counting
    field. Its gradient agrees with symode's backprop to about the tolerance (its steps are
    its own), and the bench counts its forward evaluations."""
    _needs(name)
    overrides = {"batch": 4, "width": 8, "dtype": DTYPE}
    if problem != "mlp":
        overrides["blocks"] = 2  # several blocks: the second starts from the first's output
    p = get_problem(problem, **overrides)
    steps = symode.AdaptiveSteps(rtol=1e-8, atol=1e-8)
    _, ref, _ = iteration(p, "backprop", "dopri5", steps)
    _, grads, stats = iteration(p, PeerGradient(name, peers), "dopri5", steps)
    assert rel_diffs(grads, ref)[0] < 1e-4, name
    assert stats.nfe_forward > 0

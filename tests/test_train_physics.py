"""``symode.train``'s physical systems: the KdV simulator and the energy-conserving model.

Truths: the discrete energy and mass, which the semi-discrete KdV equation conserves exactly
(so the simulator's drift is its solver error); the skew-symmetric operator, which makes any
learned energy a conserved quantity of the model's own dynamics; backprop for the symplectic
adjoint's gradient (float64, round-off).
"""

import json

import torch

import symode
from symode.bench.cli import main
from symode.train import CahnHilliard, EnergyModel, EnergyNet, KdV, PhysicsConfig, simulate, train_physics
from symode.train.physics import relative_drift


def test_the_simulator_conserves_energy_and_mass_and_is_seeded():
    pde = KdV()
    times, u = simulate(pde, 3, seed=5)
    assert u.shape == (3, 21, pde.n) and times[-1] == 2.0
    for trajectory in u:
        assert relative_drift(pde.energy(trajectory)) < 1e-9
        assert relative_drift(trajectory.sum(-1)) < 1e-11
    assert float((u[:, -1] - u[:, 0]).abs().max()) > 0.5  # the solitons move
    assert torch.equal(simulate(pde, 3, seed=5)[1], u) and not torch.equal(simulate(pde, 3, seed=6)[1], u)
    assert torch.allclose(pde.operator(), -pde.operator().T)  # skew-symmetric: energy conserving


def test_the_true_field_is_the_operator_times_the_energy_gradient():
    pde = KdV()
    u = pde.initial(torch.Generator().manual_seed(0)).requires_grad_()
    (grad,) = torch.autograd.grad(pde.energy(u), u)
    assert torch.allclose(pde.operator() @ grad, pde.field(None, u.detach()), atol=1e-10)


def test_any_learned_energy_is_conserved_by_the_model():
    """Untrained weights: the model's own rollout keeps its energy to the solver's tolerance."""
    pde = KdV()
    torch.manual_seed(3)
    model = EnergyModel(EnergyNet(pde.dx, 16), pde.operator()).double()
    _, u = simulate(pde, 2, seed=1)
    with torch.no_grad():
        ys = symode.solve(
            model,
            u[:, 0],
            torch.linspace(0, 1, 11, dtype=torch.float64),
            method="dopri8",
            steps=symode.AdaptiveSteps(rtol=1e-11, atol=1e-11),
        ).ys
        energies = torch.stack([model.energy(y) for y in ys])
    assert float((ys[-1] - ys[0]).abs().max()) > 1e-3  # it moves
    for j in range(2):
        assert relative_drift(energies[:, j]) < 1e-9


def test_the_symplectic_adjoint_gradient_equals_backprop():
    pde = KdV()
    _, u = simulate(pde, 2, seed=2)
    grads = []
    for gradient in ("backprop", "symplectic_adjoint"):
        torch.manual_seed(0)
        model = EnergyModel(EnergyNet(pde.dx, 16), pde.operator()).double()
        sol = symode.solve(
            model,
            u[:, 0],
            torch.tensor([0.0, 0.1], dtype=torch.float64),
            method="dopri8",
            gradient=gradient,
            steps=symode.AdaptiveSteps(rtol=1e-6, atol=1e-8),
        )
        (sol.ys[-1] - u[:, 1]).pow(2).mean().backward()
        # the energy's output bias does not enter the dynamics: no gradient (None) or a zero one
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    assert sum(float(g.abs().sum()) for g in grads[0]) > 0


def test_training_lowers_the_loss_and_the_command_writes_its_outputs(tmp_path):
    config = PhysicsConfig(iterations=12, trajectories=3, test_trajectories=1, hidden=16, eval_every=6, plots=False)
    _, metrics = train_physics(config, quiet=True)
    losses = metrics["train_loss"]
    assert sum(losses[-3:]) < sum(losses[:3])
    assert metrics["learned_energy_relative_drift"] < 1e-4
    assert [i for i, _ in metrics["rollout_history"]] == [6, 12]
    out = tmp_path / "kdv"
    argv = ["train", "kdv", "--iterations", "2", "--trajectories", "2", "--hidden", "8", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    written = json.loads((out / "metrics.json").read_text())
    assert written["untrained_rollout_mse"] > 0 and written["peak_memory_bytes"] > 0
    assert (out / "model.pt").exists()


def test_cahn_hilliard_dissipates_energy_and_keeps_mass():
    """The simulator's energy decreases at every snapshot and its mass is kept; any learned
    energy decreases along the model's own rollout (the Laplacian is negative semidefinite)."""
    pde = CahnHilliard()
    _, u = simulate(pde, 2, seed=4)
    for trajectory in u:
        energy = pde.energy(trajectory)
        assert bool((torch.diff(energy) < 0).all()) and float(energy[0] - energy[-1]) > 0.1
        assert relative_drift(trajectory.sum(-1) + 100.0) < 1e-13  # mass (offset: the mean is 0)
    eigenvalues = torch.linalg.eigvalsh(pde.operator())
    assert float(eigenvalues.max()) < 1e-9  # negative semidefinite
    torch.manual_seed(0)
    model = EnergyModel(EnergyNet(pde.dx, 16), pde.operator()).double()
    with torch.no_grad():
        ys = symode.solve(
            model,
            u[:, 0],
            torch.linspace(0, 2, 11, dtype=torch.float64),
            method="dopri8",
            steps=symode.AdaptiveSteps(rtol=1e-10, atol=1e-10),
        ).ys
        energies = torch.stack([model.energy(y) for y in ys])
    assert bool((torch.diff(energies, dim=0) <= 1e-9 * energies.abs().max()).all())


def test_cahn_hilliard_command(tmp_path):
    out = tmp_path / "ch"
    argv = ["train", "cahn-hilliard", "--iterations", "2", "--trajectories", "2", "--hidden", "8", "--out", str(out)]
    assert main([*argv, "--quiet", "--no-plots"]) == 0
    written = json.loads((out / "metrics.json").read_text())
    assert written["config"]["system"] == "cahn-hilliard"
    assert written["learned_energy_largest_relative_rise"] <= 1e-6

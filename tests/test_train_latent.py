"""``symode train latent-ode``: a latent ODE on irregularly sampled spirals.

Truths: backprop (the symplectic adjoint's gradient of the ELBO, float64, round-off); the
untrained model (training lowers the held-out interpolation error).
"""

import json

import torch

from symode.bench.cli import main
from symode.train import LatentConfig, LatentODE, spirals, train_latent_ode
from symode.train.latent import _elbo_loss


def test_spirals_are_irregular_and_partially_observed():
    t, x, mask = spirals(8, times=50, seed=1)
    assert t.shape == (50,) and x.shape == (8, 50, 2) and mask.shape == (8, 50)
    gaps = torch.diff(t)
    assert bool((gaps > 0).all()) and float(gaps.max() / gaps.min()) > 5  # irregular
    assert bool(mask[:, :3].all()) and 0.2 < float(mask.float().mean()) < 0.5
    assert not torch.equal(mask[0], mask[1])  # each sample its own times


def test_symplectic_adjoint_gradient_equals_backprop():
    t, x, mask = spirals(6, times=40, seed=2)
    grads = []
    for gradient in ("backprop", "symplectic_adjoint"):
        torch.manual_seed(0)
        model = LatentODE().double()
        config = LatentConfig(gradient=gradient, rtol=1e-7, atol=1e-8)
        loss, _ = _elbo_loss(model, t, x.double(), mask, config, torch.Generator().manual_seed(3))
        loss.backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_training_lowers_the_held_out_error_and_the_command_writes_metrics(tmp_path):
    config = LatentConfig(iterations=30, samples=64, batch_size=32, times=40, eval_every=15)
    _, metrics = train_latent_ode(config, quiet=True)
    assert metrics["test_interpolation_mse"] < metrics["untrained_interpolation_mse"]
    assert sum(metrics["train_loss"][-5:]) < sum(metrics["train_loss"][:5])
    out = tmp_path / "latent"
    argv = ["train", "latent-ode", "--iterations", "2", "--samples", "16", "--batch-size", "8", "--times", "20"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["output_times_per_solve"] == 20


def test_bad_configuration():
    import pytest

    with pytest.raises(ValueError, match="iterations must be a positive int"):
        LatentConfig(iterations=0)
    with pytest.raises(ValueError, match="must not exceed samples"):
        LatentConfig(samples=8, batch_size=16)

"""``symode.train``: continuous normalizing flows trained by any gradient method.

Truths: a density integrates to 1; Hutchinson's estimate averages to the exact trace; backprop
(the symplectic adjoint computes the same gradients, so the same training); an uninterrupted
run (a resumed one ends with its parameters exactly).
"""

import io
import json

import pytest
import torch

from symode.bench.cli import main
from symode.train import CNF, DATASETS, CNFConfig, load, load_checkpoint, train_cnf
from symode.train.progress import Progress

SMALL = {"hidden": (16, 16), "batch_size": 64, "eval_every": 0, "eval_size": 200, "n_train": 2000, "plots": False}


def test_the_density_integrates_to_one():
    """An untrained 2-D flow with two blocks and a learnable time: exp(log p) summed over a grid
    that holds its mass is 1 (the change of variables is right, the trace exact)."""
    torch.manual_seed(0)
    model = CNF(2, (16, 16), blocks=2, trace="exact", time=0.7).double()
    axis = torch.linspace(-7, 7, 141, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        log_p, _, _ = model.log_prob(points, steps=None)
    mass = log_p.exp().sum() * (axis[1] - axis[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=2e-3)


def test_hutchinson_averages_to_the_exact_trace():
    torch.manual_seed(0)
    model = CNF(3, (16,)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        exact, _, _ = model.log_prob(x, trace="exact")
        generator = torch.Generator().manual_seed(0)
        estimates = torch.stack([model.log_prob(x.repeat(500, 1), generator=generator)[0] for _ in range(4)])
    mean = estimates.reshape(4, 500, 4).mean((0, 1))
    assert torch.allclose(mean, exact, atol=0.03)


def test_training_lowers_the_loss():
    _, metrics = train_cnf(CNFConfig(data="8gaussians", iterations=40, lr=1e-2, **SMALL), quiet=True)
    losses = metrics["train_loss"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    assert metrics["test_nll"] < losses[0]


@pytest.mark.parametrize("regularise", [False, True])
def test_symplectic_adjoint_trains_as_backprop(regularise):
    """The same seed and iterations in float64: the parameters after 20 iterations agree to 1e-8
    (the two compute the same gradients), and so do the held-out likelihoods. With the kinetic
    and Jacobian regularisers too, and the learnable end time."""
    extra = {"kinetic": 0.1, "jacobian": 0.1} if regularise else {}
    runs = []
    for gradient in ("backprop", "symplectic_adjoint"):
        config = CNFConfig(data="moons", gradient=gradient, iterations=20, dtype="float64", lr=1e-2, **SMALL, **extra)
        runs.append(train_cnf(config, quiet=True))
    (ref, ref_metrics), (ours, our_metrics) = runs
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-8), name
    assert our_metrics["test_nll"] == pytest.approx(ref_metrics["test_nll"], abs=1e-8)
    assert ours.log_time.item() != pytest.approx(0.5)  # the end time was learned


def test_a_resumed_run_ends_with_the_uninterrupted_parameters(tmp_path):
    config = CNFConfig(
        data="circles", iterations=10, eval_every=5, **{k: v for k, v in SMALL.items() if k != "eval_every"}
    )
    whole, _ = train_cnf(config, tmp_path / "whole", quiet=True)
    train_cnf(config, tmp_path / "part", quiet=True, stop_after=6)
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["iteration"] == 6
    resumed, metrics = train_cnf(config, tmp_path / "part", resume=tmp_path / "part" / "checkpoint.pt", quiet=True)
    for a, b in zip(resumed.parameters(), whole.parameters()):
        assert torch.equal(a, b)
    assert [i for i, _ in metrics["val_nll"]] == [5, 10]
    with pytest.raises(ValueError, match="another configuration"):
        other = CNFConfig(data="circles", iterations=11, **SMALL)
        train_cnf(other, tmp_path / "x", resume=tmp_path / "part" / "checkpoint.pt", quiet=True)


def test_command_writes_metrics_checkpoint_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "cnf", "--data", "moons", "--iterations", "3", "--batch-size", "32", "--hidden", "8,8"]
    argv += ["--eval-every", "2", "--eval-size", "100", "--gradient", "checkpoint", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed["test_nll"] == metrics["test_nll"] and metrics["test_nll"] > 0
    assert metrics["peak_memory_bytes"] > 0 and metrics["time_per_iteration_s"] > 0
    assert metrics["config"]["gradient"] == "checkpoint" and metrics["iterations"] == 3
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3
    pytest.importorskip("matplotlib")
    assert (out / "density.png").stat().st_size > 1000 and (out / "samples.png").stat().st_size > 1000


@pytest.mark.parametrize("name", DATASETS)
def test_data_sets_load_offline_and_reproducibly(name):
    if name == "digits":
        pytest.importorskip("sklearn")
    a, b = load(name, n_train=500, n_test=100, seed=3), load(name, n_train=500, n_test=100, seed=3)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert a.train.ndim == 2 and a.val.shape[1] == a.test.shape[1] == a.dim
    assert bool(torch.isfinite(a.train).all())
    expected = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63, "digits": 64}.get(name, 2)
    assert a.dim == expected
    if name in ("power", "gas", "hepmass", "miniboone", "bsds300"):
        assert "cannot be downloaded" in a.note
    assert not torch.equal(a.train, load(name, n_train=500, n_test=100, seed=4).train)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        CNFConfig(dtype="float16")
    with pytest.raises(ValueError, match="iterations"):
        CNFConfig(iterations=0)
    with pytest.raises(ValueError, match="unknown data set"):
        load("mnist")
    with pytest.raises(ValueError, match="trace"):
        CNF(2, (8,), trace="skilling")
    with pytest.raises(SystemExit):
        main(["train", "cnf", "--hidden", "8,-1"])


def test_progress_reports_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(100, stream=stream)
    for i in range(1, 101):
        progress.update(i, loss=1.0 / i)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20 and lines[-1].startswith("train [" + "#" * 24 + "] 100/100")

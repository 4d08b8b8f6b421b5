"""``symode.train.choose_gradient``: the fastest exact method that fits a memory budget.

Truth: the measured peak memory of an iteration with the method chosen (the profiler's
exact bytes) is within the budget, and the choice moves down the list as the budget shrinks.
"""

import pytest
import torch

import symode
from symode.bench import peak_memory
from symode.train import choose_gradient, parse_bytes


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(16, 128),
            torch.nn.Tanh(),
            torch.nn.Linear(128, 128),
            torch.nn.Tanh(),
            torch.nn.Linear(128, 16),
        )

    def forward(self, t, y):
        return self.net(y)


STEPS = symode.AdaptiveSteps(rtol=1e-6, atol=1e-8)
T = torch.tensor([0.0, 3.0])


def _peak(func, y0, gradient):
    def iteration():
        sol = symode.solve(func, y0, T, steps=STEPS, gradient=gradient)
        sol.ys[-1].pow(2).mean().backward()
        func.zero_grad()

    return peak_memory(iteration).peak_bytes


def test_the_choice_fits_the_budget_and_follows_it_down():
    func, y0 = Field(), torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    estimates = choose_gradient(func, y0, T, memory_budget=10**12, steps=STEPS).estimates
    budgets = [
        ("Backprop()", int(estimates["backprop"] * 1.3)),
        ("SymplecticAdjoint(store_stages=True)", int(estimates["symplectic_adjoint(store_stages)"] * 1.3)),
        ("SymplecticAdjoint()", int(estimates["symplectic_adjoint"] * 1.3)),
    ]
    for expected, budget in budgets:
        choice = choose_gradient(func, y0, T, memory_budget=budget, steps=STEPS)
        assert repr(choice.gradient) == expected
        assert _peak(func, y0, choice.gradient) <= budget
    # below the plain symplectic adjoint's estimate: a cap on the checkpoints, the largest that fits
    budget = int(estimates["symplectic_adjoint"] * 1.25) - 3 * 16384 * 1.25
    choice = choose_gradient(func, y0, T, memory_budget=int(budget), steps=STEPS)
    assert isinstance(choice.gradient, symode.SymplecticAdjoint) and choice.gradient.max_checkpoints is not None
    assert 1 <= choice.gradient.max_checkpoints < choice.steps
    assert _peak(func, y0, choice.gradient) <= budget
    with pytest.raises(ValueError, match="below what any exact method needs"):
        choose_gradient(func, y0, T, memory_budget="10KB", steps=STEPS)


def test_expected_steps_override_the_probe():
    func, y0 = Field(), torch.randn(64, 16)
    few = choose_gradient(func, y0, T, memory_budget="1GiB", steps=STEPS)
    many = choose_gradient(func, y0, T, memory_budget="1GiB", steps=STEPS, expected_steps=100 * few.steps)
    assert many.steps == 100 * few.steps and many.estimates["backprop"] > 50 * few.estimates["backprop"]


def test_the_probe_leaves_no_gradient_behind():
    func, y0 = Field(), torch.randn(8, 16)
    choose_gradient(func, y0, T, memory_budget="1GiB", steps=STEPS)
    assert all(p.grad is None for p in func.parameters())


@pytest.mark.parametrize(
    ("text", "expected"), [("2GiB", 2 * 2**30), ("500MB", 500 * 10**6), ("1e9", 10**9), (4096, 4096), ("3 kib", 3072)]
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "2 GiBs", "-1MB", 0, "0"])
def test_parse_bytes_refuses(text):
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes(text)


def test_auto_in_the_training_command(tmp_path):
    from symode.train import CNFConfig, train_cnf

    with pytest.raises(ValueError, match="go together"):
        CNFConfig(gradient="auto")
    config = CNFConfig(
        data="moons",
        gradient="auto",
        memory_budget="50MB",
        iterations=2,
        batch_size=32,
        hidden=(8, 8),
        eval_every=0,
        eval_size=100,
        n_train=500,
        plots=False,
    )
    _, metrics = train_cnf(config, quiet=True)
    assert metrics["gradient"] == "Backprop()"  # a small model: backprop fits and is the fastest
    assert metrics["peak_memory_bytes"] <= 50 * 10**6

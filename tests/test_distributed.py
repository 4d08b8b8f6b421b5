"""Training on several processes: DistributedDataParallel with gloo, two CPU processes.

Truth: the one-process gradient on the combined batch. With fixed steps the ranks' averaged
gradient equals it to round-off, for backprop and the symplectic adjoint.
"""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import symode
from symode.train import CNF, CNFConfig, train_cnf
from symode.train.distributed import join, shard

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, *args) -> None:
    """Two processes of ``worker(rank, 2, port, *args)`` on a free port; tried again on another
    port if that one was taken between choosing it and binding it (another test's processes)."""
    for attempt in range(3):
        try:
            mp.spawn(worker, args=(2, _free_port(), *args), nprocs=2, join=True)
            return
        except mp.ProcessRaisedException as error:
            if attempt == 2 or "address already in use" not in str(error).lower():
                raise


def _environment(rank: int, size: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)


def _model() -> CNF:
    torch.manual_seed(0)
    return CNF(2, (8, 8), trace="exact", time=0.7).double()


def _batch() -> torch.Tensor:
    return torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _loss(model, x, gradient):
    log_p, _, _ = model(x, gradient=gradient, method="rk4", steps=symode.FixedSteps(step_size=0.25))
    return -log_p.mean()


def _gradient_worker(rank, size, port, gradient, directory):
    _environment(rank, size, port)
    world = join("cpu")
    model = _model()
    ddp = world.wrap(model)  # kept: its reducer averages the gradients during backward
    _loss(ddp, shard(_batch(), world), gradient).backward()
    torch.save([p.grad for p in model.parameters()], os.path.join(directory, f"{rank}.pt"))
    world.leave()


@pytest.mark.parametrize("gradient", ["backprop", "symplectic_adjoint"])
def test_averaged_gradients_equal_the_one_process_gradient(gradient, tmp_path):
    _spawn(_gradient_worker, gradient, str(tmp_path))
    model = _model()
    _loss(model, _batch(), gradient).backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        for g, p in zip(grads, model.parameters()):
            assert torch.allclose(g, p.grad, rtol=1e-12, atol=1e-14)


def _training_worker(rank, size, port, directory):
    _environment(rank, size, port)
    config = CNFConfig(
        data="moons", iterations=4, batch_size=16, hidden=(8, 8), eval_every=2, eval_size=100, n_train=500, plots=False
    )
    model, metrics = train_cnf(config, os.path.join(directory, "run"), quiet=True)
    params = [p.detach().clone() for p in model.parameters()]
    torch.save({"params": params, "metrics": metrics}, os.path.join(directory, f"{rank}.pt"))


def test_training_on_two_processes(tmp_path):
    """symode train's loop under two processes: the replicas stay equal through rank 0's
    evaluations (whose noise buffers have another shape: no buffer is broadcast), rank 0 writes
    the metrics (and says there were two processes)."""
    _spawn(_training_worker, str(tmp_path))
    first, second = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2))
    for a, b in zip(first["params"], second["params"]):
        assert torch.equal(a, b)
    assert first["metrics"]["processes"] == 2 and second["metrics"] == {}
    assert (tmp_path / "run" / "metrics.json").exists()


def _workflow_worker(rank, size, port, directory, workflow):
    _environment(rank, size, port)
    from symode.train import LatentConfig, PhysicsConfig, train_latent_ode, train_physics

    if workflow == "kdv":
        config = PhysicsConfig(iterations=2, batch_size=4, trajectories=2, test_trajectories=1, hidden=8, plots=False)
        model, metrics = train_physics(config, os.path.join(directory, "run"), quiet=True)
    else:
        latent = LatentConfig(iterations=2, batch_size=8, samples=16, times=20, eval_every=1)
        model, metrics = train_latent_ode(latent, os.path.join(directory, "run"), quiet=True)
    params = [p.detach().clone() for p in model.parameters()]
    torch.save({"params": params, "metrics": metrics}, os.path.join(directory, f"{rank}.pt"))


@pytest.mark.parametrize("workflow", ["kdv", "latent-ode"])
def test_the_other_workflows_on_two_processes(workflow, tmp_path):
    """symode train kdv and latent-ode under two processes: one DDP forward per iteration (the
    loss around the solve), the replicas stay equal, rank 0 writes the metrics."""
    _spawn(_workflow_worker, str(tmp_path), workflow)
    first, second = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2))
    for a, b in zip(first["params"], second["params"]):
        assert torch.equal(a, b)
    assert first["metrics"]["processes"] == 2 and second["metrics"] == {}
    assert (tmp_path / "run" / "metrics.json").exists()


def test_torchrun_runs_a_training_command(tmp_path):
    """The documented recipe itself: ``torchrun --nproc_per_node=2 -m symode train kdv ...``."""
    import shutil
    import subprocess
    import sys

    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    out = tmp_path / "run"
    command = ["torchrun", "--nproc_per_node=2", "-m", "symode", "train", "kdv", "--iterations", "2"]
    command += ["--trajectories", "2", "--hidden", "8", "--no-plots", "--quiet", "--out", str(out)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["processes"] == 2

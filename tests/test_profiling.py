"""Tests for symode.profiling.peak_memory (CPU profiler path; CUDA path when a GPU exists)."""

import pytest
import torch
import torch.utils.checkpoint

from symode.bench.memory import MemoryResult, TESTED_TORCH_VERSION, peak_memory
from symode.bench import memory as profiling

MiB = 2**20


def _alloc_pattern():
    a = torch.empty(1_000_000, dtype=torch.float64)  # 8,000,000 B
    b = torch.empty(1_000_000, dtype=torch.float32)  # 4,000,000 B -> 12,000,000 B live
    del a  # 4,000,000 B live
    c = torch.empty(1_000_000, dtype=torch.int16)  # 2,000,000 B -> 6,000,000 B live
    return b.numel() + c.numel()


def test_known_allocations_exact_and_repeatable():
    results = [peak_memory(_alloc_pattern) for _ in range(3)]
    assert all(isinstance(r, MemoryResult) for r in results)
    assert [r.result for r in results] == [2_000_000] * 3
    # The CPU allocator reports exact byte counts: no rounding allowed.
    assert [r.peak_bytes for r in results] == [12_000_000] * 3


def test_odd_size_is_exact_and_kwargs_are_passed():
    def f(n, *, dtype):
        return torch.empty(n, dtype=dtype)

    r = peak_memory(f, 12_345, dtype=torch.float32, device="cpu")
    assert r.peak_bytes == 4 * 12_345
    assert r.result.shape == (12_345,)


def test_result_is_frozen():
    r = peak_memory(lambda: None)
    assert r.peak_bytes == 0 and r.result is None
    with pytest.raises(Exception):
        r.peak_bytes = 1


def test_tensors_alive_before_the_call_do_not_count():
    big = torch.empty(4_000_000, dtype=torch.float64)  # 32 MB alive before the call
    r = peak_memory(lambda: torch.empty(250_000, dtype=torch.float64))
    assert r.peak_bytes == 2_000_000
    # Freeing a pre-existing tensor during the call does not lower the baseline below 0
    # nor count it: peak is measured above what was allocated at the start.
    holder = [big]
    del big

    def free_then_alloc():
        holder.clear()
        return torch.empty(125_000, dtype=torch.float64)

    r = peak_memory(free_then_alloc)
    assert r.peak_bytes == 1_000_000


def test_broken_private_api_raises_clear_error():
    with pytest.raises(RuntimeError, match=TESTED_TORCH_VERSION):
        profiling._cpu_memory_deltas(object())  # no .profiler.kineto_results
    with pytest.raises(RuntimeError, match=TESTED_TORCH_VERSION):
        profiling._peak_after_canary([])  # no memory events recorded at all


def test_rejects_unsupported_device():
    with pytest.raises(ValueError):
        peak_memory(lambda: None, device="meta")


# --- the known figure from shared/design/measuring.md ------------------------------
# Euler loop y <- y + h*f(y), f = MLP 32-512-32 (tanh, with bias, float32), batch 256,
# parameters created outside the measured call, y0 not requiring grad,
# loss = y.pow(2).mean(), loss.backward() inside the measured call.
# measuring.md: backprop 6.41 / 54.22 / 532.35 MiB, per-step checkpoint
# 1.98 / 5.23 / 37.70 MiB for N = 10 / 100 / 1000.


@pytest.fixture(scope="module")
def euler_problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 512), torch.nn.Tanh(), torch.nn.Linear(512, 32))
    y0 = torch.randn(256, 32)
    return net, y0


def _euler_loss_backward(net, y0, n_steps, checkpoint):
    h = 1.0 / n_steps

    def step(y):
        return y + h * net(y)

    y = y0
    for _ in range(n_steps):
        if checkpoint:
            y = torch.utils.checkpoint.checkpoint(step, y, use_reentrant=False)
        else:
            y = step(y)
    loss = y.pow(2).mean()
    loss.backward()
    return loss.item()


@pytest.mark.parametrize(
    "n_steps, checkpoint, expected_mib",
    [(10, False, 6.41), (100, False, 54.22), (10, True, 1.98), (100, True, 5.23)],
)
def test_euler_mlp_known_figure(euler_problem, n_steps, checkpoint, expected_mib):
    net, y0 = euler_problem
    net.zero_grad(set_to_none=True)  # gradients allocated inside the call count
    r = peak_memory(_euler_loss_backward, net, y0, n_steps, checkpoint)
    assert r.peak_bytes / MiB == pytest.approx(expected_mib, rel=0.02)
    assert isinstance(r.result, float)


def test_euler_backprop_grows_linearly_and_is_deterministic(euler_problem):
    net, y0 = euler_problem

    def measure(n):
        net.zero_grad(set_to_none=True)
        return peak_memory(_euler_loss_backward, net, y0, n, False).peak_bytes

    p10, p20, p40 = measure(10), measure(20), measure(40)
    assert measure(20) == p20
    # Each step keeps the same activations alive: exact constant increment per step.
    assert (p40 - p20) == 2 * (p20 - p10)
    # ~ one tanh output (256x512 float32) + a couple of 256x32 states per step
    assert 256 * 512 * 4 < (p20 - p10) / 10 < 256 * 512 * 4 * 1.25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_known_allocations():
    dev = torch.device("cuda")
    before = torch.empty(1_000_000, device=dev)  # does not count

    def f():
        a = torch.empty(2 * MiB, dtype=torch.uint8, device=dev)
        b = torch.empty(MiB, dtype=torch.uint8, device=dev)
        del a
        return b

    rs = [peak_memory(f, device="cuda") for _ in range(3)]
    assert [r.peak_bytes for r in rs] == [3 * MiB] * 3
    assert rs[0].result.device.type == "cuda"
    del before

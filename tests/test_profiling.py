"""Tests for symode.bench.memory.peak_memory (CPU profiler path; CUDA path when a GPU exists)."""

import dataclasses

import pytest
import torch
import torch.utils.checkpoint

from symode.bench import memory as profiling
from symode.bench.memory import TESTED_TORCH_VERSION, MemoryResult, peak_memory

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
    with pytest.raises(dataclasses.FrozenInstanceError):
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


# --- the figure is a property of the call alone -------------------------------------
# The CPU allocator reports the free of a block only if the block was allocated while a
# profiler recorded memory. Summing every free made a call that frees tensors left by an
# earlier call read lower exactly when that earlier call had itself been profiled.


def test_freeing_older_tensors_does_not_depend_on_history():
    held = []

    def leave_tensors():  # what an earlier call leaves behind: 4 MB + 2 MB
        held.append(torch.empty(1_000_000, dtype=torch.float32))
        held.append(torch.empty(250_000, dtype=torch.float64))

    def call():  # frees whatever was left, then the known 12,000,000 B pattern
        held.clear()
        return _alloc_pattern()

    fresh = peak_memory(call).peak_bytes  # (a) first, nothing left to free
    leave_tensors()
    after_unprofiled = peak_memory(call).peak_bytes  # (b) left by an unprofiled call
    peak_memory(leave_tensors)
    assert len(held) == 2
    after_profiled = peak_memory(call).peak_bytes  # (c) left by a profiled call
    assert not held
    assert fresh == after_unprofiled == after_profiled == 12_000_000


def test_training_step_setting_grads_to_none_does_not_depend_on_history():
    # A training step that starts with zero_grad(set_to_none=True): it frees the .grad
    # buffers of the previous step (|theta| + |y|) and allocates new ones in backward.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(43, 64), torch.nn.Softplus(), torch.nn.Linear(64, 43))
    y0 = torch.randn(32, 43, requires_grad=True)
    tensors = [y0, *net.parameters()]

    def step():
        for t in tensors:
            t.grad = None
        y = y0
        for _ in range(3):
            y = y + 0.1 * net(y)
        y.pow(2).mean().backward()

    def clear():
        for t in tensors:
            t.grad = None

    clear()
    fresh = peak_memory(step).peak_bytes  # (a) no .grad to free
    clear()
    step()
    after_unprofiled = peak_memory(step).peak_bytes  # (b) .grad left by an unprofiled step
    clear()
    peak_memory(step)
    after_profiled = peak_memory(step).peak_bytes  # (c) .grad left by a profiled step
    assert fresh == after_unprofiled == after_profiled
    assert fresh >= 4 * sum(t.numel() for t in tensors)  # the new .grad buffers count


@pytest.mark.parametrize("profiled_setup", [False, True])
def test_known_figure_with_an_older_tensor_freed(profiled_setup):
    def alloc_free_1mib():
        x = torch.empty(MiB // 4, dtype=torch.float32)
        del x

    assert peak_memory(alloc_free_1mib).peak_bytes == MiB
    # A 4 MiB tensor alive before the call (allocated under a profiler or not), freed inside
    # it, does not lower the peak of a later 1 MiB allocation.
    holder = []

    def setup():
        holder.append(torch.empty(MiB, dtype=torch.float32))

    if profiled_setup:
        peak_memory(setup)
    else:
        setup()

    def free_then_alloc():
        holder.clear()
        alloc_free_1mib()

    assert peak_memory(free_then_alloc).peak_bytes == MiB
    assert not holder


def test_peak_matches_frees_to_allocations_by_address():
    c = profiling._CANARY_BYTES
    canary = [(0x10, c), (0x10, -c)]
    # A free at an address with no block allocated after the canary is ignored; an address
    # reused after its free is a new block (the canary's address included).
    events = canary + [(0x20, -400), (0x30, 100), (0x30, -100), (0x30, 60), (0x10, 50), (0x20, 30)]
    assert profiling._peak_after_canary(events) == 140
    assert profiling._peak_after_canary(events[:2] + [(0x99, -c)] + events[2:]) == 140
    # Events before the canary do not count, nor do their frees.
    assert profiling._peak_after_canary([(0x40, 500)] + canary + [(0x40, -500), (0x50, 7)]) == 7
    # Inconsistent events fail loudly rather than give a wrong figure.
    with pytest.raises(RuntimeError, match=TESTED_TORCH_VERSION):
        profiling._peak_after_canary(canary + [(0x30, 100), (0x30, 100)])  # no free between
    with pytest.raises(RuntimeError, match=TESTED_TORCH_VERSION):
        profiling._peak_after_canary(canary + [(0x30, 100), (0x30, -99)])  # size mismatch
    with pytest.raises(RuntimeError, match=TESTED_TORCH_VERSION):
        profiling._peak_after_canary([(0x10, c)])  # canary never freed


def test_quiet_stderr_silences_file_descriptor_2(capfd):
    import os

    from symode.bench.memory import quiet_stderr

    with quiet_stderr():
        os.write(2, b"hidden\n")
    os.write(2, b"shown\n")
    assert capfd.readouterr().err == "shown\n"

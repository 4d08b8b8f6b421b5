"""``symode.StateLayout``: the flattening of tuple states that ``solve`` and the bench share."""

import pytest
import torch

import symode

DTYPE = torch.float64


def _tuple_state():
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(2, 3, generator=gen, dtype=DTYPE), torch.randn(4, generator=gen, dtype=DTYPE))


def test_tuple_round_trip_and_the_flat_order():
    y = _tuple_state()
    layout = symode.StateLayout.of(y)
    flat = layout.flatten(y)
    # the components flattened and concatenated, in order
    assert torch.equal(flat, torch.cat([y[0].reshape(-1), y[1]]))
    assert torch.equal(layout.flat_y0, flat)
    back = layout.unflatten(flat)
    assert isinstance(back, tuple) and len(back) == 2
    assert all(torch.equal(a, b) for a, b in zip(back, y))
    # stacked outputs keep their leading dimension in front of each component's shape
    stacked = torch.stack([flat, 2 * flat])
    parts = layout.unflatten(stacked, (2,))
    assert parts[0].shape == (2, 2, 3) and parts[1].shape == (2, 4)
    assert torch.equal(parts[0][1], 2 * y[0]) and torch.equal(parts[1][1], 2 * y[1])


def test_single_tensor_is_its_own_flat_form():
    y = torch.arange(6, dtype=DTYPE).reshape(2, 3)
    layout = symode.StateLayout.of(y)
    assert layout.flatten(y) is y and not layout.is_tuple
    assert torch.equal(layout.unflatten(y.reshape(-1)), y)
    assert layout.unflatten(torch.stack([y, y]), (2,)).shape == (2, 2, 3)


def test_the_error_norm_of_a_tuple_state_is_the_largest_component_rms():
    y = _tuple_state()
    layout = symode.StateLayout.of(y)
    err = layout.flatten((torch.full((2, 3), 3.0, dtype=DTYPE), torch.full((4,), 1.0, dtype=DTYPE)))
    assert float(layout.norm(err)) == pytest.approx(3.0)  # not the RMS over all 10 entries


def test_a_state_of_the_wrong_structure_is_a_type_error():
    y = _tuple_state()
    layout = symode.StateLayout.of(y)
    with pytest.raises(TypeError, match=r"a tuple of 2 tensors, got a Tensor"):
        layout.flatten(y[0])
    with pytest.raises(TypeError, match=r"a tuple of 2 tensors, got a tuple of length 1"):
        layout.flatten((y[0],))
    with pytest.raises(TypeError, match=r"one tensor, got tuple"):
        symode.StateLayout.of(y[0]).flatten(y)
    with pytest.raises(TypeError, match=r"y0\[1\] must be a tensor"):
        symode.StateLayout.of((y[0], 1.0))

"""RNG capture/restore reproduces the same random numbers, also through a weights-only file."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from one_fast.engine import (
    capture_rng_state,
    load_checkpoint,
    numpy_from_safe,
    numpy_to_safe,
    restore_rng_state,
    save_checkpoint,
)


def draw(device="cpu", gen=None):
    return (
        [random.random(), random.gauss(0, 1), random.randint(0, 10**9)],
        np.concatenate([np.random.rand(5), np.random.randn(3), np.random.randint(0, 99, 4)]),
        torch.cat([torch.rand(5, device=device), torch.randn(3, device=device)]).cpu(),
        None if gen is None else torch.randperm(20, generator=gen, device=gen.device).cpu(),
    )


def assert_same(a, b):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    assert torch.equal(a[2], b[2])
    assert (a[3] is None and b[3] is None) or torch.equal(a[3], b[3])


@pytest.mark.parametrize("via_file", [False, True])
def test_round_trip_reproduces_numbers(tmp_path, via_file):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(4)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.randn(1)  # and one in numpy's legacy state
    state = capture_rng_state("cpu", generators={"data": gen})
    first = draw(gen=gen)
    if via_file:
        save_checkpoint(tmp_path, {"rng": state})
        state = load_checkpoint(tmp_path)["rng"]
    draw(gen=gen)  # move every generator on
    restore_rng_state(state, "cpu", generators={"data": gen})
    assert_same(draw(gen=gen), first)


def test_state_differs_after_drawing():
    # Guards the test above against a capture that records nothing.
    state = capture_rng_state("cpu")
    a = draw()
    b = draw()
    assert a[0] != b[0] and not torch.equal(a[2], b[2])
    restore_rng_state(state, "cpu")
    assert_same(draw(), a)


def test_missing_generator_is_named():
    state = capture_rng_state("cpu")
    with pytest.raises(KeyError, match="data"):
        restore_rng_state(state, "cpu", generators={"data": torch.Generator()})


@pytest.mark.parametrize("state", [
    np.random.get_state(),
    np.random.get_state(legacy=False),
    np.random.default_rng(7).bit_generator.state,  # PCG64: 128-bit python ints
    np.random.SFC64(7).state,  # uint64 array
    {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": (np.int16(-3), [np.uint8(5)])},
])
def test_numpy_to_safe_is_lossless(tmp_path, state):
    safe = numpy_to_safe(state)
    save_checkpoint(tmp_path, {"s": safe}, metadata=False)
    back = numpy_from_safe(load_checkpoint(tmp_path)["s"])
    assert_equal_nested(back, state)


def assert_equal_nested(a, b):
    if isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif isinstance(b, dict):
        assert a.keys() == b.keys()
        for key in b:
            assert_equal_nested(a[key], b[key])
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_equal_nested(x, y)
    else:
        assert a == b


def test_bit_generator_state_restores():
    rng = np.random.default_rng(11)
    saved = numpy_to_safe(rng.bit_generator.state)
    expected = rng.random(4)
    rng.bit_generator.state = numpy_from_safe(saved)
    np.testing.assert_array_equal(rng.random(4), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_round_trip(tmp_path):
    device = torch.device("cuda")
    torch.cuda.manual_seed(5)
    gen = torch.Generator(device=device).manual_seed(6)
    state = capture_rng_state(device, generators={"data": gen})
    assert "cuda" in state
    first = draw(device, gen)
    save_checkpoint(tmp_path, {"rng": state})
    draw(device, gen)
    restore_rng_state(load_checkpoint(tmp_path)["rng"], device, generators={"data": gen})
    assert_same(draw(device, gen), first)

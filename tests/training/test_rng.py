"""RNG helpers: states survive a weights_only checkpoint round trip; seeded blocks are reproducible and sealed."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mmgpt.training.rng import mix_seed, mix_seeds, rng_states, seeded, set_rng_states


def _draw() -> tuple:
    return torch.rand(3).tolist(), random.random(), float(np.random.rand())


def test_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    _draw()
    torch.save({"rng": rng_states()}, tmp_path / "s.pt")
    expected = _draw()
    _draw()  # move every generator on
    set_rng_states(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert _draw() == expected


def test_seeded_blocks_repeat_for_a_seed_and_leave_the_caller_generators_as_they_were():
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    state = rng_states()
    with seeded(42):
        a = _draw()
    with seeded(42):
        b = _draw()
    with seeded(43):
        c = _draw()
    assert a == b and a != c
    after = rng_states()
    assert torch.equal(after["torch"], state["torch"]) and after["python"] == state["python"]
    assert torch.equal(after["numpy"]["keys"], state["numpy"]["keys"])


def test_mix_seed_is_stable_and_sensitive_to_every_part():
    assert mix_seed(0, 1, 2) == mix_seed(0, 1, 2)
    assert len({mix_seed(0, 1, 2), mix_seed(1, 1, 2), mix_seed(0, 2, 2), mix_seed(0, 1, 3), mix_seed(0, 2, 1)}) == 5
    assert 0 <= mix_seed(-5, 3) < 2**64


@pytest.mark.parametrize("seed", [0, 1111, -1, 2**63 - 1, -(2**63)])
def test_mix_seeds_is_mix_seed_for_a_whole_epoch_at_once(seed):
    indices = [0, 1, 7, 319, 2**40, 2**62]
    for epoch in (0, 3, -2):
        assert mix_seeds(seed, epoch, last=indices) == [mix_seed(seed, epoch, i) for i in indices]
    assert mix_seeds(seed, 0, last=[]) == []

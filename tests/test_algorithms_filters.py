"""DAPO dynamic-sampling and overlong helpers (spec section 3)."""

import pytest
import torch

from perceptrl.algorithms import dynamic_sampling_keep, expand_group_mask, overlong_mask, overlong_penalty


def test_dynamic_sampling_keep_by_hand():
    acc = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0, 0, 1.0])
    ids = torch.tensor([4, 4, 4, 2, 2, 2, 9, 9, 9, 9])
    # ids sorted: 2 -> mean 0 (drop), 4 -> mean 1 (drop), 9 -> mean .5 (keep)
    keep = dynamic_sampling_keep(acc, ids)
    assert keep.tolist() == [False, False, True]
    assert expand_group_mask(keep, ids).tolist() == [False] * 6 + [True] * 4
    # strict inequalities at the thresholds
    assert dynamic_sampling_keep(torch.tensor([0.5, 0.5]), torch.zeros(2, dtype=torch.long), 0.5, 0.9).tolist() == [False]


def test_overlong_penalty_by_hand():
    # L_max = 100, L_cache = 20: 0 up to 80, then (80 - |y|) / 20, -1 beyond 100.
    lengths = torch.tensor([0, 80, 81, 90, 100, 101, 500])
    want = torch.tensor([0.0, 0.0, -0.05, -0.5, -1.0, -1.0, -1.0])
    torch.testing.assert_close(overlong_penalty(lengths, 100, 20), want)
    torch.testing.assert_close(overlong_penalty(lengths, 100, 0), torch.tensor([0, 0, 0, 0, 0, -1.0, -1.0]))
    with pytest.raises(ValueError):
        overlong_penalty(lengths, 10, 20)


def test_overlong_mask():
    m = overlong_mask(torch.tensor([True, False, True]))
    assert m.dtype == torch.float32 and m.tolist() == [0.0, 1.0, 0.0]

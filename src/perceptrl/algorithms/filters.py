"""Batch filters and reward shaping from DAPO (arXiv 2503.14476): dynamic sampling and overlong handling.

Pure tensor functions over a flat batch of ``N`` completions with integer ``group_ids``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .advantages import group_index, group_mean_std

__all__ = ["dynamic_sampling_keep", "expand_group_mask", "overlong_penalty", "overlong_mask"]


def dynamic_sampling_keep(
    accuracy: Tensor, group_ids: Tensor, low: float = 0.01, high: float = 0.99
) -> Tensor:
    """Groups to keep under DAPO dynamic sampling: ``low < mean_g(accuracy) < high`` (strict).

    Source: DAPO arXiv 2503.14476 (drop all-correct / all-wrong groups); thresholds as in
    MikeWangWZHL/PAPO (EasyR1 ``online_filtering``, ``filter_low = 0.01``, ``filter_high = 0.99``).

    Shapes: ``accuracy`` ``[N]`` (0/1 or in [0, 1]), ``group_ids`` ``[N]`` long -> ``[num_groups]`` bool,
    indexed by increasing group id (see :func:`perceptrl.algorithms.advantages.group_index`).
    """
    index, g = group_index(group_ids)
    mean, _, _, _ = group_mean_std(accuracy, index, g)
    return (mean > low) & (mean < high)


def expand_group_mask(group_keep: Tensor, group_ids: Tensor) -> Tensor:
    """Broadcast a per-group bool ``[num_groups]`` to its members ``[N]``."""
    index, _ = group_index(group_ids)
    return group_keep[index]


def overlong_penalty(lengths: Tensor, max_len: int, cache_len: int) -> Tensor:
    """DAPO soft overlong punishment, added to the reward. ``[N] -> [N]`` float32.

    Source: DAPO arXiv 2503.14476, eq. (13)::

        0                                   if |y| <= L_max - L_cache
        ((L_max - L_cache) - |y|) / L_cache if L_max - L_cache < |y| <= L_max
        -1                                  if |y| > L_max

    ``lengths`` are completion token counts; ``cache_len = 0`` gives 0 up to ``max_len`` and -1 beyond.
    """
    if cache_len < 0 or cache_len > max_len:
        raise ValueError(f"need 0 <= cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    L = lengths.to(torch.float64 if lengths.dtype == torch.float64 else torch.float32)
    thr = float(max_len - cache_len)
    ramp = (thr - L) / float(max(cache_len, 1))
    out = torch.where(L <= thr, torch.zeros_like(L), ramp)
    return torch.where(L > max_len, torch.full_like(L, -1.0), out)


def overlong_mask(truncated: Tensor) -> Tensor:
    """DAPO overlong filtering: per-completion loss weight, 1 keep, 0 for truncated. ``[N] bool -> [N] float``.

    Source: DAPO arXiv 2503.14476 ("overlong filtering": mask the loss of truncated samples).
    Multiply it into the completion mask (``mask * w[:, None]``); with ``token_mean`` aggregation and
    global denominators computed from the product, masked completions neither contribute nor dilute.
    """
    return (~truncated.bool()).to(torch.float32)

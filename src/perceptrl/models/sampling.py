"""Batch-invariant sampling: every completion row draws its own noise, whatever the batch.

``model.generate`` (and a plain ``torch.multinomial``) draw the sampling noise of a whole batch
from one global random stream, so a completion depends on which other rows share its batch: the
same prompt sampled in a batch of 8 on one process and in a batch of 4 on each of two processes
gives different completions. Here each row carries a *row seed* (the loop derives it from the
run seed, the step, the prompt's global data position and the completion's index in its group),
and at generation position ``t`` the row draws ``V`` Gumbel variables from a SplitMix64 stream
keyed by ``(row seed, t)``. The sampled token is

    argmax_v ( (logits_v / temperature, top-p filtered) + Gumbel_v )

which is an exact sample from the tempered, top-p-filtered softmax (the Gumbel-max trick), and
is a pure function of the row's logits and its seed: batch composition, process count and
device do not change it (up to floating-point differences in the logits themselves).

The stream is computed with 64-bit integer arithmetic on tensors (wrap-around multiplication),
vectorised over rows and vocabulary, so it costs a few element-wise operations on a ``[R, V]``
block per generated token, and its uniforms are the same integers on any device (the Gumbel
transform ``-log(-log(u))`` is float64).

Two entry points: :func:`gumbel_argmax` for our own sampling loop, and :class:`GumbelSampler`,
a ``transformers`` ``LogitsProcessor`` for ``model.generate`` (run it with ``do_sample=False``:
generation then takes the argmax of the perturbed scores). Log-probs reported with the sample
must be those of the *unperturbed* tempered distribution (``Policy`` records the raw logits).
"""

from __future__ import annotations

import torch

# SplitMix64 constants (Steele, Lea and Flood, 2014) as signed 64-bit integers.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
_POSITION_SALT = 0x632BE59BD9B4E019 - (1 << 64)  # separates the position stream from the row seed


def _shift_right(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic on signed integers)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function on int64 tensors (multiplication wraps modulo 2**64)."""
    z = (z ^ _shift_right(z, 30)) * _M1
    z = (z ^ _shift_right(z, 27)) * _M2
    return z ^ _shift_right(z, 31)


def _mix_int(z: int) -> int:
    """:func:`_mix` on one Python integer (unsigned arithmetic), returned as a signed 64-bit value."""
    mask = (1 << 64) - 1
    z &= mask
    z = ((z ^ (z >> 30)) * (_M1 & mask)) & mask
    z = ((z ^ (z >> 27)) * (_M2 & mask)) & mask
    z ^= z >> 31
    return z - (1 << 64) if z >= 1 << 63 else z


def row_keys(row_seeds: torch.Tensor, position: int) -> torch.Tensor:
    """The stream key of every row at generation position ``position``: ``[R]`` int64."""
    salt = _mix_int(int(position) * (_GOLDEN & ((1 << 64) - 1)) + (_POSITION_SALT & ((1 << 64) - 1)))
    return _mix(row_seeds.to(torch.int64) ^ salt)


def uniforms(keys: torch.Tensor, n: int) -> torch.Tensor:
    """``[R, n]`` float64 uniforms in (0, 1): the first ``n`` outputs of SplitMix64 seeded by each key."""
    counters = torch.arange(1, n + 1, dtype=torch.int64, device=keys.device)
    z = _mix(keys.unsqueeze(-1) + counters * _GOLDEN)
    return (_shift_right(z, 11).to(torch.float64) + 0.5) * 2.0**-53


def gumbel_noise(row_seeds: torch.Tensor, position: int, vocab_size: int) -> torch.Tensor:
    """Standard Gumbel variables ``[R, V]`` (float64) for every row at ``position``."""
    u = uniforms(row_keys(row_seeds, position), vocab_size)
    return -torch.log(-torch.log(u))


def gumbel_argmax(scores: torch.Tensor, row_seeds: torch.Tensor, position: int) -> torch.Tensor:
    """One token per row, sampled from ``softmax(scores)`` with the row's own noise: ``[R]``.

    ``scores`` ``[R, V]`` are already tempered and filtered (``-inf`` = never sampled).
    """
    noise = gumbel_noise(row_seeds.to(scores.device), position, scores.shape[-1])
    return (scores.to(torch.float64) + noise).argmax(-1)


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    from perceptrl.models.policy import _top_p_filter  # the same filter as the sampling loop

    return _top_p_filter(scores, top_p)


try:  # transformers is a dependency; the base class only marks the processor's interface
    from transformers import LogitsProcessor as _LogitsProcessorBase
except ImportError:  # pragma: no cover
    _LogitsProcessorBase = object


class GumbelSampler(_LogitsProcessorBase):
    """``LogitsProcessor`` for ``model.generate(..., do_sample=False)``: temperature, top-p, Gumbel noise.

    ``row_seeds`` ``[R]`` are the rows' seeds in batch order; ``prompt_length`` is the (padded)
    prompt length, so that the generation position is ``input_ids.shape[1] - prompt_length``.
    Place it after any token suppression (``generate`` appends custom processors last).
    """

    def __init__(self, row_seeds: torch.Tensor, prompt_length: int, temperature: float = 1.0, top_p: float = 1.0):
        self.row_seeds = torch.as_tensor(row_seeds, dtype=torch.int64)
        self.prompt_length = prompt_length
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_p < 1.0:
            scores = _top_p(scores, self.top_p)
        position = input_ids.shape[1] - self.prompt_length
        noise = gumbel_noise(self.row_seeds.to(scores.device), position, scores.shape[-1])
        return scores.to(torch.float64) + noise  # float64: the same argmax as gumbel_argmax

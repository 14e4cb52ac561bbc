"""Batch filters from DAPO (arXiv 2503.14476): dynamic sampling, overlong masking and punishment.

- :class:`DynamicSampling` replaces the one-round sampler: it generates in rounds, keeps the
  prompts whose groups are informative, and merges the kept parts into one rollout.
- :class:`OverlongPenalty` adds the soft length punishment to the reward.
- :class:`OverlongMask` takes truncated completions out of the update (they still count in
  their group's advantage statistics, as in DAPO).
"""

from __future__ import annotations

from typing import Callable

import torch

from perceptrl.algorithms.filters import dynamic_sampling_keep, overlong_mask, overlong_penalty
from perceptrl.train.rollout import Rollout, merge_rollouts


def single_round(next_prompts: Callable[[int], list], rollout_once: Callable[[list], Rollout], n: int) -> Rollout:
    """The default sampler: ``n`` prompts, one generation round."""
    return rollout_once(next_prompts(n))


class DynamicSampling:
    """DAPO dynamic sampling: keep groups with ``low < mean accuracy < high``; regenerate until full.

    As released (MikeWangWZHL/PAPO ``verl/trainer/ray_trainer.py`` ``_make_batch_data``; spec section 3):

    - each round generates ``round_prompts`` new prompts (EasyR1's ``mini_rollout_batch_size``; here
      this process's share: the config's ``filters.round_prompts`` counts all processes, like
      ``data.rollout_batch_size``, and the recipe divides it by their number);
    - a prompt is kept when every one of its advantage groups passes (one group per prompt except
      in DUPL's paper plan, whose clean and noisy groups must both be informative);
    - a round in which no group passes is kept whole (their code: ``if len(kept_sample_idxs) == 0:
      kept_sample_idxs = list(range(len(uids)))``); its prompts count towards the batch, with zero
      advantages (``dapo/rounds_kept_whole``);
    - rounds continue until ``n`` prompts are kept, and the batch is cut to exactly the first ``n``
      (their ``batch[: rollout_batch_size * n]``).

    One difference: after ``max_tries`` rounds the released code raises an error (losing the run);
    here the step trains on what there is and logs the shortfall (``dapo/shortfall``).
    Each process fills its own share of the batch from its own rounds.
    Logged: ``dapo/rounds``, ``dapo/groups_dropped``, ``dapo/prompts_kept``, ``dapo/shortfall``,
    ``dapo/rounds_kept_whole`` and ``dapo/accuracy_generated`` (mean accuracy over everything generated).
    """

    def __init__(self, low: float, high: float, max_tries: int, round_prompts: int):
        self.low, self.high, self.max_tries, self.round_prompts = low, high, max_tries, round_prompts

    def keep_prompts(self, rollout: Rollout) -> tuple[list[int], int]:
        """Prompts whose groups all pass, and the number of groups dropped."""
        keep_group = dynamic_sampling_keep(rollout.scores["accuracy"], rollout.group_ids, self.low, self.high)
        dense = torch.unique(rollout.group_ids, sorted=True, return_inverse=True)[1]
        row_ok = keep_group[dense]
        prompts = []
        for p in range(len(rollout.samples)):
            rows = rollout.prompt_index == p
            if bool(row_ok[rows].all()):
                prompts.append(p)
        return prompts, int((~keep_group).sum())

    def __call__(self, next_prompts: Callable[[int], list], rollout_once: Callable[[list], Rollout], n: int) -> Rollout:
        per_round = self.round_prompts or n
        kept_parts: list[Rollout] = []
        n_kept = dropped = rounds = whole = 0
        acc_sum = acc_count = 0.0
        while rounds < self.max_tries and n_kept < n:
            rounds += 1
            last = rollout_once(next_prompts(per_round))
            acc_sum += float(last.scores["accuracy"].sum())
            acc_count += len(last)
            prompts, n_dropped = self.keep_prompts(last)
            if prompts:
                dropped += n_dropped
            else:  # no group passes: the released code keeps the whole round
                prompts, whole = list(range(len(last.samples))), whole + 1
            prompts = prompts[: n - n_kept]  # cut to exactly n prompts
            rows = torch.isin(last.prompt_index, torch.tensor(prompts)).nonzero().flatten()
            kept_parts.append(last.subset(rows) if len(rows) < len(last) else last)
            n_kept += len(prompts)
        rollout = merge_rollouts(kept_parts)
        rollout.stats.update({
            "dapo/rounds": float(rounds),
            "dapo/groups_dropped": float(dropped),
            "dapo/prompts_kept": float(n_kept),
            "dapo/shortfall": float(n - n_kept),
            "dapo/rounds_kept_whole": float(whole),
            "dapo/accuracy_generated": acc_sum / max(acc_count, 1.0),
        })
        return rollout


class OverlongPenalty:
    """DAPO soft overlong punishment added to the reward (``L_max = rollout.max_new_tokens``).

    A completion that hits ``max_new_tokens`` without ending has ``|y| = L_max`` and gets -1.
    Logged: ``overlong/penalty_mean``.
    """

    def __init__(self, max_len: int, cache_len: int):
        self.max_len, self.cache_len = max_len, cache_len

    def prepare(self, rollout: Rollout, step: int) -> None:
        lengths = rollout.completions.mask.sum(-1).cpu()
        penalty = overlong_penalty(lengths, self.max_len, self.cache_len)
        rollout.scores["overlong_penalty"] = penalty
        rollout.scores["reward"] = rollout.scores["reward"] + penalty
        rollout.stats["overlong/penalty_mean"] = float(penalty.mean())


class OverlongMask:
    """DAPO overlong filtering: truncated completions are not trained on. Logged: ``overlong/masked``."""

    def prepare(self, rollout: Rollout, step: int) -> None:
        keep = overlong_mask(rollout.completions.truncated.cpu())
        rollout.keep_for_update(keep.bool())
        rollout.stats["overlong/masked"] = float(1.0 - keep.mean()) if len(keep) else 0.0

"""Pure tensor functions for RL with verifiable rewards (see shared spec ALGORITHMS.md).

No model and no I/O here: advantages, per-token loss terms and their aggregation, DUPL uncertainty
measures, dynamic-sampling / overlong filters and step schedules.
"""

from .advantages import (
    ADVANTAGE_ESTIMATORS,
    dupl_bonus,
    dupl_shape,
    get_advantage_estimator,
    group_advantage,
    group_index,
    group_mean_std,
    group_normalise,
    noisy_grpo_advantage,
    register_advantage,
)
from .filters import dynamic_sampling_keep, expand_group_mask, overlong_mask, overlong_penalty
from .losses import (
    AGG_MODES,
    LOSS_TERMS,
    aggregate,
    chunked_entropy,
    clipped_surrogate,
    count_tokens_and_seqs,
    entropy_from_logits,
    importance_ratio,
    kl_penalty,
    masked_mean,
    masked_sum,
    perception_kl,
    register_loss_term,
    sampled_token_entropy_mc,
)
from .schedules import (
    SCHEDULES,
    ConstantSchedule,
    LinearSchedule,
    Schedule,
    SigmoidSchedule,
    make_schedule,
)
from .uncertainty import full_entropy, sampled_token_entropy, sym_kl_full, sym_kl_pointwise

__all__ = [
    "SCHEDULES",
    "ConstantSchedule",
    "LinearSchedule",
    "Schedule",
    "SigmoidSchedule",
    "make_schedule",
    "full_entropy",
    "sampled_token_entropy",
    "sym_kl_full",
    "sym_kl_pointwise",
    "dynamic_sampling_keep",
    "expand_group_mask",
    "overlong_mask",
    "overlong_penalty",
    "ADVANTAGE_ESTIMATORS",
    "AGG_MODES",
    "LOSS_TERMS",
    "aggregate",
    "chunked_entropy",
    "clipped_surrogate",
    "count_tokens_and_seqs",
    "dupl_bonus",
    "dupl_shape",
    "entropy_from_logits",
    "get_advantage_estimator",
    "group_advantage",
    "group_index",
    "group_mean_std",
    "group_normalise",
    "importance_ratio",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "noisy_grpo_advantage",
    "perception_kl",
    "register_advantage",
    "register_loss_term",
    "sampled_token_entropy_mc",
]

"""GSPO, CISPO and RLOO: identical loss and gradient to TRL 1.16 on identical tensors.

TRL is not imported: each ``trl_*`` function below writes out, step for step, what TRL 1.16.0 computes
(``trl/trainer/grpo_trainer.py`` ``GRPOTrainer._compute_loss``; ``trl/trainer/rloo_trainer.py``
``_generate_and_score_completions`` and ``_compute_loss``), for one process and one accumulation step.
Ours go through the same loss terms and aggregation the trainer uses (``train/terms.py``,
``algorithms/losses.aggregate``), so a change to either side fails here.
"""

import pytest
import torch

from perceptrl.algorithms.losses import aggregate
from perceptrl.algorithms.policy_losses import cispo_loss, rloo_advantage, sequence_clipped_surrogate
from perceptrl.train.terms import cispo_term, sequence_surrogate_term
from perceptrl.train.update import MicroBatch

# ----------------------------------------------------------------------------------------------
# TRL 1.16.0, written out
# ----------------------------------------------------------------------------------------------


def trl_grpo_loss(per_token_logps, old_per_token_logps, advantages, mask, loss_type, importance_sampling_level,
                  epsilon_low=0.2, epsilon_high=0.2):
    """GRPOTrainer._compute_loss (beta = 0, no vLLM correction, no entropy/off-policy masks)."""
    advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    log_ratio = per_token_logps - old_per_token_logps
    if importance_sampling_level == "token":
        log_importance_weights = log_ratio
    else:  # "sequence"
        log_importance_weights = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        log_importance_weights = log_importance_weights.unsqueeze(-1)
    coef_1 = torch.exp(log_importance_weights)
    if loss_type == "cispo":
        clamped_ratios = torch.clamp(coef_1, max=epsilon_high).detach()
        per_token_loss = -clamped_ratios * advantages * per_token_logps
    else:
        coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
        per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    # "dapo" / "cispo": normalizer = num_items_in_batch (the global token count) / num_processes (1),
    # times gradient_accumulation_steps / steps_per_generation (1 / 1)
    normalizer = mask.sum().clamp(min=1.0)
    return (per_token_loss * mask).sum() / normalizer


def trl_rloo_advantages(rewards, num_generations, normalize_advantages=False):
    """RLOOTrainer._generate_and_score_completions (beta = 0, every completion scorable)."""
    grouped_rewards = rewards.view(-1, num_generations)
    scorable_counts = (~torch.isnan(grouped_rewards)).sum(dim=1, keepdim=True)
    grouped_sum = torch.nansum(grouped_rewards, dim=1, keepdim=True)
    baselines = ((grouped_sum - grouped_rewards) / (scorable_counts - 1)).view(-1)
    advantages = rewards - baselines
    if normalize_advantages:
        mean = torch.nanmean(advantages)
        var = torch.nanmean((advantages - mean) ** 2) * advantages.numel() / (advantages.numel() - 1)  # trl nanstd
        advantages = (advantages - mean) / (var.sqrt() + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def trl_rloo_loss(per_token_logps, old_per_token_logps, advantages, completion_mask, epsilon_low=0.2,
                  epsilon_high=0.2):
    """RLOOTrainer._compute_loss: a ratio of summed sequence log-probs, clipped, mean over sequences."""
    logps = (per_token_logps * completion_mask).sum(1)
    old_logps = (old_per_token_logps * completion_mask).sum(1)
    coef_1 = torch.exp(logps - old_logps)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    return (-torch.min(coef_1 * advantages, coef_2 * advantages)).mean()


# ----------------------------------------------------------------------------------------------
# identical tensors
# ----------------------------------------------------------------------------------------------


def tensors(seed, B=6, T=7, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()
    old = -torch.rand(B, T, generator=g) * 3.0
    logp = (old + torch.randn(B, T, generator=g) * spread) * mask  # padding log-probs 0, as the policy returns
    old = old * mask
    adv = torch.randn(B, generator=g)
    return logp, old, adv, mask


def ours(term, logp, old, adv, mask, mode):
    lp = logp.clone().requires_grad_()
    n_tok, n_seq = float(mask.sum()), float((mask.sum(-1) > 0).sum())
    mb = MicroBatch(rows=torch.arange(len(lp)), logprobs=lp, old_logprobs=old, advantages=adv, mask=mask, entropy=None,
                    extra={}, agg=lambda v: aggregate(v, mask, mode, n_tok, n_seq),
                    token_mean=lambda v: aggregate(v, mask, "token_mean", n_tok, n_seq), policy=None, rollout=None)
    loss, stats = term(mb)
    loss.backward()
    return loss.detach(), lp.grad, stats


def theirs(fn, logp, *args, **kwargs):
    lp = logp.clone().requires_grad_()
    loss = fn(lp, *args, **kwargs)
    loss.backward()
    return loss.detach(), lp.grad


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("loss_type,mode", [("grpo", "seq_mean_token_mean"), ("dapo", "token_mean")])
def test_gspo_matches_trl_sequence_importance_sampling(seed, loss_type, mode):
    logp, old, adv, mask = tensors(seed, spread=0.002)  # sequence ratios around 1 +- a few 1e-4: some clipped
    eps_low, eps_high = 3e-4, 4e-4  # GSPO's ranges (TRL's GSPO recipe)
    loss, grad, stats = ours(sequence_surrogate_term(eps_low, eps_high, "mean"), logp, old, adv, mask, mode)
    ref_loss, ref_grad = theirs(trl_grpo_loss, logp, old, adv, mask, loss_type, "sequence", eps_low, eps_high)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5, abs=1e-7)
    assert torch.allclose(grad, ref_grad, atol=1e-6)
    clipped = float(stats["clip_frac_low"][0] + stats["clip_frac_high"][0])
    if seed == 0:  # the case exercises both branches: some sequences clipped, some not
        assert 0 < clipped < len(adv)


def test_gspo_gradient_is_the_sequence_ratio_times_the_mean_token_gradient():
    """Unclipped: d l_i / d lp_t = -A_i s_i / |o_i| on every token of sequence i (GSPO's gradient)."""
    logp, old, adv, mask = tensors(7, spread=1e-5)
    loss, grad, _ = ours(sequence_surrogate_term(0.2, 0.2, "mean"), logp, old, adv, mask, "seq_mean_token_mean")
    s = torch.exp(((logp - old) * mask).sum(-1) / mask.sum(-1))
    expected = -(adv * s / mask.sum(-1)).unsqueeze(-1) * mask / len(adv)
    assert torch.allclose(grad, expected, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_cispo_matches_trl(seed):
    logp, old, adv, mask = tensors(seed, spread=1.5)  # ratios up to e^4: the 5.0 cap acts
    loss, grad, stats = ours(cispo_term(5.0), logp, old, adv, mask, "token_mean")
    ref_loss, ref_grad = theirs(trl_grpo_loss, logp, old, adv, mask, "cispo", "token", 0.2, 5.0)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5, abs=1e-7)
    assert torch.allclose(grad, ref_grad, atol=1e-6)
    capped = float(stats["clip_frac_high"][0])
    assert capped == float((((logp - old).exp() > 5.0) & mask.bool()).sum())
    # every token keeps a gradient (unlike PPO's clip): -w A / N_tok with w = min(rho, 5)
    w = torch.exp(logp - old).clamp(max=5.0)
    assert torch.allclose(grad, -(w * adv.unsqueeze(-1)) * mask / mask.sum(), atol=1e-6)


@pytest.mark.parametrize("normalize", [False, True])
def test_rloo_advantage_and_loss_match_trl(normalize):
    G = 4
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.9, 0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5])
    groups = torch.arange(len(rewards)) // G
    adv = rloo_advantage(rewards, groups, normalize=normalize)
    ref = trl_rloo_advantages(rewards, G, normalize)
    assert torch.allclose(adv, ref, atol=1e-6)
    # hand value: r = 1 in group (1, 0, 0, 1): baseline (0 + 0 + 1) / 3
    if not normalize:
        assert adv[0].item() == pytest.approx(1.0 - 1.0 / 3.0) and adv[8:].abs().max() == 0
    logp, old, _, mask = tensors(3, B=len(rewards), spread=0.05)
    loss, grad, _ = ours(sequence_surrogate_term(0.2, 0.2, "sum"), logp, old, adv, mask, "seq_mean_token_mean")
    ref_loss, ref_grad = theirs(trl_rloo_loss, logp, old, ref, mask)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5, abs=1e-7)
    assert torch.allclose(grad, ref_grad, atol=1e-6)


def test_rloo_groups_in_any_order_and_groups_of_one():
    rewards = torch.tensor([1.0, 3.0, 0.0, 5.0, 2.0])
    groups = torch.tensor([7, 2, 7, 9, 2])  # interleaved ids; group 9 has one member: no baseline, A = 0
    assert rloo_advantage(rewards, groups).tolist() == pytest.approx([1.0, 1.0, -1.0, 0.0, -1.0])


def test_pure_functions_take_token_level_advantages_too():
    logp, old, adv, mask = tensors(1)
    per_seq, _ = sequence_clipped_surrogate(logp, old, adv, mask, 0.2, 0.2)
    per_tok, _ = sequence_clipped_surrogate(logp, old, adv.unsqueeze(-1).expand_as(logp) * mask, mask, 0.2, 0.2)
    assert torch.allclose(per_seq, per_tok)
    a, w = cispo_loss(logp, old, adv)
    b, _ = cispo_loss(logp, old, adv.unsqueeze(-1).expand_as(logp))
    assert torch.allclose(a, b) and float(w.max()) <= 5.0

"""Token-level perception-aware pieces: hand-computed signals, selections and scales per method.

Every expected number below is worked out by hand in the comment beside it (docs/METHODS.md has the
formulas and their sources). The property tests check the defining one: a token whose log-prob (or
whole next-token distribution) does not depend on the image gets dependency 0, with every metric, on
plain tensors and through the real piece on the tiny model.
"""

import math

import pytest
import torch

from perceptrl.algorithms.losses import aggregate, clipped_surrogate
from perceptrl.algorithms.token_signals import (
    abs_log_ratio,
    full_kl,
    jsd_and_entropies,
    minmax_per_response,
    pgpo_token_scale,
    sampled_k3,
    selected_token_rescale,
    tor_token_weights,
    top_fraction_mask,
    truncated_entropy,
    vepo_score,
    vppo_sequence_scale,
)
from perceptrl.config import ConfigError, TokenViewConfig, load_config
from perceptrl.models.families import FAMILY_NAMES, build_tiny_family
from perceptrl.models.logits import output_head
from perceptrl.models.policy import Completions, Policy
from perceptrl.train.rollout import GenSpec, Rollout, collect_rollout
from perceptrl.train.token_pieces import (
    DvrpRobustness,
    RemoveImage,
    TokenSignal,
    TokenWeightedEstimator,
    TokenWeighting,
    make_token_view,
)
from perceptrl.train.update import MicroBatch
from perceptrl.vision.views import make_view

LN2 = math.log(2.0)


def fake_rollout(mask, prompt_index=None, extra=None, update_mask=None):
    """A rollout with just what the weighting reads: completion mask, prompts, extra tensors."""
    mask = torch.as_tensor(mask, dtype=torch.long)
    R, T = mask.shape
    comp = Completions(ids=torch.zeros(R, T, dtype=torch.long), mask=mask, rows=torch.arange(R),
                       truncated=torch.zeros(R, dtype=torch.bool))
    pi = torch.as_tensor(prompt_index if prompt_index is not None else [0] * R)
    return Rollout(samples=[], prompts=None, instance_of={}, completions=comp, prompt_index=pi, group_ids=pi,
                   update_rows=torch.arange(R), gen_view=["clean"] * R, extra=dict(extra or {}),
                   update_mask=update_mask)


# ----------------------------------------------------------------------------------------------
# signals
# ----------------------------------------------------------------------------------------------


def test_sampled_k3_vppo_released_form():
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    lp_view = torch.log(torch.tensor([[0.25, 0.5, 1.0]]))
    k3 = sampled_k3(lp, lp_view)
    # d = log(q / p): log 0.5 -> exp(d) - d - 1 = 0.5 + ln 2 - 1; d = 0 -> 0; d = ln 2 -> 2 - ln 2 - 1
    assert k3.tolist()[0] == pytest.approx([0.5 + LN2 - 1.0, 0.0, 1.0 - LN2], abs=1e-6)
    big = sampled_k3(torch.tensor([[-30.0]]), torch.tensor([[0.0]]))  # d clamped to 20, then k3 to 10
    assert big.item() == 10.0


def test_abs_log_ratio_tor():
    out = abs_log_ratio(torch.log(torch.tensor([[0.5, 0.1]])), torch.log(torch.tensor([[0.25, 0.1]])))
    assert out.tolist()[0] == pytest.approx([LN2, 0.0], abs=1e-6)


def test_full_kl_hand_value():
    # P = softmax(0, ln 3) = (1/4, 3/4), Q = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2)
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    kl = full_kl(logits, torch.zeros(1, 1, 2))
    assert kl.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)


def test_jsd_and_entropies_hand_values():
    # P = (1/4, 3/4), Q = (3/4, 1/4), M = (1/2, 1/2): KL(P||M) = KL(Q||M) = 1/4 ln 1/2 + 3/4 ln 3/2
    p = torch.tensor([[[0.0, math.log(3.0)]]])
    q = torch.tensor([[[math.log(3.0), 0.0]]])
    jsd, hp, hq = jsd_and_entropies(p, q)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert jsd.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)
    assert hp.item() == pytest.approx(h, abs=1e-6) and hq.item() == pytest.approx(h, abs=1e-6)


def test_truncated_entropy_top_p():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.2]]]))
    full = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert truncated_entropy(logits, 1.0).item() == pytest.approx(full, abs=1e-6)
    assert truncated_entropy(logits, 0.95).item() == pytest.approx(full, abs=1e-6)  # mass before 0.2 is 0.8 < 0.95
    # top_p 0.7 keeps (0.5, 0.3), renormalised to (0.625, 0.375)
    assert truncated_entropy(logits, 0.7).item() == pytest.approx(-(0.625 * math.log(0.625) + 0.375 * math.log(0.375)),
                                                                  abs=1e-6)
    assert truncated_entropy(logits, 0.45).item() == pytest.approx(0.0, abs=1e-7)  # one token kept


def test_vepo_score_formula_d():
    mask = torch.tensor([[1, 1, 1, 0]])
    jsd = torch.tensor([[0.0, 1.0, 0.5, 9.0]])  # min-max -> (0, 1, 0.5)
    h = torch.tensor([[1.0, 2.0, 3.0, 9.0]])  # min-max -> (0, 0.5, 1)
    hv = torch.tensor([[1.0, 4.0, 3.0, 0.0]])  # |gap| (0, 2, 0) -> (0, 1, 0)
    s = vepo_score(jsd, h, hv, mask, alpha=0.7)
    # t0: H = 0 -> 0; t1: J = 1 -> (1 - 0) * 0.5; t2: (1 - 0.5^0.7) * 1; padding 0
    assert s.tolist()[0] == pytest.approx([0.0, 0.5, 1.0 - 0.5 ** 0.7, 0.0], abs=1e-6)


def test_minmax_per_response_ignores_padding():
    out = minmax_per_response(torch.tensor([[1.0, 3.0, 2.0, -50.0]]), torch.tensor([[1, 1, 1, 0]]))
    assert out.tolist()[0] == pytest.approx([0.0, 1.0, 0.5, 0.0])


@pytest.mark.parametrize("seed", range(3))
def test_a_token_that_does_not_depend_on_the_image_gets_dependency_zero(seed):
    """Property: where the view leaves the distribution unchanged, every metric gives 0; elsewhere > 0."""
    g = torch.Generator().manual_seed(seed)
    B, T, V = 3, 7, 11
    logits = torch.randn(B, T, V, generator=g)
    same = torch.rand(B, T, generator=g) < 0.5
    logits_view = torch.where(same.unsqueeze(-1), logits, logits + 2.0 * torch.randn(B, T, V, generator=g))
    ids = torch.randint(0, V, (B, T), generator=g)
    lp = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    lp_view = torch.log_softmax(logits_view, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    mask = torch.ones(B, T)
    jsd, h, hv = jsd_and_entropies(logits, logits_view, chunk=3)
    for signal in (sampled_k3(lp, lp_view), abs_log_ratio(lp, lp_view), full_kl(logits, logits_view, chunk=3), jsd,
                   (hv - h).abs(), vepo_score(jsd, h, hv, mask)):
        assert torch.all(signal[same] == 0), signal[same]
        assert torch.all(signal >= 0)
    assert torch.all(full_kl(logits, logits_view)[~same] > 0) and torch.all(jsd[~same] > 0)
    # the full-vocabulary KL is the expectation of the sampled k3 over the token
    p = torch.softmax(logits, -1)
    d = torch.log_softmax(logits_view, -1) - torch.log_softmax(logits, -1)
    assert torch.allclose((p * (d.exp() - d - 1)).sum(-1), full_kl(logits, logits_view), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# selections and scales (one hand-computed case per method)
# ----------------------------------------------------------------------------------------------


def test_top_fraction_mask_per_response_and_batch():
    values = torch.tensor([[0.1, 0.5, 0.3, 0.9, 7.0], [0.2, 0.2, 0.1, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    # per response: ceil(4 * 0.4) = 2 -> {0.9, 0.5}; ceil(3 * 0.4) = 2 -> the tied 0.2s, in position order
    per = top_fraction_mask(values, mask, 0.4, "response")
    assert per.int().tolist() == [[0, 1, 0, 1, 0], [1, 1, 0, 0, 0]]
    # over the batch: ceil(7 * 0.3) = 3 of the valid values -> 0.9, 0.5, 0.3 (padding never chosen)
    batch = top_fraction_mask(values, mask, 0.3, "batch")
    assert batch.int().tolist() == [[0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    assert top_fraction_mask(values, mask, 1.0, "response").int().tolist() == mask.tolist()


def test_vppo_gradient_filter_and_trajectory_scale():
    """VPPO: top 40% of each completion's tokens; completion factors 0.9 + n (beta_max - 0.9), mean 1."""
    signal = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 0.0], [3.0, 6.0, 0.0, 3.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    # means S = (0, 1, 3); n = (0, 1/3, 1); mean n = 4/9; beta_max = 0.9 + 0.1 / (4/9) = 1.125
    factor = vppo_sequence_scale(signal, mask, torch.zeros(3, dtype=torch.long), 0.9)
    assert factor.tolist() == pytest.approx([0.9, 0.975, 1.125], abs=1e-6)
    assert factor.mean().item() == pytest.approx(1.0, abs=1e-6)
    # two groups: the second has one response, so factor 1; groups are normalised apart
    factor2 = vppo_sequence_scale(signal, mask, torch.tensor([0, 0, 1]), 0.9)
    # group 0: n = (0, 1), mean 1/2, beta_max = 1.1 -> (0.9, 1.1)
    assert factor2.tolist() == pytest.approx([0.9, 1.1, 1.0], abs=1e-6)
    # through the pieces: A = (1, -1, 2); weights = top-40% mask x factor
    rollout = fake_rollout(mask, extra={"token_signal": signal})
    weighting = TokenWeighting(signal_fraction=0.4, scale="vppo", scale_params={"scale_min": 0.9, "scope": "rollout"})
    adv = TokenWeightedEstimator(lambda r, s: torch.tensor([1.0, -1.0, 2.0]), weighting)(rollout, 1)
    # row 0: ceil(5 * .4) = 2 (all tied: positions 0, 1); row 1: 2 of the tied 1s; row 2: 6 and the first 3
    expected = torch.tensor([[0.9, 0.9, 0, 0, 0], [-0.975, -0.975, 0, 0, 0], [2.25, 2.25, 0, 0, 0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert rollout.stats["token_select/fraction"] == pytest.approx(6 / 13)


def test_pgpo_token_weights_paper_and_development_code():
    # log1p(S) = (0, 1, 2, 4) -> I = (0, .25, .5, 1)
    signal = torch.tensor([[0.0, math.e - 1, math.e ** 2 - 1, math.e ** 4 - 1, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    # tau = 0.4, beta = 2: below I / tau = (0, 0.625); above 1 + 2 (I - .4) / .6 = (4/3, 3); sum 4.958333
    raw = torch.tensor([0.0, 0.625, 4 / 3, 3.0])
    w = pgpo_token_scale(signal, mask, 0.4, 2.0, mass_normalize=False)
    assert w[0, :4].tolist() == pytest.approx(raw.tolist(), abs=1e-6) and w[0, 4] == 0
    w = pgpo_token_scale(signal, mask, 0.4, 2.0)  # rescaled to sum to the length, 4
    assert w[0, :4].tolist() == pytest.approx((raw * 4 / raw.sum()).tolist(), abs=1e-6)
    assert w.sum().item() == pytest.approx(4.0, abs=1e-5)
    # development code: tau = ascending I at floor(4 * 0.4) = 1 -> 0.25; floor 0.1; no rescaling
    w = pgpo_token_scale(signal, mask, 0.4, 2.0, threshold_mode="quantile", low_floor=0.1, mass_normalize=False)
    assert w[0, :4].tolist() == pytest.approx([0.1, 1.0, 1.0 + 2 * 0.25 / 0.75, 3.0], abs=1e-6)


def test_tor_weights_batch_thresholds():
    entropy_set = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    signal_set = torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)
    # gamma_r on reasoning tokens (also if perception), gamma_p on perception-only tokens, 0 elsewhere
    assert tor_token_weights(entropy_set, signal_set, 1.0, 0.5).tolist() == [[1.0, 1.0, 0.5, 0.0]]
    assert tor_token_weights(None, signal_set, 1.0, 1.0).tolist() == [[0.0, 1.0, 1.0, 0.0]]  # VPPO's mask
    # through the weighting: thresholds over the batch's 6 valid tokens, ceil(6 * 0.3) = 2 each
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    entropy = torch.tensor([[0.9, 0.1, 0.2, 5.0], [0.8, 0.3, 0.0, 5.0]])  # top 2: (0,0), (1,0)
    signal = torch.tensor([[0.0, 0.7, 0.1, 9.0], [0.5, 0.6, 0.0, 9.0]])  # top 2: (0,1), (1,1)... 0.7, 0.6
    rollout = fake_rollout(mask, prompt_index=[0, 1], extra={"token_signal": signal, "token_entropy": entropy})
    w = TokenWeighting(signal_fraction=0.3, entropy_fraction=0.3, granularity="batch", signal_weight=0.5,
                       entropy_weight=1.0)(rollout)
    assert w.tolist() == [[1.0, 0.5, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0]]


def test_vepo_selection_averages_over_selected_tokens():
    mask = torch.tensor([[1] * 5, [1] * 5, [1] * 4 + [0]])
    score = torch.tensor([[0.1, 0.9, 0.2, 0.3, 0.4], [0.5, 0.4, 0.3, 0.2, 0.1], [0.0, 0.0, 1.0, 0.5, 0.0]])
    # top 20%: ceil(5 * .2) = 1, 1, ceil(4 * .2) = 1 selected tokens; 14 tokens in all
    rollout = fake_rollout(mask, prompt_index=[0, 0, 1], extra={"token_signal": score})
    w = TokenWeighting(signal_fraction=0.2, normalize="selected")(rollout)
    # one mini-batch (no prompts_per_minibatch): N_tok / N_sel = 14 / 3 on each selected token
    assert w[0].tolist() == pytest.approx([0, 14 / 3, 0, 0, 0]) and w[2].tolist() == pytest.approx([0, 0, 14 / 3, 0, 0])
    # token mean over all tokens of (w * l) == mean over the selected tokens of l
    loss = torch.randn(3, 5)
    sel = w > 0
    assert aggregate(w * loss, mask, "token_mean").item() == pytest.approx(loss[sel].mean().item(), abs=1e-6)
    # per mini-batch (prompts 0 | 1): 10 / 2 and 4 / 1
    w2 = TokenWeighting(signal_fraction=0.2, normalize="selected", prompts_per_minibatch=1)(rollout)
    assert w2[0, 1].item() == pytest.approx(5.0) and w2[2, 2].item() == pytest.approx(4.0)
    factor = selected_token_rescale(w2.new_tensor([[1, 0], [0, 0], [1, 1]]), torch.ones(3, 2), torch.tensor([0, 0, 1]))
    assert factor.tolist() == pytest.approx([4.0, 4.0, 1.0])


def test_token_weights_on_the_advantage_weigh_the_clipped_loss():
    """For w >= 0 the clipped surrogate (dual clip included) of w A is w times that of A: selecting or
    scaling through the advantage is the released codes' weighting of each token's policy loss."""
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(4, 6, generator=g) * 0.5
    old = lp + torch.randn(4, 6, generator=g) * 0.6  # ratios far from 1: every clip branch is taken
    adv = torch.randn(4, 1, generator=g).expand(4, 6)
    w = torch.rand(4, 6, generator=g) * (torch.rand(4, 6, generator=g) > 0.4)
    mask = torch.ones(4, 6)
    weighted, _ = clipped_surrogate(lp, old, adv * w, mask, 0.2, 0.28, 3.0)
    plain, _ = clipped_surrogate(lp, old, adv, mask, 0.2, 0.28, 3.0)
    assert torch.allclose(weighted, w * plain, atol=1e-6)


def test_weights_only_on_update_rows_and_vppo_scope_per_minibatch():
    signal = torch.tensor([[1.0, 1.0], [3.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
    mask = torch.ones(4, 2, dtype=torch.long)
    rollout = fake_rollout(mask, prompt_index=[0, 0, 1, 1], extra={"token_signal": signal},
                           update_mask=torch.tensor([True, True, True, True]))
    w = TokenWeighting(scale="vppo", scale_params={"scale_min": 0.9, "scope": "minibatch"},
                       prompts_per_minibatch=1)(rollout)
    # each mini-batch (one prompt, two rows) normalised apart: n = (0, 1), factors (0.9, 1.1)
    assert w[:, 0].tolist() == pytest.approx([0.9, 1.1, 0.9, 1.1])
    rollout.update_mask = torch.tensor([True, True, False, True])
    w = TokenWeighting(scale="vppo", scale_params={"scale_min": 0.9, "scope": "minibatch"},
                       prompts_per_minibatch=1)(rollout)
    assert w[2].tolist() == [0.0, 0.0] and w[3].tolist() == [1.0, 1.0]  # a group of one valid row: factor 1


# ----------------------------------------------------------------------------------------------
# DVRP's robustness term
# ----------------------------------------------------------------------------------------------


def test_dvrp_noise_schedule_and_loss():
    piece = DvrpRobustness(0.01, 0.05, t_init=500, gamma=10.0, t_max=999, total_steps=100, micro_batch_size=8,
                           temperature=1.0)
    # t = 500 sigmoid(10 (0.5 - s / S)): s = 0 -> 496.6; s = 50 -> 250; s = 100 -> 3.35
    assert [piece.noise_step(s) for s in (0, 50, 100)] == [496, 250, 3]
    assert piece.scoring_views(50)["dvrp_noised"] == make_view("ddpm", t=250)
    lp = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_()
    noised = torch.log(torch.tensor([[0.25, 0.5]]))
    mask = torch.ones(1, 2)
    mb = MicroBatch(rows=torch.arange(1), logprobs=lp, old_logprobs=lp.detach(), advantages=torch.zeros(1), mask=mask,
                    entropy=None, extra={"dvrp_noised_logprobs": noised},
                    agg=lambda v: aggregate(v, mask, "token_mean"), token_mean=lambda v: aggregate(v, mask, "token_mean"),
                    policy=None, rollout=None)
    loss, stats = piece(mb)
    k3 = 0.5 + LN2 - 1.0  # d = ln(0.25 / 0.5) at token 0, 0 at token 1
    entropy = -(math.log(0.25) + math.log(0.5)) / 2
    assert loss.item() == pytest.approx(0.01 * k3 / 2 + 0.05 * entropy, abs=1e-6)
    assert stats["dvrp/robustness_kl"].item() == pytest.approx(k3 / 2, abs=1e-6)
    loss.backward()  # d/dlp of k3 = 1 - q/p = 0.5 at token 0: the policy on the image moves towards the noised one
    assert lp.grad.tolist()[0] == pytest.approx([0.01 * 0.5 / 2, 0.0], abs=1e-6)


# ----------------------------------------------------------------------------------------------
# views and config
# ----------------------------------------------------------------------------------------------


def test_views_and_config_errors():
    assert isinstance(make_token_view(TokenViewConfig(name="no_image")), RemoveImage)
    assert make_token_view(TokenViewConfig(name="mask_patches", patch=14, p=0.5)) == make_view("mask_patches", patch=14,
                                                                                                p=0.5)
    bad = [
        (["token_signal.view.name=blur"], "token_signal.view: unknown view 'blur'"),
        (["token_select.signal_fraction=0.4"], "need token_signal.metric"),
        (["token_signal.metric=k3", "token_select.signal_fraction=1.5"], "token_select.signal_fraction must be in (0, 1]"),
        (["token_signal.metric=vepp"], "token_signal.metric must be one of"),
        (["policy_loss.type=gspo"], "set algorithm.dual_clip_c: null"),
        (["algorithm.adv_estimator=rloo"], "adv_estimator rloo takes adv_scale none"),
        (["token_signal.metric=k3", "token_scale.method=vppo", "policy_loss.type=gspo", "algorithm.dual_clip_c=null"],
         "use ppo or cispo"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=None) as err:
            load_config("recipes/grpo.yaml", overrides)
        assert message in str(err.value), (overrides, str(err.value))


# ----------------------------------------------------------------------------------------------
# the signal piece on the tiny model
# ----------------------------------------------------------------------------------------------


def _tiny_rollout(policy, signal: TokenSignal, n_prompts=2, G=2, tokens=6):
    from perceptrl.data.synthetic import SyntheticTask

    class Template:
        def instruction(self, problem):
            return problem

    task = SyntheticTask(["count"], difficulty=1, image_size=56, seed=0)
    batch = [task.train_sample(i) for i in range(n_prompts)]
    torch.manual_seed(0)
    return collect_rollout(policy, batch, [GenSpec("clean", G)], Template(), tokens, 1.0, 1.0,
                           seed_of=lambda p, name: 17 * p + len(name), scoring_views=signal.scoring_views(1))


@pytest.mark.parametrize("metric", ["k3", "abs_log_ratio", "kl_full", "vepo"])
def test_signal_piece_is_zero_for_an_identity_view_and_not_for_a_removed_image(tiny_policy, metric):
    identity = TokenSignal(metric, make_view("clean"), False, micro_batch_size=3, temperature=1.0, need_entropy=True)
    rollout = _tiny_rollout(tiny_policy, identity)
    identity.precompute(tiny_policy, rollout, 1)
    valid = rollout.completions.mask.bool()
    assert valid.any()
    assert torch.allclose(rollout.extra["token_signal"][valid], torch.zeros(int(valid.sum())), atol=1e-5)
    assert torch.all(rollout.extra["token_entropy"][valid] > 0)
    removed = TokenSignal(metric, RemoveImage(), False, micro_batch_size=3, temperature=1.0)
    rollout = _tiny_rollout(tiny_policy, removed)
    assert all(rollout.prompts.image_chunks["pixel_values"][i].shape[0] == 0
               for (p, v), i in rollout.instance_of.items() if v == "token_view")
    removed.precompute(tiny_policy, rollout, 1)
    assert rollout.extra["token_signal"][valid].abs().max() > 1e-4
    assert rollout.stats["token_signal/mean"] > 0


def test_per_rollout_view_draws_one_view_per_completion(tiny_policy):
    piece = TokenSignal("k3", make_view("mask_patches", patch=14, p=0.5), True, micro_batch_size=4, temperature=1.0)
    rollout = _tiny_rollout(tiny_policy, piece, n_prompts=1, G=3)
    rows = rollout.rows_for_view("token_view")
    assert len(set(rows.tolist())) == 3  # one masked instance per completion (VPPO's released code)
    piece.precompute(tiny_policy, rollout, 1)
    assert torch.isfinite(rollout.extra["token_signal"]).all()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_full_vocabulary_signals_in_the_head_equal_whole_logits(family, rgb_images):
    """VPPO's full KL, VEPO's JSD and entropies (hence its score) and ToR's top-p entropy, computed in
    the output head a chunk at a time, equal the whole-logits computation the pieces did before:
    ``[rows, T, V]`` logits of both views (the head on the same head inputs) at the sampling
    temperature, reduced by the whole-logits functions. float32, every tiny family, shared-prompt-prefix
    and plain scoring paths.

    The default chunk (the tiny vocabulary: all tokens in one chunk) and 3-token chunks, where the
    head's products and sums run on other shapes than the whole logits': the per-token quantities
    stay within 1e-5 (measured: up to 3e-6 for the ~5.5-nat entropies, 7e-7 for the KL, 4e-8 for the
    JSD; mostly bit-equal with one chunk). VEPO's score min-max normalises the entropy gap per
    response, a range of ~0.01 over a response of the near-uniform tiny model: that turns 3e-6 into
    up to 3e-4, so the score is compared at 1e-3 (its parts at 1e-5)."""
    from types import SimpleNamespace

    model, processor = build_tiny_family(family, seed=0)
    policy = Policy(model.eval(), processor)
    images = rgb_images[:2]
    enc = policy.encode(["hi there", "what?", "hi there", "what?"], [[images[0]], [images[1]], [], []])
    clean, view = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([2, 2, 3, 3, 3])  # view: the image removed
    ids = torch.randint(0, 250, (5, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    t, head, rollout = 0.7, output_head(model), SimpleNamespace(prompts=enc)
    pieces = {(metric, top_p): TokenSignal(metric, RemoveImage(), False, 5, t, need_entropy=True, entropy_top_p=top_p)
              for metric, top_p in (("kl_full", 0.9), ("vepo", 1.0))}
    for shared in (True, False):
        policy.share_prompt_prefix = shared
        with torch.no_grad():
            policy.logits_chunk = None
            hidden_view = policy.score(enc, view, ids, mask, keep_hidden=True)["hidden"]
            la = head(policy.score(enc, clean, ids, mask, keep_hidden=True)["hidden"]) / t
            lb = head(hidden_view) / t
            jsd, h, hv = jsd_and_entropies(la, lb)
            want = {"kl_full": full_kl(la, lb), "vepo": vepo_score(jsd, h, hv, mask, 0.7),
                    "jsd": jsd, "entropy_gap": (hv - h).abs()}
            for chunk in (None, 3):
                policy.logits_chunk = chunk
                # the head's own columns
                reduction = TokenSignal("vepo", RemoveImage(), False, 5, t, need_entropy=True, entropy_top_p=0.9).reduction
                got = policy.score(enc, clean, ids, mask, temperature=t, kl_hidden=hidden_view, reduce=reduction)
                for name, ref in (("jsd", jsd), ("entropy_clean", h), ("entropy_view", hv),
                                  ("entropy_top_p", truncated_entropy(la, 0.9))):
                    torch.testing.assert_close(got[name], ref, atol=1e-5, rtol=0)
                # the pieces' outputs
                for (metric, top_p), piece in pieces.items():
                    got = piece._score(policy, rollout, clean, view, ids, mask)
                    where = f"{metric} top_p={top_p} shared={shared} chunk={chunk}"
                    tol = 1e-3 if metric == "vepo" else 1e-5
                    torch.testing.assert_close(got["signal"], want[metric], atol=tol, rtol=0, msg=where)
                    torch.testing.assert_close(got["entropy"], truncated_entropy(la, top_p), atol=1e-5, rtol=0, msg=where)
                    if metric == "vepo":
                        for name in ("jsd", "entropy_gap"):
                            torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=0, msg=f"{name} {where}")
        assert (want["kl_full"][mask.bool()] > 1e-4).all() and (jsd[mask.bool()] > 1e-5).all()
        assert not torch.allclose(truncated_entropy(la, 0.9), truncated_entropy(la, 1.0))  # truncation bites

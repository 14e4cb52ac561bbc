"""PPO mini-batches (spec section 1): one optimizer step per mini-batch of whole prompts, ``lp_old``
from one no-grad pass before the first step, clip statistics per optimizer step.

- a hand-built policy whose log-prob of token ``v`` is a parameter ``theta[v]``: the gradient of
  each mini-batch against its closed form, and clip-high, clip-low and dual-clip fractions that
  must fire, exactly;
- the tiny Qwen2.5-VL: the first mini-batch has ratio exactly 1 and the later ones not; cutting a
  mini-batch into micro-batches leaves every optimizer step unchanged; DUPL's shaping in the no-grad
  pass equals its shaping inside a single update (the rollout policy's quantities either way);
- the layout over processes (each mini-batch holds the same prompts whatever their number), the
  per-rollout-step metrics, a skipped mini-batch, and one short run that reads the rollout step
  from 1 for schedules and the optimizer step for the LR schedule.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from perceptrl.config import ConfigError, load_config
from perceptrl.data.types import Sample
from perceptrl.models.policy import Completions, EncodedPrompts
from perceptrl.train.distributed import Distributed
from perceptrl.train.estimators import DuplShaper
from perceptrl.train.plans import BranchSchedule, DuplPaperPlan, DuplReleasedPlan
from perceptrl.train.rollout import GenSpec, collect_rollout
from perceptrl.train.terms import surrogate_term
from perceptrl.train.update import (
    UpdateSettings,
    combine_step_metrics,
    minibatch_rows,
    run_update,
    score_old_policy,
    update_minibatches,
)


class Template:
    def instruction(self, problem):
        return problem


def samples(n, size=28):
    rng = np.random.default_rng(0)
    return [Sample(id=str(i), images=[Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8"))],
                   problem="q" * (3 + i), answer="1") for i in range(n)]


class TablePolicy:
    """``log pi(token v) = theta[v]`` whatever the prompt; completions are scripted.

    Not a normalised policy, but every piece of the update sees what it would from a real one:
    log-probs with a gradient, whose ratio to the rollout's is ``exp(theta[v] - theta_old[v])``.
    """

    pad_token_id = 0

    def __init__(self, ids, mask, vocab):
        self.ids, self.mask = torch.tensor(ids), torch.tensor(mask)
        self.model = torch.nn.Module()
        self.model.theta = torch.nn.Parameter(torch.zeros(vocab))

    def encode(self, texts, images):
        P = max(len(t) for t in texts)
        ids = torch.ones(len(texts), P, dtype=torch.long)
        chunks = [torch.tensor([[float(np.asarray(img).mean())] for img in imgs]) for imgs in images]
        return EncodedPrompts(ids, torch.ones_like(ids), {}, {"pixel_values": chunks})

    def generate(self, encoded, rows, max_new_tokens, temperature=1.0, top_p=1.0):
        return Completions(ids=self.ids, mask=self.mask, rows=torch.as_tensor(rows),
                           truncated=torch.zeros(len(rows), dtype=torch.bool))

    def decode(self, ids, mask):
        return ["" for _ in ids]

    def score(self, prompts, rows, ids, mask, temperature=1.0, with_entropy=False, **_):
        out = {"logprobs": self.model.theta[ids]}
        if with_entropy:
            out["entropy"] = torch.zeros(ids.shape)
        return out


def closed_form_grad(theta, theta_old, ids, mask, adv, eps_low, eps_high, c):
    """d/dtheta of token_mean(-min(rho A, clip(rho) A)) with dual clip, written out token by token:
    a token whose clipped (or dual-clip) bound is selected contributes nothing; another one
    contributes ``-A rho / N`` to its token's entry (d rho / d theta = rho)."""
    grad = torch.zeros_like(theta)
    n = float(mask.sum())
    for i in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            if not mask[i, t]:
                continue
            v, a = int(ids[i, t]), float(adv[i])
            rho = math.exp(float(theta[v] - theta_old[v]))
            clipped = (a > 0 and rho > 1 + eps_high) or (a < 0 and rho < 1 - eps_low)
            dual = a < 0 and rho > c
            if not (clipped or dual):
                grad[v] += -a * rho / n
    return grad


def test_each_minibatch_gradient_is_the_closed_form_and_clips_fire_exactly():
    # 3 prompts x 2 rows x 2 tokens, one prompt per mini-batch; vocabulary of 4 tokens.
    ids = [[0, 0], [1, 1],  # prompt 0: A = +3 on token 0, -1 on token 1 -> theta = (1.5, -0.5, 0, 0)
           [0, 2], [0, 2],  # prompt 1: token 0 now has rho = e^1.5 = 4.48: clip-high on the A > 0 row,
           #                  dual clip (rho > 3) on the A < 0 row; token 2 (rho = 1) trains
           [1, 3], [3, 3]]  # prompt 2: token 1 has rho = e^-0.5 = 0.61 < 0.8 with A < 0: clip-low
    mask = [[1, 1], [1, 1], [1, 1], [1, 1], [1, 1], [1, 0]]
    adv = torch.tensor([3.0, -1.0, 2.0, -1.0, -1.0, 1.0])
    eps_low, eps_high, c = 0.2, 0.28, 3.0
    policy = TablePolicy(ids, mask, vocab=4)
    rollout = collect_rollout(policy, samples(3), [GenSpec("clean", 2)], Template(), 2, 1.0, 1.0,
                              seed_of=lambda p, name: p)
    rollout.advantages = adv
    settings = UpdateSettings("token_mean", micro_batch_size=1, max_grad_norm=1e9, max_len=2, need_entropy=False,
                              terms=[surrogate_term(eps_low, eps_high, c)])
    minibatches = minibatch_rows(rollout, 1, 3)
    assert [m.tolist() for m in minibatches] == [[0, 1], [2, 3], [4, 5]]  # whole prompts, in order
    score_old_policy(policy, rollout, settings, minibatches)
    theta_old = policy.model.theta.detach().clone()
    thetas = [theta_old]
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=1.0)
    steps = update_minibatches(policy, optimizer, None, rollout, settings, None, minibatches,
                               after_step=lambda k: thetas.append(policy.model.theta.detach().clone()))
    thetas.append(policy.model.theta.detach().clone())
    comp = rollout.completions
    for k, rows in enumerate(minibatches):
        expected = closed_form_grad(thetas[k], theta_old, comp.ids[rows], comp.mask[rows], adv[rows], eps_low,
                                    eps_high, c)
        assert torch.allclose(thetas[k] - thetas[k + 1], expected, atol=1e-7), (k, thetas[k + 1], expected)
    assert thetas[1].tolist() == pytest.approx([1.5, -0.5, 0.0, 0.0])
    assert thetas[2].tolist() == pytest.approx([1.5, -0.5, 0.25, 0.0])  # only token 2 trained: (2 - 1) / 4
    # exact fractions of each optimizer step's tokens
    frac = [{k: m[k] for k in ("clip_frac_high", "clip_frac_low", "dual_clip_frac")} for m in steps]
    assert frac == [{"clip_frac_high": 0.0, "clip_frac_low": 0.0, "dual_clip_frac": 0.0},
                    {"clip_frac_high": 0.25, "clip_frac_low": 0.0, "dual_clip_frac": 0.25},
                    {"clip_frac_high": 0.0, "clip_frac_low": 1 / 3, "dual_clip_frac": 0.0}]
    assert steps[0]["ratio_mean"] == 1.0 and steps[0]["ratio_max"] == 1.0 and steps[0]["ppo_kl"] == 0.0
    assert steps[1]["ratio_max"] == pytest.approx(math.exp(1.5), rel=1e-6)
    # ppo_kl: mean of lp_old - lp over the step's tokens: (-1.5 - 1.5 + 0 + 0) / 4
    assert steps[1]["ppo_kl"] == pytest.approx(-0.75)
    combined = combine_step_metrics(steps)
    assert combined["clip_frac_high/first_mb"] == 0.0 and combined["clip_frac_high/later_mbs"] == 0.125
    assert combined["clip_frac_high"] == pytest.approx(0.25 / 3) and combined["ratio_max"] == steps[1]["ratio_max"]
    assert combined["update/optimizer_steps"] == 3.0 and combined["update/skipped_minibatches"] == 0.0


def test_a_nonfinite_minibatch_is_skipped_alone():
    """A non-finite loss in mini-batch 2 skips that optimizer step only: parameters, optimizer state and
    LR schedule untouched by it; mini-batches 1 and 3 still train."""
    policy = TablePolicy([[0, 0], [1, 1]] * 3, [[1, 1]] * 6, vocab=2)
    rollout = collect_rollout(policy, samples(3), [GenSpec("clean", 2)], Template(), 2, 1.0, 1.0,
                              seed_of=lambda p, name: p)
    rollout.advantages = torch.tensor([1.0, -1.0] * 3)
    calls = []

    def poisoned(mb):
        calls.append(1)
        return (mb.logprobs.sum() * math.inf if len(calls) == 2 else torch.zeros(())), {}

    settings = UpdateSettings("token_mean", 64, 1e9, 2, need_entropy=False,
                              terms=[surrogate_term(0.2, 0.2, None), poisoned])
    minibatches = minibatch_rows(rollout, 1, 3)
    score_old_policy(policy, rollout, settings, minibatches)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    seen = []
    steps = update_minibatches(policy, optimizer, scheduler, rollout, settings, None, minibatches,
                               after_step=lambda k: seen.append(policy.model.theta.detach().clone()))
    assert [bool(m.get("skipped_nonfinite_grad")) for m in steps] == [False, True, False]
    assert not torch.equal(seen[0], torch.zeros(2))  # the first one trained
    assert torch.equal(seen[0], seen[1])  # the skipped step changed nothing
    assert not torch.equal(seen[1], policy.model.theta.detach())  # the third one trained
    assert scheduler.last_epoch == 2 and int(optimizer.state[policy.model.theta]["step"]) == 2
    combined = combine_step_metrics(steps)
    assert combined["update/optimizer_steps"] == 2.0 and combined["update/skipped_minibatches"] == 1.0


# ---------------------------------------------------------------------------------------------- tiny model


def _rebind(tiny_policy, model):
    policy = type(tiny_policy).__new__(type(tiny_policy))
    policy.__dict__.update(tiny_policy.__dict__)
    policy.model = model
    return policy


def _tiny_rollout(policy, specs, scoring=None, n_prompts=3, max_new_tokens=6):
    from perceptrl.data.synthetic import SyntheticTask

    task = SyntheticTask(["count"], difficulty=1, image_size=56, seed=0)
    torch.manual_seed(0)
    rollout = collect_rollout(policy, [task.train_sample(i) for i in range(n_prompts)], specs, Template(),
                              max_new_tokens, 1.0, 1.0, seed_of=lambda p, name: 1000 * p + len(name),
                              scoring_views=scoring, row_seeds=True)
    rollout.scores = {"reward": torch.zeros(len(rollout)), "accuracy": torch.zeros(len(rollout))}
    return rollout


def _run_minibatches(tiny_policy, rollout, micro_batch_size, lr=0.02):
    """3 mini-batches of one prompt, SGD: the parameters after each optimizer step, and its metrics.

    lr 0.02: on the shipped (deliberately miscalibrated) warm start, 0.05 moves the third step's
    sampled tokens so far that every ratio falls below 1 (ratio_max 0.15, ppo_kl 5.5); at 0.02 each
    later step has ratios on both sides of 1 (ratio_max 1.37 and 2.22) and clipping acts."""
    policy = _rebind(tiny_policy, copy.deepcopy(tiny_policy.model))
    rollout = copy.copy(rollout)
    rollout.extra = dict(rollout.extra)
    settings = UpdateSettings("token_mean", micro_batch_size, 1e9, 6, terms=[surrogate_term(0.2, 0.28, 3.0)])
    minibatches = minibatch_rows(rollout, 1, 3)
    score_old_policy(policy, rollout, settings, minibatches)

    def flat():
        return torch.cat([p.detach().flatten() for p in policy.model.parameters()])

    trajectory = [flat()]
    steps = update_minibatches(policy, torch.optim.SGD(policy.model.parameters(), lr=lr), None, rollout, settings,
                               None, minibatches, after_step=lambda k: trajectory.append(flat()))
    trajectory.append(flat())
    return trajectory, steps


@pytest.fixture(scope="module")
def warm_policy():
    """The shipped warm start (the tiny model after SFT): gradients of a realistic size, unlike random weights."""
    from perceptrl.config import ModelConfig
    from perceptrl.models.loading import load_policy

    return load_policy(ModelConfig(path="warmstart", device="cpu"))


@pytest.fixture(scope="module")
def tiny_rollout(warm_policy):
    rollout = _tiny_rollout(warm_policy, [GenSpec("clean", 4)])
    # not zero-sum per prompt: the confident warm start often samples a prompt's 4 completions alike
    rollout.advantages = torch.tensor([1.0, 0.5, -0.25, 0.75, 2.0, -1.0, 1.0, 0.5, -1.0, 1.5, 0.5, 0.25])
    return rollout


@pytest.fixture(scope="module")
def whole_minibatches(warm_policy, tiny_rollout):
    """3 optimizer steps, each on one mini-batch in one micro-batch."""
    return _run_minibatches(warm_policy, tiny_rollout, micro_batch_size=64)


def test_first_minibatch_has_ratio_one_and_later_ones_do_not(whole_minibatches):
    trajectory, steps = whole_minibatches
    assert all((b - a).abs().max() > 0 for a, b in zip(trajectory, trajectory[1:]))  # each step trains
    first = steps[0]
    assert first["ratio_mean"] == 1.0 and first["ratio_max"] == 1.0 and first["ppo_kl"] == 0.0  # exactly
    assert first["clip_frac_high"] == first["clip_frac_low"] == 0.0
    for later in steps[1:]:
        assert later["ratio_max"] > 1.0 and later["ratio_mean"] != 1.0 and later["ppo_kl"] != 0.0


def test_splitting_a_minibatch_into_micro_batches_leaves_each_step_unchanged(warm_policy, tiny_rollout,
                                                                            whole_minibatches):
    whole, whole_steps = whole_minibatches
    split, split_steps = _run_minibatches(warm_policy, tiny_rollout, micro_batch_size=3)  # 3 + 1 rows
    for k, (a, b) in enumerate(zip(whole, split)):
        assert torch.allclose(a, b, atol=1e-6), (k, float((a - b).abs().max()))
    for a, b in zip(whole_steps, split_steps):
        for key in ("loss", "grad_norm", "clip_frac_high", "clip_frac_low", "ratio_mean", "ppo_kl"):
            # the gradient norm of the 2nd and 3rd steps carries float32 rounding of the steps before it:
            # measured 0.6e-5 (whole logits) and 1.5e-5 (chunked output head) relative, 3 + 1 rows against 4
            rel = 5e-5 if key == "grad_norm" else 1e-5
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-7), key


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_dupl_shaping_before_several_steps_uses_the_rollout_policy(tiny_policy, variant):
    """With several optimizer steps DUPL's shaper runs in the no-grad pass before them; its advantages
    equal those the single-step path computes inside its one update (both from the rollout policy)."""
    if variant == "paper":
        plan = DuplPaperPlan(2, 0.4, BranchSchedule("constant", 10, 0.5, seed=0))
    else:
        plan = DuplReleasedPlan(2, 0.4, BranchSchedule("linear", 10, 0.5, seed=0), 64, 1.0)
    rollout = _tiny_rollout(tiny_policy, plan.gen_specs(1), plan.scoring_views(1), n_prompts=2)
    plan.prepare(rollout, 1)
    policy = _rebind(tiny_policy, copy.deepcopy(tiny_policy.model))
    plan.precompute(policy, rollout, 1)
    rollout.advantages = torch.tensor([1.0, -0.5, 2.0, -1.0] * (len(rollout) // 4))
    shaper = DuplShaper(variant, 1.0, 2.0, 0.4, 2.0)
    settings = UpdateSettings("token_mean", 3, 1e9, 6, keep_hidden=variant == "paper",
                              terms=[surrogate_term(0.2, 0.2, 3.0)], shapers=[shaper])
    single = copy.copy(rollout)
    single.extra = dict(rollout.extra)
    run_update(policy, torch.optim.SGD(policy.model.parameters(), lr=0.0), single, settings)
    before = score_old_policy(policy, rollout, settings, minibatch_rows(rollout, 1, 2))
    rows = rollout.update_indices()
    m = rollout.completions.mask[rows].bool()
    got, expected = rollout.extra["token_advantages"][rows], single.extra["token_advantages"][rows]
    assert torch.allclose(got[m], expected[m], atol=1e-5)
    assert (got[m] != rollout.advantages[rows].unsqueeze(-1).expand_as(got)[m]).any()  # it did shape
    assert before["dupl/u_out"] > 0
    # several mini-batches without the pass before them: refused, rather than shaping with a moved policy
    fresh = copy.copy(rollout)
    fresh.extra = {k: v for k, v in rollout.extra.items() if k not in ("token_advantages", "old_logprobs")}
    with pytest.raises(RuntimeError, match="score_old_policy"):
        run_update(policy, torch.optim.SGD(policy.model.parameters(), lr=0.0), fresh, settings,
                   rows=minibatch_rows(fresh, 1, 2)[0])


# ---------------------------------------------------------------------------------------------- processes


def test_each_minibatch_holds_the_same_prompts_on_any_number_of_processes():
    """12 prompts, mini-batches of 4: on 1, 2 or 4 processes mini-batch k is global prompts 4k..4k+3
    (each process its contiguous share of it), so every optimizer step sees the same data."""
    def layout(world):
        per_process = []
        for rank in range(world):
            dist = Distributed()
            dist.rank, dist.world_size = rank, world
            positions = dist.prompt_positions(100, 12 // world, 4 // world)
            per_process.append([positions[k * (4 // world):(k + 1) * (4 // world)] for k in range(3)])
        return [sorted(q for rank in per_process for q in rank[k]) for k in range(3)]

    expected = [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109, 110, 111]]
    assert layout(1) == layout(2) == layout(4) == expected
    dist = Distributed()
    dist.rank, dist.world_size = 1, 2
    assert dist.prompt_positions(100, 6, 2) == [102, 103, 106, 107, 110, 111]
    assert dist.prompt_positions(100, 3, 3) == [103, 104, 105]  # one block: a dynamic-sampling round


def test_minibatch_and_round_sizes_must_split_over_processes():
    dist = Distributed()
    dist.world_size = 2
    dist.check(load_config("recipes/papo_g.yaml", ["data.rollout_batch_size=8", "train.global_batch_size=4"]))
    with pytest.raises(ConfigError, match=r"train.global_batch_size \(3\) must be divisible by the number"):
        dist.check(load_config("recipes/papo_g.yaml", ["data.rollout_batch_size=6", "train.global_batch_size=3"]))
    with pytest.raises(ConfigError, match=r"filters.round_prompts \(5\) must be divisible"):
        dist.check(load_config("recipes/papo_d.yaml", ["data.rollout_batch_size=8", "filters.round_prompts=5"]))
    with pytest.raises(ConfigError, match="must divide data.rollout_batch_size"):
        load_config("recipes/papo_g.yaml", ["data.rollout_batch_size=8", "train.global_batch_size=3"])


# ---------------------------------------------------------------------------------------------- the loop


def test_loop_counts_rollout_steps_from_one_and_the_lr_schedule_in_optimizer_steps(tmp_path, monkeypatch):
    """DUPL (paper plan, two groups per prompt) with 3 prompts in mini-batches of one: p_noi(s) = 1 - s/S
    read at s = 1, 2 (S = 2), three optimizer steps per rollout step, a warm-up of 8 optimizer steps.
    The second optimizer step of rollout step 2 has an infinite loss: skipped alone, and counted."""
    import dataclasses

    from perceptrl.train import rl
    from perceptrl.train.rl import train

    calls = []

    def faulty_update(policy, optimizer, rollout, settings, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            infinite = [lambda mb: (mb.logprobs.sum() * math.inf, {})]
            settings = dataclasses.replace(settings, terms=[*settings.terms, *infinite])
        return run_update(policy, optimizer, rollout, settings, *args, **kwargs)

    monkeypatch.setattr(rl, "run_update", faulty_update)

    config = load_config("recipes/dupl.yaml", [
        "data.rollout_batch_size=3", "train.global_batch_size=1", "rollout.n=2", "rollout.max_new_tokens=6",
        "data.val_per_family=1", "train.max_steps=2", "train.warmup_steps=8", "train.lr=1e-3",
        "train.progress=false", "train.num_threads=1", "train.save_final=false", f"train.output_dir={tmp_path}"])
    result = train(config)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["dupl/p_noi"] for r in steps] == [0.5, 0.0]  # s = 1, 2 (0-based counting would give 1.0, 0.5)
    assert [r["update/optimizer_steps"] for r in steps] == [3.0, 2.0]
    assert [r.get("skipped_step", 0.0) for r in steps] == [0.0, 1.0] and steps[1]["skipped_steps"] == 1
    assert [r["bad_steps"] for r in steps] == [0, 1]
    # LambdaLR factor (k + 1) / 8 after k optimizer steps taken: 3, then 5 (the skipped one does not count)
    assert [r["lr"] for r in steps] == pytest.approx([1e-3 * 4 / 8, 1e-3 * 6 / 8])
    assert steps[0]["ratio_mean/first_mb"] == 1.0 and steps[0]["update/rows"] == 6.0  # one branch of 2 x 2 x 3
    assert "clip_frac_high/later_mbs" in steps[0] and result.history[0]["time/scoring/old"] > 0

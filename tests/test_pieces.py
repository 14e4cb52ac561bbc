"""The recipe pieces one by one: plans, rollout subset/merge, estimators, shapers, terms, filters.

Most tests run on a model-free stand-in policy (instant); the ones that check forward passes
(PAPO gradients, DUPL in-update shaping, merged rollouts scoring like their parts) use the tiny
Qwen2.5-VL.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from perceptrl.algorithms.advantages import dupl_shape
from perceptrl.algorithms.schedules import make_schedule
from perceptrl.algorithms.uncertainty import sym_kl_full, sym_kl_pointwise
from perceptrl.config import ConfigError, canonical_recipe, load_config
from perceptrl.data.types import Sample
from perceptrl.models.policy import Completions, EncodedPrompts
from perceptrl.train.estimators import DuplShaper, GroupEstimator, NoisyGrpoEstimator
from perceptrl.train.filters import DynamicSampling, OverlongMask, OverlongPenalty
from perceptrl.train.plans import (
    BranchSchedule,
    DuplPaperPlan,
    DuplReleasedPlan,
    LadderPlan,
    NoisyRolloutPlan,
)
from perceptrl.train.recipe import build_recipe
from perceptrl.train.rollout import GenSpec, collect_rollout, merge_rollouts
from perceptrl.train.terms import PapoPerception, entropy_bonus_term, reference_kl_term
from perceptrl.train.update import MicroBatch, UpdateSettings, run_update, score_no_grad

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


class Template:
    def instruction(self, problem):
        return problem


class FakePolicy:
    """Model-free stand-in: prompt ids from the text, one pixel chunk per instance, scripted completions.

    Completion ``r`` of a call has length ``lengths[r]`` (cycled) and ids ``100 + generating instance``.
    """

    pad_token_id = 0

    def __init__(self, lengths=(3,), T=4):
        self.lengths, self.T = lengths, T

    def encode(self, texts, images):
        P = max(len(t) for t in texts)
        ids = torch.zeros(len(texts), P, dtype=torch.long)
        att = torch.zeros(len(texts), P, dtype=torch.long)
        for i, t in enumerate(texts):
            ids[i, P - len(t):] = torch.tensor([ord(c) for c in t])
            att[i, P - len(t):] = 1
        chunks = [torch.tensor([[float(np.asarray(img).mean())] for img in imgs]) for imgs in images]
        return EncodedPrompts(ids, att, {}, {"pixel_values": chunks})

    def generate(self, encoded, rows, max_new_tokens, temperature=1.0, top_p=1.0):
        rows = torch.as_tensor(rows)
        R = len(rows)
        lengths = torch.tensor([self.lengths[r % len(self.lengths)] for r in range(R)])
        mask = (torch.arange(self.T).unsqueeze(0) < lengths.unsqueeze(1)).long()
        ids = torch.where(mask.bool(), 100 + rows.unsqueeze(1).expand(R, self.T), torch.zeros_like(mask))
        return Completions(ids=ids, mask=mask, rows=rows, truncated=lengths >= self.T)

    def decode(self, ids, mask):
        return [" ".join(str(int(x)) for x in row[: int(m.sum())]) for row, m in zip(ids, mask)]


def samples(n, size=28, text_len=None):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8"))
        problem = "q" * (text_len[i % len(text_len)] if text_len else 3 + i % 4)
        out.append(Sample(id=str(i), images=[img], problem=problem, answer="1"))
    return out


def collect(policy, batch, specs, scoring=None, max_new_tokens=4):
    return collect_rollout(policy, batch, specs, Template(), max_new_tokens, 1.0, 1.0,
                           seed_of=lambda p, name: 1000 * p + len(name), scoring_views=scoring)


def score(rollout, accuracy):
    rollout.scores = {"accuracy": torch.tensor(accuracy, dtype=torch.float32),
                      "reward": torch.tensor(accuracy, dtype=torch.float32),
                      "format": torch.ones(len(accuracy))}
    return rollout


def make_mb(lp, mask, advantages=None, **kw):
    mask = torch.as_tensor(mask, dtype=torch.float32)
    n_tok = float(mask.sum())
    from perceptrl.algorithms.losses import aggregate

    defaults = dict(
        rows=torch.arange(lp.shape[0]), logprobs=lp, old_logprobs=lp.detach(),
        advantages=advantages if advantages is not None else torch.zeros(lp.shape[0]), mask=mask,
        entropy=None, extra={}, agg=lambda v: aggregate(v, mask, "token_mean", n_tok),
        token_mean=lambda v: aggregate(v, mask, "token_mean", n_tok), policy=None, rollout=None,
    )
    defaults.update(kw)
    return MicroBatch(**defaults)


# ----------------------------------------------------------------------------------------------
# rollout plans
# ----------------------------------------------------------------------------------------------


def test_noisy_rollout_plan_rows_and_annealed_t():
    schedule = make_schedule("sigmoid", 100, lam=30.0, s_mid=40.0)
    plan = NoisyRolloutPlan(n1=2, n2=3, t_max=500, schedule=schedule)
    # t = int(500 * eta(s)); eta(0) = 0.999994, eta(40) = 0.5, eta(50) = 0.0474, eta(60) = 0.0025
    assert [plan.gen_specs(s)[1].view.params["t"] for s in (0, 40, 50, 60)] == [499, 250, 23, 1]
    rollout = collect(FakePolicy(), samples(2), plan.gen_specs(40))
    plan.prepare(rollout, 40)
    assert rollout.stats == {"noisy_rollout/eta": pytest.approx(0.5), "noisy_rollout/t": 250.0}
    assert rollout.gen_view == ["clean"] * 2 + ["noisy_rollout"] * 3 + ["clean"] * 2 + ["noisy_rollout"] * 3
    assert rollout.group_ids.tolist() == [0] * 5 + [1] * 5  # one group over n1 + n2
    clean = rollout.rows_for_view("clean")
    assert torch.equal(rollout.update_rows, clean)  # every row updated on the clean image
    assert not torch.equal(rollout.completions.rows, clean)  # but the noisy ones generated elsewhere
    noisy_inst = rollout.instance_of[(0, "noisy_rollout")]
    assert rollout.completions.rows[2:5].tolist() == [noisy_inst] * 3  # one noisy image per prompt


def test_ladder_plan_rows_tags_and_clean_first_level():
    plan = LadderPlan(8, [0.0, 0.3, 0.6, 0.9], clean_first_level=True)
    assert [(s.name, s.count, s.tags["noise_level"]) for s in plan.gen_specs(0)] == [
        ("clean", 2, 0.0), ("ladder_0.3", 2, 0.3), ("ladder_0.6", 2, 0.6), ("ladder_0.9", 2, 0.9)]
    assert plan.gen_specs(0)[3].view.params == {"t": 900}
    rollout = collect(FakePolicy(), samples(2), plan.gen_specs(0))
    plan.prepare(rollout, 0)
    assert rollout.tags["noise_level"].tolist() == pytest.approx([0, 0, .3, .3, .6, .6, .9, .9] * 2)
    assert rollout.group_ids.tolist() == [0] * 8 + [1] * 8
    assert torch.equal(rollout.update_rows, rollout.rows_for_view("clean"))
    assert rollout.stats["noisy_grpo/noise_level_mean"] == pytest.approx(0.45)
    assert rollout.stats["noisy_grpo/noise_level_max"] == pytest.approx(0.9)
    code_like = LadderPlan(4, [0.0, 0.3, 0.6, 0.9], clean_first_level=False)
    assert code_like.gen_specs(0)[0].view.params == {"t": 0}  # their code: ddpm(t=0) on level 0


def test_dupl_paper_plan_groups_update_rows_and_branch_choice():
    G = 3
    plan = DuplPaperPlan(G, sigma=0.4, branch=BranchSchedule("linear", 10, 0.5, seed=1))
    rollout = collect(FakePolicy(), samples(2), plan.gen_specs(4))
    plan.prepare(rollout, 4)
    assert rollout.group_ids.tolist() == [0] * G + [1] * G + [2] * G + [3] * G  # clean and noisy apart
    noisy = rollout.tags["noisy_branch"].bool()
    assert noisy.tolist() == ([False] * G + [True] * G) * 2
    tx = rollout.rows_for_view("dupl_tx")
    assert torch.equal(rollout.update_rows[noisy], tx[noisy])  # noisy rows updated on x'
    assert torch.equal(rollout.update_rows[~noisy], rollout.rows_for_view("clean")[~noisy])
    # exactly one sample of every (clean o_i, noisy o'_i) pair is trained on
    keep = rollout.update_mask.view(2, 2, G)
    assert torch.equal(keep[:, 0] ^ keep[:, 1], torch.ones(2, G, dtype=torch.bool))
    draws = torch.from_numpy(plan.branch.draw_for_prompts(4, [0, 1], G))  # no data positions: prompts 0, 1
    assert torch.equal(keep[:, 1], draws)
    assert rollout.stats["dupl/p_noi"] == pytest.approx(0.6)  # 1 - 4 / 10


def test_dupl_branch_draws_do_not_depend_on_the_number_of_processes():
    """Each prompt's branch draws are seeded by its global data position: the 4 prompts of a step
    rolled out by one process, or 2 + 2 by two processes, pick the same branches."""
    G = 4
    plan = DuplPaperPlan(G, sigma=0.4, branch=BranchSchedule("constant", 10, 0.5, seed=1))

    def chosen(positions):
        rollout = collect(FakePolicy(), samples(len(positions)), plan.gen_specs(3))
        rollout.tags["data_position"] = torch.tensor(positions)[rollout.prompt_index]
        plan.prepare(rollout, 3)
        return rollout.update_mask.view(len(positions), 2, G)[:, 1]  # noisy sample picked, per pair

    one = chosen([8, 9, 10, 11])
    two = torch.cat([chosen([8, 9]), chosen([10, 11])])
    assert torch.equal(one, two)
    assert 0 < int(one.sum()) < one.numel()  # a real mix of branches
    assert not torch.equal(chosen([8, 9, 10, 11]), chosen([12, 13, 14, 15]))  # other prompts, other draws


def test_dupl_branch_draws_are_seeded_and_follow_p_noi():
    branch = BranchSchedule("linear", 100, 0.5, seed=3)
    assert [branch.p(s) for s in (0, 25, 100, 150)] == [1.0, 0.75, 0.0, 0.0]
    a, b = branch.draw(25, (400, 8)), branch.draw(25, (400, 8))
    assert np.array_equal(a, b)  # a pure function of (seed, step): exact on resume
    assert not np.array_equal(a, branch.draw(26, (400, 8)))
    assert abs(a.mean() - 0.75) < 0.03
    assert branch.draw(0, (50,)).all() and not branch.draw(100, (50,)).any()
    per_prompt = branch.draw_for_prompts(25, list(range(400)), 8)
    assert np.array_equal(per_prompt, branch.draw_for_prompts(25, list(range(400)), 8))
    assert np.array_equal(per_prompt[7:9], branch.draw_for_prompts(25, [7, 8], 8))  # by position, not index
    assert abs(per_prompt.mean() - 0.75) < 0.03
    assert BranchSchedule("constant", 100, 0.5, seed=3).p(70) == 0.5


def test_dupl_released_plan_scores_noisy_view_only_on_noisy_steps():
    branch = BranchSchedule("linear", 10, 0.5, seed=0)
    plan = DuplReleasedPlan(2, sigma=0.2, branch=branch, micro_batch_size=8, temperature=1.0)
    assert plan.noisy_step(0) and not plan.noisy_step(10)
    assert plan.scoring_views(10) == {}
    rollout = collect(FakePolicy(), samples(2), plan.gen_specs(0), scoring=plan.scoring_views(0))
    assert len(set(rollout.rows_for_view("dupl_tx").tolist())) == 2  # one T(x) per prompt
    plan = DuplReleasedPlan(2, sigma=0.2, branch=branch, micro_batch_size=8, temperature=1.0, per_rollout=True)
    rollout = collect(FakePolicy(), samples(2), plan.gen_specs(0), scoring=plan.scoring_views(0))
    plan.prepare(rollout, 0)
    # per_rollout: T(x) drawn afresh for every rollout, as their _get_augmented_log_probs
    tx = rollout.rows_for_view("dupl_tx")
    assert len(set(tx.tolist())) == 4
    assert torch.equal(rollout.update_rows, rollout.rows_for_view("clean"))
    assert rollout.tags["noisy_branch"].tolist() == [1.0] * 4 and rollout.stats["dupl/noisy_fraction"] == 1.0


# ----------------------------------------------------------------------------------------------
# rollout subset and merge
# ----------------------------------------------------------------------------------------------


def _prompt_of_row(rollout, r):
    i = int(rollout.update_rows[r])
    ids = rollout.prompts.input_ids[i][rollout.prompts.attention_mask[i].bool()]
    return ids.tolist(), rollout.prompts.image_chunks["pixel_values"][i].tolist()


def test_subset_and_merge_keep_every_row_pointing_at_its_own_prompt():
    policy = FakePolicy(lengths=(1, 2, 3, 4), T=4)
    r1 = score(collect(policy, samples(3, text_len=[2, 5, 3]), [GenSpec("clean", 2)]), [0, 1] * 3)
    policy.T = 6
    r2 = score(collect(policy, samples(2, text_len=[9, 4]), [GenSpec("clean", 2)]), [1, 1, 0, 1])
    part1 = r1.subset(torch.tensor([2, 3, 4, 5]))  # prompts 1 and 2
    part2 = r2.subset(torch.tensor([2, 3]))  # prompt 1
    merged = merge_rollouts([part1, part2])
    assert len(merged.samples) == 3 and len(merged) == 6
    assert merged.prompts.prompt_length == max(part1.prompts.prompt_length, part2.prompts.prompt_length)
    assert merged.completions.ids.shape[1] == 6
    assert merged.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert merged.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert merged.scores["accuracy"].tolist() == [0, 1, 0, 1, 0, 1]
    originals = [(r1, 2), (r1, 3), (r1, 4), (r1, 5), (r2, 2), (r2, 3)]
    for r, (orig, o) in enumerate(originals):
        assert _prompt_of_row(merged, r) == _prompt_of_row(orig, o)
        n = int(orig.completions.mask[o].sum())
        assert merged.completions.ids[r, :n].tolist() == orig.completions.ids[o, :n].tolist()
        assert int(merged.completions.mask[r].sum()) == n
        assert merged.samples[int(merged.prompt_index[r])] is orig.samples[int(orig.prompt_index[o])]


def test_merged_rollout_scores_like_its_parts(tiny_policy):
    from perceptrl.data.synthetic import SyntheticTask

    task = SyntheticTask(["count"], difficulty=1, image_size=56, seed=0)
    batch = [task.train_sample(i) for i in range(3)]
    batch[1].problem = batch[1].problem + " Think carefully, then answer."  # a longer prompt
    torch.manual_seed(0)
    r1 = collect(tiny_policy, batch[:1], [GenSpec("clean", 2)], max_new_tokens=5)
    r2 = collect(tiny_policy, batch[1:], [GenSpec("clean", 2)], max_new_tokens=8)
    merged = merge_rollouts([r1, r2.subset(torch.tensor([2, 3, 0]))])
    whole = score_no_grad(tiny_policy, merged, merged.update_rows, 64)["logprobs"]
    parts = [score_no_grad(tiny_policy, r, r.update_rows, 64)["logprobs"] for r in (r1, r2)]
    for r, (p, o) in enumerate([(0, 0), (0, 1), (1, 2), (1, 3), (1, 0)]):
        n = int(merged.completions.mask[r].sum())
        assert torch.allclose(whole[r, :n], parts[p][o, :n], atol=1e-5)


# ----------------------------------------------------------------------------------------------
# filters
# ----------------------------------------------------------------------------------------------


def _scripted_rounds(accuracies_per_round, G=2):
    """rollout_once returning rounds with the given per-row accuracies, on fresh prompts."""
    rounds = iter(accuracies_per_round)
    position = [0]

    def next_prompts(n):
        position[0] += n
        return samples(n, text_len=[2 + position[0] % 5])

    def rollout_once(batch):
        return score(collect(FakePolicy(), batch, [GenSpec("clean", G)]), next(rounds))

    return next_prompts, rollout_once, position


def test_dynamic_sampling_merges_rounds_until_full():
    # 3 prompts per round, G = 2; group accuracy means per round: (1, .5, 0), (0, 0, .5), (.5, .5, 1)
    acc = [[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1], [1, 0, 0, 1, 1, 1]]
    next_prompts, rollout_once, position = _scripted_rounds(acc)
    rollout = DynamicSampling(0.01, 0.99, max_tries=20, round_prompts=3)(next_prompts, rollout_once, 3)
    assert position[0] == 9  # three rounds of three prompts
    assert len(rollout.samples) == 3 and len(rollout) == 6
    assert rollout.scores["accuracy"].tolist() == [1, 0, 0, 1, 1, 0]  # kept groups, in order
    assert rollout.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert rollout.stats["dapo/rounds"] == 3.0 and rollout.stats["dapo/shortfall"] == 0.0
    assert rollout.stats["dapo/groups_dropped"] == 5.0  # 2 + 2 + 1 (the third round's last group)
    assert rollout.stats["dapo/accuracy_generated"] == pytest.approx(8 / 18)
    assert rollout.update_mask is None


def test_dynamic_sampling_stops_after_max_tries_and_logs_shortfall():
    # round 1: one informative group of two; round 2: one of two (the released code would raise here)
    acc = [[0, 1, 0, 0], [1, 1, 0, 1], [0, 1, 0, 1]]
    next_prompts, rollout_once, position = _scripted_rounds(acc)
    rollout = DynamicSampling(0.01, 0.99, max_tries=2, round_prompts=2)(next_prompts, rollout_once, 4)
    assert position[0] == 4 and len(rollout.samples) == 2 and rollout.stats["dapo/shortfall"] == 2.0
    assert rollout.scores["accuracy"].tolist() == [0, 1, 0, 1]
    assert rollout.stats["dapo/rounds"] == 2.0 and rollout.stats["dapo/groups_dropped"] == 2.0


def test_dynamic_sampling_keeps_a_round_in_which_no_group_passes_whole():
    """As released (PAPO ``_make_batch_data``): a round without an informative group is kept whole and
    counts towards the batch, which is then cut to exactly the requested prompts."""
    # round 1: group means (.5, 0) -> prompt 0 kept; round 2: (1, 1, 0) all uninformative -> kept whole,
    # cut to 2 of its 3 prompts
    acc = [[1, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
    rounds = iter([2, 3])
    next_prompts, rollout_once, position = _scripted_rounds(acc)
    sampler = DynamicSampling(0.01, 0.99, max_tries=20, round_prompts=0)
    rollout = sampler(lambda n: next_prompts(next(rounds)), rollout_once, 3)
    assert position[0] == 5 and len(rollout.samples) == 3 and len(rollout) == 6  # exactly 3 prompts
    assert rollout.scores["accuracy"].tolist() == [1, 0, 1, 1, 1, 1]
    assert rollout.stats["dapo/rounds_kept_whole"] == 1.0 and rollout.stats["dapo/shortfall"] == 0.0
    assert rollout.stats["dapo/groups_dropped"] == 1.0  # round 1's (0, 0); round 2 dropped nothing
    assert rollout.update_mask is None
    # the first round uninformative: it alone fills the batch
    next_prompts, rollout_once, _ = _scripted_rounds([[0, 0, 1, 1]] * 3)
    whole = DynamicSampling(0.01, 0.99, max_tries=3, round_prompts=2)(next_prompts, rollout_once, 2)
    assert len(whole) == 4 and whole.stats["dapo/rounds"] == 1.0 and whole.stats["dapo/shortfall"] == 0.0


def test_dynamic_sampling_keeps_a_prompt_only_if_all_its_groups_pass():
    plan = DuplPaperPlan(2, sigma=0.4, branch=BranchSchedule("linear", 10, 0.5, seed=0))
    rollout = score(collect(FakePolicy(), samples(2), plan.gen_specs(0)), [0, 1, 0, 0, 1, 0, 0, 1])
    prompts, dropped = DynamicSampling(0.01, 0.99, 1, 0).keep_prompts(rollout)
    assert prompts == [1] and dropped == 1


def test_overlong_penalty_and_mask():
    rollout = score(collect(FakePolicy(lengths=(4, 5, 7, 8), T=8), samples(1), [GenSpec("clean", 4)]), [1, 1, 0, 0])
    OverlongPenalty(max_len=8, cache_len=4).prepare(rollout, 0)
    # L_max - L_cache = 4: 0 up to 4 tokens, then (4 - |y|) / 4
    assert rollout.scores["overlong_penalty"].tolist() == pytest.approx([0.0, -0.25, -0.75, -1.0])
    assert rollout.scores["reward"].tolist() == pytest.approx([1.0, 0.75, -0.75, -1.0])
    OverlongMask().prepare(rollout, 0)
    assert rollout.update_mask.tolist() == [True, True, True, False]  # only the truncated one
    assert rollout.stats["overlong/masked"] == 0.25


# ----------------------------------------------------------------------------------------------
# advantage estimators and DUPL shaping
# ----------------------------------------------------------------------------------------------


def test_noisy_grpo_estimator_check_values():
    rollout = SimpleNamespace(
        scores={"reward": torch.tensor([1.0, 1.0, 0.0, 0.0])}, tags={"noise_level": torch.tensor([0.0, 0.3, 0.6, 0.9])},
        group_ids=torch.zeros(4, dtype=torch.long), stats={},
    )
    adv = NoisyGrpoEstimator(0.01, 0.1, 1e-4)(rollout, 0)
    assert adv.tolist() == pytest.approx([0.9504, 0.7723, -0.7723, -0.9504], abs=1e-4)
    assert rollout.stats["noisy_grpo/kalman_gain"] == pytest.approx(0.2256, abs=1e-4)


def test_group_estimator_scales():
    rollout = SimpleNamespace(scores={"reward": torch.tensor([1.0, 0.0, 0.5, 0.5])}, group_ids=torch.tensor([0, 0, 1, 1]))
    assert GroupEstimator("none", 1e-6)(rollout, 0).tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    assert GroupEstimator("group", 1e-6)(rollout, 0).tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2), 0, 0], abs=1e-5)


def test_dupl_released_shaping_hand_case():
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)
    lp_raw = torch.tensor([[-0.1, -2.0], [-0.5, -1.0]])
    lp_noisy = torch.tensor([[-0.3, -1.0], [-0.5, -2.0]])
    rollout = SimpleNamespace(tags={"noisy_branch": torch.ones(2)})
    mb = make_mb(lp_raw.clone(), mask, adv, extra={"noisy_logprobs": lp_noisy}, rollout=rollout)
    shaped, stats = DuplShaper("released", 1.0, 2.0, 0.4, 2.0)(mb)
    # u_per = (p - q)(log p - log q) / 2 = [[.0164019, .116272], [0, .116272]];
    # u_out = -q log q under T(x) = [[.2222455, .367879], [.3032653, .270671]];
    # A' = A + min(|A|/2, u_per); A_hat = A' + min(|A'|/2, 0.4 u_out)
    assert shaped.tolist()[0] == pytest.approx([1.1053001, 1.2634236], abs=1e-6)
    assert shaped.tolist()[1] == pytest.approx([-0.8786939, -0.7754596], abs=1e-6)
    assert float(stats["dupl/u_per"][0] / stats["dupl/u_per"][1]) == pytest.approx((0.0164019 + 2 * 0.116272) / 4, abs=1e-6)
    # raw draw: only g_out from the sampled-token entropy under x, and zero where A = 0
    rollout.tags["noisy_branch"] = torch.zeros(2)
    mb = make_mb(lp_raw.clone(), mask, torch.tensor([2.0, 0.0]), rollout=rollout)
    shaped, stats = DuplShaper("released", 1.0, 2.0, 0.4, 2.0)(mb)
    u = -lp_raw.exp() * lp_raw
    assert shaped[0].tolist() == pytest.approx((2.0 + 0.4 * u[0]).tolist(), abs=1e-6)
    assert shaped[1].tolist() == [0.0, 0.0] and "dupl/u_per" not in stats


class _LogitsPolicy:
    """Returns fixed logits under the clean image (the paper shaper's extra forward)."""

    def __init__(self, logits):
        self.logits = logits

    def score(self, prompts, rows, ids, mask, temperature=1.0, with_logits=False, **_):
        return {"logits": self.logits[: len(rows)]}


def test_dupl_paper_shaping_hand_case():
    # row 0: raw branch (x, o); row 1: noisy branch (x', o'), one token each, vocabulary of 3
    adv = torch.tensor([-1.0, 1.0])
    entropy = torch.tensor([[2.0], [0.1]])  # full-vocabulary entropy under each row's update view
    under_noisy = torch.tensor([[[0.0, 0.0, 0.0]], [[math.log(2.0), 0.0, 0.0]]])  # Q = (1/2, 1/4, 1/4)
    under_x = torch.zeros(1, 1, 3)  # P = uniform
    rollout = SimpleNamespace(
        tags={"noisy_branch": torch.tensor([0.0, 1.0])}, prompts=None, rows_for_view=lambda v: torch.tensor([0, 0]),
        completions=SimpleNamespace(ids=torch.zeros(2, 1, dtype=torch.long), mask=torch.ones(2, 1)),
    )
    mb = make_mb(torch.zeros(2, 1), torch.ones(2, 1), adv, entropy=entropy, logits=under_noisy,
                 rollout=rollout, policy=_LogitsPolicy(under_x))
    shaped, stats = DuplShaper("paper", 1.0, 2.0, 0.4, 2.0)(mb)
    # u_per = sum_v (p - q)(log p - log q) / 2 = 0.0577623; g_per = 0.0577623, g_out = min(.5, .04)
    assert shaped[1].item() == pytest.approx(1.0 + 0.04 + 0.0577623, abs=1e-6)
    assert shaped[0].item() == pytest.approx(-1.0 + 0.5)  # g_out = min(|A|/2, 0.4 * 2.0) = 0.5
    assert float(stats["dupl/u_per"][0] / stats["dupl/u_per"][1]) == pytest.approx(0.0577623, abs=1e-6)


def _tiny_rollout(policy, specs, scoring=None, n_prompts=2, max_new_tokens=6, seed=0):
    from perceptrl.data.synthetic import SyntheticTask

    task = SyntheticTask(["count"], difficulty=1, image_size=56, seed=0)
    torch.manual_seed(seed)
    batch = [task.train_sample(i) for i in range(n_prompts)]
    rollout = collect(policy, batch, specs, scoring, max_new_tokens=max_new_tokens)
    gen = torch.Generator().manual_seed(seed)
    return score(rollout, torch.randint(0, 2, (len(rollout),), generator=gen).float().tolist())


def _settings(terms, shapers=(), mbs=64, need_logits=False):
    return UpdateSettings("token_mean", mbs, 1e9, 6, need_logits=need_logits, terms=list(terms), shapers=list(shapers))


def _sgd_delta(model, rollout, settings, policy_cls):
    import copy

    model = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    policy = policy_cls(model, None)
    run_update(policy, torch.optim.SGD(model.parameters(), lr=1.0), rollout, settings)
    return torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])


def _rebind(tiny_policy):
    """A Policy factory that reuses the tiny policy's processor with another model copy."""

    def make(model, _):
        p = type(tiny_policy).__new__(type(tiny_policy))
        p.__dict__.update(tiny_policy.__dict__)
        p.model = model
        return p

    return make


@pytest.fixture
def policy_copy(tiny_policy):
    """The tiny policy on a copy of its model, for tests that run the update."""
    import copy

    return _rebind(tiny_policy)(copy.deepcopy(tiny_policy.model), None)


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_dupl_in_update_shaping_equals_separate_forwards(policy_copy, variant):
    from perceptrl.train.terms import surrogate_term

    tiny_policy = policy_copy

    branch = BranchSchedule("constant", 10, 0.5, seed=0)
    if variant == "paper":
        plan = DuplPaperPlan(2, 0.4, branch)
    else:
        plan = DuplReleasedPlan(2, 0.4, BranchSchedule("linear", 10, 0.5, seed=0), 64, 1.0)
    rollout = _tiny_rollout(tiny_policy, plan.gen_specs(0), plan.scoring_views(0))
    plan.prepare(rollout, 0)
    plan.precompute(tiny_policy, rollout, 0)
    rollout.advantages = torch.tensor([1.0, -0.5, 2.0, -1.0] * (len(rollout) // 4))
    shaper = DuplShaper(variant, 1.0, 2.0, 0.4, 2.0, chunk_rows=1)  # several micro-batches and row chunks
    settings = _settings([surrogate_term(0.2, 0.2, 3.0)], [shaper], mbs=3, need_logits=True)
    run_update(tiny_policy, torch.optim.SGD(tiny_policy.model.parameters(), lr=0.0), rollout, settings)
    got = rollout.extra["token_advantages"]

    rows = rollout.update_indices()
    comp = rollout.completions
    with torch.no_grad():
        own = tiny_policy.score(rollout.prompts, rollout.update_rows[rows], comp.ids[rows], comp.mask[rows],
                                with_entropy=True, with_logits=True)
        clean = tiny_policy.score(rollout.prompts, rollout.rows_for_view("clean")[rows], comp.ids[rows],
                                  comp.mask[rows], with_logits=True)
    noisy = rollout.tags["noisy_branch"][rows].bool().unsqueeze(-1)
    mask = comp.mask[rows]
    A = rollout.advantages[rows]
    if variant == "paper":
        u_out, u_per = own["entropy"], sym_kl_full(clean["logits"], own["logits"])
        expected = torch.where(noisy, dupl_shape(A, u_out, u_per, mask), dupl_shape(A, u_out, None, mask))
    else:
        lp_raw, lp_noisy = own["logprobs"], rollout.extra["noisy_logprobs"][rows]
        u_out = -lp_noisy.exp() * lp_noisy
        expected = dupl_shape(A, u_out, sym_kl_pointwise(lp_raw, lp_noisy), mask, sequential=True)
    m = mask.bool()
    assert torch.allclose(got[rows][m], expected[m], atol=1e-5)


# ----------------------------------------------------------------------------------------------
# loss terms
# ----------------------------------------------------------------------------------------------


def test_papo_term_hand_case():
    lp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    lp_mask = torch.tensor([[-1.5, -1.0], [-0.5, -3.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    papo = PapoPerception(0.02, 0.03, 0.05, 14, 0.6, False, None, 64, 1.0)
    loss, stats = papo(make_mb(lp, mask, extra={"masked_logprobs": lp_mask}))
    # KLprcp = e^d - d - 1, d = lp_mask - lp: (0.1065307, 0.7182818, 0) -> token_mean 0.2749375
    # -0.02 * 0.2749375 + 0.03 * token_mean(-lp) (7/6) + 0.05 * token_mean(-lp_mask) (1.0)
    assert loss.item() == pytest.approx(0.07950125, abs=1e-7)
    assert stats["papo/kl_prcp"].item() == pytest.approx(0.2749375, abs=1e-7)
    assert stats["papo/entropy"].item() == pytest.approx(7 / 6) and stats["papo/masked_entropy"].item() == pytest.approx(1.0)
    loss.backward()
    assert lp.grad[1, 1] == 0  # padding gets no gradient


@pytest.mark.parametrize("recompute", [False, True])
def test_papo_recompute_masked_gradient(tiny_policy, recompute):
    # Only the eta2 term (entropy of the masked branch): it has a gradient iff lp_mask is recomputed.
    papo = PapoPerception(0.0, 0.0, 1.0, 14, 0.6, recompute, None, 64, 1.0)
    rollout = _tiny_rollout(tiny_policy, [GenSpec("clean", 2)], papo.scoring_views(0))
    papo.precompute(tiny_policy, rollout, 0)
    assert ("masked_logprobs" in rollout.extra) != recompute
    rollout.advantages = torch.zeros(len(rollout))
    delta = _sgd_delta(tiny_policy.model, rollout, _settings([papo]), _rebind(tiny_policy))
    assert (delta.abs().max() > 0) == recompute


def test_papo_default_matches_recompute_in_value(policy_copy):
    tiny_policy = policy_copy
    values = []
    for recompute in (False, True):
        papo = PapoPerception(0.02, 0.03, 0.03, 14, 0.6, recompute, None, 64, 1.0)
        rollout = _tiny_rollout(tiny_policy, [GenSpec("clean", 2)], papo.scoring_views(0))
        papo.precompute(tiny_policy, rollout, 0)
        rollout.advantages = torch.zeros(len(rollout))
        values.append(run_update(tiny_policy, torch.optim.SGD(tiny_policy.model.parameters(), lr=0.0), rollout,
                                 _settings([papo])))
    for key in ("papo/kl_prcp", "papo/masked_entropy", "loss"):
        assert values[0][key] == pytest.approx(values[1][key], abs=1e-5)
    assert values[0]["papo/kl_prcp"] > 0  # the masked image changes the distribution


def test_update_trains_on_update_rows_only_with_split_invariant_denominators(tiny_policy):
    from perceptrl.train.terms import surrogate_term

    papo = PapoPerception(0.02, 0.03, 0.03, 14, 0.6, False, None, 64, 1.0)
    rollout = _tiny_rollout(tiny_policy, [GenSpec("clean", 3)], papo.scoring_views(0), n_prompts=2)
    rollout.keep_for_update(torch.tensor([True, False, True, True, True, False]))
    papo.precompute(tiny_policy, rollout, 0)
    rollout.advantages = torch.tensor([1.0, 5.0, -0.5, 0.3, -1.0, 7.0])
    terms = [surrogate_term(0.2, 0.28, 3.0), papo, entropy_bonus_term(0.01)]
    make = _rebind(tiny_policy)
    whole = _sgd_delta(tiny_policy.model, rollout, _settings(terms, mbs=64, need_logits=True), make)
    split = _sgd_delta(tiny_policy.model, rollout, _settings(terms, mbs=2, need_logits=True), make)
    sub = rollout.subset(rollout.update_indices())
    alone = _sgd_delta(tiny_policy.model, sub, _settings(terms, mbs=64, need_logits=True), make)
    assert whole.abs().max() > 0
    assert torch.allclose(whole, split, atol=1e-6) and torch.allclose(whole, alone, atol=1e-6)


def test_reference_kl_bias_correction_and_entropy_bonus():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.2, -2.0]])
    ref = torch.tensor([[-0.5, -2.5]])
    mask = torch.ones(1, 2)
    d = ref - lp.detach()
    k3 = d.exp() - d - 1
    plain, stats = reference_kl_term(0.1, "k3")(make_mb(lp, mask, old_logprobs=old, extra={"ref_logprobs": ref}))
    assert plain.item() == pytest.approx(0.1 * k3.mean().item(), abs=1e-7)
    assert stats["kl_ref"].item() == pytest.approx(k3.mean().item(), abs=1e-7)
    corrected, _ = reference_kl_term(0.1, "k3", bias_correction=True)(
        make_mb(lp, mask, old_logprobs=old, extra={"ref_logprobs": ref}))
    ratio = (lp.detach() - old).exp()
    assert corrected.item() == pytest.approx(0.1 * (k3 * ratio).mean().item(), abs=1e-7)
    # entropy bonus: -coef * token_mean(H) of the full softmax, with gradient through the logits
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]], requires_grad=True)
    term = entropy_bonus_term(0.5)
    assert term.needs_logits
    value, _ = term(make_mb(lp, mask, logits=logits))
    p = logits.detach().softmax(-1)
    assert value.item() == pytest.approx(-0.5 * (-(p * p.log()).sum(-1)).mean().item(), abs=1e-6)
    value.backward()
    assert logits.grad.abs().sum() > 0


def test_entropy_bonus_is_a_token_mean_whatever_the_aggregation():
    """NoisyRollout's released bonus: ``- coef * token_mean(H)`` over the mini-batch, even when the
    surrogate is aggregated otherwise (here GRPO's seq_mean_token_mean, with global denominators)."""
    from perceptrl.algorithms.losses import aggregate

    logits = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [5.0, 0.0, 0.0]],
                           [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # lengths 3 and 1
    H = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    tokens, seqs = 10.0, 4.0  # the mini-batch's, over all its micro-batches
    mb = make_mb(torch.zeros(2, 3), mask, logits=logits,
                 agg=lambda v: aggregate(v, mask, "seq_mean_token_mean", tokens, seqs),
                 token_mean=lambda v: aggregate(v, mask, "token_mean", tokens, seqs))
    value, _ = entropy_bonus_term(1e-3)(mb)
    assert value.item() == pytest.approx(-1e-3 * float((H * mask).sum()) / tokens, rel=1e-6)
    seq_mean = (H[0].mean() + H[1, 0]) / seqs
    assert abs(value.item() + 1e-3 * float(seq_mean)) > 1e-6  # not the surrogate's aggregation


# ----------------------------------------------------------------------------------------------
# config and assembly
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["rollout.plan=noise_ladder", "algorithm.adv_estimator=noisy_grpo", "rollout.n=6"], "multiple of the noise ladder"),
        (["papo.gamma=-0.01"], "papo.gamma"),
        (["rollout.plan=noisy_rollout", "noisy_rollout.n1=3", "noisy_rollout.n2=3"], r"n1 \+ noisy_rollout.n2"),
        (["rollout.plan=noisy_rollout", "noisy_rollout.n1=8"], "noisy_rollout.n2 >= 1"),
        (["dupl.variant=code"], "dupl.variant"),
        (["algorithm.adv_estimator=noisy_grpo"], "noise_ladder"),
        (["rollout.plan=dupl"], "DUPL needs both"),
        (["rollout.plan=fancy"], "rollout.plan"),
        (["recipe=vogue"], "recipe dupl"),
        (["filters.max_tries=0"], "filters.max_tries"),
        (["rollout.plan=dupl", "algorithm.adv_estimator=dupl", "papo.gamma=0.02"], "papo with DUPL"),
        (["dupl.view_per_rollout=true"], "dupl.view_per_rollout"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_vogue_is_dupl():
    assert canonical_recipe("vogue") == "dupl"
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "recipes"
    vogue, dupl = load_config(root / "vogue.yaml"), load_config(root / "dupl.yaml")
    assert build_recipe(vogue).name == "dupl"
    a, b = vogue.to_dict(), dupl.to_dict()
    for d in (a, b):
        d.pop("recipe"), d["train"].pop("output_dir")
    assert a == b


def test_build_recipe_picks_pieces():
    from perceptrl.train.filters import single_round

    recipe = build_recipe(load_config(None, [
        "rollout.plan=dupl", "algorithm.adv_estimator=dupl", "dupl.variant=released", "filters.dynamic_sampling=true",
        "filters.overlong_penalty=true", "algorithm.entropy_coef=0.01", "algorithm.kl_beta=0.01"]))
    assert isinstance(recipe.plan, DuplReleasedPlan) and isinstance(recipe.sampler, DynamicSampling)
    assert [type(p).__name__ for p in recipe.preparers] == ["OverlongPenalty"]
    assert recipe.preparers[0].cache_len == 6  # 20% of 32 new tokens
    settings = recipe.update_settings(0)
    assert len(settings.terms) == 3 and settings.need_logits and len(settings.shapers) == 1
    plain = build_recipe(load_config(None, []))
    assert plain.sampler is single_round and not plain.update_settings(0).need_logits

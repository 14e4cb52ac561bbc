"""Why does GRPO not raise held-out accuracy from a warm start? Gradient anatomy of the GRPO update.

    python benchmarks/diagnose_grpo.py --model warmstart --batches 16 "data.families=[count]"

At a fixed policy (no update), draws ``--batches`` independent GRPO batches (8 prompts x 8
completions x 32 tokens, the training settings) and computes, for each batch, the gradient of the
token-mean surrogate ``-sum(A * logp) / tokens`` (ratio 1: GRPO with one update per batch):

- where it comes from: the norm of the gradient of the answer-decision token (the first
  completion token, which is the answer for ``count``: "4 red circles \\boxed{4}") against the other
  tokens, per parameter group (vision tower + merger, language model);
- its signal-to-noise ratio: ``cos(g_k, mean of the other batches' g)``, averaged over batches,
  for the real advantage, a placebo advantage (rewards redrawn independently of correctness with
  the same rate), rejection-sampling fine-tuning (A = 1 if correct else 0) and the supervised
  gradient of the gold answers on the same prompts (a reference: the warm start's own loss);
- the per-position entropy of the sampled completions.

A gradient whose batches agree with each other (cos clearly above 0) carries a direction; one
whose batch-to-batch cosine is near 0 is mostly noise, and Adam turns noise into a random walk of
every parameter at about the learning rate per step.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch

from perceptrl.algorithms.advantages import group_advantage
from perceptrl.config import load_config
from perceptrl.data.sources import build_source
from perceptrl.models.loading import load_policy
from perceptrl.rewards import RewardFunction, get_template
from perceptrl.train.rl import hash_name, step_seed
from perceptrl.train.rollout import GenSpec, collect_rollout, score_rollout
from perceptrl.train.sft import encode_targets, target_text

ROOT = Path(__file__).resolve().parent.parent


def batch(policy, source, index: int, prompts: int, n: int, template, reward_fn, seed: int):
    samples = [source.train_sample(index * prompts + i) for i in range(prompts)]
    rollout = collect_rollout(
        policy, samples, [GenSpec("clean", n)], template, 32, 1.0, 1.0,
        seed_of=lambda p, name: step_seed(seed, index, p, hash_name(name)), row_seeds=True)
    score_rollout(rollout, reward_fn)
    return rollout


def flat_grads(policy, groups: dict[str, list[torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    out = {}
    for name, params in groups.items():
        out[name] = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    return out


def weighted_grad(policy, rollout, weights: torch.Tensor, groups) -> dict[str, torch.Tensor]:
    """Gradient of ``-sum(weights * logp) / tokens`` (weights ``[R, T]``)."""
    comp = rollout.completions
    mask = comp.mask.float()
    policy.model.zero_grad(set_to_none=True)
    lp = policy.score(rollout.prompts, rollout.update_rows, comp.ids, comp.mask)["logprobs"]
    loss = -(weights * lp * mask).sum() / mask.sum()
    loss.backward()
    return flat_grads(policy, groups)


def sft_grad(policy, rollout, template, groups) -> dict[str, torch.Tensor]:
    samples = rollout.samples
    encoded = policy.encode([template.instruction(s.problem) for s in samples], [s.images for s in samples])
    ids, mask = encode_targets(policy, [target_text(s, template) for s in samples], 32)
    policy.model.zero_grad(set_to_none=True)
    lp = policy.score(encoded, torch.arange(len(samples)), ids, mask)["logprobs"]
    loss = -(lp * mask).sum() / mask.sum()
    loss.backward()
    return flat_grads(policy, groups)


@torch.no_grad()
def last_prompt_states(policy, samples, template, chunk: int = 64) -> torch.Tensor:
    """Final-layer hidden state at the last prompt position (it predicts the first answer token)."""
    policy.model.eval()
    states = []
    for start in range(0, len(samples), chunk):
        part = samples[start:start + chunk]
        encoded = policy.encode([template.instruction(s.problem) for s in part], [s.images for s in part])
        batch = encoded.select(torch.arange(len(part)))
        positions = policy._base_model()._prepare_position_ids_for_generation(batch["input_ids"], dict(batch))
        out = policy.model(**batch, position_ids=positions, output_hidden_states=True, logits_to_keep=1)
        states.append(out.hidden_states[-1][:, -1, :].float())
    policy.model.train()
    return torch.cat(states)


def linear_probe(policy, source, template, n_train: int) -> dict:
    """Held-out accuracy of a logistic-regression probe of the answer on frozen features, beside the
    model's own greedy accuracy on the same items and the accuracy of the model's own head on the
    first token (for families whose answer is the first completion token, e.g. count)."""
    from sklearn.linear_model import LogisticRegression

    train = [source.train_sample(100_000 + i) for i in range(n_train)]
    test = source.val_samples()
    x_train, x_test = last_prompt_states(policy, train, template), last_prompt_states(policy, test, template)
    y_train, y_test = [s.answer for s in train], [s.answer for s in test]
    probe = LogisticRegression(max_iter=3000, C=1.0).fit(x_train.numpy(), y_train)
    head = policy.model.get_output_embeddings().weight.detach()
    first_ids = [policy.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in y_test]
    with torch.no_grad():
        head_pred = (x_test @ head.T).argmax(-1).tolist()
    return {"train_items": n_train, "test_items": len(test),
            "probe_train_accuracy": round(float(probe.score(x_train.numpy(), y_train)), 4),
            "probe_test_accuracy": round(float(probe.score(x_test.numpy(), y_test)), 4),
            "model_head_first_token_test_accuracy": round(sum(p == t for p, t in zip(head_pred, first_ids)) / len(test), 4)}


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm() + 1e-30))


def agreement(grads: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean over batches of cos(g_k, mean of the other batches)."""
    out = {}
    for key in grads[0]:
        stack = torch.stack([g[key] for g in grads])
        total = stack.sum(0)
        vals = [cos(stack[k], (total - stack[k]) / (len(grads) - 1)) for k in range(len(grads))]
        out[key] = round(statistics.mean(vals), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="warmstart")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe-items", type=int, default=0,
                        help="also fit a linear probe of the answer on the last prompt position's hidden "
                             "state of this many training items (0 = skip the gradient part's probe)")
    parser.add_argument("--skip-gradients", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    config = load_config(str(ROOT / "recipes" / "grpo.yaml"), [f"model.path={args.model}", *args.overrides])
    policy = load_policy(config.model)
    policy.model.train()
    template = get_template(config.data.template)
    reward_fn = RewardFunction(config.data.template, config.reward.accuracy_weight, config.reward.format_weight)
    source = build_source(config.data, args.seed)
    vision = [p for n, p in policy.model.named_parameters() if ".visual." in f".{n}" or n.startswith("visual")]
    ids_v = {id(p) for p in vision}
    lm = [p for p in policy.model.parameters() if id(p) not in ids_v]
    groups = {"vision": vision, "lm": lm}
    rng = random.Random(args.seed)
    if args.probe_items:
        print(json.dumps({"linear_probe": linear_probe(policy, source, template, args.probe_items)}))
    if args.skip_gradients:
        return

    kinds = {"grpo": [], "grpo_answer_token": [], "grpo_other_tokens": [], "placebo": [], "rft": [], "sft_gold": []}
    norms = {k: {"vision": [], "lm": []} for k in kinds}
    entropy_by_pos: list[torch.Tensor] = []
    informative, accs = [], []
    for b in range(args.batches):
        with torch.no_grad():
            rollout = batch(policy, source, b, args.prompts, args.n, template, reward_fn, args.seed)
        reward, acc = rollout.scores["reward"], rollout.scores["accuracy"]
        accs.append(float(acc.mean()))
        adv = group_advantage(reward, rollout.group_ids, scale="group", eps=1e-6).float()
        informative.append(float((adv.abs() > 1e-3).float().mean()))
        T = rollout.completions.ids.shape[1]
        first = torch.zeros(T)
        first[0] = 1.0
        rate = float(acc.mean())
        placebo_r = torch.tensor([float(rng.random() < max(rate, 0.02)) for _ in range(len(reward))])
        placebo_adv = group_advantage(placebo_r, rollout.group_ids, scale="group", eps=1e-6).float()
        weights = {
            "grpo": adv[:, None].expand(-1, T),
            "grpo_answer_token": adv[:, None] * first[None, :],
            "grpo_other_tokens": adv[:, None] * (1 - first[None, :]),
            "placebo": placebo_adv[:, None].expand(-1, T),
            "rft": (acc > 0.5).float()[:, None].expand(-1, T),
        }
        for kind, w in weights.items():
            g = weighted_grad(policy, rollout, w, groups)
            kinds[kind].append(g)
            for key in groups:
                norms[kind][key].append(float(g[key].norm()))
        g = sft_grad(policy, rollout, template, groups)
        kinds["sft_gold"].append(g)
        for key in groups:
            norms["sft_gold"][key].append(float(g[key].norm()))
        with torch.no_grad():
            comp = rollout.completions
            ent = policy.score(rollout.prompts, rollout.update_rows, comp.ids, comp.mask, with_entropy=True)["entropy"]
            m = comp.mask.float()
            entropy_by_pos.append((ent * m).sum(0)[:12] / m.sum(0)[:12].clamp(min=1))
        print(f"batch {b}: sampled accuracy {accs[-1]:.3f}, rows with A != 0 {informative[-1]:.2f}", file=sys.stderr)

    report = {
        "model": args.model, "batches": args.batches, "prompts": args.prompts, "n": args.n,
        "sampled_accuracy": round(statistics.mean(accs), 4),
        "rows_with_nonzero_advantage": round(statistics.mean(informative), 4),
        "entropy_by_position_0_11": [round(float(x), 4) for x in torch.stack(entropy_by_pos).mean(0)],
        "grad_norm_mean": {k: {g: round(statistics.mean(v[g]), 6) for g in v} for k, v in norms.items()},
        "batch_agreement_cos": {k: agreement(v) for k, v in kinds.items()},
        "cos_grpo_vs_sft_gold_mean_direction": {
            key: round(cos(torch.stack([g[key] for g in kinds["grpo"]]).mean(0),
                           torch.stack([g[key] for g in kinds["sft_gold"]]).mean(0)), 4) for key in groups},
        "cos_grpo_vs_answer_token_only": {
            key: round(statistics.mean(cos(a[key], b[key]) for a, b in zip(kinds["grpo"], kinds["grpo_answer_token"])), 4)
            for key in groups},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

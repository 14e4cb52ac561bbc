"""The RL loop. Reads top to bottom: rollout, score, advantage, update, log.

A recipe changes *which pieces* run (views, advantage estimator, loss terms, filters), never
the shape of this loop.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from perceptrl.config import Config, save_config
from perceptrl.data.sources import build_source
from perceptrl.eval.evaluate import evaluate_greedy
from perceptrl.models.loading import save_pretrained, frozen_copy, load_policy
from perceptrl.rewards import RewardFunction, get_template
from perceptrl.train.checkpoint import clean_partial, latest_checkpoint, load_checkpoint, save_checkpoint
from perceptrl.train.logging import MetricsLogger, progress
from perceptrl.train.recipe import build_recipe
from perceptrl.train.rollout import collect_rollout, score_rollout
from perceptrl.train.update import run_update, score_no_grad

log = logging.getLogger(__name__)


def step_seed(base_seed: int, step: int, *keys: int) -> int:
    """A seed for (run, step, ...) that does not depend on how many draws came before."""
    return int(np.random.SeedSequence([base_seed, step, *keys]).generate_state(1)[0])


def setup_torch(config: Config) -> None:
    if config.train.num_threads > 0:
        torch.set_num_threads(config.train.num_threads)
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(config.train.seed)


def make_optimizer(model, train_cfg):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, betas=tuple(train_cfg.adam_betas)
    )


@dataclass
class TrainResult:
    output_dir: Path
    before: dict
    after: dict
    history: list[dict]


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss, reward or gradient."""


def train(config: Config, policy=None) -> TrainResult:
    """Run RL training as ``config`` says; returns held-out accuracy before and after."""
    t_cfg, r_cfg = config.train, config.rollout
    out_dir = Path(t_cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    setup_torch(config)

    policy = policy or load_policy(config.model, config.data.system_prompt)
    reference = frozen_copy(policy) if config.algorithm.kl_beta > 0 else None
    source = build_source(config.data, t_cfg.seed)
    template = get_template(config.data.template)
    reward_fn = RewardFunction(config.data.template, config.reward.accuracy_weight, config.reward.format_weight)
    recipe = build_recipe(config)
    optimizer = make_optimizer(policy.model, t_cfg)
    scheduler = make_scheduler(optimizer, t_cfg)
    val = source.val_samples()

    def evaluate() -> dict:
        return evaluate_greedy(policy, val, template, reward_fn, r_cfg.max_new_tokens)

    # Resume from the newest complete checkpoint, or start fresh.
    start_step, data_position, bad_steps, before = 0, 0, 0, None
    checkpoint = find_resume_checkpoint(out_dir, t_cfg.resume)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, policy.model, optimizer, scheduler)
        start_step, data_position = state["step"], state["data_position"]
        bad_steps, before = state.get("bad_steps", 0), state.get("eval_before")
        truncate_metrics(out_dir / "metrics.jsonl", start_step)
        log.info("resumed from %s at step %d", checkpoint, start_step)
    logger = MetricsLogger(out_dir)
    if before is None:
        before = evaluate()
        logger.log(0, {f"eval/{k}": v for k, v in before.items()})

    history: list[dict] = []
    bar = progress(t_cfg.max_steps, f"train {config.recipe}", t_cfg.progress, initial=start_step)
    for step in range(start_step, t_cfg.max_steps):
        t0 = time.perf_counter()
        torch.manual_seed(step_seed(t_cfg.seed, step))

        # 1. Rollout: generate G completions per prompt from the views the recipe asks for.
        def next_prompts(n: int) -> list:
            nonlocal data_position
            batch = [source.train_sample(data_position + i) for i in range(n)]
            data_position += n
            return batch

        def rollout_once(samples):
            first = data_position - len(samples)
            rollout = collect_rollout(
                policy, samples, recipe.gen_specs(step), template, r_cfg.max_new_tokens,
                r_cfg.temperature, r_cfg.top_p,
                seed_of=lambda p, name: step_seed(t_cfg.seed, step, first + p, hash_name(name)),
                scoring_views=recipe.scoring_views(step),
            )
            score_rollout(rollout, reward_fn)  # 2. Score: verifiable reward per completion.
            return rollout

        rollout = recipe.sample(next_prompts, rollout_once, t_cfg.prompts_per_step)
        t_gen = time.perf_counter()

        # 3. Extra forwards without gradient: reference, old policy, extra views.
        if reference is not None:
            rollout.extra["ref_logprobs"] = score_no_grad(
                reference, rollout, rollout.update_rows, t_cfg.micro_batch_size, r_cfg.temperature
            )["logprobs"]
        if t_cfg.ppo_epochs > 1:
            rollout.extra["old_logprobs"] = score_no_grad(
                policy, rollout, rollout.update_rows, t_cfg.micro_batch_size, r_cfg.temperature
            )["logprobs"]
        recipe.precompute(policy, rollout, step)
        t_score = time.perf_counter()

        # 4. Advantage.
        rollout.advantages = recipe.advantages(rollout, step)

        # 5. Update (skipped, and counted, when anything is not finite).
        metrics: dict = {}
        fault = nonfinite_input(rollout)
        if fault is None:
            for _ in range(t_cfg.ppo_epochs):
                metrics = run_update(policy, optimizer, rollout, recipe.update_settings(step))
                if metrics.get("skipped_nonfinite_grad"):
                    fault = "gradient or loss"
                    break
        if fault is None:
            scheduler.step()
            bad_steps = 0
        else:
            bad_steps += 1
            metrics["skipped_step"] = 1.0
            log.warning("step %d skipped: non-finite %s (%d in a row)", step + 1, fault, bad_steps)
            if bad_steps >= t_cfg.max_bad_steps:
                logger.log(step + 1, {"skipped_step": 1.0, "bad_steps": bad_steps})
                logger.close()
                raise TrainingDiverged(
                    f"{bad_steps} consecutive steps had a non-finite {fault} (last at step {step + 1}); "
                    f"stopping. The last good checkpoint is kept in {out_dir}."
                )
        t_end = time.perf_counter()

        # 6. Log, evaluate, checkpoint.
        metrics.update(rollout_metrics(rollout))
        metrics.update(rollout.stats)
        metrics.update({
            "time/step": t_end - t0, "time/generation": t_gen - t0,
            "time/scoring": t_score - t_gen, "time/update": t_end - t_score,
            "lr": optimizer.param_groups[0]["lr"], "bad_steps": bad_steps,
        })
        if t_cfg.eval_every and (step + 1) % t_cfg.eval_every == 0 and step + 1 < t_cfg.max_steps:
            metrics.update({f"eval/{k}": v for k, v in evaluate().items()})
        history.append({"step": step + 1, **metrics})
        if (step + 1) % t_cfg.log_every == 0 or step + 1 == t_cfg.max_steps:
            logger.log(step + 1, metrics)
        if t_cfg.save_steps and (step + 1) % t_cfg.save_steps == 0 and fault is None:
            save_checkpoint(
                out_dir, step + 1, policy.model, optimizer, scheduler,
                {"data_position": data_position, "bad_steps": bad_steps, "eval_before": before},
                keep=t_cfg.save_total_limit,
            )
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", acc=f"{metrics['accuracy']:.3f}")
        bar.update(1)
    bar.close()

    after = evaluate()
    logger.log(t_cfg.max_steps, {f"eval/{k}": v for k, v in after.items()})
    logger.close()
    if t_cfg.save_final:
        save_pretrained(policy.model, policy.processor, out_dir / "final")
    return TrainResult(out_dir, before, after, history)


def make_scheduler(optimizer, train_cfg):
    """Linear warm-up, then constant: a pure function of the optimizer step (exact on resume)."""
    warmup = max(train_cfg.warmup_steps, 0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)


def find_resume_checkpoint(out_dir: Path, resume: str) -> Path | None:
    if resume == "none":
        return None
    clean_partial(out_dir)
    if resume == "auto":
        return latest_checkpoint(out_dir)
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"train.resume: '{resume}' is not a complete checkpoint folder")
    return path


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def nonfinite_input(rollout) -> str | None:
    if not torch.isfinite(rollout.scores["reward"]).all():
        return "reward"
    if rollout.advantages is not None and not torch.isfinite(rollout.advantages).all():
        return "advantage"
    return None


def hash_name(name: str) -> int:
    """A stable (unsalted) integer for a view name."""
    return zlib.crc32(name.encode())


def rollout_metrics(rollout) -> dict[str, float]:
    comp = rollout.completions
    lengths = comp.mask.sum(-1).float()
    return {
        "reward": float(rollout.scores["reward"].mean()),
        "accuracy": float(rollout.scores["accuracy"].mean()),
        "format_rate": float(rollout.scores["format"].mean()),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/min": float(lengths.min()),
        "truncated_rate": float(comp.truncated.float().mean()),
        "advantage/abs_mean": float(rollout.advantages.abs().mean()),
        "num_completions": float(len(rollout)),
    }

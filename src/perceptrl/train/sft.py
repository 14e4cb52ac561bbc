"""Supervised warm start: teach the format (and a first answer) from reference completions.

The target completion of a sample is the prompt template's rendering of its short
rationale and gold answer, followed by the end-of-turn token. The loss is the mean
negative log-likelihood of the target tokens (``token_mean``), computed with the same
``Policy.score`` the RL update uses.

The model is prepared as ``perceptrl train`` prepares it (``models.lora.prepare_for_training``):
LoRA adapters, a frozen vision tower, float32 master weights under mixed precision and gradient
checkpointing, each as ``config.model`` asks; the end-of-run save is the RL one (under LoRA the
adapter in ``adapter/`` and the merged model in ``final/``).
"""

from __future__ import annotations

import sys
import time

import torch

from perceptrl.algorithms.losses import aggregate
from perceptrl.config import Config
from perceptrl.data.sources import build_source
from perceptrl.data.types import Sample
from perceptrl.train.heldout import evaluate_greedy
from perceptrl.models.loading import check_model, load_policy
from perceptrl.models.lora import prepare_for_training
from perceptrl.models.policy import Policy
from perceptrl.rewards import RewardFunction, get_template
from perceptrl.train.logging import MetricsLogger, progress
from perceptrl.train.final_model import save_final_model
from perceptrl.train.rl import TrainResult, make_optimizer, setup_torch
from perceptrl.train.run_dir import RunDir


def target_text(sample: Sample, template) -> str:
    rationale = str(sample.meta.get("rationale", "")) if sample.meta else ""
    return template.render(rationale, sample.answer)


def encode_targets(policy: Policy, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded target ids ending in the end-of-turn token, cut at ``max_len``."""
    rows = [policy.tokenizer(t, add_special_tokens=False)["input_ids"][: max_len - 1] + [policy.eos_token_id] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), policy.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids.to(policy.device), mask.to(policy.device)


def sft(config: Config, policy: Policy | None = None) -> TrainResult:
    # Before any slow work: the output folder is usable, not in use, and holds no other run (run_dir.py).
    with RunDir.open(config, "sft") as run:
        source = build_source(config.data, config.train.seed)  # validates data files
        if policy is None:
            check_model(config.model)  # device, model folder, weights
        plan = run.claim()
        if plan.done is not None:  # finished before with this config: report it, redo nothing
            print(f"[perceptrl] {run.path} already holds this run, finished: nothing to do "
                  "(train.overwrite=true runs it again)", file=sys.stderr, flush=True)
            return TrainResult(run.path, plan.done.get("before") or {}, plan.done.get("after") or {}, [])
        return _sft(config, policy, source, run)


def _sft(config: Config, policy: Policy | None, source, run: RunDir) -> TrainResult:
    t_cfg = config.train
    out_dir = run.path
    setup_torch(config)
    # LoRA, frozen vision tower, master weights, gradient checkpointing: as perceptrl train does.
    policy = prepare_for_training(policy or load_policy(config.model, config.data.system_prompt), config.model)
    policy.set_pixel_bounds(config.data.min_pixels, config.data.max_pixels)
    run.begin()  # config.yaml and run.json; files of a replaced or interrupted run removed
    template = get_template(config.data.template)
    reward_fn = RewardFunction(config.data.template, config.reward.accuracy_weight, config.reward.format_weight)
    optimizer = make_optimizer(policy.model, t_cfg)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]  # what the optimizer steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(t_cfg.warmup_steps, 1)) * max(0.0, 1 - s / max(t_cfg.max_steps, 1))
    )
    logger = MetricsLogger(out_dir, filename="sft_metrics.jsonl", report_to=t_cfg.report_to, run_config=config)
    val = source.val_samples()
    max_len = config.rollout.max_new_tokens

    before = evaluate_greedy(policy, val, template, reward_fn, max_len)
    history = []
    bar = progress(t_cfg.max_steps, "sft", t_cfg.progress)
    policy.model.train()
    for step in range(t_cfg.max_steps):
        t0 = time.perf_counter()
        batch = config.data.rollout_batch_size  # prompts per SFT step
        samples = [source.train_sample(step * batch + i) for i in range(batch)]
        encoded = policy.encode([template.instruction(s.problem) for s in samples], [s.images for s in samples])
        ids, mask = encode_targets(policy, [target_text(s, template) for s in samples], max_len)
        optimizer.zero_grad(set_to_none=True)
        total_tokens = float(mask.sum())
        loss_value = 0.0
        for start in range(0, len(samples), t_cfg.micro_batch_size):
            rows = torch.arange(start, min(start + t_cfg.micro_batch_size, len(samples)))
            lp = policy.score(encoded, rows, ids[rows], mask[rows])["logprobs"]
            loss = aggregate(-lp, mask[rows].float(), "token_mean", global_tokens=total_tokens)
            loss.backward()
            loss_value += float(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, t_cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        metrics = {"sft/loss": loss_value, "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
                   "time/step": time.perf_counter() - t0}
        if t_cfg.eval_every and (step + 1) % t_cfg.eval_every == 0:
            metrics.update({f"eval/{k}": v for k, v in evaluate_greedy(policy, val, template, reward_fn, max_len).items()})
        history.append({"step": step + 1, **metrics})
        if (step + 1) % t_cfg.log_every == 0:
            logger.log(step + 1, metrics)
        bar.set_postfix(loss=f"{loss_value:.3f}")
        bar.update(1)
    bar.close()
    after = evaluate_greedy(policy, val, template, reward_fn, max_len)
    logger.log(t_cfg.max_steps, {f"eval/{k}": v for k, v in after.items()})
    logger.close()
    if t_cfg.save_final:
        save_final_model(policy.model, policy.processor, out_dir)  # atomic; LoRA: merged final/ + adapter/
    run.finish(before, after, t_cfg.max_steps)  # run.json: finished; final/README.md: the model card
    return TrainResult(out_dir, before, after, history)

"""The RL loop. Reads top to bottom: rollout, score, advantage, update, log.

A recipe changes *which pieces* run (views, advantage estimator, loss terms, filters), never
the shape of this loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from perceptrl.timing import step_timer, timed
from perceptrl.config import Config
from perceptrl.data.sources import build_source, limit_prompt_length
from perceptrl.train.heldout import evaluate_greedy
from perceptrl.models.engines import build_engine
from perceptrl.models.loading import check_model, load_policy
from perceptrl.models.lora import prepare_for_training, reference_policy
from perceptrl.rewards import RewardFunction, get_template
from perceptrl.train.checkpoint import crash_point, latest_checkpoint, load_checkpoint, save_checkpoint
from perceptrl.train.distributed import Distributed
from perceptrl.train.final_model import save_final_model
from perceptrl.train.logging import MetricsLogger, progress
from perceptrl.train.recipe import build_recipe
from perceptrl.train.rollout import collect_rollout, score_rollout
from perceptrl.train.rollout_correction import rollout_correction
from perceptrl.train.run_dir import RunDir
from perceptrl.train.update import (
    combine_step_metrics,
    minibatch_rows,
    run_update,
    score_no_grad,
    score_old_policy,
    update_minibatches,
)

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
    """AdamW over the trainable parameters; torch's fused kernel where the parameters' device has one.

    Fused is the default of transformers' Trainer (``adamw_torch_fused``): one kernel per step instead
    of a loop of elementwise ops, and no temporaries the size of the parameters (the memory bench:
    the optimizer step's peak 1.53x the floor unfused, 1.30x fused). The update is the same up to
    rounding.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    devices = {p.device.type for p in params}
    fused = bool(params) and devices <= {"cuda", "cpu"} and all(p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(
        params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, betas=tuple(train_cfg.adam_betas), fused=fused
    )


@dataclass
class TrainResult:
    output_dir: Path
    before: dict
    after: dict
    history: list[dict]
    is_main: bool = True  # False on the other processes of a multi-process run (they hold no evaluation)
    layout: str = "1 process"  # how the run was split, e.g. "2 processes, FSDP2 (gloo)"


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss, reward or gradient."""


def train(config: Config, policy=None) -> TrainResult:
    """Run RL training as ``config`` says; returns held-out accuracy before and after."""
    dist = Distributed.from_environment()  # several processes: each takes a slice of every step's prompts
    dist.check(config)  # rollout_batch_size divisible by the number of processes, ...
    # Before any slow work: the output folder is usable, not in use, and this run may resume what it holds.
    with RunDir.open(config, "train", dist) as run:
        source = build_source(config.data, config.train.seed)  # validates data files
        model_cfg = config.model if dist.device is None else dataclasses.replace(config.model, device=str(dist.device))
        if policy is None:
            check_model(model_cfg)  # device, model folder, weights
        plan = run.claim()  # locks the folder (created if new); the same plan on every process
        if plan.done is not None:  # finished before with this config: report it, redo nothing
            if dist.is_main:
                print(f"[perceptrl] {run.path} already holds this run, finished at step {plan.done.get('step')}: "
                      "nothing to do (train.overwrite=true runs it again; a larger train.max_steps continues it)",
                      file=sys.stderr, flush=True)
            return TrainResult(run.path, plan.done.get("before") or {}, plan.done.get("after") or {}, [],
                               dist.is_main, dist.describe())
        return _train(config, policy, dist, source, model_cfg, run)


def _train(config: Config, policy, dist: Distributed, source, model_cfg, run: RunDir) -> TrainResult:
    t_cfg, r_cfg = config.train, config.rollout
    out_dir = run.path
    setup_torch(config)

    policy = prepare_for_training(policy or load_policy(model_cfg, config.data.system_prompt), config.model)
    policy.set_pixel_bounds(config.data.min_pixels, config.data.max_pixels)  # EasyR1's data.min/max_pixels
    reference = reference_policy(policy) if config.algorithm.kl_beta > 0 else None  # LoRA: adapter off
    engine = build_engine(r_cfg.engine, policy, config.model, r_cfg, seed=t_cfg.seed)  # hf: the policy itself
    template = get_template(config.data.template)
    source = limit_prompt_length(source, lambda s: policy.prompt_length(template.instruction(s.problem), s.images),
                                 config.data.max_prompt_length, config.data.filter_overlong_prompts)
    reward_fn = RewardFunction(config.data.template, config.reward.accuracy_weight, config.reward.format_weight)
    recipe = build_recipe(config, dist.world_size)
    optimizer = make_optimizer(policy.model, t_cfg)
    scheduler = make_scheduler(optimizer, t_cfg)
    policy.model, optimizer = dist.prepare(policy.model, optimizer)  # DDP / FSDP / DeepSpeed wrapper, or as is
    val = source.val_samples()

    def evaluate() -> dict:  # on the main process; the others wait (on full weights, if sharded)
        with dist.full_weights(policy):
            result = evaluate_greedy(policy, val, template, reward_fn, r_cfg.max_new_tokens) if dist.is_main else {}
            dist.barrier()
        return result

    # Resume from the checkpoint the folder's plan names (perceptrl.train.run_dir), or start fresh.
    start_step, data_position, bad_steps, skipped_steps, before = 0, 0, 0, 0, None
    checkpoint = run.plan.checkpoint
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, *dist.loading_views(policy.model, optimizer), scheduler)
        dist.restore_rng(checkpoint)  # each process its own random states
        start_step, data_position = state["step"], state["data_position"]
        bad_steps, before = state.get("bad_steps", 0), state.get("eval_before")
        skipped_steps = state.get("skipped_steps", 0)
    run.begin()  # says what it resumes; config.yaml and run.json; a replaced run's files removed
    if dist.is_main:  # rows logged after the checkpoint are redone (a fresh start redoes everything)
        truncate_metrics(out_dir / "metrics.jsonl", start_step if checkpoint is not None else -1)
    logger = MetricsLogger(out_dir, report_to=t_cfg.report_to, run_config=config) if dist.is_main else NullLogger()
    if before is None:
        before = evaluate()
        logger.log(0, {f"eval/{k}": v for k, v in before.items()})

    history: list[dict] = []
    bar = progress(t_cfg.max_steps, f"train {config.recipe}", t_cfg.progress and dist.is_main, initial=start_step)
    for step in range(start_step, t_cfg.max_steps):
        rollout_step = step + 1  # what schedules and plans read: counted from 1 as released (spec section 10)
        t0 = time.perf_counter()
        step_timer.reset()
        torch.manual_seed(step_seed(t_cfg.seed, step))
        layout = MiniBatchLayout.of(config, dist)

        # 1. Rollout: generate G completions per prompt from the views the recipe asks for.
        # Rollout-side forwards run on full weights (sharded backends gather them; all processes enter).
        with dist.full_weights(policy):
            with timed("weight_sync"):
                engine.sync_weights()  # vllm: copy the current weights in (hf generates with the policy itself)
            positions: list[int] = []  # global data positions of the prompts this process is rolling out

            def next_prompts(n: int) -> list:  # this process's share of the next n * world_size prompts
                nonlocal data_position, positions
                positions = dist.prompt_positions(data_position, n, layout.block(n))
                with timed("data"):
                    batch = [source.train_sample(q) for q in positions]
                data_position += n * dist.world_size
                return batch

            def rollout_once(samples):
                rollout = collect_rollout(
                    policy, samples, recipe.gen_specs(rollout_step), template, r_cfg.max_new_tokens,
                    r_cfg.temperature, r_cfg.top_p,
                    seed_of=lambda p, name, pos=positions: step_seed(t_cfg.seed, step, pos[p], hash_name(name)),
                    scoring_views=recipe.scoring_views(rollout_step),
                    row_seeds=r_cfg.batch_invariant, engine=engine,
                )
                rollout.tags["data_position"] = torch.tensor(positions, dtype=torch.long)[rollout.prompt_index]
                with timed("reward"):
                    score_rollout(rollout, reward_fn)  # 2. Score: verifiable reward per completion.
                return rollout

            n_local = config.data.rollout_batch_size // dist.world_size
            rollout = recipe.sample(next_prompts, rollout_once, n_local, rollout_step)
            engine.release()  # vllm: free its GPU memory for the update (sleep mode)
            data_position = dist.all_reduce_max(data_position)  # DAPO's rounds may differ between processes
            t_gen = time.perf_counter()

            # 3. Extra forwards without gradient: reference, extra views.
            if reference is not None:
                with timed("scoring/reference"):
                    rollout.extra["ref_logprobs"] = score_no_grad(
                        reference, rollout, rollout.update_rows, t_cfg.micro_batch_size, r_cfg.temperature
                    )["logprobs"]
            with timed("scoring/extra_views"):
                recipe.precompute(policy, rollout, rollout_step)
            with timed("scoring/mismatch"):  # engine vs training log-probs (vllm), rollout.tis_cap weights
                rollout.stats.update(rollout_correction(policy, rollout, t_cfg.micro_batch_size, r_cfg.temperature,
                                                        r_cfg.tis_cap))

            # 4. Advantage.
            rollout.advantages = recipe.advantages(rollout, rollout_step)
            fault = next((f for f in dist.gather_objects(nonfinite_input(rollout)) if f), None)  # any process's

            # 5a. Several optimizer steps follow: lp_old (and DUPL's shaping) under the rollout policy, once.
            settings = recipe.update_settings(rollout_step)
            minibatches = minibatch_rows(rollout, layout.prompts_per_minibatch, layout.minibatches)
            metrics: dict = {}
            if fault is None and layout.optimizer_steps > 1:
                with timed("scoring/old"):
                    metrics.update(score_old_policy(policy, rollout, settings, minibatches, dist))
        t_score = time.perf_counter()

        # 5b. Update: one optimizer step per mini-batch, ppo_epochs times over (skipped, and counted,
        # when anything is not finite).
        skipped = layout.optimizer_steps  # a non-finite reward or advantage skips every optimizer step
        if fault is None:
            steps = update_minibatches(
                policy, optimizer, scheduler, rollout, settings, dist, minibatches, t_cfg.ppo_epochs,
                update=run_update, after_step=lambda k: crash_point("minibatch", rollout_step),
            )
            metrics.update(combine_step_metrics(steps))
            metrics["update/rows"] = float(len(rollout.update_indices()))
            skipped = int(metrics["update/skipped_minibatches"])
            if skipped:
                fault = "gradient or loss"
        if fault is None:
            bad_steps = 0
        else:
            bad_steps += 1
            skipped_steps += skipped
            metrics["skipped_step"] = 1.0
            if skipped == layout.optimizer_steps:
                log.warning("step %d skipped: non-finite %s (%d in a row)", rollout_step, fault, bad_steps)
            else:
                log.warning("step %d: %d of %d optimizer steps skipped: non-finite %s (%d in a row)",
                            rollout_step, skipped, layout.optimizer_steps, fault, bad_steps)
            if bad_steps >= t_cfg.max_bad_steps:
                logger.log(rollout_step, {"skipped_step": 1.0, "bad_steps": bad_steps,
                                          "skipped_steps": skipped_steps})
                logger.close()
                last_good = latest_checkpoint(out_dir)
                raise TrainingDiverged(
                    f"{bad_steps} consecutive steps had a non-finite {fault} (last at step {rollout_step}, "
                    f"train.max_bad_steps = {t_cfg.max_bad_steps}); stopping. Last good checkpoint: "
                    f"{last_good if last_good else f'none in {out_dir} (set train.save_steps)'}"
                )
        t_end = time.perf_counter()

        # 6. Log, evaluate, checkpoint.
        metrics.update(rollout_metrics(rollout))
        metrics.update(rollout.stats)
        metrics.update({
            "time/step": t_end - t0, "time/generation": t_gen - t0,
            "time/scoring": t_score - t_gen, "time/update": t_end - t_score,
            "lr": optimizer.param_groups[0]["lr"], "bad_steps": bad_steps, "skipped_steps": skipped_steps,
        })
        metrics.update(step_timer.metrics())  # finer splits: perceptrl.timing
        metrics = dist.reduce_metrics(metrics)  # over processes (identity in one)
        if t_cfg.eval_every and (step + 1) % t_cfg.eval_every == 0 and step + 1 < t_cfg.max_steps:
            metrics.update({f"eval/{k}": v for k, v in evaluate().items()})
        history.append({"step": step + 1, **metrics})
        if (step + 1) % t_cfg.log_every == 0 or step + 1 == t_cfg.max_steps:
            logger.log(step + 1, metrics)
        if t_cfg.save_steps and (step + 1) % t_cfg.save_steps == 0 and fault is None:
            rng_states = dist.gather_rng_states()  # every process's, written beside the main one's
            model_state, optimizer_state = dist.saving_views(policy.model, optimizer)  # FSDP: gathered to main
            if dist.is_main:
                save_checkpoint(
                    out_dir, step + 1, model_state, optimizer_state, scheduler,
                    {"data_position": data_position, "bad_steps": bad_steps, "skipped_steps": skipped_steps,
                     "eval_before": before},
                    keep=t_cfg.save_total_limit, before_commit=dist.rng_writer(rng_states),
                )
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", acc=f"{metrics['accuracy']:.3f}")
        bar.update(1)
    bar.close()

    after = evaluate()
    logger.log(t_cfg.max_steps, {f"eval/{k}": v for k, v in after.items()})
    logger.close()
    final = dist.final_model(policy.model) if t_cfg.save_final else None  # FSDP / ZeRO-3: gathered to main
    if t_cfg.save_final and dist.is_main:  # atomic: tmp folder, fsync, rename (LoRA: merged + adapter/)
        save_final_model(final, policy.processor, out_dir)
    run.finish(before, after, t_cfg.max_steps)  # run.json: finished; final/README.md: the model card
    dist.barrier()
    return TrainResult(out_dir, before, after, history, dist.is_main, dist.describe())


@dataclass(frozen=True)
class MiniBatchLayout:
    """How a rollout step's prompts split into PPO mini-batches on this process (EasyR1 semantics).

    ``data.rollout_batch_size`` prompts per rollout step, ``train.global_batch_size`` per optimizer
    step (null: all of them), both counted over all processes; ``train.ppo_epochs`` passes.
    """

    prompts_per_minibatch: int  # this process's share of train.global_batch_size
    minibatches: int  # optimizer steps per epoch
    optimizer_steps: int  # per rollout step: minibatches * ppo_epochs

    @classmethod
    def of(cls, config: Config, dist: Distributed) -> MiniBatchLayout:
        rollout_prompts = config.data.rollout_batch_size
        global_batch = config.train.global_batch_size or rollout_prompts
        minibatches = rollout_prompts // global_batch
        return cls(global_batch // dist.world_size, minibatches, minibatches * config.train.ppo_epochs)

    def block(self, n: int) -> int:
        """This process's contiguous share of each block of ``n`` new prompts: a mini-batch's share when
        ``n`` is made of whole mini-batches (the step's prompts), else all ``n`` (a dynamic-sampling round)."""
        return self.prompts_per_minibatch if n % self.prompts_per_minibatch == 0 else n


class NullLogger:
    """The metrics logger of a process other than the main one: logs nothing."""

    def log(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


def make_scheduler(optimizer, train_cfg):
    """Linear warm-up, then constant: a pure function of the optimizer step (exact on resume)."""
    warmup = max(train_cfg.warmup_steps, 0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # empty, or cut short by a kill mid-write
            continue
        # rows after the checkpoint, and an end-of-run evaluation row at its step, are redone
        eval_only = all(k == "step" or k.startswith("eval/") for k in row)
        if row.get("step", 0) < step or (row.get("step") == step and not eval_only):
            kept.append(line)
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

"""Seconds per GRPO step: TRL's ``GRPOTrainer`` against perceptrl's GRPO, same model, same settings.

Both frameworks train the same offline tiny Qwen2.5-VL (``perceptrl.bench.models``: ``tiny`` is the
0.6 M test model, ``medium`` about 13 M) from the same initial weights on the same prompts of the
built-in counting task, with identical settings:

- ``P`` prompts per step, ``G`` completions per prompt, at most ``T`` new tokens, temperature 1.0,
  top-p 1.0, no top-k;
- one optimizer step per generation batch (TRL: ``num_iterations=1``, ``steps_per_generation=1``,
  no gradient accumulation; perceptrl: ``ppo_epochs=1``, one micro-batch of all ``P*G`` rows), so
  neither computes old log-probs;
- no reference model (``beta=0`` / ``kl_beta=0``), clip 0.2 both sides, no dual clip;
- token-mean loss aggregation over the batch (TRL ``loss_type="dapo"``, perceptrl ``token_mean``),
  group-normalised advantages;
- AdamW, lr 1e-5, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, gradient clipping at 1.0;
- the same reward: ``perceptrl.rewards.RewardFunction`` (0.9 accuracy + 0.1 format).

Each (framework, repeat) is a separate subprocess; the parent alternates their order
(TRL, perceptrl, perceptrl, TRL, ...) so that both see the same machine load, drops warm-up steps,
and reports the median seconds per step of each framework and the median of the per-repeat ratios
(perceptrl / TRL), with the spread (min-max) of those ratios.

Run (TRL is an optional dependency: ``pip install -e '.[bench]'``)::

    python benchmarks/trl_vs_perceptrl.py --sizes tiny medium --prompts 8 --completions 8 --tokens 64
    python benchmarks/trl_vs_perceptrl.py --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LR = 1e-5


# --------------------------------------------------------------------------- workers
def _samples(n: int, image_size: int, seed: int = 0):
    from perceptrl.data.synthetic import SyntheticTask

    task = SyntheticTask(["count"], difficulty=1, image_size=image_size, seed=seed)
    return [task.train_sample(i) for i in range(n)]


def run_perceptrl(args) -> dict:
    import torch

    from perceptrl.bench.models import build_bench_model
    from perceptrl.config import load_config
    from perceptrl.models.policy import Policy
    from perceptrl.train.rl import train

    torch.set_num_threads(args.threads)
    model, processor = build_bench_model(args.size, seed=0)
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            f"train.output_dir={out}", "train.resume=none", f"train.max_steps={args.steps}",
            "train.save_final=false", "train.progress=false", f"train.num_threads={args.threads}",
            f"data.rollout_batch_size={args.prompts}", f"train.micro_batch_size={args.prompts * args.completions}",
            f"train.lr={LR}", "train.weight_decay=0.01", "train.max_grad_norm=1.0", "train.ppo_epochs=1",
            f"rollout.n={args.completions}", f"rollout.max_new_tokens={args.tokens}",
            "rollout.temperature=1.0", "rollout.top_p=1.0",
            "algorithm.kl_beta=0.0", "algorithm.loss_agg_mode=token_mean", "algorithm.eps_low=0.2",
            "algorithm.eps_high=0.2", "algorithm.dual_clip_c=null", "algorithm.adv_scale=group",
            f"data.image_size={args.image_size}", "data.val_per_family=1", "data.families=[count]",
        ]
        config = load_config(repo / "recipes" / "grpo.yaml", overrides)
        result = train(config, policy=Policy(model, processor))
    steps = [h["time/step"] for h in result.history]
    cpu = [h["cpu_time/step"] for h in result.history]
    lengths = [h["response_length/mean"] for h in result.history]
    return {"step_seconds": steps, "step_cpu_seconds": cpu, "mean_completion_length": statistics.fmean(lengths)}


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from perceptrl.bench.models import build_bench_model
    from perceptrl.rewards import RewardFunction, get_template

    torch.set_num_threads(args.threads)
    model, processor = build_bench_model(args.size, seed=0)
    template = get_template("boxed")
    samples = _samples(args.prompts * args.steps, args.image_size)
    by_id = {s.id: s for s in samples}
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": template.instruction(s.problem)}], "image": s.images[0], "sample_id": s.id}
        for s in samples
    ])
    reward_fn = RewardFunction("boxed")
    lengths: list[float] = []

    def reward(prompts, completions, sample_id, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return reward_fn(texts, [by_id[i] for i in sample_id])["reward"]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.cpu: list[float] = []
            self._t0 = self._c0 = 0.0

        def on_step_begin(self, *a, **k):
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self._t0)
            self.cpu.append(time.process_time() - self._c0)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
            max_steps=args.steps, per_device_train_batch_size=args.prompts * args.completions,
            gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
            num_generations=args.completions, max_completion_length=args.tokens,
            temperature=1.0, top_p=1.0, top_k=0, beta=0.0, loss_type="dapo", scale_rewards="group",
            epsilon=0.2, learning_rate=LR, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999,
            adam_epsilon=1e-8, max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0,
            remove_unused_columns=False, dataloader_num_workers=0, seed=0, bf16=False, fp16=False,
            disable_tqdm=True, log_completions=False, shuffle_dataset=False,
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward, args=config, train_dataset=dataset,
            processing_class=processor, callbacks=[timer],
        )
        trainer.train()
    return {"step_seconds": timer.times, "step_cpu_seconds": timer.cpu,
            "mean_completion_length": statistics.fmean(lengths) if lengths else None}


# --------------------------------------------------------------------------- parent
def run_worker(framework: str, size: str, args) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", framework, "--size", size, "--prompts", str(args.prompts),
        "--completions", str(args.completions), "--tokens", str(args.tokens), "--steps", str(args.steps),
        "--threads", str(args.threads), "--image-size", str(args.image_size),
    ]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} worker failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def compare(args) -> dict:
    report: dict = {"settings": vars(args).copy(), "sizes": {}}
    report["settings"].pop("worker", None)
    for size in args.sizes:
        per = {clock: {"trl": [], "perceptrl": []} for clock in ("wall", "cpu")}
        ratios = {"wall": [], "cpu": []}
        loads, lengths = [], {"trl": [], "perceptrl": []}
        for rep in range(args.repeats):
            order = ("trl", "perceptrl") if rep % 2 == 0 else ("perceptrl", "trl")
            medians = {"wall": {}, "cpu": {}}
            for framework in order:
                loads.append(load_average())
                out = run_worker(framework, size, args)
                for clock, key in (("wall", "step_seconds"), ("cpu", "step_cpu_seconds")):
                    steps = out[key][args.warmup:]
                    medians[clock][framework] = statistics.median(steps)
                    per[clock][framework].extend(steps)
                if out["mean_completion_length"] is not None:
                    lengths[framework].append(out["mean_completion_length"])
                print(f"[{size} rep {rep}] {framework:9s} median {medians['wall'][framework]:.3f} s/step wall, "
                      f"{medians['cpu'][framework]:.3f} s/step CPU (wall steps "
                      f"{', '.join(f'{s:.2f}' for s in out['step_seconds'][args.warmup:])}; load {loads[-1]:.1f})",
                      flush=True)
            for clock in ratios:
                ratios[clock].append(medians[clock]["perceptrl"] / medians[clock]["trl"])
        row = {"mean_completion_length": {k: statistics.fmean(v) if v else None for k, v in lengths.items()},
               "load_average_1min": [round(x, 2) for x in loads]}
        for clock in ("wall", "cpu"):
            row[clock] = {
                "trl_seconds_per_step": statistics.median(per[clock]["trl"]),
                "perceptrl_seconds_per_step": statistics.median(per[clock]["perceptrl"]),
                "ratio_median": statistics.median(ratios[clock]),
                "ratio_min": min(ratios[clock]),
                "ratio_max": max(ratios[clock]),
                "ratios": ratios[clock],
            }
        report["sizes"][size] = row
        for clock in ("cpu", "wall"):
            r = row[clock]
            print(f"{size} ({clock}): TRL {r['trl_seconds_per_step']:.3f} s/step, perceptrl "
                  f"{r['perceptrl_seconds_per_step']:.3f} s/step, ratio perceptrl/TRL {r['ratio_median']:.3f} "
                  f"(min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f}; target <= 0.5: "
                  f"{'met' if r['ratio_median'] <= 0.5 else 'not met'})", flush=True)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "medium"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--steps", type=int, default=6, help="steps per worker run (warm-up included)")
    parser.add_argument("--warmup", type=int, default=2, help="leading steps of each run not counted")
    parser.add_argument("--repeats", type=int, default=3, help="runs per framework (alternating order)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both frameworks")
    parser.add_argument("--output", default="benchmarks/results/trl_vs_perceptrl.json")
    parser.add_argument("--quick", action="store_true", help="tiny model, 2x2x8, 3 steps, 1 repeat")
    parser.add_argument("--worker", choices=["trl", "perceptrl"], help=argparse.SUPPRESS)
    parser.add_argument("--size", default="tiny", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        out = run_trl(args) if args.worker == "trl" else run_perceptrl(args)
        print("RESULT " + json.dumps(out), flush=True)
        return 0
    if args.quick:
        args.sizes, args.prompts, args.completions, args.tokens = ["tiny"], 2, 2, 8
        args.steps, args.warmup, args.repeats = 3, 1, 1
    report = compare(args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

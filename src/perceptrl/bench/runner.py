"""One benchmark case: a few steps of the real training loop in a fresh process, timed.

``run_case(case)`` trains ``case.steps`` steps of ``perceptrl.train.rl.train`` with the recipe's YAML
plus the case's overrides, on a freshly built benchmark model (``perceptrl.bench.models``), and
returns the per-step ``time/*`` and ``cpu_time/*`` metrics the loop logged, generated tokens, the
peak resident memory and the parameter count. ``python -m perceptrl.bench.runner CASE_JSON``
runs it and prints ``RESULT <json>``: every case runs in its own process, so that its peak
memory is its own and no case warms caches for the next.

Rewards: the project's verifier runs on every completion (its time is measured), but an
untrained model is never right, which would make every group's rewards equal: advantages all
zero and DAPO's dynamic sampling regenerating up to ``max_tries`` times, neither of which is what
a training run looks like. So, by default (``coin_flip_rewards``), accuracy is replaced by a
coin flip seeded by the completion's text (probability 1/2), and the reward recomputed from it.
"""

from __future__ import annotations

import os
import tempfile
import time
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from perceptrl.bench.child import child_main, current_rss_mb, peak_rss_mb, reset_peak_rss, run_in_child


@dataclass
class Case:
    """What to run: a recipe, a model size, the batch shape and any extra overrides."""

    name: str
    recipe: str = "grpo"  # recipe name (see ``perceptrl.bench.suite.recipe_sources``)
    recipe_path: str = ""  # YAML file of the recipe
    recipe_overrides: list[str] = field(default_factory=list)  # the recipe's own (virtual recipes)
    size: str = "tiny"
    prompts: int = 8
    completions: int = 8
    tokens: int = 64
    image_size: int = 56
    steps: int = 5  # steps run, warm-up included
    warmup: int = 2  # leading steps not reported
    threads: int = 1
    interop_threads: int = 1
    fast_generation: bool | None = None  # None: the policy's default
    share_prompt_prefix: bool | None = None
    fast_top_p: bool | None = None  # top-p through the numpy-sorted threshold (False: torch.sort + scatter)
    coin_flip_rewards: bool = True
    overrides: list[str] = field(default_factory=list)
    tags: dict = field(default_factory=dict)  # free-form labels (section, axis, value)
    engine: str = "hf"  # rollout.engine: hf | vllm (perceptrl.models.engines)

    def config_overrides(self, output_dir: str) -> list[str]:
        g = self.completions
        out = list(self.recipe_overrides) + [
            f"train.output_dir={output_dir}", "train.resume=none", f"train.max_steps={self.steps}",
            "train.save_final=false", "train.save_steps=0", "train.progress=false", "train.eval_every=0",
            f"train.num_threads={self.threads}", f"data.rollout_batch_size={self.prompts}",
            f"rollout.n={g}", f"rollout.max_new_tokens={self.tokens}", f"data.image_size={self.image_size}",
            "data.val_per_family=1", "model.path=tiny",
        ]
        out.append(f"rollout.engine={self.engine}")
        return out + list(self.overrides)


@contextmanager
def coin_flip_rewards(enabled: bool = True):
    """While active, the training loop's reward is a seeded coin flip on top of the real verifier."""
    import perceptrl.train.rl as rl
    from perceptrl.rewards import RewardFunction

    class CoinFlipReward(RewardFunction):
        def __call__(self, completions, samples):
            scored = super().__call__(completions, samples)
            accuracy = [float(zlib.crc32(text.encode("utf-8", "replace")) & 1) for text in completions]
            fmt = scored["format"]
            scored["accuracy"] = accuracy
            scored["reward"] = [self.accuracy_weight * a + self.format_weight * f for a, f in zip(accuracy, fmt)]
            return scored

    original = rl.RewardFunction
    if enabled:
        rl.RewardFunction = CoinFlipReward
    try:
        yield
    finally:
        rl.RewardFunction = original


def _adapt_overrides(case: Case, config_raw_recipe: dict) -> list[str]:
    """Recipe-specific settings that must follow ``rollout.n`` (NoisyRollout's n1 + n2 = n)."""
    extra = []
    rollout = config_raw_recipe.get("rollout", {}) or {}
    if rollout.get("plan") == "noisy_rollout":
        n1 = case.completions // 2
        extra += [f"noisy_rollout.n1={n1}", f"noisy_rollout.n2={case.completions - n1}"]
    return extra


def run_case(case: Case) -> dict:
    """Run ``case`` in this process; returns its measurements (see module doc)."""
    import gc

    import torch

    gc.collect()
    peak_reset = reset_peak_rss()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(case.threads)
    try:
        torch.set_num_interop_threads(case.interop_threads)
    except RuntimeError:  # already set (only possible once per process)
        pass
    from perceptrl.bench.models import build_bench_model, count_parameters
    from perceptrl.config import load_config, read_yaml
    from perceptrl.models.policy import Policy
    from perceptrl.train.rl import train

    rss_start = current_rss_mb()
    model, processor = build_bench_model(case.size, seed=0)
    policy = Policy(model, processor)
    if case.fast_generation is not None:
        policy.fast_generation = case.fast_generation
    if case.share_prompt_prefix is not None:
        policy.share_prompt_prefix = case.share_prompt_prefix
    if case.fast_top_p is not None:
        policy.fast_top_p = case.fast_top_p
    rss_model = current_rss_mb()
    with tempfile.TemporaryDirectory(prefix="perceptrl-bench-") as out:
        overrides = case.config_overrides(out)
        overrides += _adapt_overrides(case, read_yaml(case.recipe_path))
        config = load_config(case.recipe_path, overrides)
        t0 = time.perf_counter()
        with coin_flip_rewards(case.coin_flip_rewards):
            result = train(config, policy=policy)
        wall = time.perf_counter() - t0
    steps = []
    for row in result.history[case.warmup :]:
        entry = {k: float(v) for k, v in row.items() if k.startswith(("time/", "cpu_time/")) and isinstance(v, (int, float))}
        entry["num_completions"] = float(row.get("num_completions", 0.0))
        entry["response_length"] = float(row.get("response_length/mean", 0.0))
        entry["generated_tokens"] = entry["num_completions"] * entry["response_length"]
        steps.append(entry)
    torch.set_num_threads(threads_before)
    return {
        "case": asdict(case),
        "parameters": count_parameters(model),
        "steps": steps,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_is_per_case": peak_reset,
        "rss_at_start_mb": rss_start,
        "rss_after_model_mb": rss_model,
        "train_wall_seconds": wall,
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }


def run_case_subprocess(case: Case, timeout: float | None = None) -> dict:
    """Run ``case`` in a fresh Python process (its own peak memory, no shared warm-up)."""
    return run_in_child("perceptrl.bench.runner", case, f"benchmark case '{case.name}'", case.threads, timeout=timeout)


if __name__ == "__main__":
    raise SystemExit(child_main(run_case, Case))

"""``perceptrl demo``: a supervised warm start, then GRPO, on the built-in counting task.

Prints held-out greedy accuracy of the random model, after the warm start and after GRPO.
"""

from __future__ import annotations

from pathlib import Path

from perceptrl.config import load_config

RECIPES = Path(__file__).resolve().parent.parent.parent / "recipes"


def recipe_path(name: str) -> Path:
    """A shipped recipe file (from the source tree or the installed package data)."""
    for base in (RECIPES, Path(__file__).resolve().parent / "recipes"):
        path = base / f"{name}.yaml"
        if path.exists():
            return path
    raise FileNotFoundError(f"recipe '{name}' not found under {RECIPES}")


def run_demo(output_dir: str = "runs/demo", quick: bool = False) -> dict:
    from perceptrl.models.loading import load_policy
    from perceptrl.train.rl import train
    from perceptrl.train.sft import sft

    out = Path(output_dir)
    sft_steps, rl_steps = (40, 4) if quick else (300, 40)
    sft_cfg = load_config(recipe_path("sft"), [f"train.output_dir={out / 'sft'}", f"train.max_steps={sft_steps}"])
    print(f"[1/2] supervised warm start: {sft_steps} steps of {sft_cfg.train.prompts_per_step} prompts")
    warm = sft(sft_cfg)
    rl_cfg = load_config(
        recipe_path("grpo"),
        [f"train.output_dir={out / 'grpo'}", f"train.max_steps={rl_steps}", f"model.path={warm.output_dir / 'final'}"],
    )
    print(f"[2/2] GRPO: {rl_steps} steps of {rl_cfg.train.prompts_per_step} prompts x {rl_cfg.rollout.n} completions")
    policy = load_policy(rl_cfg.model)
    rl = train(rl_cfg, policy=policy)
    rows = [("random init", warm.before), ("after SFT", warm.after), ("after GRPO", rl.after)]
    print("\nheld-out greedy accuracy on the built-in counting task")
    for name, report in rows:
        print(f"  {name:<12} {report['accuracy']:.3f}   (format {report['format_rate']:.3f})")
    print(f"outputs: {out}")
    return {name: report for name, report in rows}

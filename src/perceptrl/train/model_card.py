"""A short model card (``README.md``) for a saved ``final/`` folder, as Hugging Face users expect:
what the model started from, the recipe and steps, held-out accuracy before and after, and the
command that made it. The YAML front matter follows the Hub's model card metadata
(``library_name``, ``base_model``, ``tags``, ``pipeline_tag``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import yaml

CARD_FILE = "README.md"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("perceptrl")
    except Exception:  # noqa: BLE001 - not installed (source checkout on PYTHONPATH)
        return "source"


def _base_model(path: str) -> tuple[str, str | None]:
    """How the card names the starting model, and its Hub id when it is one."""
    if path == "warmstart":
        return "perceptrl's shipped warm start (a tiny Qwen2.5-VL-architecture model)", None
    if path == "tiny" or path.startswith("tiny:"):
        return f"`{path}` (perceptrl's randomly initialised offline test model)", None
    if _HUB_ID.match(path) and not Path(path).exists():
        return f"[{path}](https://huggingface.co/{path})", path
    return f"`{path}`", None


def _number(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def render_model_card(config, before: dict, after: dict, steps: int, command: str, kind: str = "train") -> str:
    base, hub_id = _base_model(config.model.path)
    recipe = "sft" if kind == "sft" else config.recipe
    meta = {"library_name": "transformers", "pipeline_tag": "image-text-to-text",
            "tags": ["perceptrl", recipe, "vision-language", "reinforcement-learning" if kind == "train" else "sft"]}
    if hub_id:
        meta["base_model"] = hub_id
    method = "supervised warm start" if kind == "sft" else f"RL with verifiable rewards, recipe `{recipe}`"
    lora = " (LoRA, merged into these weights)" if config.model.lora.enabled else ""
    data = config.data.train_files or f"built-in synthetic suite, families {', '.join(config.data.families)}"
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        f"# {Path(config.train.output_dir).name}", "",
        f"Trained with perceptrl {_version()}: {method}{lora}, {steps} optimizer steps "
        f"from {base}.", "",
        f"- data: {data}",
        f"- learning rate {config.train.lr:g}, {config.data.rollout_batch_size} prompts x {config.rollout.n} "
        f"completions per step, seed {config.train.seed}" if kind == "train" else
        f"- learning rate {config.train.lr:g}, {config.data.rollout_batch_size} samples per step, seed {config.train.seed}",
        "", "## Held-out greedy accuracy", "", "| metric | before | after |", "|---|---|---|",
    ]
    for key in [k for k in after if k.startswith("accuracy")] or list(after):
        lines.append(f"| {key} | {_number(before.get(key))} | {_number(after.get(key))} |")
    lines += [
        "", "## How it was made", "", "```sh", command, "```", "",
        "The full configuration is `config.yaml` in the run folder (the parent of this folder); per-step "
        "metrics are in `metrics.jsonl` beside it.", "",
        "## Use", "", "```python", "from transformers import AutoModelForImageTextToText, AutoProcessor", "",
        'model = AutoModelForImageTextToText.from_pretrained("path/to/final")',
        'processor = AutoProcessor.from_pretrained("path/to/final")', "```", "",
    ]
    return "\n".join(lines)


def write_model_card(folder: str | Path, config, before: dict, after: dict, steps: int, command: str,
                     kind: str = "train") -> Path:
    """Write ``<folder>/README.md`` atomically."""
    folder = Path(folder)
    target = folder / CARD_FILE
    tmp = folder / f".{CARD_FILE}.tmp-{os.getpid()}"
    tmp.write_text(render_model_card(config, before or {}, after or {}, steps, command, kind))
    os.replace(tmp, target)
    return target

"""Every shipped recipe, two rollout steps on a CUDA device: do the pieces keep their tensors together?

    python benchmarks/gpu_recipes_smoke.py                     # CUDA, bf16 compute, all recipes
    python benchmarks/gpu_recipes_smoke.py --device cpu --recipes grpo dupl   # the same on the CPU

The CPU test suite cannot show a tensor left on the wrong device (the GPU check found one in the
update). This runs each recipe of ``recipes/`` (not sft/warmstart) for 2 rollout steps of the tiny
model through ``perceptrl.train.rl.train``, with 2 mini-batches per rollout step, float32 master
weights under bf16 autocast, and coin-flip rewards (no ``math_verify`` needed, as
``benchmarks/gpu_check.py``). One JSON line per recipe: ok, seconds, or the error's last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--recipes", nargs="*", help="recipe names (default: every shipped one)")
    parser.add_argument("--output", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)

    import torch

    from perceptrl.bench.runner import coin_flip_rewards
    from perceptrl.config import load_config, recipes_dir
    from perceptrl.train.rl import train

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_recipes_smoke: no CUDA device here; nothing run (use --device cpu)")
        return 0
    names = args.recipes or sorted(p.stem for p in recipes_dir().glob("*.yaml") if p.stem not in ("sft", "warmstart"))
    failed = 0
    out_file = open(args.output, "a") if args.output else None
    for name in names:
        t0 = time.perf_counter()
        record: dict = {"recipe": name}
        try:
            with tempfile.TemporaryDirectory(prefix=f"perceptrl-smoke-{name}-") as out:
                config = load_config(recipes_dir() / f"{name}.yaml", [
                    "model.path=tiny", f"model.dtype={args.dtype}", f"model.device={args.device}",
                    "data.rollout_batch_size=4", "train.global_batch_size=2", "train.micro_batch_size=8",
                    "rollout.max_new_tokens=16", "data.val_per_family=0", "data.image_size=56",
                    "train.max_steps=2", "train.save_final=false", "train.progress=false", "train.num_threads=4",
                    f"train.output_dir={out}",
                ])
                with coin_flip_rewards(True):
                    result = train(config)
                last = result.history[-1] if result.history else {}
                record.update(ok=True, loss=last.get("loss"), grad_norm=last.get("grad_norm"))
        except Exception as err:  # report and go on: the point is the list of recipes that fail
            failed += 1
            frames = traceback.extract_tb(err.__traceback__)
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
            record.update(ok=False, error=f"{type(err).__name__}: {err}"[:400], where=where)
        record["seconds"] = round(time.perf_counter() - t0, 1)
        line = json.dumps(record, default=float)
        print(line, flush=True)
        if out_file:
            out_file.write(line + "\n")
            out_file.flush()
    print(json.dumps({"event": "done", "recipes": len(names), "failed": failed}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU check: three GRPO steps of a Qwen2.5-VL-3B-shaped model through perceptrl's real training loop.

    python benchmarks/gpu_check.py                  # CUDA: 16 prompts x 5 completions x 512 new tokens, 448 px
    python benchmarks/gpu_check.py --quick          # CUDA: 4 prompts x 5 x 128 tokens, 224 px
    python benchmarks/gpu_check.py --tiny-test      # CPU: the same code path on a tiny config (a smoke test)

The model is built from Qwen2.5-VL-3B-Instruct's public ``config.json`` (``--config PATH``, else the
packaged ``perceptrl/assets/configs/Qwen2.5-VL-3B-Instruct/config.json``, else the copy below)
with random weights: float32 master weights, bf16 compute (``model.dtype=bfloat16``, autocast),
gradient checkpointing. Tokenizer: Qwen2.5's token ids on a byte-level vocabulary
(``perceptrl.models.real_shape``), so no download is needed. Prompts: the built-in synthetic suite at
``--image-size`` px; 4 PPO mini-batches per rollout step, as EasyR1's defaults (rollout batch 512,
global batch 128), so "scoring" is the old policy's no-gradient pass. Rewards: the project's verifier with accuracy replaced by a coin flip seeded by
the completion's text (a random model is never right, and all-equal rewards would zero every
advantage), as ``perceptrl bench`` does.

Prints one JSON line per step as soon as the step ends (so numbers survive a later failure):
seconds split into generation, scoring and update; generated tokens per second; update tokens
(prompt + completion, every row) per second; model FLOPs utilisation (update, and whole step) against
``--peak-tflops`` (dense bf16; default by device name: H100/H200 989, A100 312); peak GPU memory
(allocated and reserved). Model FLOPs count each token once through every matrix product
(2 x parameters forward, 6 x with backward; gradient checkpointing's recomputation is not counted, as
MFU is usually defined) plus attention's score and value products; the vision tower per image.

Without CUDA (and without ``--tiny-test``) it runs nothing and says so. It imports neither
``math_verify`` nor ``datasets`` (the GPU machine may lack both; ``--tiny-test`` checks that).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Qwen/Qwen2.5-VL-3B-Instruct config.json (public): what the model is built from without --config.
QWEN2_5_VL_3B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
    "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 128000,
    "max_window_layers": 70, "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    "vision_config": {
        "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
        "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}
PACKAGED_CONFIG = "assets/configs/Qwen2.5-VL-3B-Instruct/config.json"  # inside the perceptrl package

# Dense bf16 peak of common GPUs (TFLOP/s, no sparsity): NVIDIA data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def shrink(config: dict) -> dict:
    """The same config at test size (--tiny-test): every key kept, widths and depths cut down."""
    small = json.loads(json.dumps(config))
    small.update(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]})
    small["vision_config"].update(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                                  fullatt_block_indexes=[1])
    return small


def load_public_config(path: str | None) -> tuple[dict, str]:
    if path:
        return json.loads(Path(path).read_text()), path
    import perceptrl

    packaged = Path(perceptrl.__file__).resolve().parent / PACKAGED_CONFIG
    if packaged.is_file():
        return json.loads(packaged.read_text()), str(packaged)
    return dict(QWEN2_5_VL_3B), "built-in copy of Qwen2.5-VL-3B-Instruct config.json"


def build_policy(config_dict: dict, device: str, seed: int = 0):
    """Random-weight model from ``config_dict`` on ``device`` (float32: master weights), real-style processor."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from perceptrl.models.policy import Policy
    from perceptrl.models.processors import make_qwen_vl_processor
    from perceptrl.models.real_shape import RELEASED_MAX_PIXELS, RELEASED_MIN_PIXELS, build_real_tokenizer

    raw = {k: v for k, v in config_dict.items() if k not in ("architectures", "torch_dtype", "transformers_version")}
    config = Qwen2_5_VLConfig(**raw)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [151645, 151643]  # Qwen2.5-VL's generation_config.json
    model.generation_config.pad_token_id = 151643
    processor = make_qwen_vl_processor(build_real_tokenizer(), patch_size=14, merge_size=2,
                                       min_pixels=RELEASED_MIN_PIXELS, max_pixels=RELEASED_MAX_PIXELS)
    return Policy(model, processor)


def count_flops_per_token(config_dict: dict) -> dict:
    """Forward FLOPs per text token (matrix products), and of the vision tower per image patch."""
    h, inter, layers = config_dict["hidden_size"], config_dict["intermediate_size"], config_dict["num_hidden_layers"]
    heads, kv = config_dict["num_attention_heads"], config_dict["num_key_value_heads"]
    head_dim = h // heads
    per_layer = h * h * 2 + h * kv * head_dim * 2 + 3 * h * inter  # q, o; k, v; gate, up, down
    text = 2 * (layers * per_layer + config_dict["vocab_size"] * h)  # with the output projection
    v = config_dict["vision_config"]
    vh, vi = v["hidden_size"], v["intermediate_size"]
    vision = 2 * v["depth"] * (4 * vh * vh + 3 * vh * vi)  # qkv + proj; gate, up, down
    merged = v["spatial_merge_size"] ** 2
    vision += 2 * (merged * vh * merged * vh + merged * vh * v["out_hidden_size"]) / merged  # the merger's MLP
    return {"text": text, "attention_per_context": 4 * layers * h, "vision_per_patch": vision}


def peak_tflops(requested: float | None) -> float | None:
    import torch

    if requested:
        return requested
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def vllm_status() -> dict:
    """Whether the vLLM engine can be timed here (``rollout.engine: vllm``); where it can, time it with
    ``perceptrl bench --sections recipes --engine vllm`` (this check times the HF engine)."""
    from perceptrl.models.vllm_engine import VLLMError, check_vllm

    try:
        check_vllm()
    except VLLMError as err:
        return {"event": "vllm", "available": False, "reason": str(err)}
    return {"event": "vllm", "available": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a Qwen2.5-VL config.json (default: 3B-Instruct's public numbers)")
    parser.add_argument("--quick", action="store_true", help="4 prompts x 5 x 128 tokens, 224 px (CUDA)")
    parser.add_argument("--tiny-test", action="store_true", help="CPU smoke test of this script on a tiny config")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=5, help="completions per prompt")
    parser.add_argument("--tokens", type=int, default=512, help="new tokens per completion")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--micro-batch", type=int, default=8, help="train.micro_batch_size")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of one GPU")
    parser.add_argument("--output", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)

    if args.tiny_test:  # the GPU machine has neither; fail here rather than there
        sys.modules.setdefault("math_verify", None)
        sys.modules.setdefault("datasets", None)
    import torch

    if not torch.cuda.is_available() and not args.tiny_test:
        print("gpu_check: no CUDA device here; nothing run (use --tiny-test for the CPU smoke test)")
        return 0
    if args.quick:
        args.prompts, args.tokens, args.image_size = 4, 128, 224
    if args.tiny_test:
        args.prompts, args.n, args.tokens, args.image_size, args.steps = 2, 2, 12, 56, min(args.steps, 2)
    device = "cpu" if args.tiny_test else "cuda"
    out_file = open(args.output, "a") if args.output else None

    def emit(record: dict) -> None:
        line = json.dumps(record, default=float)
        print(line, flush=True)
        if out_file:
            out_file.write(line + "\n")
            out_file.flush()

    emit(vllm_status())
    public, source = load_public_config(args.config)
    config_dict = shrink(public) if args.tiny_test else public
    t0 = time.perf_counter()
    policy = build_policy(config_dict, device)
    if device == "cuda":
        torch.cuda.synchronize()
    n_params = sum(p.numel() for p in policy.model.parameters())
    emit({"event": "model", "config": source, "parameters": n_params, "build_seconds": time.perf_counter() - t0,
          "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
          "torch": torch.__version__, "shape": {"prompts": args.prompts, "n": args.n, "new_tokens": args.tokens,
                                                "image_px": args.image_size, "micro_batch": args.micro_batch}})
    return run_steps(args, policy, config_dict, device, emit)


def run_steps(args, policy, config_dict: dict, device: str, emit) -> int:
    import tempfile

    import torch

    import perceptrl.train.rl as rl
    from perceptrl.bench.runner import coin_flip_rewards
    from perceptrl.config import load_config

    flops = count_flops_per_token(config_dict)
    peak = peak_tflops(args.peak_tflops)
    patch = config_dict["vision_config"]["patch_size"]
    state = {"t": time.perf_counter()}
    original_logger = rl.MetricsLogger

    class StepPrinter(original_logger):
        """The loop's metrics logger, printing each step's numbers as soon as it is logged."""

        def log(self, step: int, metrics: dict) -> None:
            super().log(step, metrics)
            if "time/step" not in metrics:
                return  # the evaluation rows
            rows = metrics.get("num_completions", 0.0)
            response = metrics.get("response_length/mean", 0.0)
            generated = rows * response
            prompt_len = state.get("prompt_len", 0)
            trained = rows * (prompt_len + response)
            patches = rows * (args.image_size // patch) ** 2
            forward_flops = (flops["text"] * trained + flops["attention_per_context"] * rows
                             * (prompt_len + response) ** 2 / 2 + flops["vision_per_patch"] * patches)
            update_flops = 3 * forward_flops  # forward and backward
            score_flops = forward_flops if metrics.get("time/scoring", 0.0) > 0 else 0.0  # the old policy's pass
            gen_flops = (flops["text"] * (generated + args.prompts * prompt_len)
                         + flops["attention_per_context"] * rows * (prompt_len * response + response ** 2 / 2)
                         + flops["vision_per_patch"] * args.prompts * (args.image_size // patch) ** 2)
            t_gen, t_score, t_update = (metrics.get(k, 0.0) for k in ("time/generation", "time/scoring", "time/update"))
            record = {
                "event": "step", "step": step, "seconds": metrics["time/step"], "generation_s": t_gen,
                "scoring_s": t_score, "update_s": t_update, "generated_tokens": generated,
                "generated_tokens_per_s": generated / t_gen if t_gen else None,
                "update_tokens": trained, "update_tokens_per_s": trained / t_update if t_update else None,
                "step_tokens_per_s": (trained / metrics["time/step"]),
                "mfu_update": update_flops / t_update / (peak * 1e12) if peak and t_update else None,
                "mfu_step": ((update_flops + score_flops + gen_flops) / metrics["time/step"] / (peak * 1e12)
                             if peak else None),
                "peak_tflops": peak, "response_length": response, "prompt_length": prompt_len,
                "truncated_rate": metrics.get("truncated_rate"), "loss": metrics.get("loss"),
                "grad_norm": metrics.get("grad_norm"),
            }
            if device == "cuda":
                record["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
                record["peak_gpu_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
                torch.cuda.reset_peak_memory_stats()
            emit(record)

    prompt_lengths = []
    encode = policy.encode

    def measured_encode(texts, images):  # the prompt length of the step's first prompt (all are alike)
        out = encode(texts, images)
        prompt_lengths.append(int(out.attention_mask[0].sum()))
        state["prompt_len"] = prompt_lengths[-1]
        return out

    policy.encode = measured_encode
    with tempfile.TemporaryDirectory(prefix="perceptrl-gpu-check-") as out:
        config = load_config("recipes/grpo.yaml" if Path("recipes/grpo.yaml").is_file() else None, [
            "model.dtype=bfloat16", "model.gradient_checkpointing=true", f"model.device={device}",
            f"data.rollout_batch_size={args.prompts}", f"rollout.n={args.n}", f"rollout.max_new_tokens={args.tokens}",
            f"data.image_size={args.image_size}", "data.val_per_family=0", "data.families=[count, spatial, compare]",
            f"train.max_steps={args.steps}", f"train.micro_batch_size={args.micro_batch}", "train.lr=1e-6",
            # EasyR1's ratio (rollout 512, global batch 128): 4 optimizer steps per rollout step, after one
            # no-gradient pass for the old policy's log-probs (the "scoring" seconds)
            f"train.global_batch_size={max(1, args.prompts // 4)}",
            "train.save_final=false", "train.progress=false", f"train.output_dir={out}", "train.resume=none",
        ])
        rl.MetricsLogger = StepPrinter
        try:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            with coin_flip_rewards(True):
                rl.train(config, policy=policy)
        finally:
            rl.MetricsLogger = original_logger
    emit({"event": "done", "seconds_total": time.perf_counter() - state["t"]})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

"""``perceptrl bench --sections memory``: peak resident memory of one update at the real vocabulary.

Each case runs in a fresh process (``python -m perceptrl.bench.memory CASE_JSON``) on the real-shape
test model (``perceptrl.models.real_shape``: Qwen2.5-VL with 151,936 embedding rows, text width 128,
2 layers, tied head): one prompt with an image, ``rows`` completions of ``T`` sampled-looking tokens
(no end-of-turn token, so every position is trained on), and one update of the real code path
(``perceptrl.train.update.run_update``: GRPO's clipped surrogate, entropy logged, gradient clipping,
AdamW step). The AdamW state exists before the measured update (a first step made it), as it does
from the second step of a run on.

Reported, in MB (2**20 bytes):
- ``peak``: the process's peak resident memory during the update (``VmHWM``, reset just before it
  through ``/proc/self/clear_refs``) minus its resident memory before the model existed, less
  nothing else: tokenizer and processor are part of it (about ``baseline_extra``);
- ``floor``: what an update cannot do without: weights + gradients + AdamW's two states (fp32:
  16 bytes per trainable parameter) + one chunk's float32 logits ``[chunk tokens, V]``;
- ``ratio = peak / floor`` (the goal: at most 1.3);
- ``score_growth``: a separate measurement, ``Policy.score`` forward and backward alone on the same
  completions (gradients created, no optimizer), peak resident memory growth over the memory before
  the call, against one float32 ``[rows, T, V]`` tensor.

glibc would keep freed blocks below its (dynamic, up to 32 MB) mmap threshold in the heap, so that
resident memory stays high after a temporary is freed; the cases run with ``MALLOC_MMAP_THRESHOLD_``
at 64 KB, so that every large tensor is its own mapping and freeing it returns its pages.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass

from perceptrl.bench.child import MB, child_main, current_rss_mb, peak_rss_mb, reset_peak_rss, run_in_child

DEFAULT_LENGTHS = (256, 1024)
DEFAULT_ROWS = (1, 4)


@dataclass
class MemoryCase:
    tokens: int = 256  # completion length T
    rows: int = 1  # completions in the update (one micro-batch)
    threads: int = 1
    image_size: int = 112
    gradient_checkpointing: bool = True  # as EasyR1's default (worker.actor.model.enable_gradient_checkpointing)


def _reset_peak() -> None:
    if not reset_peak_rss():
        raise OSError("the memory bench resets the peak through /proc/self/clear_refs (Linux)")


def _rollout(policy, case: MemoryCase, seed: int = 0):
    """A rollout of ``case.rows`` completions of one prompt, built without generation."""
    import numpy as np
    import torch
    from PIL import Image

    from perceptrl.data.types import Sample
    from perceptrl.models.policy import Completions
    from perceptrl.train.rollout import Rollout

    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((case.image_size, case.image_size, 3)) * 255).astype("uint8"))
    sample = Sample(id="m0", images=[image], problem="How many shapes are there?", answer="3")
    prompts = policy.encode([sample.problem], [[image]])
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 151_643, (case.rows, case.tokens), generator=g)  # regular tokens: no stop token
    mask = torch.ones_like(ids)
    rows = torch.zeros(case.rows, dtype=torch.long)
    completions = Completions(ids=ids, mask=mask, rows=rows, truncated=torch.ones(case.rows, dtype=torch.bool))
    rollout = Rollout(
        samples=[sample], prompts=prompts, instance_of={(0, "clean"): 0}, completions=completions,
        prompt_index=rows.clone(), group_ids=rows.clone(), update_rows=rows.clone(), gen_view=["clean"] * case.rows,
        pad_token_id=policy.pad_token_id,
    )
    rollout.scores = {"reward": torch.arange(case.rows, dtype=torch.float32) % 2}
    rollout.advantages = torch.linspace(-1.0, 1.0, case.rows) if case.rows > 1 else torch.ones(1)
    return rollout


def _chunk_tokens(policy, n_tokens: int, vocab: int, hidden_size: int) -> int:
    """Tokens per logits chunk of the scoring pass (the floor's one chunk; 128 for code before chunking)."""
    try:
        from perceptrl.models.logits import chunk_tokens
    except ImportError:
        return 128
    return chunk_tokens(n_tokens, vocab, hidden_size, getattr(policy, "logits_chunk", None))


def run_memory_case(case: MemoryCase) -> dict:
    """Measure one case in this process (see the module doc); call it in a fresh process."""
    import torch

    torch.set_num_threads(case.threads)
    from perceptrl.models.policy import Policy
    from perceptrl.models.real_shape import build_real_shape
    from perceptrl.train.terms import surrogate_term
    from perceptrl.train.update import UpdateSettings, run_update

    gc.collect()
    rss_start = current_rss_mb()
    model, processor = build_real_shape(seed=0)
    policy = Policy(model, processor)
    if case.gradient_checkpointing:
        from perceptrl.models.lora import enable_gradient_checkpointing

        enable_gradient_checkpointing(policy)
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    weight_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / MB
    vocab = model.get_output_embeddings().weight.shape[0]
    rollout = _rollout(policy, case)
    settings = UpdateSettings(loss_agg_mode="token_mean", micro_batch_size=case.rows, max_grad_norm=1.0,
                              max_len=case.tokens, terms=[surrogate_term(0.2, 0.2, 3.0)])
    from perceptrl.config import TrainConfig
    from perceptrl.train.rl import make_optimizer

    optimizer = make_optimizer(model, TrainConfig(lr=1e-6))  # the training loop's own
    for p in params:  # AdamW's state as after a first step
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    rss_before = current_rss_mb()

    # 1. Scoring forward and backward alone (no optimizer): the growth the issue measured.
    _reset_peak()
    comp = rollout.completions
    scored = policy.score(rollout.prompts, rollout.update_rows, comp.ids, comp.mask, with_entropy=True)
    (scored["logprobs"] * comp.mask).sum().backward()
    score_peak = peak_rss_mb()
    del scored
    optimizer.zero_grad(set_to_none=True)
    gc.collect()

    # 2. One update of the real code path; the optimizer step's peak is read on its own.
    rss_update = current_rss_mb()
    peaks = {}
    step = optimizer.step

    def measured_step(*args, **kwargs):
        peaks["backward"] = peak_rss_mb()  # forward, backward and gradient clipping
        _reset_peak()
        out = step(*args, **kwargs)
        peaks["optimizer"] = peak_rss_mb()
        return out

    optimizer.step = measured_step
    _reset_peak()
    t0 = time.perf_counter()
    metrics = run_update(policy, optimizer, rollout, settings)
    seconds = time.perf_counter() - t0
    update_peak = max(peaks.values())

    chunk = _chunk_tokens(policy, case.rows * case.tokens, vocab, model.get_output_embeddings().weight.shape[1])
    state_mb = n_trainable * 4 * 3 / MB  # fp32 gradients + AdamW exp_avg, exp_avg_sq
    chunk_mb = min(chunk, case.rows * case.tokens) * vocab * 4 / MB
    floor = weight_mb + state_mb + chunk_mb
    logits_mb = case.rows * case.tokens * vocab * 4 / MB
    baseline_extra = rss_before - rss_start - weight_mb - n_trainable * 8 / MB  # tokenizer, processor, buffers
    peak = update_peak - rss_start
    return {
        "case": asdict(case), "vocab": vocab, "parameters": sum(p.numel() for p in model.parameters()),
        "chunk_tokens": chunk, "weights_mb": weight_mb, "grads_adam_mb": state_mb, "chunk_mb": chunk_mb,
        "floor_mb": floor, "peak_mb": peak, "peak_minus_extra_mb": peak - baseline_extra,
        "ratio": (peak - baseline_extra) / floor, "baseline_extra_mb": baseline_extra,
        "backward_peak_mb": peaks["backward"] - rss_start - baseline_extra,
        "optimizer_peak_mb": peaks["optimizer"] - rss_start - baseline_extra,
        "optimizer": type(optimizer).__name__ + (" fused" if optimizer.defaults.get("fused") else " foreach"),
        "rss_before_update_mb": rss_update - rss_start, "update_seconds": seconds,
        "score_growth_mb": score_peak - rss_before, "fp32_logits_mb": logits_mb,
        "score_growth_over_logits": (score_peak - rss_before) / logits_mb, "loss": metrics.get("loss"),
    }


def run_case_subprocess(case: MemoryCase, timeout: float = 1800) -> dict:
    return run_in_child("perceptrl.bench.memory", case, f"memory case {case}", case.threads,
                        env={"MALLOC_MMAP_THRESHOLD_": "65536"}, timeout=timeout)


def markdown(results: list[dict]) -> str:
    """The table ``docs/BENCHMARKS.md`` shows (MB = 2**20 bytes)."""
    lines = [
        "| T | rows | optimizer | floor MB (weights + grads + AdamW + one chunk) | peak MB: update (fwd+bwd / "
        "optimizer step) | peak / floor | score fwd+bwd growth MB | x fp32 [rows, T, V] | update s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["case"]
        split = (f" ({r['backward_peak_mb']:.0f} / {r['optimizer_peak_mb']:.0f})" if "backward_peak_mb" in r else "")
        optimizer = r.get("optimizer", "AdamW")
        if not c.get("gradient_checkpointing", False):
            optimizer += ", no checkpointing"
        lines.append(
            f"| {c['tokens']} | {c['rows']} | {optimizer} | {r['floor_mb']:.0f} "
            f"({r['weights_mb']:.0f} + {r['grads_adam_mb']:.0f} + {r['chunk_mb']:.0f}) | "
            f"{r['peak_minus_extra_mb']:.0f}{split} | {r['ratio']:.2f} | {r['score_growth_mb']:.0f} | "
            f"{r['score_growth_over_logits']:.2f} | {r['update_seconds']:.1f} |"
        )
    return "\n".join(lines)


def run_memory_section(lengths=DEFAULT_LENGTHS, rows=DEFAULT_ROWS, threads: int = 1, extra_cases=(),
                       log=print) -> list[dict]:
    """Every (T, rows) case, each in its own process; also 4 x 512 (the issue's scoring measurement)."""
    cases = [MemoryCase(tokens=t, rows=r, threads=threads) for t in lengths for r in rows]
    cases += [c for c in extra_cases if c not in cases]
    results = []
    for case in cases:
        t0 = time.perf_counter()
        out = run_case_subprocess(case)
        results.append(out)
        log(f"memory T={case.tokens:5d} rows={case.rows}: peak {out['peak_minus_extra_mb']:7.0f} MB, floor "
            f"{out['floor_mb']:7.0f} MB, ratio {out['ratio']:.2f}; score fwd+bwd +{out['score_growth_mb']:.0f} MB "
            f"= {out['score_growth_over_logits']:.2f} x fp32 [rows, T, V] ({time.perf_counter() - t0:.0f} s)")
    return results


if __name__ == "__main__":
    raise SystemExit(child_main(run_memory_case, MemoryCase))

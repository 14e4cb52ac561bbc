"""perceptrl.models.memory: every term of the GPU memory estimate against hand-computed bytes."""

import pytest

from perceptrl.models.memory import (
    ModelShape,
    Workload,
    estimate_memory,
    logprob_bytes,
    text_layer_bytes_per_token,
    training_precision,
)

# A toy shape with round numbers: 1000 parameters, the 200 of the vision tower frozen.
SHAPE = ModelShape(total_params=1000, trainable_params=800, vision_params=200, root_params=100, largest_unit_params=50,
                   layers=2, hidden=4, kv_dim=2, intermediate=8, vocab=10, vision_layers=0, vision_hidden=0,
                   vision_intermediate=0, patch_size=14, merge_size=2, vision_trainable=False)
WORK = Workload(generation_rows=3, prompt_tokens=5, response_tokens=7, micro_batch_rows=2, pixels_per_image=196,
                gradient_checkpointing=False, reference_model=True, model_dtype="bfloat16")


def test_two_gpus_fsdp2_term_by_term():
    est = estimate_memory(SHAPE, WORK, n_gpus=2)
    assert est.terms == {
        "weights": (800 * 4 + 200 * 2) // 2,  # fp32 master of the trainable part, bf16 frozen part, sharded
        "gradients": 800 * 4 // 2,
        "adamw_state": 800 * 2 * 4 // 2,
        "autocast_copies": 0,  # FSDP2 gathers bf16 copies unit by unit (update_working_set)
        "reference_model": 1000 * 2,  # unsharded bf16 copy
        "rollout_weights": 1000 * 2,  # gathered bf16 weights for generation
        "kv_cache": 3 * (5 + 7) * (2 * 2 * 2 * 2),  # rows x tokens x layers x (k, v) x kv width x 2 B
        "sampling_buffers": 3 * 10 * 32,
        "update_working_set": 100 * 4 + 3 * 50 * 2,
        "activations": 2 * 12 * (2 * (30 * 4 + 6 * 2 + 8 * 8) + 12 * 4),  # 2 layers of 196 B/token, head input 48
        "logprob_chunk": 2 * 7 * 10 * 10,  # small vocabulary: every token in one chunk
    }
    assert est.rollout_peak == 1800 + 3200 + 2000 + 2000 + 576 + 960
    assert est.update_peak == 1800 + 3200 + 2000 + 1600 + 700 + 10560 + 1400
    assert est.peak == est.update_peak


def test_one_gpu_keeps_float32_masters_and_autocast_copies_and_gathers_nothing():
    est = estimate_memory(SHAPE, WORK, n_gpus=1)
    assert est.terms["weights"] == 800 * 4 + 200 * 2 and est.terms["gradients"] == 800 * 4
    assert est.terms["adamw_state"] == 800 * 8 and est.terms["autocast_copies"] == 800 * 2
    assert est.terms["rollout_weights"] == 0 and est.terms["update_working_set"] == 0
    with pytest.raises(ValueError, match="offload"):
        estimate_memory(SHAPE, WORK, n_gpus=1, offload=True)


def test_offload_moves_the_shards_off_the_gpu():
    est = estimate_memory(SHAPE, WORK, n_gpus=2, offload=True)
    assert est.terms["weights"] == est.terms["gradients"] == est.terms["adamw_state"] == 0
    assert est.terms["reference_model"] == 2000 and est.terms["rollout_weights"] == 2000  # still on the GPU


def test_gradient_checkpointing_keeps_layer_inputs_and_one_layer():
    from dataclasses import replace

    est = estimate_memory(SHAPE, replace(WORK, gradient_checkpointing=True), n_gpus=2)
    assert est.terms["activations"] == 24 * (2 * 2 * 4 + 196) + 24 * 48


def test_trained_vision_tower_adds_its_activations():
    from dataclasses import replace

    shape = replace(SHAPE, vision_layers=3, vision_hidden=4, vision_intermediate=6, vision_trainable=True)
    est = estimate_memory(shape, WORK, n_gpus=2)
    per_block = 30 * 4 + 6 * 4 + 8 * 6  # kv = hidden: full multi-head attention
    assert est.terms["activations"] == 10560 + 2 * 1 * 3 * per_block  # 2 rows x 196 px / 14^2 = 1 patch each


def test_no_reference_no_rollout_for_sft():
    from dataclasses import replace

    est = estimate_memory(SHAPE, replace(WORK, reference_model=False, generates=False), n_gpus=1)
    assert est.terms["reference_model"] == est.terms["kv_cache"] == est.terms["sampling_buffers"] == 0


def test_formulas_at_qwen2_5_vl_7b():
    assert text_layer_bytes_per_token(3584, 512, 18944) == 262_144
    # Liger's rule: 8,192 tokens / ceil(152,064 / 3,584) = 43 chunks -> 191 tokens, rounded up to 256
    assert logprob_bytes(4, 2048, 152_064, 3584) == 256 * 152_064 * 10
    assert logprob_bytes(4, 2048, 152_064, 3584, path="full") == 4 * 2048 * 152_064 * 6 + 4 * 2048 * 152_064 * 8
    shape = ModelShape(8_292_166_656, 8_292_166_656, 676_550_144, 0, 0, 28, 3584, 512, 18944, 152_064, 32, 1280, 3420,
                       14, 2, True)
    assert shape.kv_bytes_per_token == 28 * 2 * 512 * 2  # 57,344 B, docs/SCALING.md's 57 KB


def test_training_precision_follows_the_code():
    assert [training_precision("bfloat16", 1).__dict__[k] for k in ("master", "frozen", "grad", "state")] == [4, 2, 4, 4]
    assert [training_precision("bfloat16", 8).__dict__[k] for k in ("master", "frozen", "grad", "state")] == [4, 2, 4, 4]
    assert [training_precision("float32", 8).__dict__[k] for k in ("master", "frozen", "grad", "state")] == [4, 4, 4, 4]
    assert [training_precision("bfloat16", 1, lora=True).__dict__[k] for k in ("master", "frozen", "grad", "state")] \
        == [4, 2, 4, 4]


def test_the_estimate_reproduces_the_gpu_check_on_an_h200():
    """benchmarks/gpu_check.py on one H200 (docs/BENCHMARKS.md): Qwen2.5-VL-3B, 16 prompts x 5 x 512 new
    tokens, 448 px, prompts of about 430 tokens, micro-batch 8, k3 reference, gradient checkpointing,
    bf16 compute: peak 77.1 GiB allocated (torch.cuda.max_memory_allocated)."""
    from perceptrl.config import load_config
    from perceptrl.train.dry_run import build_model, model_shape

    config = load_config(None, ["model.path=Qwen/Qwen2.5-VL-3B-Instruct", "model.dtype=bfloat16"])
    shape = model_shape(build_model(config)[0], config)
    work = Workload(generation_rows=80, prompt_tokens=430, response_tokens=512, micro_batch_rows=8,
                    pixels_per_image=448 * 448, gradient_checkpointing=True, reference_model=True,
                    model_dtype="bfloat16")
    peak = estimate_memory(shape, work, n_gpus=1).peak / 2**30
    assert 77.1 * 0.9 <= peak <= 77.1 * 1.1, peak  # allocator slack and the CUDA context are not counted

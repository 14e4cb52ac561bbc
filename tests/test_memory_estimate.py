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
        "reference_model": 1000 * 2,  # unsharded bf16 copy
        "rollout_weights": 1000 * 2,  # gathered bf16 weights for generation
        "kv_cache": 3 * (5 + 7) * (2 * 2 * 2 * 2),  # rows x tokens x layers x (k, v) x kv width x 2 B
        "sampling_buffers": 3 * 10 * 32,
        "update_working_set": 100 * 4 + 3 * 50 * 2,
        "activations": 2 * 12 * (2 * (30 * 4 + 6 * 2 + 8 * 8) + 12 * 4),  # 2 layers of 196 B/token, head input 48
        "logprob_chunk": 2 * 7 * 10 * 14,  # fewer tokens than one chunk
    }
    assert est.rollout_peak == 1800 + 3200 + 2000 + 2000 + 576 + 960
    assert est.update_peak == 1800 + 3200 + 2000 + 1600 + 700 + 10560 + 1960
    assert est.peak == est.update_peak


def test_one_gpu_keeps_everything_in_the_model_dtype_and_gathers_nothing():
    est = estimate_memory(SHAPE, WORK, n_gpus=1)
    assert est.terms["weights"] == 1000 * 2 and est.terms["gradients"] == 800 * 2 and est.terms["adamw_state"] == 800 * 4
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
    assert logprob_bytes(4, 2048, 152_064) == 2048 * 152_064 * 14  # one chunk of 2,048 tokens
    assert logprob_bytes(4, 2048, 152_064, path="full") == 4 * 2048 * 152_064 * 6 + 4 * 2048 * 152_064 * 8
    shape = ModelShape(8_292_166_656, 8_292_166_656, 676_550_144, 0, 0, 28, 3584, 512, 18944, 152_064, 32, 1280, 3420,
                       14, 2, True)
    assert shape.kv_bytes_per_token == 28 * 2 * 512 * 2  # 57,344 B, docs/SCALING.md's 57 KB


def test_training_precision_follows_the_code():
    assert [training_precision("bfloat16", 1).__dict__[k] for k in ("master", "frozen", "grad", "state")] == [2, 2, 2, 2]
    assert [training_precision("bfloat16", 8).__dict__[k] for k in ("master", "frozen", "grad", "state")] == [4, 2, 4, 4]
    assert [training_precision("float32", 8).__dict__[k] for k in ("master", "frozen", "grad", "state")] == [4, 4, 4, 4]
    assert [training_precision("bfloat16", 1, lora=True).__dict__[k] for k in ("master", "frozen", "grad", "state")] \
        == [4, 2, 4, 4]

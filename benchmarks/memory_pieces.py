"""Activation memory per token of Qwen2.5-VL-3B / 7B layers, measured on CPU (docs/SCALING.md's inputs).

    python benchmarks/memory_pieces.py            # about a minute, ~3 GB of memory

For each model width (the public configs' text and vision numbers), one and two decoder layers (and
vision blocks) are built with random bf16 weights, a forward pass with gradient runs on 1,024 tokens
(patches), and the bytes autograd saves for the backward pass are counted
(``torch.autograd.graph.saved_tensors_hooks``, parameters excluded). The difference between two
layers and one is one layer's activation memory; with gradient checkpointing only the layer's input
is kept (one ``[tokens, hidden]`` tensor) and one layer's activations exist again while its backward
runs. Printed per token (per patch for the vision tower), in KB (1,024 bytes).
"""

from __future__ import annotations

import json

import torch

SHAPES = {
    # Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct config.json (text; vision is the same tower for both)
    "3B": dict(hidden_size=2048, intermediate_size=11008, num_attention_heads=16, num_key_value_heads=2),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4),
}
VISION = dict(hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
              temporal_patch_size=2, window_size=112)
TOKENS = 1024


def _saved_bytes(fn, params) -> int:
    ids = {p.data_ptr() for p in params}
    total = [0]

    def pack(t):
        if t.data_ptr() not in ids:
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def text_layer_bytes(shape: dict, layers: int, dtype) -> int:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLTextModel

    half = shape["hidden_size"] // shape["num_attention_heads"] // 2
    config = Qwen2_5_VLConfig(text_config=dict(
        vocab_size=256, num_hidden_layers=layers, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                         "mrope_section": [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]}, **shape))
    model = Qwen2_5_VLTextModel._from_config(config.text_config).to(dtype).train()
    embeds = torch.randn(1, TOKENS, shape["hidden_size"], dtype=dtype, requires_grad=True)
    positions = torch.arange(TOKENS).view(1, 1, -1).expand(3, 1, -1)
    return _saved_bytes(lambda: model(inputs_embeds=embeds, position_ids=positions), list(model.parameters()))


def vision_block_bytes(blocks: int, dtype) -> int:
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    config = Qwen2_5_VLConfig(vision_config=dict(depth=blocks, out_hidden_size=2048,
                                                 fullatt_block_indexes=[blocks - 1], **VISION)).vision_config
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(config).to(dtype).train()
    side = int(TOKENS ** 0.5)  # a 448 x 448 image: 32 x 32 patches
    pixels = torch.randn(TOKENS, 3 * 2 * 14 * 14, dtype=dtype)
    grid = torch.tensor([[1, side, side]])
    return _saved_bytes(lambda: tower(pixels, grid_thw=grid), list(tower.parameters()))


def main() -> int:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = {}
    for name, shape in SHAPES.items():
        per_layer = (text_layer_bytes(shape, 2, torch.bfloat16) - text_layer_bytes(shape, 1, torch.bfloat16)) / TOKENS
        out[name] = {"text_layer_kb_per_token_bf16": per_layer / 1024,
                     "checkpointed_input_kb_per_token_bf16": shape["hidden_size"] * 2 / 1024}
    per_block = (vision_block_bytes(2, torch.bfloat16) - vision_block_bytes(1, torch.bfloat16)) / TOKENS
    out["vision"] = {"block_kb_per_patch_bf16": per_block / 1024,
                     "checkpointed_input_kb_per_patch_bf16": VISION["hidden_size"] * 2 / 1024}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

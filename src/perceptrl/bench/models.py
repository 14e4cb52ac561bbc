"""Model sizes the benchmarks use: the 0.6 M-parameter test model and a ~13 M one.

The second is the same tiny Qwen2.5-VL architecture, wider and deeper, so that compute rather
than Python overhead dominates a step. Both are built offline from a ``TinyConfig``.
"""

from __future__ import annotations

from perceptrl.models.tiny import TinyConfig, build_tiny

MODEL_SIZES: dict[str, TinyConfig] = {
    # ~0.59 M parameters: the project's test model (DESIGN.md).
    "tiny": TinyConfig(),
    # ~13 M parameters: text 384 wide x 6 layers (6 heads, 2 KV heads, MLP 1024), vision 192 x 4.
    "medium": TinyConfig(
        hidden_size=384, num_layers=6, num_heads=6, num_kv_heads=2, intermediate_size=1024,
        vision_hidden_size=192, vision_depth=4, vision_heads=3, vision_intermediate_size=768,
    ),
}


def build_bench_model(size: str = "tiny", seed: int = 0):
    """``(model, processor)`` for a benchmark size name (see ``MODEL_SIZES``)."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size '{size}' (choose from {', '.join(MODEL_SIZES)})")
    return build_tiny(MODEL_SIZES[size], seed=seed)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())

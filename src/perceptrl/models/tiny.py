"""A tiny Qwen2.5-VL built entirely offline: config, byte-level tokenizer, processor.

The model has the real Qwen2.5-VL architecture (about 0.6 M parameters by default), so
every code path that runs on it runs unchanged on a 7 B checkpoint. The saved folder is a
plain Hugging Face folder: ``AutoModelForImageTextToText.from_pretrained(dir)`` and
``AutoTokenizer.from_pretrained(dir)`` load it without importing perceptrl.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from perceptrl.models.byte_tokenizer import QWEN_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, build_byte_tokenizer
from perceptrl.models.processors import make_qwen_vl_processor
from perceptrl.models.saving import save_pretrained

# Qwen's special tokens and chat template (``models.byte_tokenizer``), under their historical names.
SPECIAL_TOKENS = QWEN_SPECIAL_TOKENS
CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE


@dataclass
class TinyConfig:
    """Sizes of the tiny model. Defaults give about 0.6 M parameters."""

    hidden_size: int = 128  # text hidden size
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_hidden_size: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    vision_intermediate_size: int = 128
    patch_size: int = 14
    spatial_merge_size: int = 2
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = True
    min_pixels: int = 28 * 28
    max_pixels: int = 224 * 224


def build_tokenizer():
    """The tiny Qwen2.5-VL's tokenizer: 256 byte symbols plus Qwen's special tokens."""
    return build_byte_tokenizer(SPECIAL_TOKENS, "<|im_end|>", "<|endoftext|>", CHAT_TEMPLATE)


def build_model_config(tokenizer, cfg: TinyConfig):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = cfg.hidden_size // cfg.num_heads
    # mrope_section splits head_dim/2 rotary frequencies into (temporal, height, width).
    half = head_dim // 2
    section = [half - 2 * (half // 4), half // 4, half // 4]
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=0.02,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision_config = dict(
        depth=cfg.vision_depth,
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=cfg.vision_intermediate_size,
        num_heads=cfg.vision_heads,
        out_hidden_size=cfg.hidden_size,
        patch_size=cfg.patch_size,
        spatial_merge_size=cfg.spatial_merge_size,
        temporal_patch_size=2,
        window_size=cfg.patch_size * cfg.spatial_merge_size * 4,
        fullatt_block_indexes=list(range(cfg.vision_depth)),
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def build_processor(tokenizer, cfg: TinyConfig | None = None):
    """A Qwen2.5-VL processor built in code (works with or without torchvision)."""
    cfg = cfg or TinyConfig()
    return make_qwen_vl_processor(
        tokenizer,
        patch_size=cfg.patch_size,
        merge_size=cfg.spatial_merge_size,
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
    )


def build_tiny(cfg: TinyConfig | None = None, seed: int = 0):
    """Return ``(model, processor)`` for a freshly initialised tiny Qwen2.5-VL."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg = cfg or TinyConfig()
    tokenizer = build_tokenizer()
    config = build_model_config(tokenizer, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
        # A tied head needs small embeddings, or the initial logits are huge and learning stalls.
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=0.02)
    # from text_config: transformers < 5.20 (vLLM's pin) keeps the special ids there only
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    return model, build_processor(tokenizer, cfg)


def save_tiny(model, processor, path: str | Path) -> Path:
    """Save in Hugging Face format (safetensors, tokenizer, processor config)."""
    return save_pretrained(model, processor, path)

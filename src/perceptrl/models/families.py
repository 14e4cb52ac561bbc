"""Tiny offline models of every supported family: Qwen2.5-VL, Qwen2-VL, Qwen3-VL, LLaVA-OneVision.

Each is the real ``transformers`` architecture at a toy size (well under 2 M parameters) with a
byte-level tokenizer (256 byte symbols, no merges) plus the family's special tokens and chat
template, and a processor built in code that works without torchvision. They exist so that
every code path (encode, generate, score, train, save, load) is tested on each family offline.

- ``qwen2_5_vl``: ``Qwen2_5_VLForConditionalGeneration`` (``perceptrl.models.tiny``);
- ``qwen2_vl``: ``Qwen2VLForConditionalGeneration`` + image-only ``Qwen2VLProcessor``;
- ``qwen3_vl``: ``Qwen3VLForConditionalGeneration`` + image-only ``Qwen3VLProcessor``;
- ``llava_onevision``: ``LlavaOnevisionForConditionalGeneration`` + image-only
  ``LlavaOnevisionProcessor`` (see ``perceptrl.models.processors.image_only_processor_class``).

Per-family notes:
- Qwen2-VL: vision ``embed_dim`` is the tower width and ``hidden_size`` its output (= text
  hidden); no window attention. Patch 14, merge 2, CLIP mean/std (``Qwen2VLImageProcessorPil``).
- Qwen3-VL: patch 16, merge 2, mean/std 0.5, same ``Qwen2VLImageProcessorPil``; learned vision
  position embeddings (``num_position_embeddings`` a square, bilinearly resampled per image);
  ``deepstack_visual_indexes`` name vision layers whose merged features are added to the first
  text layers (so there must be no more of them than text layers); the text config has an
  explicit ``head_dim`` and an *interleaved* M-RoPE whose ``mrope_section`` sums to head_dim / 2.
  Its forward needs ``mm_token_type_ids`` to build 3-D positions (the processor returns them).
- LLaVA-OneVision: SigLIP tower (``vision_use_head=False``) + Qwen2 text model. The vision
  tower sees tiles of ``image_size`` px; "anyres" picks a tile grid among
  ``image_grid_pinpoints`` and the image becomes base tile + tiles, with a newline embedding
  per row. Processor and model must share pinpoints, ``vision_feature_select_strategy``
  ("full": keep every patch, SigLIP has no CLS), ``vision_aspect_ratio`` and
  ``num_image_tokens = (image_size / patch_size) ** 2``. A 56 px square image costs
  16 + 16 + 4 = 36 ``<image>`` tokens here. Only single-image prompts are tiled: an image in a
  multi-image prompt is padded square and costs 16 + 1 tokens, which is why ``Policy.encode``
  hands this processor the images grouped per prompt (it returns ``batch_num_images``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perceptrl.models.byte_tokenizer import (
    LLAVA_ONEVISION_CHAT_TEMPLATE,
    LLAVA_SPECIAL_TOKENS,
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIAL_TOKENS,
    build_byte_tokenizer,
)
from perceptrl.models.processors import image_only_processor_class
from perceptrl.models.real_shape import build_real_shape
from perceptrl.models.tiny import TinyConfig, build_tiny

FAMILY_NAMES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "llava_onevision")
# Test models at real shapes (``perceptrl.models.real_shape``): real vocabulary and token ids.
REAL_SHAPE_NAMES = ("qwen2_5_vl_real",)


@dataclass
class TinyFamilyConfig(TinyConfig):
    """Sizes shared by the tiny families: the tiny model's (``models.tiny.TinyConfig``), plus LLaVA's tiling."""

    # LLaVA-OneVision: vision tile side (px) and the anyres grid, as multiples of the tile.
    llava_image_size: int = 56
    llava_patch_size: int = 14
    llava_max_tiles_per_side: int = 2


def _ids(tokenizer, tokens) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}


def _text_config(tokenizer, cfg: TinyFamilyConfig, rope_parameters: dict, **extra) -> dict:
    ids = _ids(tokenizer, ("<|endoftext|>", "<|im_end|>"))
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters=rope_parameters,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=0.02,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        **extra,
    )


def _special_ids(tokenizer, cfg: TinyFamilyConfig) -> dict:
    ids = _ids(tokenizer, ("<|endoftext|>", "<|im_end|>"))
    return dict(
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def _qwen_vision_ids(tokenizer) -> dict:
    ids = _ids(tokenizer, QWEN_SPECIAL_TOKENS)
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _qwen_tokenizer():
    return build_byte_tokenizer(QWEN_SPECIAL_TOKENS, "<|im_end|>", "<|endoftext|>", QWEN_CHAT_TEMPLATE)


def _qwen_image_processor(patch_size: int, merge_size: int, cfg: TinyFamilyConfig, **kwargs):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    # Pixel bounds rounded to whole merged patches so that the smallest image still has one token.
    unit = patch_size * merge_size
    size = {"shortest_edge": max(cfg.min_pixels, unit * unit), "longest_edge": cfg.max_pixels}
    return Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=merge_size, temporal_patch_size=2, size=size, **kwargs
    )


# ------------------------------------------------------------------------------ Qwen2-VL
def _build_qwen2_vl(cfg: TinyFamilyConfig):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tokenizer = _qwen_tokenizer()
    half = cfg.hidden_size // cfg.num_heads // 2
    section = [half - 2 * (half // 4), half // 4, half // 4]  # (t, h, w); sums to head_dim / 2
    config = Qwen2VLConfig(
        text_config=_text_config(
            tokenizer, cfg, {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
        ),
        vision_config=dict(
            depth=cfg.vision_depth,
            embed_dim=cfg.vision_hidden_size,
            hidden_size=cfg.hidden_size,  # output of the patch merger = text hidden size
            mlp_ratio=cfg.vision_intermediate_size // cfg.vision_hidden_size,
            num_heads=cfg.vision_heads,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        **_qwen_vision_ids(tokenizer),
        **_special_ids(tokenizer, cfg),
    )
    processor = image_only_processor_class("Qwen2VLProcessor")(
        image_processor=_qwen_image_processor(14, 2, cfg),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )
    return Qwen2VLForConditionalGeneration, config, processor


# ------------------------------------------------------------------------------ Qwen3-VL
def _build_qwen3_vl(cfg: TinyFamilyConfig):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = _qwen_tokenizer()
    head_dim = cfg.hidden_size // cfg.num_heads
    half = head_dim // 2
    # Interleaved M-RoPE: frequency i goes to h if i % 3 == 1 (i < 3 * h_sec), w if i % 3 == 2.
    section = [half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16]  # [24, 20, 20] at head_dim 128
    patch, merge = 16, 2
    max_side = int(cfg.max_pixels**0.5) // patch  # patches per side of the largest image
    config = Qwen3VLConfig(
        text_config=_text_config(
            tokenizer,
            cfg,
            {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": section, "mrope_interleaved": True},
            head_dim=head_dim,
        ),
        vision_config=dict(
            depth=cfg.vision_depth,
            hidden_size=cfg.vision_hidden_size,
            intermediate_size=cfg.vision_intermediate_size,
            num_heads=cfg.vision_heads,
            out_hidden_size=cfg.hidden_size,
            patch_size=patch,
            spatial_merge_size=merge,
            temporal_patch_size=2,
            num_position_embeddings=max_side * max_side,
            # Every vision layer feeds one of the first text layers (Qwen3-VL-4B: [5, 11, 17]).
            deepstack_visual_indexes=list(range(min(cfg.vision_depth, cfg.num_layers))),
        ),
        **_qwen_vision_ids(tokenizer),
        **_special_ids(tokenizer, cfg),
    )
    processor = image_only_processor_class("Qwen3VLProcessor")(
        image_processor=_qwen_image_processor(patch, merge, cfg, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )
    return Qwen3VLForConditionalGeneration, config, processor


# ----------------------------------------------------------------------- LLaVA-OneVision
def _build_llava_onevision(cfg: TinyFamilyConfig):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tokenizer = build_byte_tokenizer(
        LLAVA_SPECIAL_TOKENS, "<|im_end|>", "<|endoftext|>", LLAVA_ONEVISION_CHAT_TEMPLATE
    )
    ids = _ids(tokenizer, LLAVA_SPECIAL_TOKENS)
    tile, patch = cfg.llava_image_size, cfg.llava_patch_size
    n = cfg.llava_max_tiles_per_side
    pinpoints = [[tile * i, tile * j] for i in range(1, n + 1) for j in range(1, n + 1)]
    config = LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=cfg.vision_hidden_size,
            intermediate_size=cfg.vision_intermediate_size,
            num_hidden_layers=cfg.vision_depth,
            num_attention_heads=cfg.vision_heads,
            image_size=tile,
            patch_size=patch,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2",
            **_text_config(tokenizer, cfg, {"rope_type": "default", "rope_theta": 1_000_000.0}),
        ),
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
        **_special_ids(tokenizer, cfg),
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": tile, "width": tile},
        image_grid_pinpoints=pinpoints,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    processor = image_only_processor_class("LlavaOnevisionProcessor")(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(tile // patch) ** 2,
        vision_feature_select_strategy="full",
        chat_template=tokenizer.chat_template,
        image_token="<image>",
        video_token="<video>",
        vision_aspect_ratio="anyres_max_9",
    )
    return LlavaOnevisionForConditionalGeneration, config, processor


_BUILDERS = {
    "qwen2_vl": _build_qwen2_vl,
    "qwen3_vl": _build_qwen3_vl,
    "llava_onevision": _build_llava_onevision,
}


def build_tiny_family(name: str, seed: int = 0, cfg: TinyFamilyConfig | None = None):
    """Return ``(model, processor)``: a freshly initialised tiny model of family ``name``.

    ``name`` is one of ``FAMILY_NAMES``; ``qwen2_5_vl`` is ``perceptrl.models.tiny.build_tiny``;
    ``qwen2_5_vl_real`` is Qwen2.5-VL at its real vocabulary (``perceptrl.models.real_shape``).
    The same ``seed`` gives the same weights. Save with
    ``perceptrl.models.loading.save_pretrained`` and load with ``load_model_and_processor``.
    """
    if name == "qwen2_5_vl_real":
        if cfg is not None:
            raise ValueError("qwen2_5_vl_real takes its sizes from perceptrl.models.real_shape.RealShapeConfig")
        return build_real_shape(seed=seed)
    if name not in FAMILY_NAMES:
        raise ValueError(f"unknown model family '{name}'; expected one of {', '.join(FAMILY_NAMES + REAL_SHAPE_NAMES)}")
    if name == "qwen2_5_vl":
        if cfg is not None:
            raise ValueError("qwen2_5_vl takes its sizes from perceptrl.models.tiny.TinyConfig")
        return build_tiny(seed=seed)
    cfg = cfg or TinyFamilyConfig()
    model_class, config, processor = _BUILDERS[name](cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
        # A tied head needs small embeddings, or the initial logits are huge and learning stalls.
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=0.02)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    return model, processor

"""A Qwen2.5-VL test model with the real vocabulary, special-token ids and processor, built offline.

The tiny families (``perceptrl.models.families``) have a 264-token vocabulary; Qwen2.5-VL has
151,936 embedding rows, and everything that scales with the vocabulary (the logits of a scoring
pass, a sampling step, the output projection's gradient) only shows its real size here. This model
keeps Qwen2.5-VL-Instruct's public facts and shrinks only width and depth:

- vocabulary: 151,936 embedding rows (``config.json`` ``vocab_size``); the tokenizer has 151,643
  regular tokens (ids 0..151,642: the 256 byte symbols, then filler pieces of 2-3 byte symbols that
  a byte-level BPE without merges never produces but a sampler may draw) and Qwen2.5's 22 added
  tokens at their real ids: ``<|endoftext|>`` 151643, ``<|im_start|>`` 151644, ``<|im_end|>`` 151645,
  ..., ``<|vision_start|>`` 151652, ``<|vision_end|>`` 151653, ``<|vision_pad|>`` 151654,
  ``<|image_pad|>`` 151655, ``<|video_pad|>`` 151656, ... ``<|file_sep|>`` 151664;
- ``generation_config``: ``eos_token_id = [151645, 151643]`` and ``pad_token_id = 151643``, as
  Qwen/Qwen2.5-VL-3B-Instruct's ``generation_config.json`` (a completion ends on ``<|im_end|>`` or
  ``<|endoftext|>``); ``config.eos_token_id = 151645``;
- processor: patch 14, spatial merge 2, temporal patch 2, CLIP mean/std, and the released pixel
  bounds ``min_pixels = 3136`` (56 x 56), ``max_pixels = 12845056`` (Qwen2.5-VL's
  ``preprocessor_config.json``), both overridable (``data.min_pixels`` / ``data.max_pixels``);
- chat template: Qwen2.5-VL's (a default system turn "You are a helpful assistant." when the
  conversation has none; each image as ``<|vision_start|><|image_pad|><|vision_end|>``);
- tied embeddings as the 3B (``tie_word_embeddings: true``), window attention in the vision tower.

Build it with ``build_tiny_family("qwen2_5_vl_real")`` (``model.path: tiny:qwen2_5_vl_real``).
At the default width (text 128, 2 layers) it has about 20 M parameters, 19.4 M of them the
embedding matrix; building takes a few seconds (mostly the 151 k-entry tokenizer).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from perceptrl.models.byte_tokenizer import QWEN_CHAT_TEMPLATE
from perceptrl.models.processors import make_qwen_vl_processor
from perceptrl.models.tiny import TinyConfig

REAL_VOCAB_SIZE = 151_936  # Qwen2.5-VL config.json vocab_size (embedding rows, padded past the tokenizer)
REGULAR_TOKENS = 151_643  # ids below the first added token

# Qwen2.5's added tokens from id 151643 on, in id order (tokenizer.json "added_tokens"); the last four
# in angle brackets are not special tokens there (they stay in decoded text).
ADDED_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
NON_SPECIAL = ("<tool_call>", "</tool_call>")

# Qwen2.5-VL-Instruct's chat template, reduced to images and text (no videos, no vision ids): the
# byte-level Qwen template with the default system turn Qwen2.5-VL adds when a chat has none.
_DEFAULT_SYSTEM_TURN = (
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
)
_LOOP = "{% for message in messages %}"
CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE.replace(_LOOP, _LOOP + _DEFAULT_SYSTEM_TURN, 1)

# Qwen2.5-VL's preprocessor_config.json: min_pixels 56 * 56, max_pixels 28 * 28 * 16384.
RELEASED_MIN_PIXELS = 3136
RELEASED_MAX_PIXELS = 12845056


@dataclass
class RealShapeConfig(TinyConfig):
    """Width and depth of the real-shape model: the tiny model's (``models.tiny.TinyConfig``); the
    positions and pixel bounds are Qwen2.5-VL's, and so is everything ``build_real_shape`` fixes."""

    max_position_embeddings: int = 32768
    min_pixels: int = RELEASED_MIN_PIXELS
    max_pixels: int = RELEASED_MAX_PIXELS


def _filler(i: int, alphabet: list[str]) -> str:
    """Regular token ``256 + i``: pairs of byte symbols, then triples (never equal to a byte symbol)."""
    if i < 256 * 256:
        return alphabet[i // 256] + alphabet[i % 256]
    i -= 256 * 256
    return alphabet[(i // 65536) % 256] + alphabet[(i // 256) % 256] + alphabet[i % 256]


@functools.lru_cache(maxsize=2)
def _tokenizer_json() -> str:
    """The serialised tokenizer (built once per process: the 151 k-entry vocabulary takes a second)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    for i in range(REGULAR_TOKENS - len(alphabet)):
        vocab[_filler(i, alphabet)] = len(vocab)
    assert len(vocab) == REGULAR_TOKENS
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_tokens([AddedToken(t, special=t not in NON_SPECIAL, normalized=False) for t in ADDED_TOKENS])
    return core.to_str()


def build_real_tokenizer():
    """Qwen2.5-VL's token ids on a byte-level vocabulary: ``len(tokenizer) == 151665``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer.from_str(_tokenizer_json())
    special = [t for t in ADDED_TOKENS if t not in NON_SPECIAL]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in special if t not in ("<|im_end|>", "<|endoftext|>")],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS}
    assert ids == {t: REGULAR_TOKENS + k for k, t in enumerate(ADDED_TOKENS)}, "added token ids are not Qwen's"
    return tokenizer


def build_real_shape(seed: int = 0, cfg: RealShapeConfig | None = None):
    """``(model, processor)``: a freshly initialised real-shape Qwen2.5-VL (see the module doc)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = cfg or RealShapeConfig()
    tokenizer = build_real_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS}
    half = cfg.hidden_size // cfg.num_heads // 2
    section = [half - 2 * (half // 4), half // 4, half // 4]  # sums to head_dim / 2 (3B: [16, 24, 24] of 64)
    text_config = dict(
        vocab_size=REAL_VOCAB_SIZE, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": section},
        tie_word_embeddings=cfg.tie_word_embeddings, initializer_range=0.02, rms_norm_eps=1e-6,
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision_config = dict(
        depth=cfg.vision_depth, hidden_size=cfg.vision_hidden_size, intermediate_size=cfg.vision_intermediate_size,
        num_heads=cfg.vision_heads, out_hidden_size=cfg.hidden_size, patch_size=14, spatial_merge_size=2,
        temporal_patch_size=2, window_size=112,  # Qwen2.5-VL's window: 112 px (4 x 28)
        fullatt_block_indexes=[cfg.vision_depth - 1],  # the last block attends globally (3B: 7, 15, 23, 31)
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config, vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
        # A tied head needs small embeddings, or the initial logits are huge and learning stalls.
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=0.02)
    generation = model.generation_config
    generation.bos_token_id = ids["<|endoftext|>"]
    generation.pad_token_id = ids["<|endoftext|>"]
    generation.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]  # Qwen2.5-VL's generation_config.json
    processor = make_qwen_vl_processor(tokenizer, patch_size=14, merge_size=2,
                                       min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    return model, processor

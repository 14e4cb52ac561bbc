"""The policy: any Hugging Face image-text-to-text model plus its processor.

Three jobs, each one batched call:
- ``encode``: chat-format prompts and run the processor once per prompt (left padding);
- ``generate``: sample completions, each prompt repeated as often as asked, vision special
  tokens suppressed (a sampled ``<|image_pad|>`` would break the next forward);
- ``score``: per-token log-probs (and optionally full-vocabulary entropy) of given
  completions under given prompts, completions right-padded after the prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

# Tokens a model must never sample: they mark image positions in the prompt.
VISION_SPECIAL_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<image>", "<video>")

# Per-token tensors the processor returns beside input_ids (extended with zeros over completions).
TOKEN_ALIGNED_KEYS = ("mm_token_type_ids", "token_type_ids")


@dataclass
class EncodedPrompts:
    """Processor output for N prompts, kept per prompt so that rows can be selected cheaply.

    ``input_ids`` and ``attention_mask`` are ``[N, P]``, left-padded. Image tensors are stored
    as one chunk per prompt so that a batch of any rows (e.g. each prompt repeated ``G`` times)
    is a concatenation, not a second pass through the processor.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    image_chunks: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1]

    def select(self, rows: Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        """Model keyword arguments for the prompts at ``rows`` (repeats allowed)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        idx = rows.to(self.input_ids.device)
        batch = {"input_ids": self.input_ids[idx], "attention_mask": self.attention_mask[idx]}
        for key, value in self.token_tensors.items():
            batch[key] = value[idx]
        for key, chunks in self.image_chunks.items():
            picked = [chunks[i] for i in rows.tolist() if chunks[i].shape[0] > 0]
            if picked:
                batch[key] = torch.cat(picked, dim=0)
        return batch

    def to(self, device: torch.device | str) -> "EncodedPrompts":
        return EncodedPrompts(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            {k: v.to(device) for k, v in self.token_tensors.items()},
            {k: [c.to(device) for c in v] for k, v in self.image_chunks.items()},
        )


@dataclass
class Completions:
    """Sampled completions, right-padded: ``ids``, ``mask`` ``[R, T]``; ``rows`` maps each to its prompt."""

    ids: torch.Tensor
    mask: torch.Tensor
    rows: torch.Tensor  # [R] index into the EncodedPrompts that generated them
    truncated: torch.Tensor  # [R] bool: no end-of-turn token within max_new_tokens
    logprobs: torch.Tensor | None = None  # [R, T] log-probs at generation time, if requested

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


def _split_image_tensors(processed: dict, images_per_prompt: list[int]) -> dict[str, list[torch.Tensor]]:
    """Split the processor's image tensors into one chunk per prompt."""
    n_prompts = len(images_per_prompt)
    n_images = sum(images_per_prompt)
    chunks: dict[str, list[torch.Tensor]] = {}
    grid = processed.get("image_grid_thw")
    with_images = [n for n in images_per_prompt if n > 0]
    for key, value in processed.items():
        if key in ("input_ids", "attention_mask") or key in TOKEN_ALIGNED_KEYS or not torch.is_tensor(value):
            continue
        if key == "batch_num_images" and value.tolist() == with_images:
            # LLaVA-OneVision: one count per prompt that has images (prompts without are skipped).
            chunks[key] = [value.new_tensor([n]) if n else value.new_zeros(0) for n in images_per_prompt]
        elif key == "pixel_values" and grid is not None:
            # Qwen-VL: patches of all images concatenated; an image has prod(grid) patches.
            per_image = grid.prod(-1).tolist()
            sizes = [sum(per_image[i] for i in _image_slice(images_per_prompt, p)) for p in range(n_prompts)]
            chunks[key] = list(torch.split(value, sizes, dim=0))
        elif value.shape[0] == n_images:
            sizes = images_per_prompt
            chunks[key] = list(torch.split(value, sizes, dim=0))
        elif value.shape[0] == n_prompts:
            chunks[key] = list(torch.split(value, 1, dim=0))
        else:
            raise ValueError(f"cannot tell how processor output '{key}' {tuple(value.shape)} maps to prompts")
    return chunks


def _image_slice(images_per_prompt: list[int], prompt: int) -> range:
    start = sum(images_per_prompt[:prompt])
    return range(start, start + images_per_prompt[prompt])


class Policy:
    """Wraps a model and its processor; owns no optimizer and no training logic."""

    def __init__(self, model, processor, system_prompt: str | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"
        self.system_prompt = system_prompt
        self.eos_token_id = self._end_of_turn_id()
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id
        vocab = self.tokenizer.get_vocab()
        self.score_chunk_rows = 16
        # Processors that tell single- from multi-image prompts (LLaVA-OneVision's anyres tiling is
        # for single images only) get the images grouped per prompt, as their chat template would.
        image_processor = getattr(processor, "image_processor", None)
        self.images_per_prompt_nested = "batch_num_images" in getattr(image_processor, "model_input_names", ())
        self.suppressed_token_ids = sorted({vocab[t] for t in VISION_SPECIAL_TOKENS if t in vocab})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _end_of_turn_id(self) -> int:
        for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id and token_id >= 0:
                return token_id
        return self.tokenizer.eos_token_id

    # ----------------------------------------------------------------- prompts
    def chat_text(self, user_text: str, n_images: int) -> str:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": user_text}]
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        messages.append({"role": "user", "content": content})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode(self, user_texts: Sequence[str], images: Sequence[Sequence[Any]]) -> EncodedPrompts:
        """Process each prompt once: ``user_texts[i]`` with the images ``images[i]``."""
        texts = [self.chat_text(t, len(imgs)) for t, imgs in zip(user_texts, images)]
        flat_images = [img for imgs in images for img in imgs]
        image_arg = [list(imgs) for imgs in images] if self.images_per_prompt_nested else flat_images
        processed = self.processor(
            text=texts, images=image_arg if flat_images else None, return_tensors="pt", padding=True, padding_side="left"
        )
        processed = dict(processed)
        token_tensors = {k: processed[k] for k in TOKEN_ALIGNED_KEYS if k in processed}
        encoded = EncodedPrompts(
            input_ids=processed["input_ids"],
            attention_mask=processed["attention_mask"],
            token_tensors=token_tensors,
            image_chunks=_split_image_tensors(processed, [len(i) for i in images]),
        )
        return encoded.to(self.device)

    # -------------------------------------------------------------- generation
    def generate(
        self,
        prompts: EncodedPrompts,
        rows: Sequence[int] | torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
        return_logprobs: bool = False,
    ) -> Completions:
        """Sample one completion per entry of ``rows`` (repeat a row ``G`` times for a group)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        batch = prompts.select(rows)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            suppress_tokens=self.suppressed_token_ids or None,
            return_dict_in_generate=True,
            output_logits=return_logprobs,
        )
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(**batch, **kwargs)
        # Clone out of inference mode: these ids are fed to forwards that need gradients.
        ids = out.sequences[:, prompts.prompt_length :].clone()
        mask, truncated = completion_mask(ids, self.eos_token_id)
        ids = ids.masked_fill(mask == 0, self.pad_token_id)
        logprobs = None
        if return_logprobs:
            logits = torch.stack(out.logits, dim=1).clone().float() / (temperature if do_sample else 1.0)
            logprobs = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask
        return Completions(ids=ids.clone(), mask=mask, rows=rows, truncated=truncated, logprobs=logprobs)

    # ----------------------------------------------------------------- scoring
    def score(
        self,
        prompts: EncodedPrompts,
        rows: Sequence[int] | torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        temperature: float = 1.0,
        with_entropy: bool = False,
        with_logits: bool = False,
        entropy_grad: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Per-token log-probs ``[R, T]`` of completions given their prompts.

        Gradient flows unless the caller wraps this in ``torch.no_grad``. Only the logits of the
        completion positions are computed (``logits_to_keep``); they are upcast to float32 once.
        """
        batch = prompts.select(rows)
        T = completion_ids.shape[1]
        batch["input_ids"] = torch.cat([batch["input_ids"], completion_ids], dim=1)
        batch["attention_mask"] = torch.cat([batch["attention_mask"], completion_mask.to(batch["attention_mask"].dtype)], dim=1)
        for key in TOKEN_ALIGNED_KEYS:
            if key in batch:
                batch[key] = F.pad(batch[key], (0, T), value=0)
        out = self.model(**batch, logits_to_keep=T + 1, use_cache=False)
        logits = out.logits[:, :-1, :]
        parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "entropy": []}
        # Upcast a few rows at a time: at most one float32 [rows, T, V] block beyond the model's logits.
        for start in range(0, logits.shape[0], self.score_chunk_rows):
            chunk = logits[start : start + self.score_chunk_rows].float()
            if temperature != 1.0:
                chunk = chunk / temperature
            log_probs = chunk.log_softmax(-1)
            ids = completion_ids[start : start + self.score_chunk_rows].unsqueeze(-1)
            parts["logprobs"].append(log_probs.gather(-1, ids).squeeze(-1))
            if with_entropy:  # logged by default; a loss term that needs its gradient asks for it
                with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                    parts["entropy"].append(-(log_probs.exp() * log_probs).sum(-1))
        result = {k: torch.cat(v) for k, v in parts.items() if v}
        if with_logits:
            result["logits"] = logits
        return result

    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        return [
            self.tokenizer.decode(row[: int(m.sum())].tolist(), skip_special_tokens=True)
            for row, m in zip(ids, mask)
        ]


def completion_mask(ids: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1 on tokens up to and including the first end-of-turn token; also which rows never ended."""
    is_eos = ids == eos_token_id
    ended = is_eos.any(-1)
    first_eos = torch.where(ended, is_eos.float().argmax(-1), torch.full_like(ended, ids.shape[1], dtype=torch.long))
    positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    mask = (positions <= first_eos.unsqueeze(1)).long()
    return mask, ~ended

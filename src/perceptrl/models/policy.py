"""The policy: any Hugging Face image-text-to-text model plus its processor.

Three jobs, each one batched call:
- ``encode``: chat-format prompts and run the processor once per prompt (left padding);
- ``generate``: sample completions, each prompt repeated as often as asked, vision special
  tokens suppressed (a sampled ``<|image_pad|>`` would break the next forward);
- ``score``: per-token log-probs (and optionally full-vocabulary entropy, symmetric KL to another
  forward) of given completions under given prompts, completions right-padded after the prompts,
  without materialising their logits (``perceptrl.models.logits``).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from perceptrl.models.kv_cache import cache_kwargs, output_cache
from perceptrl.models.logits import HeadRequest, VocabReduction, route_output_head
from perceptrl.models.precision import autocast as precision_autocast
from perceptrl.models.sampling import GumbelSampler, gumbel_argmax, sample_categorical, sample_top_p, top_p_filter

# Tokens a model must never sample: they mark image positions in the prompt.
VISION_SPECIAL_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<image>", "<video>")

# Per-token tensors the processor returns beside input_ids (extended with zeros over completions).
TOKEN_ALIGNED_KEYS = ("mm_token_type_ids", "token_type_ids")

# Model classes whose prompt can be run once and its key/value cache shared by every completion of
# that prompt (``Policy.share_prompt_prefix``); checked against a full forward in the tests of every
# tiny family. Other models take the plain path: one full forward per row, ``model.generate``.
PREFIX_SHARING_MODELS = (
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration",
)


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

    @staticmethod
    def concat(parts: list["Completions"], pad_token_id: int) -> "Completions":
        """``parts`` joined in order, right-padded to the longest (ids with the pad token, the rest with 0);
        ``rows`` as they are; ``logprobs`` None if any part has none."""
        length = max(part.ids.shape[1] for part in parts)

        def pad(t: torch.Tensor, value) -> torch.Tensor:
            return F.pad(t, (0, length - t.shape[1]), value=value)

        logprobs = None if any(p.logprobs is None for p in parts) else torch.cat([pad(p.logprobs, 0.0) for p in parts])
        return Completions(
            ids=torch.cat([pad(p.ids, pad_token_id) for p in parts]), mask=torch.cat([pad(p.mask, 0) for p in parts]),
            rows=torch.cat([p.rows for p in parts]), truncated=torch.cat([p.truncated for p in parts]),
            logprobs=logprobs,
        )


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

    def __init__(self, model, processor, system_prompt: str | None = None, compute_dtype: torch.dtype | None = None):
        self.model = model
        # bf16 / fp16 compute under autocast (float32 master weights: perceptrl.models.precision); None: as stored.
        self.compute_dtype = compute_dtype
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"
        self.system_prompt = system_prompt
        # The chat template's end-of-turn token (what SFT appends); a completion stops at any of
        # ``stop_token_ids``: it and the model's generation_config eos ids (Qwen2.5-VL: <|im_end|>, <|endoftext|>).
        self.eos_token_id = self._end_of_turn_id()
        self.stop_token_ids = self._stop_token_ids()
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id
        vocab = self.tokenizer.get_vocab()
        # Tokens per chunk of logits when scoring (None: ``perceptrl.models.logits.chunk_tokens``' rule).
        self.logits_chunk: int | None = None
        # Processors that tell single- from multi-image prompts (LLaVA-OneVision's anyres tiling is
        # for single images only) get the images grouped per prompt, as their chat template would.
        image_processor = getattr(processor, "image_processor", None)
        self.images_per_prompt_nested = "batch_num_images" in getattr(image_processor, "model_input_names", ())
        self.suppressed_token_ids = sorted({vocab[t] for t in VISION_SPECIAL_TOKENS if t in vocab})
        # Run each distinct prompt once and share its key/value cache among the rows that repeat it.
        # ``fast_generation``: our own sampling loop over that cache (else ``model.generate`` on every
        # row); ``share_prompt_prefix``: the same in ``score`` (else one full forward per row).
        supported = type(self._base_model()).__name__ in PREFIX_SHARING_MODELS
        self.fast_generation = supported
        self.share_prompt_prefix = supported
        # Top-p filtering of batch-invariant sampling through a threshold on numpy-sorted values
        # (``top_p_filter_threshold``: the same tokens kept, bit for bit); False: torch.sort + scatter.
        self.fast_top_p = True
        # Pixel bounds applied to images in ``encode`` (processors that do not take them): set_pixel_bounds.
        self.pixel_bounds: tuple[int | None, int | None] = (None, None)

    def _base_model(self):
        """The transformers model under any wrapper (a peft model forwards to it)."""
        model = getattr(self.model, "module", self.model)  # under a DDP / DeepSpeed wrapper
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self):
        """The context every forward of this policy runs in: autocast to ``compute_dtype``, if set."""
        return precision_autocast(self.device, self.compute_dtype)

    def _stop_token_ids(self) -> list[int]:
        """The end-of-turn token, then the ids of the model's ``generation_config.eos_token_id`` (int or list)."""
        ids = [self.eos_token_id]
        generation = getattr(self._base_model(), "generation_config", None)
        extra = getattr(generation, "eos_token_id", None)
        for token in [extra] if isinstance(extra, int) else list(extra or []):
            if isinstance(token, int) and token >= 0 and token not in ids:
                ids.append(token)
        return ids

    def _end_of_turn_id(self) -> int:
        for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id and token_id >= 0:
                return token_id
        return self.tokenizer.eos_token_id

    # ----------------------------------------------------------------- prompts
    def set_pixel_bounds(self, min_pixels: int | None, max_pixels: int | None) -> None:
        """Images keep ``width x height`` within ``[min_pixels, max_pixels]`` (EasyR1's ``data.min_pixels`` /
        ``data.max_pixels``; None: the processor's own bound, as built or saved), aspect ratio kept.

        Qwen-VL image processors take the bounds themselves (their resize rounds to whole merged
        patches and never leaves the bounds); for others (LLaVA-OneVision) each image is resized in
        :meth:`encode` first, as EasyR1's ``process_image`` does.
        """
        image_processor = getattr(self.processor, "image_processor", None)
        size = _own_size(image_processor)  # as built or loaded: what None restores
        try:
            fields = dict(size)  # a dict, or transformers 5's SizeDict
        except (TypeError, ValueError):
            fields = {}
        if fields.get("shortest_edge") or fields.get("longest_edge"):  # Qwen-VL: min / max pixels
            if min_pixels is not None:
                fields["shortest_edge"] = int(min_pixels)
            if max_pixels is not None:
                fields["longest_edge"] = int(max_pixels)
            image_processor.size = type(size)(**fields)
            for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
                if value is not None and hasattr(image_processor, name):  # older transformers read these
                    setattr(image_processor, name, int(value))
            self.pixel_bounds = (None, None)
        else:
            self.pixel_bounds = (min_pixels, max_pixels)

    def prompt_length(self, user_text: str, images: Sequence[Any]) -> int:
        """Tokens of one prompt as the model sees it: chat template and image tokens included."""
        return int(self.encode([user_text], [list(images)]).attention_mask.sum())

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
        if any(bound is not None for bound in self.pixel_bounds):
            images = [[resize_within(img, *self.pixel_bounds) for img in imgs] for imgs in images]
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
        row_seeds: torch.Tensor | None = None,
    ) -> Completions:
        """Sample one completion per entry of ``rows`` (repeat a row ``G`` times for a group).

        ``row_seeds`` ``[R]`` (int64): batch-invariant sampling (``perceptrl.models.sampling``):
        each row draws its own Gumbel noise from its seed and the position, so a completion does
        not depend on the other rows of the batch. None: one global random stream (torch's).
        """
        rows = torch.as_tensor(rows, dtype=torch.long)
        if not do_sample:
            row_seeds = None
        if self.fast_generation:
            with torch.inference_mode(), _eval_mode(self.model), self.autocast():
                ids, logits = self._sample(prompts, rows, max_new_tokens, temperature, top_p, do_sample, return_logprobs,
                                           row_seeds)
            return self._completions(ids.clone(), rows, logits, temperature if do_sample else 1.0)
        batch = prompts.select(rows)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            eos_token_id=list(self.stop_token_ids),
            pad_token_id=self.pad_token_id,
            suppress_tokens=self.suppressed_token_ids or None,
            return_dict_in_generate=True,
            output_logits=return_logprobs,
        )
        if do_sample and row_seeds is not None:  # argmax of Gumbel-perturbed scores = a sample
            sampler = GumbelSampler(row_seeds, prompts.prompt_length, temperature, top_p)
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None, logits_processor=[sampler])
        elif do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode(), _eval_mode(self.model), self.autocast():
            out = getattr(self.model, "module", self.model).generate(**batch, **kwargs)  # under a DDP wrapper
        # Clone out of inference mode: these ids are fed to forwards that need gradients.
        ids = out.sequences[:, prompts.prompt_length :].clone()
        logits = torch.stack(out.logits, dim=1).clone().float() if return_logprobs else None
        return self._completions(ids, rows, logits, temperature if do_sample else 1.0)

    def _completions(self, ids, rows, logits, temperature: float) -> Completions:
        mask, truncated = completion_mask(ids, self.stop_token_ids)
        ids = ids.masked_fill(mask == 0, self.pad_token_id)
        logprobs = None
        if logits is not None:
            logprobs = (logits / temperature).log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask
        return Completions(ids=ids.clone(), mask=mask, rows=rows, truncated=truncated, logprobs=logprobs)

    # ------------------------------------------------------- shared prompt prefix
    def _prefix_forward(self, prompts: EncodedPrompts, rows: torch.Tensor):
        """Run each distinct prompt of ``rows`` once (images through the vision tower once).

        Returns the model output (logits of the last prompt position, key/value cache expanded to
        one entry per row, in row order) and the position ids of the first completion token of every
        row (in the model's own layout: ``[R, 1]``, or ``[k, R, 1]`` for Qwen-VL's multimodal RoPE).
        Gradient flows through the shared prefix if it is enabled.
        """
        unique, inverse = torch.unique(rows, return_inverse=True)
        batch = prompts.select(unique)
        positions = self._base_model()._prepare_position_ids_for_generation(batch["input_ids"], dict(batch))
        out = self.model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
        inverse = inverse.to(positions.device)
        if len(unique) != len(rows) or not torch.equal(unique, rows):
            output_cache(out).reorder_cache(inverse)
        next_position = positions[..., -1:].index_select(positions.ndim - 2, inverse) + 1
        return out, inverse, next_position

    def _continue(self, cache, input_ids, attention_mask, position_ids):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=True, **cache_kwargs(self._base_model(), cache),
        )

    def _sample(self, prompts, rows, max_new_tokens, temperature, top_p, do_sample, return_logprobs, row_seeds=None):
        """Sampling loop over a shared, expanded prompt cache: ``[R, L]`` ids (and raw logits).

        Same processing as ``model.generate`` here: vision special tokens suppressed, then
        temperature, then top-p; rows that emitted a stop token (``stop_token_ids``) continue with
        padding; stops when every row has ended.
        """
        out, inverse, position = self._prefix_forward(prompts, rows)
        cache = _preallocate(output_cache(out), max_new_tokens)
        logits = out.logits[:, -1, :].index_select(0, inverse)
        attention = prompts.attention_mask.index_select(0, rows.to(prompts.attention_mask.device))
        device = logits.device
        suppress = torch.tensor(self.suppressed_token_ids, dtype=torch.long, device=device)
        stop = torch.tensor(self.stop_token_ids, dtype=torch.long, device=device)
        unfinished = torch.ones(len(rows), dtype=torch.bool, device=device)
        ones = attention.new_ones(len(rows), 1)
        tokens, raw = [], []
        for step in range(max_new_tokens):
            scores = logits.to(dtype=torch.float32, copy=True)
            if return_logprobs:
                raw.append(scores.clone())
            if suppress.numel():
                scores.index_fill_(-1, suppress, -float("inf"))
            if do_sample:
                if temperature != 1.0:
                    scores = scores / temperature
                if row_seeds is not None:
                    if top_p < 1.0:
                        scores = top_p_filter(scores, top_p, fast=self.fast_top_p)
                    next_token = gumbel_argmax(scores, row_seeds, step)
                elif top_p < 1.0:
                    next_token = sample_top_p(scores.softmax(-1), top_p)
                else:
                    next_token = sample_categorical(scores.softmax(-1))
            else:
                next_token = scores.argmax(-1)
            next_token = torch.where(unfinished, next_token, torch.full_like(next_token, self.pad_token_id))
            tokens.append(next_token)
            unfinished = unfinished & ~torch.isin(next_token, stop)
            if step == max_new_tokens - 1 or not bool(unfinished.any()):
                break
            attention = torch.cat([attention, ones], dim=1)
            out = self._continue(cache, next_token[:, None], attention, position + step)
            logits = out.logits[:, -1, :]
        ids = torch.stack(tokens, dim=1)
        return ids, (torch.stack(raw, dim=1) if return_logprobs else None)

    # ----------------------------------------------------------------- scoring
    def score(
        self,
        prompts: EncodedPrompts,
        rows: Sequence[int] | torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        temperature: float = 1.0,
        with_entropy: bool = False,
        entropy_grad: bool = False,
        keep_hidden: bool = False,
        kl_hidden: torch.Tensor | None = None,
        reduce: VocabReduction | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-token log-probs ``[R, T]`` of completions given their prompts (float32).

        Gradient flows unless the caller wraps this in ``torch.no_grad``. The logits are never
        materialised: the model's output head returns the per-token values directly, computing the
        ``[chunk, V]`` logits a chunk of tokens at a time and again in the backward pass
        (``perceptrl.models.logits``), so memory does not grow with ``R x T x V``.

        Also, on request: ``entropy`` ``[R, T]``, full-vocabulary entropy (``with_entropy``; with its
        gradient if ``entropy_grad``, else detached); ``hidden`` ``[R, T, H]``, the output head's
        input, detached (``keep_hidden``); ``sym_kl`` ``[R, T]``, the symmetric KL between this
        distribution and the one of ``kl_hidden`` (another forward's ``hidden``; no gradient);
        one ``[R, T]`` per column of ``reduce`` (a ``VocabReduction``: per-token values of the
        full-vocabulary distribution, and of ``kl_hidden``'s if it is a pair reduction, computed in the
        head a chunk of tokens at a time; no gradient) instead of ``sym_kl``. Nothing of size ``V``
        is returned or kept. Runs under the policy's autocast (``compute_dtype``); the values are float32.
        """
        with self.autocast():
            return self._score(prompts, rows, completion_ids, completion_mask, temperature, with_entropy,
                               entropy_grad, keep_hidden, kl_hidden, reduce)

    def _score(self, prompts, rows, completion_ids, completion_mask, temperature, with_entropy, entropy_grad,
               keep_hidden, kl_hidden, reduce=None) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(rows, dtype=torch.long)
        T = completion_ids.shape[1]
        with_entropy = with_entropy or entropy_grad

        def request(targets, expand=None, other=None) -> HeadRequest:
            return HeadRequest(targets=targets, temperature=temperature, entropy=with_entropy,
                               entropy_grad=entropy_grad, other_hidden=other, expand=expand,
                               keep_hidden=keep_hidden, reduce=reduce, chunk=self.logits_chunk)

        def part(t0, t1):
            return None if kl_hidden is None else kl_hidden[:, t0:t1]

        if self.share_prompt_prefix and len(torch.unique(rows)) < len(rows):
            # Each distinct prompt runs once; its cache is shared by the rows that repeat it. The
            # prefix's last position predicts completion token 0 (for every row of that prompt).
            _, inverse = torch.unique(rows, return_inverse=True)
            with route_output_head(self.model, request(completion_ids[:, :1], inverse, part(0, 1))) as first:
                prefix, inverse, position = self._prefix_forward(prompts, rows)
            outputs, requests = [prefix.logits], [first]
            if T > 1:
                attention = torch.cat([
                    prompts.attention_mask.index_select(0, rows.to(prompts.attention_mask.device)),
                    completion_mask[:, :-1].to(prompts.attention_mask.dtype),
                ], dim=1)
                positions = position + torch.arange(T - 1, device=position.device)
                with route_output_head(self.model, request(completion_ids[:, 1:], None, part(1, T))) as rest:
                    outputs.append(self._continue(output_cache(prefix), completion_ids[:, :-1], attention,
                                                  positions).logits)
                requests.append(rest)
            values = torch.cat(outputs, dim=1)
            hidden = torch.cat([r.hidden for r in requests], dim=1) if keep_hidden else None
        else:
            batch = prompts.select(rows)
            batch["input_ids"] = torch.cat([batch["input_ids"], completion_ids], dim=1)
            batch["attention_mask"] = torch.cat(
                [batch["attention_mask"], completion_mask.to(batch["attention_mask"].dtype)], dim=1
            )
            for key in TOKEN_ALIGNED_KEYS:
                if key in batch:
                    batch[key] = F.pad(batch[key], (0, T), value=0)
            # The last T + 1 positions: position P - 1 + t predicts completion token t (the last is unused).
            with route_output_head(self.model, request(completion_ids, None, kl_hidden)) as req:
                values = self.model(**batch, logits_to_keep=T + 1, use_cache=False).logits
            hidden = req.hidden
        columns = request(completion_ids, None, kl_hidden).columns
        result = {name: values[..., k] for k, name in enumerate(columns)}
        for name in columns[1:]:  # columns without a gradient of their own
            if not (name == "entropy" and entropy_grad):
                result[name] = result[name].detach()
        if keep_hidden:
            result["hidden"] = hidden
        return result

    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        return [
            self.tokenizer.decode(row[: int(m.sum())].tolist(), skip_special_tokens=True)
            for row, m in zip(ids, mask)
        ]


_OWN_SIZES: dict[int, tuple] = {}  # id(image processor) -> (weak reference to it, its size before set_pixel_bounds)


def _own_size(image_processor):
    """``image_processor.size`` as it was before the first :meth:`Policy.set_pixel_bounds` on it."""
    import weakref

    if image_processor is None:
        return None
    entry = _OWN_SIZES.get(id(image_processor))
    if entry is None or entry[0]() is not image_processor:
        entry = (weakref.ref(image_processor), getattr(image_processor, "size", None))
        _OWN_SIZES[id(image_processor)] = entry
    return entry[1]


def resize_within(image, min_pixels: int | None, max_pixels: int | None):
    """``image`` (PIL) resized, aspect ratio kept, so that ``width x height`` is within the bounds
    (EasyR1 ``verl/utils/dataset.py: process_image``: scale by ``sqrt(bound / area)``, sizes truncated)."""
    import math

    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        factor = math.sqrt(max_pixels / (width * height))
        image = image.resize((max(1, int(width * factor)), max(1, int(height * factor))))
        width, height = image.size
    if min_pixels is not None and width * height < min_pixels:
        factor = math.sqrt(min_pixels / (width * height))
        image = image.resize((int(width * factor), int(height * factor)))
    return image


@contextlib.contextmanager
def _eval_mode(model):
    """Generate in eval mode: no dropout, and a key/value cache even under gradient checkpointing."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@functools.lru_cache(maxsize=None)
def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """Key/value states of one layer in preallocated room: appending a token copies nothing else.

        A ``DynamicLayer`` concatenates, i.e. copies, the whole cache at every sampled token.
        """

        is_croppable = False

        def __init__(self, layer, extra: int):
            super().__init__()
            keys, values = layer.keys, layer.values
            b, h, n, d = keys.shape
            self._keys = keys.new_empty(b, h, n + extra, d)
            self._values = values.new_empty(b, h, n + extra, values.shape[-1])
            self._keys[:, :, :n] = keys
            self._values[:, :, :n] = values
            self.length = n
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True
            self.keys, self.values = self._keys[:, :, :n], self._values[:, :, :n]

        def update(self, key_states, value_states, *args, **kwargs):
            n = key_states.shape[-2]
            if self.length + n > self._keys.shape[-2]:  # out of room: behave as a plain dynamic layer
                self.keys = torch.cat([self.keys, key_states], dim=-2)
                self.values = torch.cat([self.values, value_states], dim=-2)
                self._keys, self._values = self.keys, self.values
            else:
                self._keys[:, :, self.length : self.length + n] = key_states
                self._values[:, :, self.length : self.length + n] = value_states
                self.keys = self._keys[:, :, : self.length + n]
                self.values = self._values[:, :, : self.length + n]
            self.length += n
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

    return GrowingLayer


def _preallocate(cache, extra: int):
    """Give every plain dynamic layer of ``cache`` room for ``extra`` more tokens (others unchanged)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers:
        return cache
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys is not None and layer.keys.numel():
            layers[i] = _growing_layer_class()(layer, extra)
    return cache


def completion_mask(ids: torch.Tensor, eos_token_id: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """1 on tokens up to and including the first stop token (``eos_token_id``: one id or several, as
    ``generate`` takes it); also which rows never stopped (truncated)."""
    stop = torch.as_tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
                           dtype=ids.dtype, device=ids.device)
    is_eos = torch.isin(ids, stop)
    ended = is_eos.any(-1)
    first_eos = torch.where(ended, is_eos.float().argmax(-1), torch.full_like(ended, ids.shape[1], dtype=torch.long))
    positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    mask = (positions <= first_eos.unsqueeze(1)).long()
    return mask, ~ended

"""GPU memory per device for one RL step, term by term: an estimate for planning, not a measurement.

``estimate_memory(shape, workload, n_gpus, offload)`` returns every term in bytes and the peaks of the
two phases of a step. Each term models what perceptrl's code does (``perceptrl.train.rl``,
``perceptrl.train.distributed``, ``perceptrl.models.policy``); where the code is about to change, the
assumption is a named constant here and is printed with the plan.

**Precision** (:func:`training_precision`; ``perceptrl.models.precision``). ``model.dtype: bfloat16``
means bf16 *compute*: trainable parameters, their gradients and both AdamW moments are float32 (16 B
per trainable parameter), frozen parameters and the KL reference are stored in bf16. One process
computes under ``torch.autocast``, which keeps a bf16 copy of every trained weight while a forward's
graph (or the generation loop) is alive (``autocast_copies``, 2 B per trainable parameter). Several
processes run FSDP2 as ``configs/accelerate/fsdp.yaml`` sets it up: ``mixed_precision: bf16`` shards
the float32 parameters and gathers bf16 copies unit by unit (``update_working_set``). LoRA adapters
are float32 (peft's default ``autocast_adapter_dtype``).

**Terms** (per device; ``P`` parameters, ``P_t`` trainable, ``N`` devices):

- ``weights``: ``P_t x master + (P - P_t) x dtype``, divided by ``N`` (FSDP2 shards every parameter);
  0 on the GPU with CPU offload (FSDP2 ``CPUOffloadPolicy`` keeps the shards in host memory).
- ``gradients``: ``P_t x grad / N`` (sharded after each reduce-scatter; 0 with offload). They exist only
  during the update: the loop sets them to None after every optimizer step.
- ``adamw_state``: ``P_t x 2 moments x state / N`` (0 with offload).
- ``autocast_copies``: one process, bf16/fp16 compute: ``P_t x 2`` (see Precision); 0 under FSDP2.
- ``reference_model``: ``P x dtype`` when ``algorithm.kl_beta > 0``: an unsharded frozen copy on every
  device (``perceptrl.models.loading.frozen_copy``); LoRA uses the base with the adapter off (0).
- ``rollout_weights``: with ``N > 1`` the rollout runs on gathered weights
  (``Distributed.full_weights``: every FSDP2 unit unsharded in bf16 at once): ``P x 2``. In one process
  the resident weights are used as they are (0).
- ``kv_cache``: generation preallocates keys and values for the completions it generates at once
  (``Policy._sample``; all of the device's, or ``rollout.generation_batch_size``):
  ``rows x (prompt + max_new_tokens) x layers x 2 x kv_heads x head_dim x 2 B``.
- ``sampling_buffers``: the sampler's per-step ``[rows, V]`` temporaries (a float32 copy of the
  logits, the top-p filter, float64 Gumbel noise and sum): about ``32 B x rows x V``.
- ``update_working_set``: under FSDP2 the unit being computed and the next one are unsharded in bf16,
  with the unsharded bf16 gradient of one before its reduce-scatter; the root unit (embeddings, head,
  and whatever is outside the decoder layers and vision blocks) is not resharded after forward:
  ``root x (2 + 2) + 3 x largest_unit x 2`` (0 in one process, where the weights are whole anyway).
- ``activations``: what autograd keeps for one update micro-batch of ``b`` rows of ``S`` tokens (prompt
  and completion: the update runs the whole sequence). Per token per decoder layer, bf16, with
  SDPA/flash attention (no ``S x S`` score matrix):
  ``30 h + 6 kv + 8 I`` bytes (two RMSNorms that upcast to float32: ``2 x 10 h``; the q/k/v input
  ``2 h``; q, k, v ``2 (h + 2 kv)`` and after RoPE ``2 (h + kv)``; the attention output ``2 h``; the MLP
  input ``2 h``; gate, up, SiLU(gate) and their product ``4 x 2 I``), ``h`` hidden, ``kv`` the key/value
  width, ``I`` the MLP width. Without gradient checkpointing every layer keeps that; with it
  (``model.gradient_checkpointing``) each layer keeps only its bf16 input (``2 h``) and one layer is
  recomputed at a time. The final norm and the hidden states fed to the head add ``12 h``. The vision
  tower, when trained, keeps the same per patch with its own widths (``kv = h``: full multi-head
  attention), one image per row (under FSDP2 every row runs its own prompt); frozen, it keeps nothing.
- ``logprob_chunk``: the output head computes log-probs (and entropy) chunk by chunk inside the
  forward and recomputes each chunk in backward (``perceptrl.models.logits``); one chunk of
  ``perceptrl.models.logits.chunk_tokens(b x T, V, h)`` tokens is alive at a time, about
  ``10 B x chunk x V`` (bf16 logits, their float32 softmax and the gradient block; measured by
  ``perceptrl bench --sections memory``). The path before it (``path="full"``) kept
  ``b x T x V x 6 B`` for the backward pass plus one 16-row float32 block: :func:`logprob_bytes`
  gives both.

**Phases.** Rollout peak = weights + AdamW state + autocast copies + reference + rollout weights +
KV cache + sampling buffers. Update peak = weights + AdamW state + autocast copies + reference +
gradients + working set + activations + log-prob chunk. Checked against a measurement: the GPU check
(``benchmarks/gpu_check.py``: 3B, one H200, 16 x 5 x 512 tokens, micro-batch 8) peaked at 77.1 GiB
allocated; ``tests/test_memory_estimate.py`` holds the estimate of that run to it. Not counted: the CUDA context and allocator fragmentation (typically 3-6 GB), NCCL
buffers, the vision tower's no-gradient forward during prefill, and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3
BF16 = 2
CHUNK_BYTES_PER_LOGIT = 10  # bf16 logits + float32 softmax + gradient block, per (token, vocabulary entry)
FULL_PATH_CHUNK_ROWS = 16  # rows upcast at a time on the path before the chunked head
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a vision-language model that the estimate needs (``perceptrl.train.plan`` reads
    them off a model built on the meta device)."""

    total_params: int
    trainable_params: int
    vision_params: int  # parameters of the vision tower (frozen by model.freeze_vision_tower)
    root_params: int  # parameters outside the FSDP units (embeddings, head, final norms, patch embedding, merger)
    largest_unit_params: int  # the largest FSDP unit: a decoder layer or a vision block
    layers: int
    hidden: int
    kv_dim: int  # key/value heads x head dim
    intermediate: int
    vocab: int
    vision_layers: int
    vision_hidden: int
    vision_intermediate: int
    patch_size: int
    merge_size: int  # spatial merge (Qwen-VL: 2 x 2 patches per image token)
    vision_trainable: bool
    lora: bool = False  # trainable parameters are LoRA adapters (float32)

    @property
    def kv_bytes_per_token(self) -> int:
        """Key and value cache of one token over all layers, bf16."""
        return self.layers * 2 * self.kv_dim * BF16


@dataclass(frozen=True)
class Workload:
    """What one device does in one rollout step."""

    generation_rows: int  # completions generated at once on the device
    prompt_tokens: int  # per completion (estimate; image tokens included)
    response_tokens: int  # rollout.max_new_tokens
    micro_batch_rows: int  # rows per update forward/backward
    pixels_per_image: int
    gradient_checkpointing: bool
    reference_model: bool  # algorithm.kl_beta > 0 (and not LoRA)
    model_dtype: str = "bfloat16"
    generates: bool = True  # False for SFT (no rollout)

    @property
    def sequence_tokens(self) -> int:
        return self.prompt_tokens + self.response_tokens


@dataclass(frozen=True)
class Precision:
    """Bytes per element of the stored training state (see the module docstring)."""

    master: int  # trainable parameters as stored
    frozen: int  # frozen parameters as stored
    grad: int
    state: int  # per AdamW moment
    note: str


def training_precision(model_dtype: str, n_gpus: int, lora: bool = False) -> Precision:
    """What perceptrl stores for ``model.dtype`` on ``n_gpus`` processes (module docstring)."""
    dtype = DTYPE_BYTES[model_dtype]
    if lora:
        return Precision(4, dtype, 4, 4, "LoRA adapters, their gradients and AdamW state in float32; frozen base in "
                                          f"{model_dtype}")
    if model_dtype == "float32":
        return Precision(4, 4, 4, 4, "float32 weights, gradients and AdamW state, float32 compute")
    if n_gpus == 1:
        return Precision(4, dtype, 4, 4, f"one process: float32 master weights, gradients and AdamW state, "
                                         f"{model_dtype} compute under autocast (perceptrl.models.precision)")
    return Precision(4, dtype, 4, 4, "FSDP2 with accelerate mixed_precision bf16 (configs/accelerate/fsdp.yaml): "
                                     "float32 master shards, float32 gradients and AdamW state, bf16 compute")


def text_layer_bytes_per_token(hidden: int, kv_dim: int, intermediate: int) -> int:
    """Activations one decoder layer keeps per token for the backward pass (module docstring)."""
    return 30 * hidden + 6 * kv_dim + 8 * intermediate


def logprob_bytes(rows: int, tokens: int, vocab: int, hidden: int, path: str = "chunked") -> int:
    """Peak bytes of the head's logits and float32 log-probs for one micro-batch of ``rows`` x ``tokens``."""
    if path == "chunked":
        from perceptrl.models.logits import chunk_tokens

        return chunk_tokens(rows * tokens, vocab, hidden) * vocab * CHUNK_BYTES_PER_LOGIT
    return rows * tokens * vocab * 6 + min(FULL_PATH_CHUNK_ROWS, rows) * tokens * vocab * 8


def activation_bytes(shape: ModelShape, work: Workload) -> int:
    """Activations of one update micro-batch (text model, head input, trained vision tower)."""
    tokens = work.micro_batch_rows * work.sequence_tokens
    per_layer = text_layer_bytes_per_token(shape.hidden, shape.kv_dim, shape.intermediate)
    if work.gradient_checkpointing:
        text = tokens * (shape.layers * 2 * shape.hidden + per_layer)
    else:
        text = tokens * shape.layers * per_layer
    text += tokens * 12 * shape.hidden
    vision = 0
    if shape.vision_trainable and shape.vision_layers:
        patches = work.micro_batch_rows * max(1, work.pixels_per_image // shape.patch_size**2)
        per_block = text_layer_bytes_per_token(shape.vision_hidden, shape.vision_hidden, shape.vision_intermediate)
        if work.gradient_checkpointing:
            vision = patches * (shape.vision_layers * 2 * shape.vision_hidden + per_block)
        else:
            vision = patches * shape.vision_layers * per_block
    return text + vision


@dataclass
class MemoryEstimate:
    """Bytes per device: every term, and the peak of each phase."""

    n_gpus: int
    offload: bool
    precision: Precision
    terms: dict[str, int] = field(default_factory=dict)

    def _sum(self, names) -> int:
        return sum(self.terms[n] for n in names)

    @property
    def resident(self) -> int:
        return self._sum(("weights", "adamw_state", "autocast_copies", "reference_model"))

    @property
    def rollout_peak(self) -> int:
        return self.resident + self._sum(("rollout_weights", "kv_cache", "sampling_buffers"))

    @property
    def update_peak(self) -> int:
        return self.resident + self._sum(("gradients", "update_working_set", "activations", "logprob_chunk"))

    @property
    def peak(self) -> int:
        return max(self.rollout_peak, self.update_peak)


def estimate_memory(shape: ModelShape, work: Workload, n_gpus: int, offload: bool = False) -> MemoryEstimate:
    """Bytes per device for one step on ``n_gpus`` devices (FSDP2 when ``n_gpus > 1``)."""
    if n_gpus < 1:
        raise ValueError("n_gpus must be >= 1")
    if offload and n_gpus == 1:
        raise ValueError("CPU offload goes through FSDP2: it needs more than one process")
    prec = training_precision(work.model_dtype, n_gpus, shape.lora)
    frozen = shape.total_params - shape.trainable_params
    sharded = n_gpus > 1
    on_gpu = 0 if offload else 1
    dtype = DTYPE_BYTES[work.model_dtype]
    terms = {
        "weights": on_gpu * (shape.trainable_params * prec.master + frozen * prec.frozen) // n_gpus,
        "gradients": on_gpu * shape.trainable_params * prec.grad // n_gpus,
        "adamw_state": on_gpu * shape.trainable_params * 2 * prec.state // n_gpus,
        "autocast_copies": shape.trainable_params * BF16 if n_gpus == 1 and work.model_dtype != "float32" else 0,
        "reference_model": shape.total_params * dtype if work.reference_model else 0,
        "rollout_weights": shape.total_params * BF16 if sharded and work.generates else 0,
        "kv_cache": work.generation_rows * work.sequence_tokens * shape.kv_bytes_per_token if work.generates else 0,
        "sampling_buffers": work.generation_rows * shape.vocab * 32 if work.generates else 0,
        "update_working_set": (shape.root_params * 4 + 3 * shape.largest_unit_params * BF16) if sharded else 0,
        "activations": activation_bytes(shape, work),
        "logprob_chunk": logprob_bytes(work.micro_batch_rows, work.response_tokens, shape.vocab, shape.hidden),
    }
    return MemoryEstimate(n_gpus, offload, prec, terms)


def host_offload_bytes(shape: ModelShape, work: Workload, n_gpus: int) -> int:
    """Host memory of one node for the offloaded shards of ``n_gpus`` processes (weights, gradients, AdamW)."""
    prec = training_precision(work.model_dtype, n_gpus, shape.lora)
    frozen = shape.total_params - shape.trainable_params
    return shape.trainable_params * (prec.master + prec.grad + 2 * prec.state) + frozen * prec.frozen

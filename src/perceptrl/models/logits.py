"""Per-token quantities of the full-vocabulary distribution, without ever holding ``[tokens, V]`` logits.

At Qwen2.5-VL's 151,936-token vocabulary one float32 ``[4, 512, V]`` logits tensor is 1.2 GB, and
autograd through ``log_softmax`` keeps two or three such tensors per micro-batch until the backward
pass. Here the logits exist one chunk of tokens at a time, in the forward pass and again in the
backward pass, where each chunk is recomputed from the final hidden states and the output projection
(the idea of Liger Kernel's fused linear cross-entropy and verl's fused kernels, written for the
quantities RL needs and for any loss on them):

- ``logprobs``: ``log softmax(logits / temperature)`` at each position's target token;
- ``entropy``: ``H = -sum_v p log p`` of the same distribution, with or without its gradient
  (NoisyRollout's entropy bonus trains on it; otherwise it is logged);
- ``sym_kl``: ``(KL(P||Q) + KL(Q||P)) / 2`` between this forward's distribution ``P`` and ``Q`` from
  other hidden states (DUPL's perceptual uncertainty; no gradient);
- any other :class:`VocabReduction`: per-token values of ``P`` (and ``Q``) that a caller defines on a
  chunk's float32 log-probs ``[c, V]``, without gradient (the token-level perception methods' full KL,
  Jensen-Shannon divergence, both entropies, top-p truncated entropy: ``train/token_pieces.py``).

How it runs: :func:`route_output_head` temporarily replaces the ``forward`` of the model's output
projection (``model.get_output_embeddings()``) so that the model's own forward pass, on reaching
its head, returns these per-token values ``[B, L, k]`` (float32) instead of logits ``[B, L, V]``.
Being inside the head's module call keeps it correct where parameters are sharded: FSDP2 and
DeepSpeed ZeRO-3 gather the head's weight around that call and again, through hooks on its output,
before its backward. A plain ``nn.Linear`` head (every supported family) goes through
:class:`_LinearHeadStats`, one autograd function over all chunks: the forward computes the values
chunk by chunk without keeping anything but the hidden states; the backward recomputes each chunk's
logits and softmax and writes the chunk's gradients (hidden states; weight and bias accumulated in
one float32 buffer). Any other head (say, one with a LoRA adapter) runs its own ``forward`` per chunk
under activation checkpointing, with :class:`_SoftmaxStats` on the chunk's logits.

The gradient, for ``z = logits / tau``, ``p = softmax(z)``, an upstream ``g_lp`` on the target's
log-prob ``lp_y`` and ``g_H`` on the entropy: ``d/dz_j = g_lp (1[j = y] - p_j) - g_H p_j (log p_j + H)``,
then ``/ tau``. Autocast (bf16 compute on fp32 weights) is recorded in the forward and re-entered in
the backward, so each chunk's logits are recomputed exactly as they were computed.

Chunk size (:func:`chunk_tokens`): Liger Kernel's rule, chunks of ``N / ceil(V / H)`` tokens rounded
up to a power of two, so that one chunk of logits is about as large as the ``[N, H]`` hidden states
it comes from (3B: H = 2048, V = 151,936, 4 x 512 tokens -> 32 tokens per chunk), but at least 16
tokens: every chunk's weight gradient touches the whole ``[V, H]`` accumulator, a cost that does
not shrink with the chunk. Tokens whose float32 logits fit in 32 MiB (the tiny test models' 264-token
vocabulary) go in one chunk.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _sym_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``(KL(P||Q) + KL(Q||P)) / 2 = sum_v (p - q)(log p - log q) / 2`` per row of ``[c, V]`` log-probs."""
    return 0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


@dataclass(frozen=True)
class VocabReduction:
    """Per-token values of the full-vocabulary distribution, computed chunk by chunk without gradient.

    ``fn(log_p, log_q)``: ``log_p`` ``[c, V]`` float32, the chunk's ``log softmax(logits / temperature)``;
    ``log_q`` the same from the other hidden states (:attr:`HeadRequest.other_hidden`) when ``pair``,
    else None. Returns one ``[c]`` tensor per name of ``columns`` (a tuple, or one tensor for one
    column). Neither input outlives the chunk: a reduction keeps nothing vocabulary-sized.
    """

    columns: tuple[str, ...]
    fn: Callable[[Tensor, Tensor | None], Tensor | Sequence[Tensor]]
    pair: bool = False

    def __call__(self, log_p: Tensor, log_q: Tensor | None) -> list[Tensor]:
        out = self.fn(log_p, log_q)
        out = [out] if torch.is_tensor(out) else list(out)
        if len(out) != len(self.columns):
            raise ValueError(f"reduction {self.columns} returned {len(out)} values")
        return out


SYM_KL = VocabReduction(("sym_kl",), _sym_kl, pair=True)  # DUPL's perceptual uncertainty


@dataclass
class HeadRequest:
    """What one model call's output head must return, per position of its input.

    ``targets`` ``[B, L]``: the token each of the first ``L`` positions predicts (the head may see more
    positions: the rest are ignored). ``expand`` ``[B]``: rows of the head's input to use, in order
    (each distinct prompt ran once and its last position serves every row that shares it).
    ``reduce``: further per-token values, no gradient (:class:`VocabReduction`); ``other_hidden``
    ``[B, L, H]``: hidden states of another forward (detached), the second distribution of a pair
    reduction (DUPL's symmetric KL, :data:`SYM_KL`, when ``reduce`` is not given). ``keep_hidden``: the
    head's input ``[B, L, H]`` is kept, detached, in ``hidden`` (for a later ``other_hidden``).
    """

    targets: Tensor
    temperature: float = 1.0
    entropy: bool = False
    entropy_grad: bool = False
    other_hidden: Tensor | None = None
    expand: Tensor | None = None
    keep_hidden: bool = False
    reduce: VocabReduction | None = None
    chunk: int | None = None  # tokens per chunk (None: chunk_tokens' rule)
    hidden: Tensor | None = field(default=None, repr=False)  # out: the head's input, if keep_hidden

    def __post_init__(self):
        if self.reduce is None and self.other_hidden is not None:
            self.reduce = SYM_KL
        if self.reduce is not None and self.reduce.pair != (self.other_hidden is not None):
            raise ValueError(f"reduction {self.reduce.columns} {'needs' if self.reduce.pair else 'takes no'} other_hidden")
        names = self.columns
        if len(set(names)) != len(names):
            raise ValueError(f"output head columns {names} repeat a name")

    @property
    def columns(self) -> list[str]:
        """Names of the last dimension of the head's output, in order."""
        return ["logprobs"] + (["entropy"] if self.entropy else []) + (list(self.reduce.columns) if self.reduce else [])


MIN_CHUNK_TOKENS = 16  # each chunk's weight gradient reads and writes all of [V, H]: amortise it
ONE_CHUNK_BYTES = 32 * 2**20  # all tokens in one chunk when their float32 logits fit in this


def chunk_tokens(n_tokens: int, vocab: int, hidden_size: int, override: int | None = None) -> int:
    """Tokens per chunk: ``override``; all ``n`` when their float32 logits take at most 32 MiB (small
    vocabularies: nothing to save, one product); else ``next_pow2(ceil(n / ceil(V / H)))`` (Liger
    Kernel's ``LigerFusedLinearCrossEntropyFunction``) but at least ``MIN_CHUNK_TOKENS``, at most ``n``."""
    if override:
        return max(1, min(int(override), n_tokens))
    if n_tokens * vocab * 4 <= ONE_CHUNK_BYTES:
        return max(n_tokens, 1)
    per = math.ceil(n_tokens / math.ceil(vocab / max(hidden_size, 1)))
    return max(1, min(max(1 << max(per - 1, 0).bit_length(), MIN_CHUNK_TOKENS), n_tokens))


def _log_softmax(logits: Tensor, temperature: float) -> Tensor:
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    return z.log_softmax(-1)


def _stats(log_probs: Tensor, targets: Tensor, entropy: bool):
    """``(lp [c], H [c] or None)`` of one chunk's log-probs ``[c, V]`` (as ``Policy.score`` always computed them)."""
    lp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ent = -(log_probs.exp() * log_probs).sum(-1) if entropy else None
    return lp, ent


def _forward_stats(logits: Tensor, targets: Tensor, temperature: float, entropy: bool):
    """``(lp [c], H [c] or None)`` of one chunk's logits ``[c, V]``."""
    return _stats(_log_softmax(logits, temperature), targets, entropy)


def _grad_logits(log_probs: Tensor, targets: Tensor, temperature: float, g_lp: Tensor | None,
                 g_h: Tensor | None, ent: Tensor | None) -> Tensor:
    """``d loss / d logits`` ``[c, V]`` (float32) of one chunk from its log-probs ``[c, V]`` (overwritten:
    the result is built in their storage) and the upstream gradients (see the module doc)."""
    probs = log_probs.exp()
    grad = log_probs
    if g_h is not None:
        grad.add_(ent.unsqueeze(-1)).mul_(g_h.unsqueeze(-1))  # g_H (log p + H)
        if g_lp is not None:
            grad.add_(g_lp.unsqueeze(-1))
    else:
        grad.copy_(g_lp.unsqueeze(-1).expand_as(grad))
    grad.mul_(probs).neg_()  # -p (g_lp + g_H (log p + H))
    del probs
    if g_lp is not None:
        grad.scatter_add_(-1, targets.unsqueeze(-1), g_lp.unsqueeze(-1))  # + g_lp at the target
    if temperature != 1.0:
        grad.div_(temperature)
    return grad


class _AutocastState:
    """The autocast state of the forward pass, to re-enter in the backward pass."""

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.enabled = torch.is_autocast_enabled(device_type)
        self.dtype = torch.get_autocast_dtype(device_type) if self.enabled else None

    def __call__(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


class _LinearHeadStats(torch.autograd.Function):
    """Log-probs (and entropy) of ``F.linear(hidden, weight, bias)``, chunk by chunk, recomputed in backward.

    ``hidden`` ``[N, H]``, ``weight`` ``[V, H]``, ``bias`` ``[V]`` or None, ``targets`` ``[N]`` ->
    ``lp [N]``, ``H [N]`` (float32; ``H`` differentiable only if ``entropy_grad``). Saves only its inputs.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk, entropy, entropy_grad):
        ctx.autocast = _AutocastState(hidden.device.type)
        n = hidden.shape[0]
        lp = hidden.new_empty(n, dtype=torch.float32)
        ent = hidden.new_empty(n if entropy else 0, dtype=torch.float32)
        for s in range(0, n, chunk):
            part_lp, part_h = _forward_stats(F.linear(hidden[s:s + chunk], weight, bias), targets[s:s + chunk],
                                             temperature, entropy)
            lp[s:s + chunk] = part_lp
            if entropy:
                ent[s:s + chunk] = part_h
        ctx.save_for_backward(hidden, weight, bias, targets, ent)
        ctx.temperature, ctx.chunk, ctx.entropy_grad = temperature, chunk, entropy and entropy_grad
        if not ctx.entropy_grad:
            ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, targets, ent = ctx.saved_tensors
        if not ctx.entropy_grad:
            g_ent = None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        # Weight and bias gradients accumulate over the chunks in the parameter's own dtype, in place:
        # float32 master weights get a float32 sum; bf16 weights (DeepSpeed / FSDP bf16) a bf16 one with
        # each chunk's product added in one rounding (as Liger Kernel), no float32 [V, H] copy.
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None
        n, chunk = hidden.shape[0], ctx.chunk
        with ctx.autocast():  # each chunk's logits exactly as in the forward pass
            for s in range(0, n, chunk):
                h = hidden[s:s + chunk]
                logits = F.linear(h, weight, bias)
                dtype = logits.dtype
                log_probs = _log_softmax(logits, ctx.temperature)
                del logits  # at most two [chunk, V] float32 blocks from here on
                grad = _grad_logits(log_probs, targets[s:s + chunk], ctx.temperature,
                                    None if g_lp is None else g_lp[s:s + chunk],
                                    None if g_ent is None else g_ent[s:s + chunk],
                                    None if g_ent is None else ent[s:s + chunk])
                del log_probs
                grad = grad.to(dtype)  # as autograd would hand it to the linear layer
                if need_h:
                    grad_h[s:s + chunk] = grad @ weight  # under autocast: bf16 matmul, as the linear's backward
                if need_w and grad.dtype == grad_w.dtype == h.dtype:
                    grad_w.addmm_(grad.t(), h)
                elif need_w:  # autocast: the chunk's bf16 product, added to the float32 sum
                    grad_w.add_(grad.t() @ h)
                if grad_b is not None:
                    grad_b.add_(grad.sum(0))
                del grad
        return grad_h, grad_w, grad_b, None, None, None, None, None


class _SoftmaxStats(torch.autograd.Function):
    """Log-probs (and entropy) of one chunk's logits ``[c, V]``; saves the logits only (recomputes the softmax)."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, entropy, entropy_grad):
        lp, ent = _forward_stats(logits, targets, temperature, entropy)
        if ent is None:
            ent = logits.new_empty(0, dtype=torch.float32)
        ctx.save_for_backward(logits, targets, ent)
        ctx.temperature, ctx.entropy_grad = temperature, entropy and entropy_grad
        if not ctx.entropy_grad:
            ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        logits, targets, ent = ctx.saved_tensors
        g_ent = g_ent if ctx.entropy_grad else None
        grad = _grad_logits(_log_softmax(logits, ctx.temperature), targets, ctx.temperature, g_lp, g_ent,
                            ent if g_ent is not None else None)
        return grad.to(logits.dtype), None, None, None, None


def _module_chunk_stats(forward, hidden, targets, temperature, entropy, entropy_grad):
    lp, ent = _SoftmaxStats.apply(forward(hidden), targets, temperature, entropy, entropy_grad)
    return lp, ent


def _is_plain_linear(head) -> bool:
    return isinstance(head, torch.nn.Linear) and type(head).forward is torch.nn.Linear.forward


def head_stats(head, forward, hidden: Tensor, request: HeadRequest) -> Tensor:
    """The values ``request`` asks for, ``[B, L, k]`` float32 (``request.columns``), from the head's input.

    ``head``: the output projection module; ``forward``: its own forward (``head.forward`` before
    routing); ``hidden`` ``[B', L', H]``: the head's input in this call.
    """
    if request.expand is not None:
        hidden = hidden.index_select(0, request.expand.to(hidden.device))
    B, L = request.targets.shape
    if hidden.shape[0] != B or hidden.shape[1] < L:
        raise ValueError(f"output head got hidden states {tuple(hidden.shape)} for targets {tuple(request.targets.shape)}")
    hidden = hidden[:, :L]
    if request.keep_hidden:
        request.hidden = hidden.detach()
    flat = hidden.reshape(B * L, hidden.shape[-1])
    targets = request.targets.reshape(-1).to(hidden.device)
    weight = getattr(head, "weight", None)
    vocab = weight.shape[0] if weight is not None and weight.dim() == 2 else head.out_features
    chunk = chunk_tokens(flat.shape[0], vocab, flat.shape[-1], request.chunk)
    grad = torch.is_grad_enabled() and (flat.requires_grad or any(p.requires_grad for p in head.parameters()))
    n = flat.shape[0]
    reduce = request.reduce
    other = None if request.other_hidden is None else request.other_hidden.reshape(n, -1).to(device=flat.device)
    reduced = flat.new_empty(n, len(reduce.columns) if reduce else 0, dtype=torch.float32)

    def reduce_chunk(s: int, log_probs: Tensor) -> None:
        log_q = None
        if reduce.pair:
            log_q = _log_softmax(forward(other[s:s + chunk].to(flat.dtype)), request.temperature)
        for k, value in enumerate(reduce(log_probs, log_q)):
            reduced[s:s + chunk, k] = value

    if not grad:  # one pass: each chunk's logits and log-probs serve every value
        with torch.no_grad():
            lp = flat.new_empty(n, dtype=torch.float32)
            ent = flat.new_empty(n, dtype=torch.float32) if request.entropy else None
            for s in range(0, n, chunk):
                log_probs = _log_softmax(forward(flat[s:s + chunk]), request.temperature)
                part_lp, part_h = _stats(log_probs, targets[s:s + chunk], request.entropy)
                lp[s:s + chunk] = part_lp
                if ent is not None:
                    ent[s:s + chunk] = part_h
                if reduce is not None:
                    reduce_chunk(s, log_probs)
                del log_probs
    else:
        if _is_plain_linear(head):
            lp, ent = _LinearHeadStats.apply(flat, head.weight, head.bias, targets, request.temperature, chunk,
                                             request.entropy, request.entropy_grad)
        else:  # any other head: its own forward per chunk, recomputed in backward
            parts = [torch.utils.checkpoint.checkpoint(
                _module_chunk_stats, forward, flat[s:s + chunk], targets[s:s + chunk], request.temperature,
                request.entropy, request.entropy_grad, use_reentrant=False) for s in range(0, n, chunk)]
            lp = torch.cat([p[0] for p in parts])
            ent = torch.cat([p[1] for p in parts]) if request.entropy else None
        if reduce is not None:  # the reductions have no gradient: a second, no-grad pass over the chunks
            with torch.no_grad():
                for s in range(0, n, chunk):
                    reduce_chunk(s, _log_softmax(forward(flat[s:s + chunk].detach()), request.temperature))
    columns = [lp.unsqueeze(-1)]
    if request.entropy:
        columns.append(ent.unsqueeze(-1))
    columns.append(reduced)
    return torch.cat(columns, dim=-1).view(B, L, len(request.columns))


def output_head(model):
    """The model's output projection (``get_output_embeddings``) under any DDP / DeepSpeed / peft wrapper."""
    base = getattr(model, "module", model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    head = base.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(base).__name__} has no output embeddings (get_output_embeddings() is None)")
    return head


@contextlib.contextmanager
def route_output_head(model, request: HeadRequest):
    """Inside, the model's output head returns ``head_stats(..., request)`` instead of logits."""
    head = output_head(model)
    if "forward" in head.__dict__:
        raise RuntimeError("the output head is already routed (nested route_output_head)")
    forward = head.forward

    def routed(hidden: Tensor) -> Tensor:
        return head_stats(head, forward, hidden, request)

    head.forward = routed
    try:
        yield request
    finally:
        del head.forward

"""Scoring without logits (``perceptrl.models.logits``): exact against whole-logits scoring, bounded memory.

The reference is the scoring the policy did before: the output head's whole ``[B, L, V]`` logits,
``log_softmax`` in float32 over all of them, the target's log-prob gathered, ``-sum p log p``, and
autograd through all of it. It is swapped in for :func:`perceptrl.models.logits.head_stats` (the same
model calls, plain path and shared-prompt-prefix path alike), so every difference is the chunked
head's. Measured here (float32, every tiny family, both paths, temperatures 1 and 0.7): log-probs
bit-equal, entropy to 2e-6, gradients to 7e-6 absolute on gradients up to 20 in size.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

import perceptrl.models.logits as head_logits
from perceptrl.models.families import FAMILY_NAMES, build_tiny_family
from perceptrl.models.logits import HeadRequest, chunk_tokens, route_output_head
from perceptrl.models.policy import Policy


def reference_head_stats(head, forward, hidden, request: HeadRequest):
    """Whole logits at once, plain autograd: the scoring before chunking."""
    if request.expand is not None:
        hidden = hidden.index_select(0, request.expand)
    B, L = request.targets.shape
    hidden = hidden[:, :L]
    if request.keep_hidden:
        request.hidden = hidden.detach()
    logits = forward(hidden).float() / request.temperature
    log_probs = logits.log_softmax(-1)
    columns = [log_probs.gather(-1, request.targets.unsqueeze(-1)).squeeze(-1)]
    if request.entropy:
        with torch.set_grad_enabled(request.entropy_grad and torch.is_grad_enabled()):
            columns.append(-(log_probs.exp() * log_probs).sum(-1))
    if request.reduce is not None:
        with torch.no_grad():
            q = None
            if request.other_hidden is not None:
                q = (forward(request.other_hidden).float() / request.temperature).log_softmax(-1)
            columns.extend(request.reduce(log_probs.detach(), q))
    return torch.stack(columns, -1)


@pytest.fixture
def reference(monkeypatch):
    """Run a callable with the reference head instead of the chunked one."""

    def run(fn):
        with monkeypatch.context() as patch:
            patch.setattr(head_logits, "head_stats", reference_head_stats)
            return fn()

    return run


def _images(n=2):
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((56, 56 + 28 * i, 3)) * 255).astype("uint8")) for i in range(n)]


def _case(policy, T=9, seed=0):
    images = _images()
    enc = policy.encode(["hi there", "what?"], [[images[0]], [images[1]]])
    rows = torch.tensor([0, 0, 1, 1, 1])
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 250, (5, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return enc, rows, ids, mask


def _scores_and_grads(policy, enc, rows, ids, mask, temperature, entropy_grad=True):
    policy.model.zero_grad(set_to_none=True)
    out = policy.score(enc, rows, ids, mask, temperature=temperature, with_entropy=True, entropy_grad=entropy_grad)
    loss = (out["logprobs"] * mask * torch.linspace(-1, 1, len(rows))[:, None]).sum()
    if entropy_grad:
        loss = loss + 0.3 * (out["entropy"] * mask).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


def _assert_same(new, ref, mask, atol=1e-5, rtol=1e-5, lp_atol=1e-5):
    (a, ga), (b, gb) = new, ref
    m = mask.bool()
    torch.testing.assert_close(a["logprobs"][m], b["logprobs"][m], atol=lp_atol, rtol=0)
    torch.testing.assert_close(a["entropy"][m], b["entropy"][m], atol=lp_atol, rtol=0)
    assert ga.keys() == gb.keys() and ga
    for key in ga:
        torch.testing.assert_close(ga[key], gb[key], atol=atol, rtol=rtol, msg=key)


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request):
    model, processor = build_tiny_family(request.param, seed=0)
    return request.param, model.train(), processor


@pytest.mark.parametrize("shared", [True, False], ids=["shared_prefix", "plain"])
def test_logprobs_entropy_and_gradients_equal_whole_logits(family, reference, shared):
    """float32, every tiny family, both scoring paths, temperature 1 and 0.7, entropy with gradient."""
    name, model, processor = family
    policy = Policy(model, processor)
    policy.share_prompt_prefix = shared
    case = _case(policy)
    for temperature in (1.0, 0.7):
        new = _scores_and_grads(policy, *case, temperature)
        ref = reference(lambda: _scores_and_grads(policy, *case, temperature))
        _assert_same(new, ref, case[3])
        assert any("visual" in k or "vision" in k for k in new[1])  # the gradient reaches the vision tower


@pytest.mark.parametrize("mode", ["bf16_weights", "fp32_master_autocast"])
def test_bfloat16_matches_whole_logits(reference, mode):
    """bf16 weights (bf16 logits, as before), and float32 master weights under bf16 autocast (what
    model.dtype=bfloat16 trains with): the same values, gradients to 2 % (bf16 products rounded per
    chunk instead of once)."""
    model, processor = build_tiny_family("qwen2_5_vl", seed=0)
    if mode == "bf16_weights":
        policy = Policy(model.to(torch.bfloat16).train(), processor)
    else:
        policy = Policy(model.train(), processor, compute_dtype=torch.bfloat16)
    case = _case(policy)
    new = _scores_and_grads(policy, *case, 1.0)
    ref = reference(lambda: _scores_and_grads(policy, *case, 1.0))
    (a, ga), (b, gb) = new, ref
    m = case[3].bool()
    torch.testing.assert_close(a["logprobs"][m], b["logprobs"][m], atol=1e-5, rtol=0)  # same bf16 logits
    torch.testing.assert_close(a["entropy"][m], b["entropy"][m], atol=1e-5, rtol=0)
    for key in ga:  # relative error of each gradient
        assert ga[key].dtype == next(p for n, p in policy.model.named_parameters() if n == key).dtype
        assert (ga[key].float() - gb[key].float()).norm() <= 0.02 * gb[key].float().norm() + 1e-6, key


def test_lora_adapters_and_a_non_linear_head(family, reference):
    """LoRA on the language model (peft), and LoRA on the output head itself: a head that is not a
    plain Linear runs its own forward per chunk under activation checkpointing."""
    from peft import LoraConfig, get_peft_model

    name, model, processor = family
    if name not in ("qwen2_5_vl", "llava_onevision"):
        pytest.skip("two families cover the wrapper (peft's model classes are family-independent)")
    for targets in (["q_proj", "v_proj"], ["q_proj", "lm_head"]):
        peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
        for n, p in peft_model.named_parameters():  # non-zero adapters: the B matrices start at zero
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05)
        policy = Policy(peft_model, processor)
        head = head_logits.output_head(policy.model)
        assert head_logits._is_plain_linear(head) == ("lm_head" not in targets)
        case = _case(policy)
        new = _scores_and_grads(policy, *case, 0.7)
        ref = reference(lambda: _scores_and_grads(policy, *case, 0.7))
        _assert_same(new, ref, case[3])
        assert all("lora" in k for k in new[1])


def test_no_gradient_path_equals_gradient_path_and_sym_kl(reference):
    model, processor = build_tiny_family("qwen2_vl", seed=0)
    policy = Policy(model.eval(), processor)
    enc, rows, ids, mask = _case(policy)
    with_grad = policy.score(enc, rows, ids, mask, with_entropy=True, keep_hidden=True)
    with torch.no_grad():
        no_grad = policy.score(enc, rows, ids, mask, with_entropy=True)
    assert torch.equal(with_grad["logprobs"].detach(), no_grad["logprobs"])
    assert not with_grad["entropy"].requires_grad  # logged, not trained on, unless entropy_grad
    # DUPL's full-vocabulary symmetric KL against another forward's head input (here: other prompts' rows)
    other_rows = torch.tensor([1, 1, 0, 0, 0])
    other = policy.score(enc, other_rows, ids, mask, keep_hidden=True)["hidden"]
    with torch.no_grad():
        kl = policy.score(enc, rows, ids, mask, temperature=0.7, kl_hidden=other)["sym_kl"]
        ref = reference(lambda: policy.score(enc, rows, ids, mask, temperature=0.7, kl_hidden=other))["sym_kl"]
    from perceptrl.algorithms.uncertainty import sym_kl_full

    head = head_logits.output_head(model)
    direct = sym_kl_full(head(with_grad["hidden"]) / 0.7, head(other) / 0.7)
    torch.testing.assert_close(kl, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(kl, direct, atol=1e-6, rtol=1e-5)
    assert (kl[mask.bool()] > 0).all()
    # with gradient enabled (a second, no-grad pass over the chunks): the same values
    graded = policy.score(enc, rows, ids, mask, temperature=0.7, kl_hidden=other)
    assert graded["logprobs"].requires_grad and not graded["sym_kl"].requires_grad
    torch.testing.assert_close(graded["sym_kl"], kl, atol=1e-6, rtol=1e-5)


def test_chunk_rule():
    assert chunk_tokens(2048, 151_936, 2048) == 32  # Liger's rule at Qwen2.5-VL-3B's shape
    assert chunk_tokens(8192, 152_064, 3584) == 256  # 7B
    assert chunk_tokens(4096, 151_936, 128) == 16  # at least 16 tokens
    assert chunk_tokens(10, 151_936, 128) == 10 and chunk_tokens(600, 264, 128) == 600  # 0.6 MB: one chunk
    assert chunk_tokens(40_000, 264, 128) == 16_384
    assert chunk_tokens(100, 264, 128, override=7) == 7


def test_head_chunks_give_the_same_values_and_gradients_for_any_chunk_size():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    head.get_output_embeddings = lambda: head  # the module is its own "model"
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    results = []
    for chunk in (1, 4, 21):
        head.zero_grad()
        hidden.grad = None
        request = HeadRequest(targets=targets, temperature=0.9, entropy=True, entropy_grad=True, chunk=chunk)
        with route_output_head(head, request):
            values = head(hidden)
        (values[..., 0].sum() + 0.5 * values[..., 1].pow(2).sum()).backward()
        results.append((values.detach(), hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()))
    # against autograd on the whole logits
    head.zero_grad()
    hidden.grad = None
    lp = (head(hidden) / 0.9).log_softmax(-1)
    ent = -(lp.exp() * lp).sum(-1)
    (lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum() + 0.5 * ent.pow(2).sum()).backward()
    for values, gh, gw, gb in results:
        torch.testing.assert_close(values[..., 0], lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).detach())
        torch.testing.assert_close(values[..., 1], ent.detach())
        torch.testing.assert_close(gh, hidden.grad)
        torch.testing.assert_close(gw, head.weight.grad)
        torch.testing.assert_close(gb, head.bias.grad)
    assert "forward" not in head.__dict__  # routing undone


def test_backward_keeps_no_vocabulary_sized_tensor():
    """At Qwen2.5-VL's vocabulary, what the scoring forward saves for the backward pass (parameters
    aside) is a small fraction of one float32 [rows, T, V] tensor. Before the chunked head it was
    three such tensors (logits, their float32 copy's log-softmax, the gathered softmax)."""
    from perceptrl.models.real_shape import build_real_shape

    model, processor = build_real_shape(seed=0)
    policy = Policy(model.train(), processor)
    enc = policy.encode(["How many?"], [_images(1)])
    ids = torch.randint(0, 151_643, (4, 64), generator=torch.Generator().manual_seed(0))
    params = {p.data_ptr() for p in model.parameters()}
    saved = []

    def pack(t):
        if t.data_ptr() not in params:
            saved.append((t.numel() * t.element_size(), tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = policy.score(enc, [0, 0, 0, 0], ids, torch.ones_like(ids), with_entropy=True, entropy_grad=True)
    vocab = model.config.text_config.vocab_size
    logits_bytes = 4 * 64 * vocab * 4
    assert not [shape for _, shape in saved if vocab in shape]
    assert max(size for size, _ in saved) < 0.01 * logits_bytes  # the layers' activations (width 128)
    assert sum(size for size, _ in saved) < 0.1 * logits_bytes, (sum(size for size, _ in saved), logits_bytes)
    (out["logprobs"].sum() + out["entropy"].sum()).backward()
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0
    assert math.isfinite(float(out["logprobs"].detach().sum()))


class _VocabSizedTensors(torch.utils._python_dispatch.TorchDispatchMode):
    """Every tensor an op creates with a dimension of size ``vocab`` (views of parameters aside): its shape,
    and a weak reference to it (to see whether anything outlives the call)."""

    def __init__(self, vocab: int, parameters):
        super().__init__()
        self.vocab, self.shapes, self.refs = vocab, [], []
        self.params = {p.untyped_storage().data_ptr() for p in parameters}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if (torch.is_tensor(t) and self.vocab in t.shape
                    and t.untyped_storage().data_ptr() not in self.params):
                self.shapes.append(tuple(t.shape))
                self.refs.append(weakref.ref(t))
        return out


def test_token_signal_reductions_hold_one_chunk_of_vocabulary_at_a_time():
    """The token-level methods' full-vocabulary quantities (VEPO's JSD and both entropies, VPPO's full
    KL, ToR's top-p entropy) at Qwen2.5-VL's vocabulary: no tensor with a vocabulary dimension is
    larger than one chunk of tokens, and none outlives the scoring (the two [rows, T, V] logits blocks
    that the pieces used to hold would fail both)."""
    from types import SimpleNamespace

    from perceptrl.models.real_shape import build_real_shape
    from perceptrl.train.token_pieces import RemoveImage, TokenSignal

    model, processor = build_real_shape(seed=0)
    policy = Policy(model.eval(), processor)
    vocab = model.config.text_config.vocab_size
    rows, T = 2, 32
    enc = policy.encode(["How many?", "How many?"], [_images(1), []])  # prompt 1: the image removed
    ids = torch.randint(0, 151_643, (rows, T), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    chunk = chunk_tokens(rows * T, vocab, model.config.text_config.hidden_size)
    assert chunk < rows * T
    for metric in ("vepo", "kl_full"):
        piece = TokenSignal(metric, RemoveImage(), False, micro_batch_size=rows, temperature=0.9,
                            need_entropy=True, entropy_top_p=0.9)
        watch = _VocabSizedTensors(vocab, model.parameters())
        with torch.no_grad(), watch:
            out = piece._score(policy, SimpleNamespace(prompts=enc), torch.zeros(rows, dtype=torch.long),
                               torch.ones(rows, dtype=torch.long), ids, mask)
        assert watch.shapes  # the head's chunks were seen
        assert max(math.prod(shape) for shape in watch.shapes) <= chunk * vocab, max(watch.shapes)
        assert all(ref() is None for ref in watch.refs)
        assert all(v.shape == (rows, T) and torch.isfinite(v).all() for v in out.values())
        assert (out["signal"] > 0).any() and (out["entropy"] > 0).all()


def test_memory_bench_section_runs(tmp_path):
    """``perceptrl bench --sections memory --quick`` end to end (one case in its own process): the table
    and the JSON with the floor's arithmetic. The numbers themselves are the benchmark's, not a test's."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "perceptrl.cli", "bench", "--sections", "memory", "--quick",
                           "--output-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads((tmp_path / "memory.json").read_text())
    assert result["vocab"] == 151_936 and result["case"]["tokens"] == 64
    params = result["parameters"]
    expected = params * 16 / 2**20 + result["chunk_tokens"] * 151_936 * 4 / 2**20
    assert result["floor_mb"] == pytest.approx(expected, rel=1e-6)
    assert "| 64 | 2 | AdamW fused |" in (tmp_path / "memory.md").read_text()  # the loop's own optimizer

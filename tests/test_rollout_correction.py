"""Rollout/training mismatch and truncated importance sampling (``train.rollout_correction``), and the
parts of the vLLM engine that need no vLLM: the weight stream (LoRA merged on the fly), the folder
vLLM serves, and the conversion of its outputs. vLLM itself is tested by ``make test-vllm``."""

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch

import perceptrl.train.rl as rl
from perceptrl.config import ConfigError, LoraSettings, load_config
from perceptrl.models.engines import HFEngine
from perceptrl.models.policy import Policy
from perceptrl.train.rollout_correction import mismatch_stats, tis_weights


def test_mismatch_stats_by_hand():
    lp_train = torch.tensor([[-1.0, -2.0, -3.0]])
    lp_rollout = torch.tensor([[-1.5, -2.0, -9.0]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding: ignored
    stats = mismatch_stats(lp_train, lp_rollout, mask)
    # log r = lp_train - lp_rollout = [0.5, 0]; k3 = r - log r - 1; k1 = lp_rollout - lp_train
    assert stats["mismatch/kl"] == pytest.approx((math.exp(0.5) - 0.5 - 1) / 2, abs=1e-7)
    assert stats["mismatch/k1"] == pytest.approx(-0.25)
    assert stats["mismatch/abs_diff_mean"] == pytest.approx(0.25)
    assert stats["mismatch/abs_diff_max"] == pytest.approx(0.5)
    assert mismatch_stats(lp_train, lp_rollout, torch.zeros_like(mask)) == {}


def test_tis_weights_truncate_and_mask():
    lp_train = torch.tensor([[-1.0, -2.0, -1.0, 0.0, -1.0]], requires_grad=True)
    lp_rollout = torch.tensor([[-1.5, -1.0, -1.0, -40.0, -1.0]])
    w = tis_weights(lp_train, lp_rollout, torch.tensor([[1, 1, 1, 1, 0]]), cap=1.5)
    # exp(0.5) = 1.65 -> 1.5 (cap); exp(-1); 1; exp(40 -> clamped to 20) -> 1.5; masked -> 0
    assert torch.allclose(w, torch.tensor([[1.5, math.exp(-1.0), 1.0, 1.5, 0.0]]))
    assert not w.requires_grad  # a weight, not a path for the gradient


def test_surrogate_term_multiplies_the_per_token_loss():
    from perceptrl.train.terms import surrogate_term

    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]], requires_grad=True)
    weights = torch.tensor([[2.0, 0.5], [1.0, 0.0]])

    def loss(extra):
        mb = SimpleNamespace(logprobs=logprobs, old_logprobs=logprobs.detach(), advantages=torch.tensor([1.0, -2.0]),
                             mask=torch.ones(2, 2), extra=extra, agg=lambda x: x.sum())
        return surrogate_term(0.2, 0.2, 3.0)(mb)[0]

    # ratio 1: per-token loss -A; weighted: -(1*2 + 1*0.5) + (2*1 + 2*0) = -0.5
    assert float(loss({}).detach()) == pytest.approx(-(1 + 1) + (2 + 2))
    weighted = loss({"tis_weight": weights})
    assert float(weighted) == pytest.approx(-0.5)
    (grad,) = torch.autograd.grad(weighted, logprobs)
    assert torch.allclose(grad, torch.tensor([[-2.0, -0.5], [2.0, 0.0]]))  # d/dlp of -A w rho = -A w


def test_tis_cap_is_validated():
    with pytest.raises(ConfigError, match="rollout.tis_cap"):
        load_config(None, ["rollout.tis_cap=0.5"])
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
        load_config(None, ["rollout.vllm_gpu_memory_utilization=1.5"])


class ReportingEngine(HFEngine):
    """The hf engine, reporting the log-probs it sampled with (shifted by ``shift``), as vLLM does."""

    shift = 0.0

    def generate(self, encoded, rows, max_new_tokens, temperature, top_p, row_seeds=None, *, texts=None, images=None):
        out = self.policy.generate(encoded, rows, max_new_tokens, temperature=temperature, top_p=top_p,
                                   row_seeds=row_seeds, return_logprobs=True)
        out.logprobs = (out.logprobs + self.shift) * out.mask
        return out


SETTINGS = ["train.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=8", "data.val_per_family=1",
            "train.progress=false", "train.max_steps=1", "train.save_final=false", "train.lr=1e-3"]


def _run(tiny, tmp_path, monkeypatch, recipe: str, shift: float, extra: list[str]):
    from perceptrl.bench.runner import coin_flip_rewards

    model, processor = tiny
    monkeypatch.setattr(ReportingEngine, "shift", shift)
    monkeypatch.setattr(rl, "build_engine", lambda name, policy, *a, **k: ReportingEngine(policy))
    config = load_config(f"recipes/{recipe}.yaml", SETTINGS + [f"train.output_dir={tmp_path}"] + extra)
    with coin_flip_rewards():  # rewards that differ within a group: advantages, hence a loss, that are not 0
        return rl.train(config, policy=Policy(copy.deepcopy(model), processor)).history[-1]


def test_loop_logs_mismatch_and_weights_the_gradient(tiny, tmp_path, monkeypatch):
    """An engine that samples with the training model's own log-probs: mismatch ~0. Reporting them 0.1
    too high: every TIS weight is exp(-0.1), so the gradient shrinks by that factor (its norm is logged
    before clipping; the loss itself is 0 here: all completions are 8 tokens long)."""
    plain = _run(tiny, tmp_path / "plain", monkeypatch, "grpo", 0.0, [])
    assert plain["mismatch/abs_diff_max"] < 1e-5 and plain["mismatch/kl"] < 1e-9
    off = _run(tiny, tmp_path / "off", monkeypatch, "grpo", 0.1, ["rollout.tis_cap=2"])
    base = _run(tiny, tmp_path / "base", monkeypatch, "grpo", 0.1, [])
    assert off["mismatch/k1"] == pytest.approx(0.1, abs=1e-5) and "mismatch/tis_weight_mean" not in base
    assert off["mismatch/tis_weight_mean"] == pytest.approx(math.exp(-0.1), abs=1e-5)
    assert base["grad_norm"] > 1e-4  # something to scale
    assert off["grad_norm"] == pytest.approx(math.exp(-0.1) * base["grad_norm"], rel=1e-4)


def test_noisy_completions_are_compared_under_their_own_view(tiny, tmp_path, monkeypatch):
    """NoisyRollout trains its noisy completions on the clean image; the engine's log-probs are those of
    the noisy view they were sampled from, and so must be the training model's they are compared with."""
    stats = _run(tiny, tmp_path, monkeypatch, "noisy_rollout", 0.0, ["noisy_rollout.n1=2", "noisy_rollout.n2=2",
                                                                     "noisy_rollout.schedule=constant"])
    assert stats["mismatch/abs_diff_max"] < 1e-5


def test_nothing_to_compare_without_engine_logprobs():
    from perceptrl.train.rollout_correction import rollout_correction

    rollout = SimpleNamespace(completions=SimpleNamespace(logprobs=None), extra={})
    assert rollout_correction(None, rollout, 8, 1.0, tis_cap=2.0) == {} and rollout.extra == {}  # the hf engine


# ------------------------------------------------------------------ vLLM engine parts (no vLLM needed)
def test_weight_stream_merges_lora_like_peft(tiny):
    from perceptrl.models.lora import apply_lora, merged_model
    from perceptrl.models.vllm_engine import weight_stream

    model, processor = tiny
    plain = dict(weight_stream(model))
    assert plain.keys() == model.state_dict().keys() and "lm_head.weight" in plain  # tied head included
    policy = apply_lora(Policy(copy.deepcopy(model), processor), LoraSettings(enabled=True, r=4, alpha=8))
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)  # peft starts B at 0: make the adapter do something
    streamed = dict(weight_stream(policy.model))
    merged = merged_model(policy.model).state_dict()
    assert streamed.keys() == merged.keys()
    changed = 0
    for name, tensor in merged.items():
        assert torch.allclose(streamed[name], tensor, atol=1e-6), name
        changed += not torch.equal(tensor, plain[name])
    assert changed >= 7 * 2  # every adapted projection of both layers differs from the base weights
    assert any(".base_layer." in n for n, _ in policy.model.named_parameters())  # the training model is untouched


def test_serving_folder(tiny, tmp_path):
    from perceptrl.models.loading import save_pretrained
    from perceptrl.models.vllm_engine import VLLMError, serving_folder

    model, processor = tiny
    policy = Policy(model, processor)
    saved = serving_folder(policy, "tiny", tmp_path / "a")  # in memory: saved from the policy
    video = json.loads((saved / "video_preprocessor_config.json").read_text())
    assert video["video_processor_type"] == "Qwen2VLVideoProcessor" and video["patch_size"] == 14
    assert (saved / "model.safetensors").is_file() and not (saved / "model.safetensors").is_symlink()
    source = save_pretrained(model, processor, tmp_path / "hf")  # a user's folder: linked, not copied
    linked = serving_folder(policy, str(source), tmp_path / "b")
    assert (linked / "model.safetensors").is_symlink() and (linked / "video_preprocessor_config.json").is_file()
    assert not (source / "video_preprocessor_config.json").exists()  # the user's folder is left as it is
    (tmp_path / "empty").mkdir()
    with pytest.raises(VLLMError, match="no config.json"):
        serving_folder(policy, str(tmp_path / "empty"), tmp_path / "c")


def test_completions_from_outputs():
    from perceptrl.models.vllm_engine import completions_from_outputs

    def output(tokens, logprobs, finish):
        entries = [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(tokens, logprobs)]
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=tokens, logprobs=entries, finish_reason=finish)])

    comp = completions_from_outputs([output([5, 6, 2], [-0.1, -0.2, -0.3], "stop"), output([7], [-1.0], "length")],
                                    torch.tensor([3, 0]), pad_token_id=0)
    assert comp.ids.tolist() == [[5, 6, 2], [7, 0, 0]]
    assert comp.mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert comp.truncated.tolist() == [False, True]
    assert torch.allclose(comp.logprobs, torch.tensor([[-0.1, -0.2, -0.3], [-1.0, 0.0, 0.0]]))
    assert comp.rows.tolist() == [3, 0]

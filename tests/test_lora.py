"""LoRA through peft: only the adapter trains, the reference is the base model, saves load back."""

import copy
import json

import pytest
import torch

from perceptrl.config import load_config
from perceptrl.models.lora import AdapterDisabled, is_lora, lora_targets, reference_policy
from perceptrl.models.policy import Policy
from perceptrl.train.rl import train

SETTINGS = [
    "train.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=12", "data.val_per_family=2",
    "train.progress=false", "train.lr=1e-2", "train.max_steps=2",
    "algorithm.entropy_coef=0.01",  # a gradient without rewards (random tiny model)
    "model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8",
    "model.gradient_checkpointing=true",  # checkpointed forward and backward through the adapters
]


@pytest.fixture(scope="module")
def lora_run(tiny, tmp_path_factory):
    model, processor = tiny
    original = copy.deepcopy(model)
    policy = Policy(copy.deepcopy(model), processor)
    out = tmp_path_factory.mktemp("lora")
    result = train(load_config("recipes/papo_g.yaml", SETTINGS + [f"train.output_dir={out}"]), policy=policy)
    return policy, original, result


def test_targets_exclude_the_vision_tower(tiny):
    model, _ = tiny
    names = lora_targets(model, ["q_proj", "v_proj", "qkv", "gate_proj"])
    assert names and not any("visual" in n for n in names)
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "v_proj", "gate_proj"}  # qkv is the vision tower's
    with_vision = lora_targets(model, ["qkv", "gate_proj"], include_vision=True)
    assert any("visual" in n for n in with_vision)
    with pytest.raises(ValueError, match="match no Linear layer"):
        lora_targets(model, ["qkv"])


def test_only_adapter_parameters_train(lora_run):
    policy, original, result = lora_run
    assert is_lora(policy.model)
    before = dict(original.named_parameters())
    changed, lora_params = [], 0
    for name, param in policy.model.named_parameters():
        if "lora_" in name:
            lora_params += 1
            assert param.requires_grad and "visual" not in name
            changed.append(name)
            continue
        assert not param.requires_grad
        base = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(param, before[base]), name  # base weights, vision tower included, untouched
    assert lora_params > 0
    moved = [n for n in changed if "lora_B" in n and param_of(policy.model, n).abs().max() > 0]
    assert moved  # lora_B starts at zero: the adapters did train
    metrics = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    kl = [r["kl_ref"] for r in metrics if "kl_ref" in r]
    assert len(kl) == 2 and kl[0] == pytest.approx(0.0, abs=1e-7) and kl[1] > 0  # reference = base model


def param_of(model, name):
    return dict(model.named_parameters())[name]


def _logprobs(policy, rgb_images):
    enc = policy.encode(["How many?", "count"], [[rgb_images[0]], [rgb_images[1]]])
    ids = torch.tensor([[65, 66, 67, 68], [70, 71, 72, 73]])
    with torch.no_grad():
        return policy.score(enc, [0, 1], ids, torch.ones_like(ids))["logprobs"]


def test_reference_is_the_base_model(lora_run, rgb_images):
    policy, original, _ = lora_run
    policy.model.eval()
    reference = reference_policy(policy)
    assert isinstance(reference, AdapterDisabled) and reference.model is policy.model  # no second copy
    base = Policy(original, policy.processor)
    ref_lp, base_lp, adapted_lp = _logprobs(reference, rgb_images), _logprobs(base, rgb_images), _logprobs(policy, rgb_images)
    assert torch.allclose(ref_lp, base_lp, atol=1e-6)
    assert not torch.allclose(adapted_lp, base_lp, atol=1e-4)  # the adapter is back on afterwards


def test_merged_and_adapter_saves_load_back(lora_run, rgb_images):
    from peft import PeftModel

    from perceptrl.models.loading import load_model_and_processor

    policy, original, result = lora_run
    policy.model.eval()
    adapted = _logprobs(policy, rgb_images)
    final = result.output_dir / "final"
    assert not (final / "adapter_config.json").exists()  # a plain transformers folder
    merged, processor = load_model_and_processor(str(final))
    assert not is_lora(merged)
    assert torch.allclose(_logprobs(Policy(merged.eval(), processor), rgb_images), adapted, atol=1e-5)
    reloaded = PeftModel.from_pretrained(copy.deepcopy(original), str(result.output_dir / "adapter")).eval()
    assert torch.allclose(_logprobs(Policy(reloaded, policy.processor), rgb_images), adapted, atol=1e-5)

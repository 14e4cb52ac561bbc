"""``perceptrl sft`` prepares the model as ``perceptrl train`` does (``models.lora.prepare_for_training``).

A frozen vision tower stays bit for bit the same while the language model learns; under LoRA only
the adapter trains and the run ends with the RL save (``adapter/`` and a merged, plain ``final/``);
the dry run counts what SFT will train.
"""

import copy

import torch

from perceptrl.config import load_config
from perceptrl.models.lora import VISION_TOWERS, is_lora
from perceptrl.models.policy import Policy
from perceptrl.train.dry_run import format_plan, make_plan
from perceptrl.train.sft import sft

SMALL = ["train.max_steps=1", "data.rollout_batch_size=2", "train.micro_batch_size=2", "rollout.max_new_tokens=8",
         "data.val_per_family=1", "train.progress=false", "train.num_threads=1"]


def _is_vision(name: str) -> bool:
    return any(part in VISION_TOWERS for part in name.split("."))


def test_sft_with_a_frozen_vision_tower_trains_the_language_model_only(tiny, tmp_path):
    model, processor = tiny
    policy = Policy(copy.deepcopy(model), processor)
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    config = load_config("recipes/sft.yaml", SMALL + [
        "model.freeze_vision_tower=true", "model.gradient_checkpointing=true", "train.save_final=false",
        f"train.output_dir={tmp_path / 'run'}"])
    sft(config, policy=policy)
    after = dict(policy.model.named_parameters())
    vision = [n for n in before if _is_vision(n)]
    assert vision and all(torch.equal(after[n], before[n]) and not after[n].requires_grad for n in vision)
    moved = [n for n in before if not _is_vision(n) and not torch.equal(after[n], before[n])]
    assert any("layers" in n for n in moved) and any("lm_head" in n or "embed_tokens" in n for n in moved)
    base = policy._base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing  # transformers 5 / 4
    assert not policy.share_prompt_prefix


def test_sft_with_lora_trains_the_adapter_and_saves_as_rl_does(tiny, tmp_path, rgb_images):
    from peft import PeftModel

    from perceptrl.models.loading import load_model_and_processor

    model, processor = tiny
    policy = Policy(copy.deepcopy(model), processor)
    out = tmp_path / "run"
    config = load_config("recipes/sft.yaml", SMALL + [
        "model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "train.lr=1e-2",
        f"train.output_dir={out}"])
    sft(config, policy=policy)
    assert is_lora(policy.model)
    base = dict(model.named_parameters())
    adapters = 0
    for name, param in policy.model.named_parameters():
        if "lora_" in name:
            adapters += "lora_B" in name and bool(param.abs().max() > 0)  # lora_B starts at zero
            continue
        assert torch.equal(param, base[name.replace("base_model.model.", "").replace(".base_layer", "")]), name
    assert adapters > 0

    def logprobs(p):
        enc = p.encode(["How many?"], [[rgb_images[0]]])
        ids = torch.tensor([[65, 66, 67, 68]])
        with torch.no_grad():
            return p.score(enc, [0], ids, torch.ones_like(ids))["logprobs"]

    policy.model.eval()
    adapted = logprobs(policy)
    assert not (out / "final" / "adapter_config.json").exists()  # merged: a plain transformers folder
    merged, merged_processor = load_model_and_processor(str(out / "final"))
    assert not is_lora(merged)
    assert torch.allclose(logprobs(Policy(merged.eval(), merged_processor)), adapted, atol=1e-5)
    reloaded = PeftModel.from_pretrained(copy.deepcopy(model), str(out / "adapter")).eval()
    assert torch.allclose(logprobs(Policy(reloaded, processor)), adapted, atol=1e-5)


def test_sft_dry_run_counts_lora_and_gradient_checkpointing():
    config = load_config("recipes/sft.yaml", ["model.lora.enabled=true", "model.lora.r=4",
                                              "model.gradient_checkpointing=true"])
    plan = make_plan(config, "sft")
    assert plan.shape.lora and plan.shape.trainable_params < plan.shape.total_params // 10
    text = format_plan(plan)
    assert "LoRA adapters only" in text and "gradient checkpointing on" in text
    full = make_plan(load_config("recipes/sft.yaml", ["model.freeze_vision_tower=true"]), "sft")
    assert not full.shape.lora and full.shape.trainable_params == full.shape.total_params - full.shape.vision_params

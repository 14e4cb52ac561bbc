"""Mixed precision (``perceptrl.models.precision``): float32 master weights, bf16 compute.

At lr 1e-6 (the seeds' setting) AdamW's steps are about 1e-6 per weight. Stepping bf16 weights
loses them: measured on the tiny model, 2 GRPO steps with ``model.dtype=bfloat16`` changed 1.9 % of
the parameters before master weights, 99.97 % with them.
"""

from __future__ import annotations

import copy

import pytest
import torch

from perceptrl.config import load_config
from perceptrl.models.families import build_tiny_family
from perceptrl.models.lora import prepare_for_training, reference_policy
from perceptrl.models.policy import Policy

SETTINGS = ["model.dtype=bfloat16", "train.lr=1e-6", "data.rollout_batch_size=2", "rollout.n=4",
            "rollout.max_new_tokens=8", "data.val_per_family=1", "train.progress=false", "train.num_threads=1",
            "algorithm.entropy_coef=0.01", "algorithm.kl_beta=0.01", "model.freeze_vision_tower=true"]


def test_bf16_training_moves_float32_master_weights_at_lr_1e6(tiny, tmp_path):
    from safetensors.torch import load_file

    from perceptrl.train import rl

    model, processor = tiny
    policy = Policy(copy.deepcopy(model).to(torch.bfloat16), processor)  # as model.dtype=bfloat16 loads it
    start = {n: p.detach().float().clone() for n, p in policy.model.named_parameters()}
    references = []
    original = rl.reference_policy
    rl.reference_policy = lambda p: references.append(original(p)) or references[-1]
    try:
        config = load_config("recipes/grpo.yaml", SETTINGS + ["train.max_steps=2", f"train.output_dir={tmp_path}"])
        result = rl.train(config, policy=policy)
    finally:
        rl.reference_policy = original
    assert policy.compute_dtype == torch.bfloat16
    text = {n: p for n, p in policy.model.named_parameters() if "visual" not in n}
    vision = {n: p for n, p in policy.model.named_parameters() if "visual" in n}
    assert all(p.dtype == torch.float32 and p.requires_grad for p in text.values())  # master weights
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in vision.values())  # frozen tower
    changed = sum(int((p.detach().float() != start[n]).sum()) for n, p in text.items())
    assert changed / sum(p.numel() for p in text.values()) > 0.9  # pure bf16 weights: 2 %
    assert all(torch.equal(p.detach().float(), start[n]) for n, p in vision.items())
    assert all(p.dtype == torch.bfloat16 for p in references[0].model.parameters())  # the KL reference
    assert result.history[-1]["kl_ref"] >= 0
    final = load_file(str(tmp_path / "final" / "model.safetensors"))  # saved in the compute dtype
    assert {t.dtype for t in final.values() if t.is_floating_point()} == {torch.bfloat16}


def test_lora_keeps_a_bf16_base_and_float32_adapters(tiny):
    model, processor = tiny
    config = load_config(None, ["model.dtype=bfloat16", "model.lora.enabled=true", "model.lora.r=4"])
    policy = prepare_for_training(Policy(copy.deepcopy(model).to(torch.bfloat16), processor), config.model)
    params = dict(policy.model.named_parameters())
    assert params and all((p.dtype == torch.float32) == ("lora_" in n) for n, p in params.items())
    assert all(p.requires_grad == ("lora_" in n) for n, p in params.items())
    reference = reference_policy(policy)  # the adapter switched off: no copy
    assert reference.policy is policy
    from perceptrl.models.logits import output_head

    assert output_head(policy.model).weight.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["qwen2_5_vl", "llava_onevision"])
def test_freeze_vision_tower_and_checkpointing_reach_the_vision_tower(name, rgb_images):
    """EasyR1 freezes Qwen-VL's ``visual`` (tower and merger); LLaVA-OneVision's tower (its projector
    trains). ``model.gradient_checkpointing`` checkpoints the tower's blocks too: the forward keeps
    a fraction of the tensors it keeps without (measured 83 -> 17 for Qwen2.5-VL, 64 -> 10 for LLaVA)."""
    from perceptrl.models.lora import vision_towers

    model, processor = build_tiny_family(name)
    saved = {}
    for checkpointing in (False, True):
        config = load_config(None, [f"model.gradient_checkpointing={str(checkpointing).lower()}",
                                    "model.freeze_vision_tower=true"])
        policy = prepare_for_training(Policy(copy.deepcopy(model).train(), processor), config.model)
        (tower_name, tower), = vision_towers(policy.model)
        assert tower_name in ("model.visual", "model.vision_tower")
        assert not any(p.requires_grad for p in tower.parameters())
        others = [n for n, p in policy.model.named_parameters() if p.requires_grad]
        assert others and not any(n.startswith(tower_name) for n in others)
        if name == "llava_onevision":
            assert any("multi_modal_projector" in n for n in others)
        inside = {"on": False, "n": 0}
        tower.register_forward_pre_hook(lambda *a: inside.__setitem__("on", True))
        tower.register_forward_hook(lambda *a: inside.__setitem__("on", False))

        def pack(t):
            inside["n"] += inside["on"]
            return t

        enc = policy.encode(["hi"], [[rgb_images[1]]])
        ids = torch.randint(0, 250, (1, 5))
        tower.requires_grad_(True)  # count what a trained tower would keep
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            policy.score(enc, [0], ids, torch.ones_like(ids))
        saved[checkpointing] = inside["n"]
    assert saved[True] < saved[False] / 3, saved

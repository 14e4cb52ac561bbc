"""Every model family trains through the real loop: two steps of GRPO and of PAPO-G each.

Tiny settings: 2 prompts x 4 completions of 8 tokens, one held-out prompt. The random tiny models
earn no reward, so an entropy bonus gives the update a gradient; PAPO-G adds its masked-view
scoring (a view of every prompt with 14 px squares blackened) and the reference KL.
"""

import copy
import json
import math

import pytest
import torch

from perceptrl.config import load_config
from perceptrl.models.families import FAMILY_NAMES, build_tiny_family
from perceptrl.models.policy import Policy
from perceptrl.train.rl import train
from perceptrl.vision.views import make_view

TINY = [
    "train.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=8", "data.val_per_family=1",
    "data.image_size=56", "train.max_steps=2", "train.progress=false", "train.save_final=false",
    "train.lr=1e-2", "algorithm.entropy_coef=0.01",
]


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request):
    model, processor = build_tiny_family(request.param, seed=0)
    return request.param, model, processor


def test_masked_view_keeps_the_image_token_count(family, rgb_images):
    name, model, processor = family
    policy = Policy(model, processor)
    mask = make_view("mask_patches", patch=14, p=0.6)
    images = [rgb_images[0], rgb_images[2]]
    enc = policy.encode(["q", "q"], [[img] for img in images])
    masked = policy.encode(["q", "q"], [[mask(img, 3)] for img in images])
    assert torch.equal(enc.input_ids, masked.input_ids)  # same tokens, image placeholders included
    for key, chunks in enc.image_chunks.items():
        assert [c.shape for c in chunks] == [c.shape for c in masked.image_chunks[key]], key


@pytest.mark.parametrize("recipe", ["grpo", "papo_g"])
def test_two_training_steps(family, recipe, tmp_path):
    name, model, processor = family
    policy = Policy(copy.deepcopy(model), processor)
    before = {k: v.detach().clone() for k, v in policy.model.named_parameters()}
    config = load_config(f"recipes/{recipe}.yaml", TINY + [f"model.path=tiny:{name}", f"train.output_dir={tmp_path}"])
    train(config, policy=policy)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 2
    for row in steps:
        assert math.isfinite(row["loss"]) and row["grad_norm"] > 0 and math.isfinite(row["grad_norm"])
        assert row["num_completions"] == 8.0
    if recipe == "papo_g":
        assert all(math.isfinite(r["papo/kl_prcp"]) and math.isfinite(r["kl_ref"]) for r in steps)
    changed = [k for k, v in policy.model.named_parameters() if not torch.equal(v, before[k])]
    assert any("embed_tokens" in k for k in changed)

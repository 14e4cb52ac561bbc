"""Real shapes: Qwen2.5-VL's vocabulary and token ids, its stop tokens, pixel bounds, prompt length.

``tiny:qwen2_5_vl_real`` (``perceptrl.models.real_shape``) is Qwen2.5-VL at its real vocabulary
(151,936 embedding rows) and special-token ids with a narrow, shallow body.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from perceptrl.models.policy import Policy, completion_mask

ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645


@pytest.fixture(scope="module")
def real():
    from perceptrl.models.families import build_tiny_family

    model, processor = build_tiny_family("qwen2_5_vl_real", seed=0)
    return model.eval(), processor


def _image(h, w, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8"))


def test_real_vocabulary_ids_processor_and_stop_tokens(real):
    model, processor = real
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                     "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"])
    assert ids == [151643, 151644, 151645, 151652, 151653, 151654, 151655, 151656]
    assert model.config.text_config.vocab_size == 151_936 == model.get_output_embeddings().weight.shape[0]
    assert len(tok) == 151_665 and model.config.image_token_id == 151655
    assert model.generation_config.eos_token_id == [IM_END, ENDOFTEXT]
    image_processor = processor.image_processor
    assert (image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size) == (14, 2, 2)
    policy = Policy(model, processor)
    assert policy.eos_token_id == IM_END and policy.stop_token_ids == [IM_END, ENDOFTEXT]
    assert policy.pad_token_id == ENDOFTEXT
    assert 151655 in policy.suppressed_token_ids
    text = policy.chat_text("What?", 1)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|vision_start|><|image_pad|><|vision_end|>What?<|im_end|>\n<|im_start|>assistant\n")


def test_pixel_bounds_reach_the_processor(real):
    """data.min_pixels / data.max_pixels (EasyR1's names): 448 x 672 px is 384 merged-patch tokens by
    default; at most 200 x 300 px, 70; at least 800 x 800 px, 840; None restores the processor's."""
    model, processor = real
    policy = Policy(model, processor)
    image = _image(448, 672)

    def image_tokens():
        grid = policy.encode(["x"], [[image]]).image_chunks["image_grid_thw"][0]
        return int(grid.prod()) // 4, int(grid[0, 1]) * 14, int(grid[0, 2]) * 14

    assert image_tokens() == (384, 448, 672)
    policy.set_pixel_bounds(None, 200 * 300)
    tokens, h, w = image_tokens()
    assert tokens == 70 and h * w <= 200 * 300
    policy.set_pixel_bounds(800 * 800, None)
    tokens, h, w = image_tokens()
    assert tokens == 840 and h * w >= 800 * 800
    policy.set_pixel_bounds(None, None)
    assert image_tokens()[0] == 384


def test_pixel_bounds_resize_images_for_other_processors():
    """LLaVA-OneVision's processor has no pixel bounds: images are resized first, as EasyR1 does."""
    from perceptrl.models.families import build_tiny_family
    from perceptrl.models.policy import resize_within

    assert resize_within(_image(400, 600), None, 60_000).size == (300, 200)
    assert resize_within(_image(10, 20), 800, None).size == (40, 20)
    model, processor = build_tiny_family("llava_onevision")
    policy = Policy(model, processor)
    policy.set_pixel_bounds(None, 60_000)
    assert policy.pixel_bounds == (None, 60_000)
    seen = []
    original = processor.__class__.__call__

    def spy(self, *args, images=None, **kwargs):
        seen.extend(img.size for group in images for img in group)
        return original(self, *args, images=images, **kwargs)

    processor.__class__.__call__ = spy
    try:
        policy.encode(["x"], [[_image(400, 600)]])
    finally:
        processor.__class__.__call__ = original
    assert seen == [(300, 200)]


def test_completion_mask_with_several_stop_tokens():
    ids = torch.tensor([[5, 6, ENDOFTEXT, 7], [5, IM_END, 9, 9], [1, 2, 3, 4]])
    mask, truncated = completion_mask(ids, [IM_END, ENDOFTEXT])
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]
    assert completion_mask(ids, IM_END)[1].tolist() == [True, False, True]  # one id still works


@pytest.mark.parametrize("fast", [True, False], ids=["own_sampler", "model_generate"])
def test_completion_ending_in_endoftext_stops_and_is_not_truncated(real, fast):
    """The model is made to favour <|endoftext|> (a bias on the output head: about one draw in three);
    every completion stops at its first <|endoftext|>, is not truncated, and has only padding after it."""
    import copy

    model, processor = real
    model = copy.deepcopy(model)
    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight = head.weight  # tied to the embeddings, as the 3B
    with torch.no_grad():
        biased.bias.zero_()
        biased.bias[ENDOFTEXT] = 11.3  # e^11.3 against ~151,936 x e^0 for the rest: p about 1/3
    model.lm_head = biased
    policy = Policy(model, processor)
    policy.fast_generation = fast
    prompts = policy.encode(["Count.", "Say something."], [[_image(56, 56)], [_image(56, 84, 1)]])
    torch.manual_seed(0)
    out = policy.generate(prompts, [0, 0, 0, 1, 1, 1], max_new_tokens=12, row_seeds=torch.arange(6) + 7)
    stopped = 0
    for ids, mask, truncated in zip(out.ids, out.mask, out.truncated):
        hits = (ids == ENDOFTEXT).nonzero().flatten()
        if len(hits) and int(mask.sum()) == int(hits[0]) + 1:
            stopped += 1
            assert not truncated
            assert (ids[int(hits[0]) + 1 :] == policy.pad_token_id).all()
        else:
            assert truncated and int(mask.sum()) == 12
    assert stopped >= 3
    assert len({int(m.sum()) for m in out.mask}) > 1  # they stop at different lengths


def test_grpo_step_at_256_tokens_on_the_real_vocabulary(real, tmp_path):
    """One GRPO step through the training loop: 1 prompt x 2 completions x 256 new tokens, V = 151,936
    (the entropy bonus gives a gradient without rewards: a random model is never right)."""
    import copy

    from perceptrl.config import load_config
    from perceptrl.train.rl import train

    model, processor = real
    policy = Policy(copy.deepcopy(model), processor)
    before = policy.model.get_output_embeddings().weight.detach().clone()
    config = load_config("recipes/grpo.yaml", [
        "model.path=tiny:qwen2_5_vl_real", "data.rollout_batch_size=1", "train.global_batch_size=null", "rollout.n=2", "rollout.max_new_tokens=256",
        "train.max_steps=1", "train.micro_batch_size=2", "train.lr=1e-3", "train.num_threads=1",
        "algorithm.entropy_coef=0.01", "data.val_per_family=0", "data.image_size=56", "train.progress=false",
        "train.save_final=false", f"train.output_dir={tmp_path}", "data.max_pixels=12544",
    ])
    try:
        result = train(config, policy=policy)
    finally:
        policy.set_pixel_bounds(None, None)  # the processor is shared with the other tests
    step = result.history[-1]
    assert step["response_length/max"] == 256 and np.isfinite(step["loss"]) and step["grad_norm"] > 0
    assert not torch.equal(policy.model.get_output_embeddings().weight.detach(), before)


def _write_rows(folder, sizes):
    (folder / "images").mkdir(parents=True)
    rows = []
    for i, (h, w) in enumerate(sizes):
        name = f"images/{i}.png"
        _image(h, w, i).save(folder / name)
        rows.append({"images": [name], "problem": f"<image>How many shapes? ({i})", "answer": str(i)})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_max_prompt_length_drops_or_refuses_overlong_rows(real, tmp_path, caplog):
    """Prompts of rows with 56 x 56 images (4 image tokens) fit 200 tokens, rows with 448 x 448 ones
    (256 image tokens) do not."""
    from perceptrl.config import load_config
    from perceptrl.data.files import DataError
    from perceptrl.data.sources import build_source, limit_prompt_length
    from perceptrl.rewards import get_template

    model, processor = real
    policy = Policy(model, processor)
    path = _write_rows(tmp_path / "data", [(56, 56), (448, 448), (56, 84), (448, 448)])
    template = get_template("boxed")

    def length_of(sample):
        return policy.prompt_length(template.instruction(sample.problem), sample.images)

    plain = build_source(load_config(None, [f"data.train_files={path}"]).data, 0)
    lengths = {plain.train_sample(i).meta["row"]: length_of(plain.train_sample(i)) for i in range(4)}
    assert lengths[0] < 200 < lengths[1] == lengths[0] + 252
    config = load_config(None, [f"data.train_files={path}", f"data.val_files={path}", "data.max_prompt_length=200"])
    source = build_source(config.data, 0)
    with caplog.at_level(logging.WARNING):
        source = limit_prompt_length(source, length_of, 200, drop=True)
    assert source.prompts_dropped == (2, 2) and len(source) == 2
    assert "dropped 2 training and 2 validation rows" in caplog.text and "train.jsonl: record 1 (390 tokens)" in caplog.text
    assert {source.train_sample(i).answer for i in range(4)} == {"0", "2"}
    assert [s.answer for s in source.val_samples()] == ["0", "2"]
    with pytest.raises(DataError, match=r"train.jsonl: record 1: prompt: 390 tokens .* exceed data.max_prompt_length = 200"):
        limit_prompt_length(build_source(config.data, 0), length_of, 200, drop=False)


def test_synthetic_prompts_over_the_limit_are_an_error():
    from perceptrl.config import load_config
    from perceptrl.data.files import DataError
    from perceptrl.data.sources import build_source, limit_prompt_length

    source = build_source(load_config(None, ["data.image_size=56"]).data, 0)
    assert limit_prompt_length(source, lambda s: 10_000, None, drop=True) is source  # no limit: untouched
    limited = limit_prompt_length(source, lambda s: 150 if s.id.endswith("-3") else 90, 100, drop=True)
    assert limited.train_sample(0).problem == source.train_sample(0).problem
    with pytest.raises(DataError, match=r"synthetic prompt .*-3: prompt: 150 tokens .* lower data.image_size"):
        limited.train_sample(3)

"""Every tiny model family works through ``Policy``: encode, generate, score, train, save, load."""

import json

import pytest
import torch

from perceptrl.models.families import FAMILY_NAMES, build_tiny_family
from perceptrl.models.policy import Policy

STOCK_PROCESSOR = {
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
    "llava_onevision": "LlavaOnevisionProcessor",
}


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request):
    model, processor = build_tiny_family(request.param, seed=0)
    model.eval()
    return request.param, model, processor


def _image_token_counts(policy, enc):
    image_id = policy.tokenizer.convert_tokens_to_ids(policy.processor.image_token)
    return (enc.input_ids == image_id).sum(-1).tolist()


def test_build_is_tiny_seeded_and_suppresses_image_token(family):
    name, model, processor = family
    n_params = sum(p.numel() for p in model.parameters())
    assert 300_000 < n_params < 2_000_000, n_params
    assert STOCK_PROCESSOR[name] in [c.__name__ for c in type(processor).__mro__]  # or an image-only subclass
    policy = Policy(model, processor)
    image_id = policy.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert image_id == model.config.image_token_id
    assert image_id in policy.suppressed_token_ids
    assert policy.eos_token_id == policy.tokenizer.convert_tokens_to_ids("<|im_end|>")
    again, _ = build_tiny_family(name, seed=0)
    other, _ = build_tiny_family(name, seed=1)
    key, weight = next(iter(model.state_dict().items()))
    assert torch.equal(again.state_dict()[key], weight)
    assert not all(torch.equal(other.state_dict()[k], v) for k, v in model.state_dict().items())


def test_encode_one_and_two_images_per_prompt(family, rgb_images):
    name, model, processor = family
    policy = Policy(model, processor)
    images = [[rgb_images[0]], [rgb_images[1]], [rgb_images[2], rgb_images[0]]]
    enc = policy.encode(["a", "bb", "ccc"], images)
    assert len(enc) == 3 and (enc.attention_mask[:, 0] == 0).any()  # left padding
    counts = _image_token_counts(policy, enc)
    assert all(c > 0 for c in counts)
    if "image_grid_thw" in enc.image_chunks:  # Qwen: one grid per image, merge 2 x 2 patches per token
        grids = enc.image_chunks["image_grid_thw"]
        assert [g.shape[0] for g in grids] == [1, 1, 2]
        assert counts == [int(g.prod(-1).sum()) // 4 for g in grids]
        assert [c.shape[0] for c in enc.image_chunks["pixel_values"]] == [int(g.prod(-1).sum()) for g in grids]
    else:  # LLaVA-OneVision: tiles per image, and one images-per-prompt count per prompt
        assert [c.shape[0] for c in enc.image_chunks["pixel_values"]] == [1, 1, 2]
        assert [c.tolist() for c in enc.image_chunks["batch_num_images"]] == [[1], [1], [2]]
    batch = enc.select([2, 2, 0])
    chunks = enc.image_chunks["pixel_values"]
    assert batch["pixel_values"].shape[0] == 2 * chunks[2].shape[0] + chunks[0].shape[0]
    # the image reaches the model: another image changes the log-probs of the same text
    other = policy.encode(["a"], [[rgb_images[1].transpose(0)]])
    ids = torch.tensor([[65, 66, 67]])
    with torch.no_grad():
        a = policy.score(policy.encode(["a"], [[rgb_images[1]]]), [0], ids, torch.ones_like(ids))["logprobs"]
        b = policy.score(other, [0], ids, torch.ones_like(ids))["logprobs"]
    assert not torch.allclose(a, b)


def test_generate_groups_and_logprobs_match_scoring(family, rgb_images):
    name, model, processor = family
    policy = Policy(model, processor)
    texts = ["How many red circles?", "x", "Count the shapes in both pictures, then answer."]
    images = [[rgb_images[0]], [rgb_images[1]], [rgb_images[2], rgb_images[0]]]
    enc = policy.encode(texts, images)
    torch.manual_seed(0)
    rows = torch.arange(3).repeat_interleave(4)
    out = policy.generate(enc, rows, max_new_tokens=16, temperature=1.0, return_logprobs=True)
    assert out.ids.shape[0] == 12 and torch.equal(out.rows, rows)
    assert out.lengths.min() > 0
    assert not torch.isin(out.ids[out.mask.bool()], torch.tensor(policy.suppressed_token_ids)).any()
    with torch.no_grad():
        batch = policy.score(enc, out.rows, out.ids, out.mask, with_entropy=True)
    mask = out.mask.bool()
    assert torch.allclose(batch["logprobs"][mask], out.logprobs[mask], atol=1e-5)
    assert (batch["entropy"] >= 0).all()
    for r in (0, 5, 8, 11):  # padded batch equals each completion scored alone, unpadded
        alone_enc = policy.encode([texts[rows[r]]], [images[rows[r]]])
        length = int(out.mask[r].sum())
        with torch.no_grad():
            alone = policy.score(alone_enc, [0], out.ids[r : r + 1, :length], out.mask[r : r + 1, :length])
        assert torch.allclose(alone["logprobs"][0], batch["logprobs"][r, :length], atol=1e-5)


def test_text_only_prompt_beside_image_prompts(family, rgb_images):
    name, model, processor = family
    policy = Policy(model, processor)
    texts, images = ["no image", "one", "two"], [[], [rgb_images[2]], [rgb_images[0], rgb_images[1]]]
    enc = policy.encode(texts, images)
    assert _image_token_counts(policy, enc)[0] == 0
    ids = torch.tensor([[65, 66, 67]] * 4)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        batch = policy.score(enc, [0, 1, 2, 0], ids, mask)["logprobs"]
        for r in range(3):
            alone = policy.score(policy.encode([texts[r]], [images[r]]), [0], ids[:1], mask[:1])["logprobs"]
            assert torch.allclose(alone[0], batch[r], atol=1e-5)
    assert torch.allclose(batch[0], batch[3])


def test_policy_gradient_steps_train_text_and_vision(family, rgb_images):
    import copy

    name, model, processor = family
    model = copy.deepcopy(model).train()
    policy = Policy(model, processor)
    enc = policy.encode(["count", "which is bigger?"], [[rgb_images[0]], [rgb_images[1], rgb_images[2]]])
    torch.manual_seed(1)
    rows = torch.arange(2).repeat_interleave(4)
    out = policy.generate(enc, rows, max_new_tokens=8)
    # generate() runs under inference_mode: copy its tensors before autograd saves them.
    ids, mask = out.ids.clone(), out.mask.clone()
    advantages = torch.randn(len(rows))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        logprobs = policy.score(enc, rows, ids, mask)["logprobs"]
        loss = -((logprobs * mask).sum(-1) / mask.sum(-1) * advantages).mean()
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert any("vision" in k or "visual" in k for k in changed)  # gradients reach the vision tower
    assert any("embed_tokens" in k for k in changed)


def test_save_load_roundtrip_is_exact(family, rgb_images, tmp_path):
    from perceptrl.models.loading import load_model_and_processor, save_pretrained

    name, model, processor = family
    save_pretrained(model, processor, tmp_path / name)
    saved = json.loads((tmp_path / name / "processor_config.json").read_text())
    assert saved["processor_class"] == STOCK_PROCESSOR[name]  # a stock class, loadable with torchvision
    model2, processor2 = load_model_and_processor(str(tmp_path / name))
    model2.eval()
    assert type(model2) is type(model)
    assert processor2.to_dict() == processor.to_dict()
    p1, p2 = Policy(model, processor), Policy(model2, processor2)
    texts, images = ["count", "x"], [[rgb_images[1]], [rgb_images[0], rgb_images[2]]]
    enc1, enc2 = p1.encode(texts, images), p2.encode(texts, images)
    assert torch.equal(enc1.input_ids, enc2.input_ids)
    for key, chunks in enc1.image_chunks.items():
        assert all(torch.equal(a, b) for a, b in zip(chunks, enc2.image_chunks[key])), key
    ids = torch.tensor([[65, 66, 67], [68, 69, 70]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = p1.score(enc1, [0, 1], ids, mask)["logprobs"]
        b = p2.score(enc2, [0, 1], ids, mask)["logprobs"]
    assert torch.allclose(a, b, atol=1e-6)


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="unknown model family"):
        build_tiny_family("llama_vision")

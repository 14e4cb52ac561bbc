import torch

from perceptrl.models.policy import completion_mask


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 9, 7, 9, 1], [5, 5, 5, 5, 5], [9, 1, 1, 1, 1]])
    mask, truncated = completion_mask(ids, eos_token_id=9)
    assert mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_images_processed_once_per_prompt(tiny_policy, rgb_images):
    enc = tiny_policy.encode(["a", "bb", "ccc"], [[rgb_images[0]], [rgb_images[1]], [rgb_images[2], rgb_images[0]]])
    assert len(enc) == 3
    chunks = enc.image_chunks["pixel_values"]
    grids = enc.image_chunks["image_grid_thw"]
    assert [g.shape[0] for g in grids] == [1, 1, 2]
    assert [c.shape[0] for c in chunks] == [int(g.prod(-1).sum()) for g in grids]
    batch = enc.select([2, 2, 0])
    assert batch["pixel_values"].shape[0] == 2 * chunks[2].shape[0] + chunks[0].shape[0]
    assert (enc.attention_mask[:, 0] == 0).any()  # left padding


def test_generation_suppresses_vision_tokens_and_groups(tiny_policy, rgb_images):
    enc = tiny_policy.encode(["how many?", "count"], [[rgb_images[0]], [rgb_images[1]]])
    torch.manual_seed(0)
    rows = torch.tensor([0] * 4 + [1] * 4)
    out = tiny_policy.generate(enc, rows, max_new_tokens=24)
    assert out.ids.shape == (8, 24) or out.ids.shape[0] == 8
    assert not torch.isin(out.ids[out.mask.bool()], torch.tensor(tiny_policy.suppressed_token_ids)).any()
    assert torch.equal(out.rows, rows)


def test_logprobs_padded_batch_equals_alone_and_generation(tiny_policy, rgb_images):
    texts = ["How many red circles?", "x", "Count the shapes in the picture, then answer."]
    images = [[rgb_images[0]], [rgb_images[1]], [rgb_images[2]]]
    enc = tiny_policy.encode(texts, images)
    torch.manual_seed(1)
    rows = torch.tensor([0, 0, 1, 1, 2, 2])
    out = tiny_policy.generate(enc, rows, max_new_tokens=20, temperature=1.0, return_logprobs=True)
    with torch.no_grad():
        batch = tiny_policy.score(enc, out.rows, out.ids, out.mask, with_entropy=True)
    mask = out.mask.bool()
    # equal to the generation-time log-probs at temperature 1
    assert torch.allclose(batch["logprobs"][mask], out.logprobs[mask], atol=1e-5)
    assert (batch["entropy"] >= 0).all()
    # equal to each completion scored alone, unpadded
    for r in range(len(rows)):
        alone_enc = tiny_policy.encode([texts[rows[r]]], [images[rows[r]]])
        length = int(out.mask[r].sum())
        with torch.no_grad():
            alone = tiny_policy.score(alone_enc, [0], out.ids[r : r + 1, :length], out.mask[r : r + 1, :length])
        assert torch.allclose(alone["logprobs"][0], batch["logprobs"][r, :length], atol=1e-5)


def test_entropy_matches_direct_computation(tiny_policy, rgb_images):
    enc = tiny_policy.encode(["q"], [[rgb_images[0]]])
    ids = torch.tensor([[70, 71, 72, 73]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = tiny_policy.score(enc, [0], ids, mask, with_entropy=True)
        batch = enc.select([0])
        batch["input_ids"] = torch.cat([batch["input_ids"], ids], 1)
        batch["attention_mask"] = torch.cat([batch["attention_mask"], mask], 1)
        if "mm_token_type_ids" in batch:
            batch["mm_token_type_ids"] = torch.nn.functional.pad(batch["mm_token_type_ids"], (0, 4))
        logits = tiny_policy.model(**batch).logits[:, -5:-1]
    p = logits.float().softmax(-1)
    direct = -(p * p.log()).sum(-1)
    assert torch.allclose(out["entropy"], direct, atol=1e-5)

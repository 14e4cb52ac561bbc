import subprocess
import sys
import textwrap

import torch

from perceptrl.models.tiny import SPECIAL_TOKENS, build_tiny, build_tokenizer, save_tiny


def test_size_and_tokenizer():
    model, processor = build_tiny()
    n_params = sum(p.numel() for p in model.parameters())
    assert 400_000 < n_params < 800_000, n_params
    tok = build_tokenizer()
    assert len(tok) == 256 + len(SPECIAL_TOKENS)
    text = "héllo \\boxed{3} <|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id


def test_saved_folder_loads_with_plain_transformers(tmp_path):
    model, processor = build_tiny(seed=3)
    save_tiny(model, processor, tmp_path / "tiny")
    # A separate interpreter that never imports perceptrl.
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForImageTextToText, AutoTokenizer
        model = AutoModelForImageTextToText.from_pretrained({str(tmp_path / 'tiny')!r})
        tok = AutoTokenizer.from_pretrained({str(tmp_path / 'tiny')!r})
        ids = tok.apply_chat_template([{{"role": "user", "content": "hi"}}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
        assert out.shape[1] == ids["input_ids"].shape[1] + 4 or tok.convert_tokens_to_ids("<|im_end|>") in out[0]
        assert "perceptrl" not in sys.modules
        print("ok", sum(p.numel() for p in model.parameters()))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")
    n_params = int(result.stdout.split()[1])
    assert n_params == sum(p.numel() for p in model.parameters())


def test_save_load_roundtrip_is_exact(tmp_path, rgb_images):
    from perceptrl.models.loading import load_model_and_processor
    from perceptrl.models.policy import Policy

    model, processor = build_tiny(seed=1)
    model.eval()
    save_tiny(model, processor, tmp_path / "m")
    model2, processor2 = load_model_and_processor(str(tmp_path / "m"))
    model2.eval()
    p1, p2 = Policy(model, processor), Policy(model2, processor2)
    enc1 = p1.encode(["count"], [[rgb_images[0]]])
    enc2 = p2.encode(["count"], [[rgb_images[0]]])
    assert torch.equal(enc1.input_ids, enc2.input_ids)
    ids = torch.tensor([[65, 66, 67]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = p1.score(enc1, [0], ids, mask)["logprobs"]
        b = p2.score(enc2, [0], ids, mask)["logprobs"]
    assert torch.allclose(a, b, atol=1e-6)

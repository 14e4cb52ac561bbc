"""Tests for perceptrl.vision.views (ALGORITHMS.md section 9)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from perceptrl.vision import (
    VIEW_NAMES,
    View,
    clean,
    ddpm,
    ddpm_coefficients,
    ddpm_t_from_level,
    gaussian,
    make_view,
    mask_patches,
    view_seed,
    vogue,
)
from perceptrl.vision.views import _rotate_nearest


def _noise_image(h: int, w: int, seed: int = 0, low: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(low, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


ALL_VIEWS = [
    make_view("clean"),
    make_view("mask_patches"),
    make_view("gaussian", sigma=0.2),
    make_view("ddpm", t=300),
    make_view("ddpm", noise_level=0.9),
    make_view("vogue", sigma=0.2),
]


# ---------------------------------------------------------------------------------- ddpm


@pytest.mark.parametrize(
    "t, signal, noise",
    [(0, 1.000, 0.0047), (300, 0.981, 0.194), (500, 0.863, 0.505), (600, 0.734, 0.679), (900, 0.365, 0.931)],
)
def test_ddpm_check_values(t, signal, noise):
    s, n = ddpm_coefficients(t)
    assert round(s, 3) == pytest.approx(signal, abs=1e-9)
    assert round(n, 3 if t else 4) == pytest.approx(noise, abs=1e-9)
    assert s * s + n * n == pytest.approx(1.0, abs=1e-12)


def test_ddpm_step_range_and_levels():
    for bad in (-1, 1000):
        with pytest.raises(ValueError):
            ddpm_coefficients(bad)
    with pytest.raises(TypeError):
        ddpm_coefficients(0.5)
    assert [ddpm_t_from_level(x) for x in (0.0, 0.3, 0.6, 0.9, 1.0)] == [0, 300, 600, 900, 999]
    assert make_view("ddpm", noise_level=0.3) == make_view("ddpm", t=300)
    with pytest.raises(TypeError):
        make_view("ddpm")
    with pytest.raises(TypeError):
        make_view("ddpm", t=3, noise_level=0.3)


def test_ddpm_statistics_follow_coefficients():
    x = np.full((256, 256, 3), 0.5, dtype=np.float32)
    out = ddpm(x, np.random.default_rng(0), t=300)
    s, n = ddpm_coefficients(300)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert out.mean() == pytest.approx(0.5 * s, abs=2e-3)
    assert out.std() == pytest.approx(n, abs=3e-3)  # 0.5 +- 3 * 0.194 stays inside [0, 1]
    heavy = ddpm(x, np.random.default_rng(0), t=900)  # clamped
    assert heavy.min() >= 0.0 and heavy.max() <= 1.0 and heavy.min() == 0.0 and heavy.max() == 1.0


# -------------------------------------------------------------------------- mask_patches


def test_mask_fraction_close_to_p_on_large_image():
    img = _noise_image(1400, 1400, low=1)  # no black pixel before masking: 100 x 100 patches
    for p in (0.6, 0.25):
        out = np.asarray(mask_patches(img, np.random.default_rng(1), patch=14, p=p))
        frac = (out == 0).all(axis=2).mean()
        assert frac == pytest.approx(p, abs=0.02)


def test_mask_is_per_patch_bernoulli_not_exact_fraction():
    img = _noise_image(42, 56, low=1)  # 3 x 4 = 12 patches
    counts = []
    for seed in range(300):
        out = np.asarray(mask_patches(img, seed, patch=14, p=0.6))
        counts.append(int((out[::14, ::14] == 0).all(axis=2).sum()))
    assert len(set(counts)) > 4  # an exact-fraction mask would always black out 7
    assert np.mean(counts) == pytest.approx(7.2, abs=0.3)


def _block_states(arr: np.ndarray, orig: np.ndarray, patch: int) -> np.ndarray:
    h, w = arr.shape[:2]
    states = np.zeros((-(-h // patch), -(-w // patch)), dtype=int)
    for i, y in enumerate(range(0, h, patch)):
        for j, x in enumerate(range(0, w, patch)):
            blk, src = arr[y : y + patch, x : x + patch], orig[y : y + patch, x : x + patch]
            black, same = (blk == 0).all(), (blk == src).all()
            assert black or same, f"block ({y}, {x}) is partly masked"
            states[i, j] = int(black)
    return states


def test_mask_grid_alignment_and_edge_truncation():
    img = _noise_image(30, 44, low=1)
    orig = np.asarray(img)
    edge_masked = 0
    for seed in range(40):
        out = np.asarray(mask_patches(img, seed, patch=14, p=0.5))
        assert out.shape == orig.shape
        states = _block_states(out, orig, 14)
        assert states.shape == (3, 4)  # rows 0,14,28 (last 2 px high); cols 0,14,28,42 (last 2 wide)
        edge_masked += states[2, :].sum() + states[:, 3].sum()
        # the mask follows the 14-px grid exactly: pixel 13 and pixel 14 may differ, 0..13 never do
        px = (out == 0).all(axis=2)
        assert (px[:, 0:14] == px[:, [0]]).all() and (px[0:14] == px[[0]]).all()
        assert (px[28:30] == px[[28]]).all() and (px[:, 42:44] == px[:, [42]]).all()
    assert edge_masked > 0
    # the grid is drawn row-major from the generator, one uniform per patch
    grid = np.random.default_rng(7).random((3, 4)) < 0.5
    out = np.asarray(mask_patches(img, np.random.default_rng(7), patch=14, p=0.5))
    assert (_block_states(out, orig, 14) == grid).all()


def test_mask_extremes_and_fill():
    img = _noise_image(30, 44, low=1)
    assert np.array_equal(np.asarray(mask_patches(img, 0, p=0.0)), np.asarray(img))
    assert (np.asarray(mask_patches(img, 0, p=1.0)) == 0).all()
    grey = np.asarray(mask_patches(img, 0, p=1.0, fill=0.5))
    assert (grey == 128).all()
    x = np.asarray(img, dtype=np.float32) / 255
    assert (mask_patches(x, 0, p=1.0, fill=1.0) == 1.0).all()
    with pytest.raises(ValueError):
        mask_patches(img, 0, fill=128)


# ------------------------------------------------------------------------------ gaussian


def test_gaussian_statistics():
    x = np.full((300, 300, 3), 0.5, dtype=np.float32)
    out = gaussian(x, np.random.default_rng(0), sigma=0.1)
    assert out.mean() == pytest.approx(0.5, abs=2e-3)
    assert out.std() == pytest.approx(0.1, abs=2e-3)
    # independent across channels
    corr = np.corrcoef(out[..., 0].ravel(), out[..., 1].ravel())[0, 1]
    assert abs(corr) < 0.02
    wide = gaussian(x, np.random.default_rng(0), sigma=2.0)
    assert wide.min() == 0.0 and wide.max() == 1.0
    assert np.array_equal(gaussian(x, 0, sigma=0.0), x)
    # uint8 path: mean of a mid-grey image is kept, values rounded back
    img = Image.new("RGB", (200, 200), (128, 128, 128))
    arr = np.asarray(gaussian(img, 0, sigma=0.05), dtype=np.float64)
    assert arr.mean() == pytest.approx(128, abs=0.3)
    assert arr.std() == pytest.approx(0.05 * 255, rel=0.03)


# --------------------------------------------------------------------------------- vogue


def test_vogue_keeps_size_and_is_not_identity():
    img = _noise_image(37, 61)
    out = vogue(img, 0, sigma=0.2)
    assert out.size == img.size and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(img))
    # even with no noise the geometric/colour part changes the image for most seeds
    changed = sum(not np.array_equal(np.asarray(vogue(img, s, sigma=0.0)), np.asarray(img)) for s in range(10))
    assert changed == 10


def test_vogue_flips():
    img = _noise_image(20, 30)
    out = vogue(img, 0, sigma=0.0, flip_p=1.0, max_degrees=0.0, brightness=0.0, contrast=0.0)
    assert np.array_equal(np.asarray(out), np.asarray(img)[::-1, ::-1])
    out = vogue(img, 0, sigma=0.0, flip_p=0.0, max_degrees=0.0, brightness=0.0, contrast=0.0)
    assert np.array_equal(np.asarray(out), np.asarray(img))
    # default flip probability 0.5 each, independent: all four outcomes occur
    a = np.asarray(img)
    outcomes = {"none": a, "h": a[:, ::-1], "v": a[::-1], "hv": a[::-1, ::-1]}
    seen = set()
    for s in range(40):
        o = np.asarray(vogue(img, s, sigma=0.0, max_degrees=0.0, brightness=0.0, contrast=0.0))
        seen |= {k for k, ref in outcomes.items() if np.array_equal(o, ref)}
    assert len(seen) == 4


def test_rotation_matches_pil_and_keeps_size():
    img = _noise_image(33, 47)
    for angle in (7.3, -9.9, 90.0):
        ours = _rotate_nearest(np.asarray(img), angle)
        ref = np.asarray(img.rotate(angle, resample=Image.Resampling.NEAREST, expand=False))
        assert np.array_equal(ours, ref)
        xf = np.asarray(img, dtype=np.float32) / 255
        assert np.array_equal(_rotate_nearest(xf, angle), ref.astype(np.float32) / 255)
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    out = np.asarray(vogue(white, 3, sigma=0.0, flip_p=0.0, brightness=0.0, contrast=0.0))
    assert (out[0, 0] == 0).all() and (out[32, 32] == 255).all()  # black corners, size kept


def test_vogue_colour_jitter_bounds():
    x = np.random.default_rng(0).uniform(0.2, 0.7, (50, 50, 3)).astype(np.float32)
    for s in range(20):
        out = vogue(x, s, sigma=0.0, flip_p=0.0, max_degrees=0.0, contrast=0.0)
        ratio = out / x
        assert np.allclose(ratio, ratio.flat[0], atol=1e-5) and 0.85 - 1e-6 <= ratio.flat[0] <= 1.15 + 1e-6
        out = vogue(x, s, sigma=0.0, flip_p=0.0, max_degrees=0.0, brightness=0.0)
        mean = (x.reshape(-1, 3) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).mean()
        c = (out - mean) / (x - mean)
        assert np.allclose(c, np.median(c), atol=1e-3) and 0.85 - 1e-3 <= np.median(c) <= 1.15 + 1e-3


# ------------------------------------------------------------------------- all the views


@pytest.mark.parametrize("view", ALL_VIEWS, ids=lambda v: v.key)
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
@pytest.mark.parametrize("hw", [(30, 44), (151, 211)])
def test_views_keep_size_and_mode(view, mode, hw):
    img = _noise_image(*hw).convert(mode)
    out = view(img, 123)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == img.size
    x = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
    arr = view(x, 123)
    assert arr.dtype == np.float32 and arr.shape == x.shape
    assert arr.min() >= 0.0 and arr.max() <= 1.0
    assert view(np.asarray(img.convert("RGB")), 123).dtype == np.uint8
    assert view(x[..., 0], 123).shape == x.shape  # grayscale array


def test_transparency_composited_onto_white():
    rgba = Image.new("RGBA", (10, 10), (10, 20, 30, 0))
    assert (np.asarray(clean(rgba)) == 255).all()
    arr = np.zeros((4, 4, 4), dtype=np.float32)
    assert (clean(arr) == 1.0).all()


def test_float_and_pil_paths_agree():
    img = _noise_image(40, 40)
    x = np.asarray(img, dtype=np.float32) / 255
    for view in ALL_VIEWS:
        a = np.asarray(view(img, 5), dtype=np.int16)
        b = np.rint(view(x, 5) * 255).astype(np.int16)
        assert np.abs(a - b).max() <= 1, view.key


def test_clean_is_identity_copy():
    img = _noise_image(16, 16)
    out = make_view("clean")(img, 0)
    assert out is not img and out.tobytes() == img.tobytes()
    assert make_view("clean").is_identity and not make_view("gaussian", sigma=0.1).is_identity


def test_invalid_inputs():
    with pytest.raises(ValueError):
        make_view("blur")
    with pytest.raises(TypeError):
        make_view("gaussian", sigma=0.1, mean=0.0)
    with pytest.raises(TypeError):
        make_view("gaussian")
    with pytest.raises(ValueError):
        make_view("mask_patches", p=1.5)
    with pytest.raises(ValueError):
        make_view("gaussian", sigma=-0.1)
    with pytest.raises(ValueError):
        gaussian(np.full((4, 4, 3), 255.0), 0, sigma=0.1)  # float images must be in [0, 1]
    with pytest.raises(TypeError):
        make_view("gaussian", sigma=0.1)(_noise_image(4, 4), None)
    assert set(VIEW_NAMES) == {"clean", "mask_patches", "gaussian", "ddpm", "vogue"}


# ------------------------------------------------------------------------ reproducibility


@pytest.mark.parametrize("view", ALL_VIEWS[1:], ids=lambda v: v.key)
def test_same_seed_same_bytes_different_step_differs(view):
    img = _noise_image(60, 80)
    s0 = view.seed_for(1234, step=3, prompt_index=5)
    assert s0 == view_seed(1234, 3, 5, view.key)
    a, b = view(img, s0), view(img, s0)
    assert a.tobytes() == b.tobytes()
    assert view(img, np.random.default_rng(s0)).tobytes() == a.tobytes()
    other_step = view(img, view.seed_for(1234, step=4, prompt_index=5))
    other_prompt = view(img, view.seed_for(1234, step=3, prompt_index=6))
    assert other_step.tobytes() != a.tobytes()
    assert other_prompt.tobytes() != a.tobytes()


def test_view_seed_distinct_and_stable_across_processes():
    seeds = {view_seed(b, s, p, n) for b in (0, 1) for s in (0, 1, 2) for p in (0, 1, 2) for n in ("a", "b")}
    assert len(seeds) == 36
    assert all(0 <= s < 2**63 for s in seeds)
    assert view_seed(0, 1, 2, "ddpm(t=300)") != view_seed(0, 1, 2, "ddpm(t=600)")
    for bad in ((-1, 0, 0), (0, -1, 0), (0, 0, 2**64)):
        with pytest.raises(ValueError):
            view_seed(*bad, "x")
    code = "from perceptrl.vision import view_seed; print(view_seed(7, 11, 13, 'mask_patches'))"
    outs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outs.add(int(res.stdout.strip()))
    assert outs == {view_seed(7, 11, 13, "mask_patches")}


def test_view_spec_roundtrip():
    v = make_view("vogue", sigma=0.4)
    assert v.params["sigma"] == 0.4 and v.params["flip_p"] == 0.5
    assert make_view(**v.to_dict()) == v and hash(make_view(**v.to_dict())) == hash(v)
    assert pickle.loads(pickle.dumps(v)) == v
    assert isinstance(v, View) and v.key.startswith("vogue(")
    with pytest.raises(AttributeError):
        v.foo = 1


def test_views_are_fast():
    img = _noise_image(224, 224)
    for view in ALL_VIEWS:
        view(img, 0)
        t0 = time.perf_counter()
        for i in range(10):
            view(img, i)
        per_call = (time.perf_counter() - t0) / 10
        assert per_call < 0.05, f"{view.key}: {per_call * 1e3:.1f} ms"


# ------------------------------------------------------------------- through the processor


@pytest.fixture(scope="module")
def processor():
    from perceptrl.models.tiny import build_processor, build_tokenizer

    return build_processor(build_tokenizer())


@pytest.mark.parametrize("size", [(44, 30), (131, 97), (320, 240)])  # (width, height)
def test_image_token_count_unchanged(processor, size):
    img = _noise_image(size[1], size[0])
    text = ["<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\n"]
    pad_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def encode(image):
        enc = processor(text=text, images=[image], return_tensors="pt")
        return enc["image_grid_thw"].tolist(), int((enc["input_ids"] == pad_id).sum())

    grid, n_pad = encode(img)
    assert n_pad > 1
    for view in ALL_VIEWS:
        out = view(img, view.seed_for(0, 1, 2))
        assert out.size == img.size and out.mode == "RGB", view.key
        assert encode(out) == (grid, n_pad), view.key

"""perceptrl.eval.runner with stub generators: counts, avg@k / pass@k, perception probe, POPE."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from perceptrl.data.synthetic import SyntheticTask
from perceptrl.data.types import Sample
from perceptrl.train.heldout import Generations
from perceptrl.eval.report import render_markdown, to_json_safe, write_outputs
from perceptrl.eval.runner import (
    EvalSettings,
    blank_images,
    masked_images,
    pope_stats,
    run_evaluation,
)
from perceptrl.rewards import RewardFunction


@pytest.fixture(scope="module")
def reward_fn():
    return RewardFunction("boxed", start_math=False)


@pytest.fixture(scope="module")
def samples():
    # 4 items each of an image family, the POPE family and the text-only family.
    return SyntheticTask(["count", "pope", "text"], difficulty=1, image_size=56).test_set(4)


def _wrong(sample: Sample) -> str:
    return "\\boxed{maybe}" if sample.answer_type == "yesno" else "\\boxed{-1}"


class BlindStub:
    """Answers every item correctly without looking at the image."""

    def __init__(self):
        self.calls = []

    def __call__(self, samples, images, *, repeats=1, do_sample=False, seed=None):
        self.calls.append((len(samples), repeats, do_sample, seed))
        texts = [[f"ok \\boxed{{{s.answer}}}"] * repeats for s in samples]
        return Generations(texts, [[5] * repeats for _ in samples], [[False] * repeats for _ in samples])


class LookingStub:
    """Correct only when it is shown the sample's original image (byte for byte)."""

    def __call__(self, samples, images, *, repeats=1, do_sample=False, seed=None):
        texts = []
        for s, imgs in zip(samples, images):
            same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(imgs, s.images))
            texts.append([f"\\boxed{{{s.answer}}}" if same else _wrong(s)] * repeats)
        return Generations(texts)


class CountingStub:
    """Item i gets exactly c_i = i mod (k + 1) correct completions out of k when sampling."""

    def __call__(self, samples, images, *, repeats=1, do_sample=False, seed=None):
        texts = []
        for i, s in enumerate(samples):
            c = i % (repeats + 1) if do_sample else 1
            texts.append([f"\\boxed{{{s.answer}}}"] * c + [_wrong(s)] * (repeats - c))
        return Generations(texts)


def test_counts_add_up_and_structure(samples, reward_fn):
    stub = BlindStub()
    result = run_evaluation(samples, stub, reward_fn, EvalSettings(k=4, seed=7))
    report = result.report
    groups = report["groups"]
    assert list(groups) == ["all", "vision_dependent", "text_only", "family/count", "family/pope", "family/text"]
    assert groups["all"]["n"] == len(samples) == 12
    assert groups["vision_dependent"]["n"] + groups["text_only"]["n"] == groups["all"]["n"]
    assert sum(groups[f"family/{f}"]["n"] for f in ("count", "pope", "text")) == groups["all"]["n"]
    assert groups["text_only"]["n"] == groups["family/text"]["n"] == 4
    for g in groups.values():
        assert g["greedy"]["accuracy"] == 1.0 and g["greedy"]["correct"] == g["n"]
        assert g["greedy"]["format_rate"] == 1.0 and g["greedy"]["mean_length"] == 5.0
        assert g["sampled"]["total_samples"] == 4 * g["n"] == g["sampled"]["correct_samples"]
        assert g["sampled"]["avg@4"] == 1.0 and g["sampled"]["pass@4"] == 1.0
    # greedy, sampled (k=4), masked, blank: one call each, seeded.
    assert stub.calls == [(12, 1, False, 7), (12, 4, True, 7), (12, 1, False, 7), (12, 1, False, 7)]
    assert report["settings"]["pass_ks"] == [1, 2, 4]
    metrics = result.metrics
    assert metrics["accuracy"] == 1.0 and metrics["accuracy/family/pope"] == 1.0 and metrics["avg@4/text_only"] == 1.0
    assert len(result.records) == 12 and result.records[0]["sampled"] == {
        "correct": 4, "n": 4, "extracted": [samples[0].answer] * 4}
    json.dumps(to_json_safe(report), allow_nan=False)  # strict JSON


def test_avg_and_pass_at_k_from_sampled_counts(samples, reward_fn):
    k = 3
    result = run_evaluation(samples, CountingStub(), reward_fn, EvalSettings(k=k, probe=False))
    counts = [i % (k + 1) for i in range(len(samples))]
    sampled = result.report["groups"]["all"]["sampled"]
    assert sampled["correct_samples"] == sum(counts)
    assert sampled["avg@3"] == pytest.approx(np.mean(counts) / k)
    assert sampled["pass@1"] == pytest.approx(sampled["avg@3"])
    for j in (1, 2, 3):  # brute force over the j-subsets of each item's k completions
        brute = []
        for c in counts:
            outcomes = [1] * c + [0] * (k - c)
            subsets = list(itertools.combinations(outcomes, j))
            brute.append(Fraction(sum(any(s) for s in subsets), len(subsets)))
        assert sampled[f"pass@{j}"] == pytest.approx(float(sum(brute) / len(brute)))
    fam = result.report["groups"]["family/count"]["sampled"]  # items 0..3 -> counts 0, 1, 2, 3
    assert fam["avg@3"] == pytest.approx((0 + 1 + 2 + 3) / 12)
    assert result.report["groups"]["all"]["probe"] is None


def test_probe_blind_model_shows_no_drop(samples, reward_fn):
    result = run_evaluation(samples, BlindStub(), reward_fn, EvalSettings(k=0))
    for name, g in result.report["groups"].items():
        p = g["probe"]
        assert p["clean"] == p["masked"] == p["blank"] == 1.0, name
        assert p["drop_masked"] == 0.0 and p["drop_blank"] == 0.0
        assert p["drop_masked_ci"] == [0.0, 0.0]
        assert p["changed_masked"] == p["changed_blank"] == 0.0
        assert p["completion_changed_masked"] == p["completion_changed_blank"] == 0.0
        assert g["sampled"] is None
    assert result.metrics["probe/drop_masked"] == 0.0
    assert "avg@0" not in result.metrics


def test_probe_image_reading_model_shows_the_drop(samples, reward_fn):
    settings = EvalSettings(k=0, seed=3)
    result = run_evaluation(samples, LookingStub(), reward_fn, settings)
    masked = masked_images(samples, settings.mask_view(), settings.seed)
    # Expected masked accuracy: share of items whose masked image is still byte-identical.
    unchanged = [np.array_equal(np.asarray(m[0]), np.asarray(s.images[0])) for m, s in zip(masked, samples)]
    p = result.report["groups"]["all"]["probe"]
    assert p["clean"] == 1.0 and p["blank"] == 0.0 and p["drop_blank"] == 1.0
    assert p["masked"] == pytest.approx(np.mean(unchanged))
    assert p["drop_masked"] == pytest.approx(1 - np.mean(unchanged)) and p["drop_masked"] > 0.5
    assert p["changed_blank"] == 1.0
    lo, hi = p["drop_masked_ci"]
    assert lo <= p["drop_masked"] <= hi
    rec = result.records[0]
    assert rec["greedy"]["correct"] and not rec["blank"]["correct"]


def test_probe_masks_are_seeded_per_item(samples):
    view = EvalSettings().mask_view()
    a = masked_images(samples, view, seed=0)
    b = masked_images(samples[5:], view, seed=0)  # a subset: the same items get the same masks
    for x, y in zip(a[5:], b):
        assert np.array_equal(np.asarray(x[0]), np.asarray(y[0]))
    c = masked_images(samples, view, seed=1)
    assert any(not np.array_equal(np.asarray(x[0]), np.asarray(y[0])) for x, y in zip(a, c))
    # Masked patches are black 14-px squares; the image size is kept.
    arr = np.asarray(a[0][0])
    assert arr.shape == np.asarray(samples[0].images[0]).shape
    blank = blank_images(samples[:1], fill=0.5)[0][0]
    assert isinstance(blank, Image.Image) and blank.size == samples[0].images[0].size
    assert set(np.asarray(blank).reshape(-1).tolist()) == {128}


def test_pope_stats_hand_values():
    golds = ["yes", "yes", "no", "no", "no"]
    preds = ["yes", None, "yes", "no", "no"]
    s = pope_stats(golds, preds)
    assert (s["tp"], s["fn"], s["fp"], s["tn"], s["unanswered"]) == (1, 1, 1, 2, 1)
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["precision"] == pytest.approx(1 / 2) and s["recall"] == pytest.approx(1 / 2)
    assert s["f1"] == pytest.approx(1 / 2) and s["yes_ratio"] == pytest.approx(2 / 5)
    none = pope_stats(["no", "no"], ["no", None])
    assert none["precision"] is None and none["recall"] is None and none["f1"] is None


def test_pope_section_per_mode(samples, reward_fn):
    class AlwaysYes(BlindStub):
        def __call__(self, samples, images, *, repeats=1, do_sample=False, seed=None):
            return Generations([["\\boxed{Yes}"] * repeats for _ in samples])

    result = run_evaluation(samples, AlwaysYes(), reward_fn, EvalSettings(k=0, probe=False))
    pope = result.report["pope"]
    pope_items = [s for s in samples if s.family == "pope"]
    modes = sorted({s.meta["pope_mode"] for s in pope_items})
    assert sorted(m for m in pope if m != "all") == modes
    assert pope["all"]["n"] == len(pope_items)
    assert sum(pope[m]["n"] for m in modes) == pope["all"]["n"]
    n_yes = sum(s.answer == "yes" for s in pope_items)
    assert pope["all"]["yes_ratio"] == 1.0 and pope["all"]["recall"] == 1.0
    assert pope["all"]["precision"] == pytest.approx(n_yes / len(pope_items))
    assert pope["all"]["accuracy"] == pytest.approx(result.report["groups"]["family/pope"]["greedy"]["accuracy"])
    assert result.metrics["pope/all/yes_ratio"] == 1.0


def test_outputs_are_written(tmp_path, samples, reward_fn):
    result = run_evaluation(samples, CountingStub(), reward_fn, EvalSettings(k=2))
    paths = write_outputs(tmp_path, result.report, result.records)
    loaded = json.loads(paths["json"].read_text())
    assert loaded["groups"]["all"]["n"] == 12 and loaded["metrics"] == to_json_safe(result.metrics)
    lines = paths["predictions"].read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["id"] == samples[0].id
    md = paths["markdown"].read_text()
    assert "| family/count | 4 |" in md and "Perception probe" in md and "POPE" in md
    assert render_markdown(loaded) == md


def test_rejects_bad_input(samples, reward_fn):
    with pytest.raises(ValueError):
        run_evaluation([], BlindStub(), reward_fn)
    with pytest.raises(ValueError):
        run_evaluation(samples, BlindStub(), reward_fn, EvalSettings(k=2, pass_ks=[4]))
    with pytest.raises(ValueError):
        run_evaluation([samples[0], samples[0]], BlindStub(), reward_fn)

    def short(samples, images, *, repeats=1, do_sample=False, seed=None):
        return Generations([["\\boxed{1}"]] * (len(samples) - 1))

    with pytest.raises(ValueError):
        run_evaluation(samples, short, reward_fn)

"""RewardFunction: weights, keys, hacking guards end to end, determinism, fuzzing and time."""

from __future__ import annotations

import statistics
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perceptrl.data.types import ANSWER_TYPES, Sample
from perceptrl.rewards import RewardFunction, get_template, math_pool

CALL_BOUND_S = 2.0


@pytest.fixture(scope="module", autouse=True)
def warm_math_pool():
    math_pool().start(wait=True)
    yield


def sample(answer: str, answer_type: str = "integer") -> Sample:
    return Sample(id="s", images=[], problem="q", answer=answer, answer_type=answer_type)


def test_keys_weights_and_order():
    fn = RewardFunction()
    comps = [r"2+3=5 \boxed{5}", r"\boxed{4}", "5", r"\boxed{5} is it"]
    out = fn(comps, [sample("5")] * 4)
    assert set(out) == {"reward", "accuracy", "format"}
    assert out["accuracy"] == [1.0, 0.0, 0.0, 1.0]
    assert out["format"] == [1.0, 1.0, 0.0, 0.0]
    assert out["reward"] == pytest.approx([1.0, 0.1, 0.0, 0.9])
    assert all(isinstance(v, float) for vals in out.values() for v in vals)


def test_custom_weights():
    fn = RewardFunction(accuracy_weight=1.0, format_weight=0.5)
    out = fn([r"\boxed{5}", r"\boxed{6}"], [sample("5"), sample("5")])
    assert out["reward"] == pytest.approx([1.5, 0.5])


def test_reward_uses_each_samples_gold_and_type():
    fn = RewardFunction()
    samples = [sample("3"), sample("B", "choice"), sample("yes", "yesno"), sample("0.5", "number"),
               sample("red", "word"), sample("\\frac{1}{2}", "math")]
    comps = [r"\boxed{3}", r"\boxed{(b)}", r"\boxed{Yes.}", r"\boxed{1/2}", r"\boxed{Red}",
             r"\boxed{0.5}"]
    assert fn(comps, samples)["accuracy"] == [1.0] * 6
    assert fn(comps[1:] + comps[:1], samples)["accuracy"] == [0.0] * 6


@pytest.mark.parametrize(
    "template, completion",
    [
        ("boxed", r"\boxed{5} \boxed{6}"),  # conflicting boxes
        ("boxed", r"\boxed{5} \boxed{}"),
        ("boxed", r"\boxed{}"),  # empty box
        ("boxed", r"<think>\boxed{5}</think>"),  # answer only in the reasoning
        ("think_boxed", r"<think>the answer is \boxed{5}</think>"),
        ("think_boxed", r"<think>\boxed{5}</think> \boxed{6}"),
        ("think_boxed", r"<think>\boxed{5}"),
        ("answer_tags", "<think><answer>5</answer></think>"),
        ("answer_tags", "<think>r</think><answer>5</answer><answer>6</answer>"),
        ("answer_tags", "<think>r</think><answer></answer>"),
    ],
)
def test_hacking_completions_get_no_accuracy(template, completion):
    out = RewardFunction(template)([completion], [sample("5")])
    assert out["accuracy"] == [0.0]
    assert out["reward"][0] <= 0.1 + 1e-12


@pytest.mark.parametrize(
    "template, completion, reward",
    [
        ("think_boxed", "<think>2+3</think>\\boxed{5}", 1.0),
        ("think_boxed", "\\boxed{5}", 0.9),  # right answer, missing structure
        ("answer_tags", "<think>2+3</think><answer>5</answer>", 1.0),
        ("answer_tags", "<think>2+3</think><answer>4</answer>", 0.1),
    ],
)
def test_templates_in_reward(template, completion, reward):
    assert RewardFunction(template)([completion], [sample("5")])["reward"] == [pytest.approx(reward)]


def test_length_mismatch_and_bad_template():
    with pytest.raises(ValueError, match="samples"):
        RewardFunction()(["a", "b"], [sample("1")])
    with pytest.raises(ValueError, match="boxed"):
        RewardFunction("nope")


def test_empty_batch():
    assert RewardFunction()([], []) == {"reward": [], "accuracy": [], "format": []}


def test_threads_give_identical_results():
    golds = ["\\frac{1}{2}", "3", "x^2+1"]
    preds = ["0.5", "1/2", "\\frac{2}{4}", "3", "x^2+1", "1+x^2", "2", "\\sqrt{2}", "", "9^{9^{9}}"]
    comps = [f"r \\boxed{{{p}}}" if p else "no answer" for p in preds for _ in golds]
    samples = [sample(g, "math") for _ in preds for g in golds]
    serial = RewardFunction()(comps, samples)
    threaded = RewardFunction(num_threads=3)(comps, samples)
    assert serial == threaded
    assert sum(serial["accuracy"]) == 6  # 0.5, 1/2, 2/4 -> 1/2; 3; x^2+1, 1+x^2


def test_render_scores_full_reward():
    for name in ("boxed", "think_boxed", "answer_tags"):
        t = get_template(name)
        out = RewardFunction(name)([t.render("2+3=5", "5")], [sample("5")])
        assert out["reward"] == [pytest.approx(1.0)]


# ---------------------------------------------------------------------------- fuzzing and time

_tokens = st.sampled_from(
    ["\\boxed{", "\\boxed", "{", "}", "<think>", "</think>", "<answer>", "</answer>", "5", "B",
     "yes", " ", "$", "\\frac{1}{2}", "9^{9^{9}}", "!", "\\", "^{", "x"]
)
_completions = st.one_of(st.text(max_size=120), st.lists(_tokens, max_size=50).map("".join))
_golds = st.sampled_from(
    [("5", "integer"), ("0.5", "number"), ("B", "choice"), ("yes", "yesno"), ("red", "word"),
     ("\\frac{1}{2}", "math")]
)
_times: list[float] = []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template=st.sampled_from(["boxed", "think_boxed", "answer_tags"]),
    completions=st.lists(_completions, min_size=1, max_size=4),
    gold=_golds,
)
def test_fuzz_reward(template, completions, gold):
    fn = RewardFunction(template)
    start = time.perf_counter()
    out = fn(completions, [sample(*gold)] * len(completions))
    dt = (time.perf_counter() - start) / len(completions)
    _times.append(dt)
    assert dt < CALL_BOUND_S
    for r, a, f in zip(out["reward"], out["accuracy"], out["format"]):
        assert a in (0.0, 1.0) and f in (0.0, 1.0)
        assert r == pytest.approx(0.9 * a + 0.1 * f)


def _adversarial():
    n = 100_000
    return [
        "a" * n,
        r"\boxed{" + "{" * n + "}" * n + "}",
        r"\boxed{5}" * 5000,
        r"\boxed{" * 5000,
        r"\boxed{" + "9^{" * 3000 + "9" + "}" * 3000 + "}",
        r"\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",
        r"\boxed{" + "1" * 900 + "}",
        r"\boxed{" + "\\frac{" * 8 + "1" + "}{2}" * 8 + "}",
        "<think>" + "x" * n + "</think>" + r"\boxed{123456789^{123456789}}",
        "<think>r</think><answer>" + "{" * 50 + "</answer>",
        "<answer>" * 20_000,
        "\\" * n,
    ]


@pytest.mark.parametrize("answer_type", ANSWER_TYPES)
def test_adversarial_completions_bounded(answer_type):
    worst = 0.0
    for template in ("boxed", "think_boxed", "answer_tags"):
        fn = RewardFunction(template)
        for comp in _adversarial():
            start = time.perf_counter()
            out = fn([comp], [sample("1", answer_type)])
            dt = time.perf_counter() - start
            worst = max(worst, dt)
            assert out["accuracy"] == [0.0]
    print(f"\nadversarial reward ({answer_type}): worst {worst * 1e3:.0f} ms per completion")
    assert worst < CALL_BOUND_S


def test_print_reward_timing():
    if not _times:
        pytest.skip("fuzz test did not run")
    ts = sorted(_times)
    print(f"\nfuzzed reward: {len(ts)} batches, median {statistics.median(ts) * 1e3:.3f} ms "
          f"per completion, max {ts[-1] * 1e3:.1f} ms")

"""Prompt templates: extraction, format checks, render round trips, hacking guards, adversarial time."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perceptrl.rewards import (
    PROMPT_TEMPLATES,
    PromptTemplate,
    answer_regions,
    extract_boxed,
    get_template,
    scan_boxed,
)

BOXED = get_template("boxed")
THINK = get_template("think_boxed")
TAGS = get_template("answer_tags")
ALL = [BOXED, THINK, TAGS]


# ---------------------------------------------------------------------------- registry


def test_registry_and_default():
    assert set(PROMPT_TEMPLATES) == {"boxed", "think_boxed", "answer_tags"}
    assert get_template() is BOXED
    assert get_template(THINK) is THINK
    for name, t in PROMPT_TEMPLATES.items():
        assert isinstance(t, PromptTemplate) and t.name == name


def test_unknown_template_lists_valid_names():
    with pytest.raises(ValueError) as e:
        get_template("boxd")
    msg = str(e.value)
    assert "boxd" in msg and all(n in msg for n in PROMPT_TEMPLATES)


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_instruction_contains_problem_and_how_to_answer(t):
    text = t.instruction("What is 2+3?")
    assert text.startswith("What is 2+3?")
    assert ("\\boxed{}" in text) == (t.name != "answer_tags")
    assert ("<answer>" in text) == (t.name == "answer_tags")
    assert ("<think>" in text) == (t.name != "boxed")


def test_boxed_instruction_is_short():
    # The tiny model sees this in every prompt; keep it to one short sentence.
    assert len(BOXED.instruction("")) < 70


# ---------------------------------------------------------------------------- boxed scanning


def test_scan_nested_braces_and_escapes():
    assert extract_boxed(r"so \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert extract_boxed(r"\boxed {7}") == "7"
    assert extract_boxed(r"\boxed{a \\ {b}}") == r"a \\ {b}"
    assert extract_boxed(r"a}}} \boxed{3} }") == "3"  # stray closing braces are ignored
    assert extract_boxed(r"\boxedx{3}") is None  # another command, not a box
    assert extract_boxed(r"a \\boxed{3}") is None  # a line break, then the word "boxed"
    assert extract_boxed(r"a \\\boxed{3}") == "3"  # a line break, then a box
    scan = scan_boxed(r"\boxed{1} \boxed{2")
    assert scan.unclosed and len(scan.boxes) == 1
    assert scan_boxed(r"\boxed 3").bare
    assert scan_boxed(r"\boxed{\boxed{3}}").nested


@pytest.mark.parametrize(
    "text",
    [
        "no box here",
        r"\boxed{}",
        r"\boxed{   }",
        r"\boxed{3} then \boxed{4}",  # conflicting answers
        r"\boxed{3} \boxed{}",  # empty box next to a full one
        r"\boxed{3",  # truncated
        r"\boxed{3} and \boxed{4",  # second, unclosed attempt
        r"\boxed{\boxed{3}}",  # nested
        r"\boxed 3",  # bare
    ],
)
def test_extract_boxed_rejects(text):
    assert extract_boxed(text) is None
    assert BOXED.extract(text) is None
    assert not BOXED.format_ok(text)


def test_repeated_identical_box_is_accepted():
    assert BOXED.extract(r"\boxed{5} so again \boxed{ 5 }") == "5"
    assert not BOXED.format_ok(r"\boxed{5} so again \boxed{5}")  # format wants a single box


# ---------------------------------------------------------------------------- boxed template


@pytest.mark.parametrize(
    "completion, answer, ok",
    [
        (r"2+3=5 \boxed{5}", "5", True),
        (r"\boxed{5}", "5", True),
        (r"2+3=5 so $\boxed{5}$.", "5", True),
        (r"\[\boxed{\frac{1}{2}}\]", r"\frac{1}{2}", True),
        (r"\boxed{5} because 2+3=5", "5", False),  # answer not at the end
        (r"<think>2+3</think> \boxed{5}", "5", True),
        (r"<think>\boxed{5}</think>", None, False),  # answer only inside the reasoning
        (r"<think>\boxed{5}", None, False),  # unclosed reasoning
        (r"<think>\boxed{4}</think> \boxed{5}", "5", False),  # format: two boxes in the text
    ],
)
def test_boxed_template(completion, answer, ok):
    assert BOXED.extract(completion) == answer
    assert BOXED.format_ok(completion) is ok


# ---------------------------------------------------------------------------- think_boxed


@pytest.mark.parametrize(
    "completion, answer, ok",
    [
        ("<think>2+3=5</think>\n\\boxed{5}", "5", True),
        ("  <think>2+3=5</think> The answer is \\boxed{5}.  ", "5", True),
        ("<think>2+3=5</think>", None, False),  # no answer
        ("<think>the answer is \\boxed{5}</think>", None, False),  # only in the reasoning
        ("<think>\\boxed{5}</think> done", None, False),
        ("<think>hmm \\boxed{5}", None, False),  # unclosed think
        ("<think></think>\\boxed{5}", "5", False),  # empty reasoning
        ("\\boxed{5}", "5", False),  # no think block
        ("\\boxed{4}<think>x</think>\\boxed{5}", None, False),  # answer before the reasoning
        ("<think>a</think><think>b</think>\\boxed{5}", "5", False),  # two blocks
        ("reasoning opened by the prompt</think>\\boxed{5}", "5", False),
        ("<think>x</think>\\boxed{5}<think>y", None, False),  # a new block left open
        ("<think>x</think>\\boxed{5} \\boxed{6}", None, False),
        ("<think>x</think>\\boxed{}", None, False),
    ],
)
def test_think_boxed_template(completion, answer, ok):
    assert THINK.extract(completion) == answer
    assert THINK.format_ok(completion) is ok


def test_answer_regions():
    assert answer_regions("plain") == ["plain"]
    assert answer_regions("a<think>b</think>c") == ["a", "c"]
    assert answer_regions("b</think>c") == ["", "c"]
    assert answer_regions("a<think>b") is None
    assert answer_regions("a<think>b</think>c<think>d") is None


# ---------------------------------------------------------------------------- answer_tags


@pytest.mark.parametrize(
    "completion, answer, ok",
    [
        ("<think>2+3=5</think><answer>5</answer>", "5", True),
        ("<think>2+3=5</think>\n<answer> 5 </answer>\n", "5", True),
        ("<think>r</think><answer>\\boxed{5}</answer>", "5", True),  # box inside the tag
        ("<think>r</think><answer>\\boxed{5} \\boxed{6}</answer>", None, False),
        ("<think>r</think><answer></answer>", None, False),  # empty
        ("<think>r</think><answer>  </answer>", None, False),
        ("<think><answer>5</answer></think>", None, False),  # only in the reasoning
        ("<think>r</think><answer>5</answer><answer>6</answer>", None, False),  # conflicting
        ("<think>r</think><answer>5</answer><answer>5</answer>", "5", False),  # same twice
        ("<think>r</think><answer>5", None, False),  # unclosed
        ("<think>r</think>5</answer>", None, False),  # stray close
        ("<think>r</think><answer><answer>5</answer>", None, False),  # nested open
        ("<answer>5</answer>", "5", False),  # no think block
        ("<think>r</think><answer>5</answer> trailing text", "5", False),
        ("<think>r</think>text<answer>5</answer>", "5", False),
        ("<think>r</think>\\boxed{5}", None, False),  # box without tags is not this format
    ],
)
def test_answer_tags_template(completion, answer, ok):
    assert TAGS.extract(completion) == answer
    assert TAGS.format_ok(completion) is ok


# ---------------------------------------------------------------------------- render


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
@pytest.mark.parametrize(
    "reasoning, answer",
    [("2+3=5", "5"), ("half of one", r"\frac{1}{2}"), ("sets", r"\{1, 2\}"), ("x", "(B)"), ("a b", "yes")],
)
def test_render_round_trip(t, reasoning, answer):
    out = t.render(reasoning, answer)
    assert t.extract(out) == answer
    assert t.format_ok(out)


def test_render_boxed_is_compact():
    assert BOXED.render("", "5") == r"\boxed{5}"
    assert BOXED.render("2+3=5", "5") == r"2+3=5 \boxed{5}"


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
@pytest.mark.parametrize("answer", ["", " 5", "5 ", r"\boxed{5}", "a</think>b"])
def test_render_rejects_unrenderable_answers(t, answer):
    with pytest.raises(ValueError):
        t.render("ok", answer)


@pytest.mark.parametrize("t", [BOXED, THINK], ids=lambda t: t.name)
@pytest.mark.parametrize("answer", ["{5", "5}", "a}{b"])
def test_render_boxed_rejects_unbalanced_braces(t, answer):
    with pytest.raises(ValueError):
        t.render("ok", answer)
    assert TAGS.extract(TAGS.render("ok", answer)) == answer  # fine inside <answer> tags


def test_render_answer_tags_rejects_tags_in_answer():
    for answer in ("a</answer>b", "a<answer>b"):
        with pytest.raises(ValueError):
            TAGS.render("ok", answer)


@pytest.mark.parametrize("t", [THINK, TAGS], ids=lambda t: t.name)
def test_render_think_templates_need_reasoning(t):
    with pytest.raises(ValueError):
        t.render("", "5")
    with pytest.raises(ValueError):
        t.render("a </think> b", "5")


def test_render_boxed_rejects_box_in_reasoning():
    with pytest.raises(ValueError):
        BOXED.render(r"maybe \boxed{4}", "5")


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=st.sampled_from(ALL), reasoning=_text, answer=_text)
def test_render_either_round_trips_or_raises(t, reasoning, answer):
    try:
        out = t.render(reasoning, answer)
    except ValueError:
        return
    assert t.extract(out) == answer
    assert t.format_ok(out)


@settings(max_examples=200, deadline=None)
@given(
    t=st.sampled_from(ALL),
    reasoning=st.text(alphabet="abc +=12", min_size=1, max_size=30).filter(str.strip),
    answer=st.text(alphabet="0123456789abcXYZ+-/.,()[] ", min_size=1, max_size=20).filter(
        lambda a: a == a.strip() and a.strip()
    ),
)
def test_render_round_trips_ordinary_answers(t, reasoning, answer):
    out = t.render(reasoning, answer)  # must not raise for brace-free answers
    assert t.extract(out) == answer and t.format_ok(out)


# ---------------------------------------------------------------------------- fuzzing and time


_tokens = st.sampled_from(
    ["\\boxed{", "\\boxed", "{", "}", "\\{", "\\}", "\\\\", "<think>", "</think>", "<answer>",
     "</answer>", "5", " ", "\n", "$", "x", "\\frac{1}{2}", "\\"]
)
_completions = st.one_of(
    st.text(max_size=200),
    st.lists(_tokens, max_size=60).map("".join),
)


@settings(max_examples=500, deadline=None)
@given(t=st.sampled_from(ALL), completion=_completions)
def test_templates_never_raise_and_are_consistent(t, completion):
    answer = t.extract(completion)
    ok = t.format_ok(completion)
    assert t.analyse(completion) == (answer, ok)
    assert answer is None or (answer and answer == answer.strip())
    if ok:  # a well-formed completion always has an answer
        assert answer is not None


def _adversarial_completions():
    n = 100_000
    return {
        "100k chars": "a" * n,
        "100k chars then box": "x " * (n // 2) + r"\boxed{5}",
        "deep braces": r"\boxed{" + "{" * n + "}" * n + "}",
        "deep open braces": "{" * n,
        "deep boxes": r"\boxed{" * 20_000 + "}" * 20_000,
        "5000 boxes": r"\boxed{5}" * 5000,
        "5000 bare boxes": r"\boxed " * 5000,
        "5000 unclosed boxes": r"\boxed{" * 5000,
        "boxed then spaces": (r"\boxed" + " " * 1000) * 100,
        "many think tags": "<think>" * 10_000 + "</think>" * 10_000 + r"\boxed{1}",
        "many answer tags": "<answer>1</answer>" * 5000,
        "many open answer tags": "<answer>" * 10_000,
        "backslashes": "\\" * n,
    }


@pytest.mark.parametrize("name, text", list(_adversarial_completions().items()))
def test_adversarial_completions_are_fast(name, text):
    worst = 0.0
    for t in ALL:
        start = time.perf_counter()
        t.extract(text)
        t.format_ok(text)
        worst = max(worst, time.perf_counter() - start)
    print(f"template scan {name}: worst {worst * 1e3:.1f} ms")
    assert worst < 2.0

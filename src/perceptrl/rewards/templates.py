"""Prompt templates: how the model is asked to answer, and how its final answer is read back.

A template is selected by name (``get_template("boxed")``) and has these methods:

- ``instruction(problem)``: the user text, the problem followed by how to answer;
- ``extract(completion)``: the final answer, or ``None`` when it is missing, empty or ambiguous;
- ``format_ok(completion)``: whether the completion has the required structure (which implies that
  ``extract`` finds an answer);
- ``analyse(completion)``: both of the above, ``(answer, format_ok)``, in one pass;
- ``render(reasoning, answer)``: an SFT target completion in this format, such that
  ``extract(render(r, a)) == a`` and ``format_ok(render(r, a))`` (``ValueError`` otherwise).

Templates:

===============  ===========================================================  =====================
name             completion shape                                             answer read from
===============  ===========================================================  =====================
``boxed``        free (short) reasoning, then one ``\\boxed{...}`` at the end  the ``\\boxed{}``
``think_boxed``  ``<think>...</think>`` then ``\\boxed{...}``                  the ``\\boxed{}``
``answer_tags``  ``<think>...</think><answer>...</answer>``                  the ``<answer>`` tag
===============  ===========================================================  =====================

``boxed`` is the default: the tiny built-in model writes only 32-64 byte-level tokens, so its
required structure must be short.

Extraction is strict, to resist reward hacking (``ALGORITHMS.md`` section 1):

- text inside ``<think>...</think>`` is reasoning and is never read as the answer. In every template,
  an unclosed ``<think>`` makes the whole rest reasoning (no answer). A ``</think>`` without an opening
  tag (a chat template that opens the block in the prompt) makes everything before it reasoning;
- several final answers with different contents (two ``\\boxed{}``, two ``<answer>`` tags) give
  ``None``; repeating the *same* answer is accepted;
- an empty answer (``\\boxed{}``, ``\\boxed{  }``, ``<answer></answer>``) gives ``None``, even next
  to a non-empty one;
- an unclosed ``\\boxed{`` (e.g. a truncated completion), a ``\\boxed`` without a brace, or a box
  nested in a box gives ``None``.

All scans are linear in the completion length (no backtracking regexes, no recursion), so
adversarial completions (100k characters, deeply nested braces, thousands of boxes) are cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "PromptTemplate",
    "BoxedTemplate",
    "ThinkBoxedTemplate",
    "AnswerTagsTemplate",
    "PROMPT_TEMPLATES",
    "DEFAULT_TEMPLATE",
    "get_template",
    "register_template",
    "scan_boxed",
    "extract_boxed",
    "answer_regions",
]

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

# Outside any box only ``\boxed`` matters: a ``\boxed`` not preceded by an odd run of backslashes
# (``\\boxed`` is a line break followed by the word "boxed"), then ``{`` (group 1) or not a letter
# (a bare ``\boxed``). ``\boxedfoo`` is another command.
_OUTSIDE = re.compile(r"(?<!\\)(?:\\\\)*\\boxed(?:\s*(\{)|(?![A-Za-z]))")
# Inside a box, every brace and control sequence is a token: 1 = a nested box, 2 = a nested bare
# ``\boxed``, 3 = ``{``, 4 = ``}``; ``\{``, ``\}`` (literal braces) and ``\\`` are skipped.
_INSIDE = re.compile(r"(\\boxed\s*\{)|(\\boxed(?![A-Za-z]))|(\{)|(\})|\\(?:[A-Za-z]+|.)", re.S)
# What may follow the final box in a well-formed completion: whitespace, a full stop, closing math
# delimiters.
_TRAILER = re.compile(r"[\s.$]*(?:(?:\\\]|\\\))[\s.$]*)?")


@dataclass(frozen=True)
class BoxScan:
    """Result of :func:`scan_boxed`.

    ``boxes``: ``(start, end)`` character spans of the *contents* of the top-level ``\\boxed{}``
    groups, in order of their closing braces. ``box_ends``: position just after each closing brace.
    ``unclosed``: a ``\\boxed{`` is never closed. ``bare``: a ``\\boxed`` not followed by ``{``.
    ``nested``: a box inside a box.
    """

    boxes: tuple[tuple[int, int], ...]
    box_ends: tuple[int, ...]
    unclosed: bool
    bare: bool
    nested: bool

    @property
    def clean(self) -> bool:
        """No unclosed, bare or nested box."""
        return not (self.unclosed or self.bare or self.nested)


def scan_boxed(text: str) -> BoxScan:
    """Find the ``\\boxed{...}`` groups of ``text`` in one linear pass (nested braces allowed).

    Braces outside boxes are irrelevant (a box's braces balance on their own), so outside a box
    only the next ``\\boxed`` is searched for; inside, braces are counted.
    """
    boxes: list[tuple[int, int]] = []
    ends: list[int] = []
    bare = nested = False
    pos, n = 0, len(text)
    while pos < n:
        m = _OUTSIDE.search(text, pos)
        if m is None:
            break
        pos = m.end()
        if m.group(1) is None:
            bare = True
            continue
        start, depth = pos, 1  # inside a box: count braces until the box closes
        for t in _INSIDE.finditer(text, pos):
            k = t.lastindex
            if k == 3:
                depth += 1
            elif k == 4:
                depth -= 1
                if depth == 0:
                    boxes.append((start, t.start()))
                    ends.append(t.end())
                    pos = t.end()
                    break
            elif k == 1:
                nested = True
                depth += 1
            elif k == 2:
                bare = True
        else:  # never closed
            return BoxScan(tuple(boxes), tuple(ends), True, bare, nested)
    return BoxScan(tuple(boxes), tuple(ends), False, bare, nested)


def _single(candidates: list[str]) -> str | None:
    """The one answer among ``candidates`` (stripped), or None if none, any empty, or conflicting."""
    if not candidates:
        return None
    answers = [c.strip() for c in candidates]
    first = answers[0]
    if not first or any(a != first for a in answers[1:]):
        return None
    return first


def extract_boxed(text: str) -> str | None:
    """The content of the ``\\boxed{}`` answer(s) in ``text`` (think blocks are *not* excluded here).

    None if there is no box, an empty box, boxes with different contents, or an unclosed, bare or
    nested box.
    """
    scan = scan_boxed(text)
    if not scan.clean:
        return None
    return _single([text[a:b] for a, b in scan.boxes])


def answer_regions(completion: str) -> list[str] | None:
    """The parts of ``completion`` outside the ``<think>`` reasoning block, or None if it is unclosed.

    The reasoning runs from the first ``<think>`` to the last ``</think>``; if there is no
    ``<think>`` before the last ``</think>`` (a template that opened the block in the prompt),
    everything before the last ``</think>`` is reasoning. Text before the first ``<think>`` and
    after the last ``</think>`` is returned (two regions), so an answer placed before the reasoning
    still counts as a (possibly conflicting) answer.
    """
    close = completion.rfind(THINK_CLOSE)
    last_open = completion.rfind(THINK_OPEN)
    if close == -1:
        return None if last_open != -1 else [completion]
    if last_open > close:  # a new reasoning block is opened and never closed
        return None
    first_open = completion.find(THINK_OPEN)
    prefix = completion[:first_open] if first_open != -1 else ""
    return [prefix, completion[close + len(THINK_CLOSE) :]]


def _boxed_answer(regions: list[str], scans: list[BoxScan]) -> str | None:
    candidates: list[str] = []
    for region, scan in zip(regions, scans):
        if not scan.clean:
            return None
        candidates.extend(region[a:b] for a, b in scan.boxes)
    return _single(candidates)


def _single_box_at_end(text: str, scan: BoxScan) -> bool:
    """Exactly one top-level, non-empty, clean box, followed only by a harmless trailer."""
    if not scan.clean or len(scan.boxes) != 1:
        return False
    a, b = scan.boxes[0]
    if not text[a:b].strip():
        return False
    return _TRAILER.fullmatch(text, scan.box_ends[0]) is not None


def _think_block_ok(completion: str) -> bool:
    """``completion`` starts (after whitespace) with exactly one, non-empty think block."""
    text = completion.lstrip()
    if not text.startswith(THINK_OPEN):
        return False
    if text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
        return False
    close = text.find(THINK_CLOSE)
    return bool(text[len(THINK_OPEN) : close].strip())


class PromptTemplate:
    """Base class of prompt templates. Subclasses set ``name`` and ``how_to_answer`` and implement
    :meth:`analyse` and :meth:`_render`."""

    name: str = ""
    #: Sentence appended to the problem by :meth:`instruction`.
    how_to_answer: str = ""

    def instruction(self, problem: str) -> str:
        """The user text: the problem, then how to answer."""
        problem = problem.rstrip()
        return f"{problem}\n{self.how_to_answer}" if problem else self.how_to_answer

    def analyse(self, completion: str) -> tuple[str | None, bool]:  # pragma: no cover - abstract
        """``(extract(completion), format_ok(completion))`` in one pass over the text."""
        raise NotImplementedError

    def extract(self, completion: str) -> str | None:
        """The final answer (stripped), or None when missing, empty or ambiguous."""
        return self.analyse(completion)[0]

    def format_ok(self, completion: str) -> bool:
        """Whether the completion has this template's required structure (and an answer)."""
        return self.analyse(completion)[1]

    def _render(self, reasoning: str, answer: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def render(self, reasoning: str, answer: str) -> str:
        """The SFT target completion for ``reasoning`` and ``answer`` in this format.

        Raises ``ValueError`` when the pair cannot be rendered so that ``extract`` gives back
        ``answer`` and ``format_ok`` holds (empty answer, surrounding whitespace, unbalanced braces,
        tags or boxes inside the reasoning or answer, ...).
        """
        out = self._render(reasoning.strip(), answer)
        if self.analyse(out) != (answer, True):
            raise ValueError(
                f"template {self.name!r} cannot render answer {answer[:80]!r} with this reasoning "
                "so that it is extracted back unchanged (empty answer, surrounding whitespace, "
                "unbalanced braces, or tags/boxes inside the reasoning or answer)"
            )
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class BoxedTemplate(PromptTemplate):
    """Free short reasoning, then a single final ``\\boxed{answer}`` at the end."""

    name = "boxed"
    how_to_answer = "Think briefly, then give the final answer in \\boxed{}."

    def analyse(self, completion: str) -> tuple[str | None, bool]:
        regions = answer_regions(completion)
        if regions is None:
            return None, False
        scans = [scan_boxed(r) for r in regions]
        answer = _boxed_answer(regions, scans)
        if answer is None:
            return None, False
        # Format: one box in the whole text (boxes inside a think block count too), at the end.
        full = scans[0] if regions[0] is completion else scan_boxed(completion)
        return answer, _single_box_at_end(completion, full)

    def _render(self, reasoning: str, answer: str) -> str:
        box = f"\\boxed{{{answer}}}"
        return f"{reasoning} {box}" if reasoning else box


class ThinkBoxedTemplate(PromptTemplate):
    """``<think>reasoning</think>`` then a single final ``\\boxed{answer}``."""

    name = "think_boxed"
    how_to_answer = (
        "Reason inside <think></think>, then give the final answer in \\boxed{} after </think>."
    )

    def analyse(self, completion: str) -> tuple[str | None, bool]:
        regions = answer_regions(completion)
        if regions is None:
            return None, False
        scans = [scan_boxed(r) for r in regions]
        answer = _boxed_answer(regions, scans)
        if answer is None:
            return None, False
        ok = (
            len(regions) == 2
            and _think_block_ok(completion)
            and _single_box_at_end(regions[1], scans[1])
        )
        return answer, ok

    def _render(self, reasoning: str, answer: str) -> str:
        return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}\n\\boxed{{{answer}}}"


def _tagged_answers(region: str) -> list[str] | None:
    """Contents of the ``<answer>...</answer>`` pairs of ``region``; None if tags are malformed."""
    out: list[str] = []
    pos = 0
    while True:
        start = region.find(ANSWER_OPEN, pos)
        stray_close = region.find(ANSWER_CLOSE, pos)
        if start == -1:
            return None if stray_close != -1 else out
        if stray_close != -1 and stray_close < start:
            return None
        end = region.find(ANSWER_CLOSE, start + len(ANSWER_OPEN))
        if end == -1:
            return None
        content = region[start + len(ANSWER_OPEN) : end]
        if ANSWER_OPEN in content:
            return None
        out.append(content)
        pos = end + len(ANSWER_CLOSE)


def _unwrap_box(content: str) -> str | None:
    """An ``<answer>`` content with any ``\\boxed{}`` resolved (``<answer>\\boxed{3}</answer>``)."""
    if "\\boxed" not in content:
        return content
    return extract_boxed(content)


class AnswerTagsTemplate(PromptTemplate):
    """``<think>reasoning</think><answer>answer</answer>`` (R1 style)."""

    name = "answer_tags"
    how_to_answer = (
        "Reason inside <think></think>, then give only the final answer inside <answer></answer>."
    )

    def analyse(self, completion: str) -> tuple[str | None, bool]:
        regions = answer_regions(completion)
        if regions is None:
            return None, False
        candidates: list[str] = []
        for region in regions:
            found = _tagged_answers(region)
            if found is None:
                return None, False
            for content in found:
                unwrapped = _unwrap_box(content)
                if unwrapped is None:
                    return None, False
                candidates.append(unwrapped)
        answer = _single(candidates)
        if answer is None:
            return None, False
        rest = regions[-1].strip()
        ok = (
            len(regions) == 2
            and _think_block_ok(completion)
            and len(candidates) == 1
            and rest.startswith(ANSWER_OPEN)
            and rest.endswith(ANSWER_CLOSE)
        )
        return answer, ok

    def _render(self, reasoning: str, answer: str) -> str:
        return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}\n{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


PROMPT_TEMPLATES: dict[str, PromptTemplate] = {}
DEFAULT_TEMPLATE = "boxed"


def register_template(template: PromptTemplate) -> PromptTemplate:
    """Add ``template`` to :data:`PROMPT_TEMPLATES` under ``template.name`` (names are unique)."""
    if not template.name:
        raise ValueError("a prompt template needs a non-empty name")
    if template.name in PROMPT_TEMPLATES:
        raise ValueError(f"prompt template {template.name!r} is already registered")
    PROMPT_TEMPLATES[template.name] = template
    return template


for _t in (BoxedTemplate(), ThinkBoxedTemplate(), AnswerTagsTemplate()):
    register_template(_t)


def get_template(name: str | PromptTemplate = DEFAULT_TEMPLATE) -> PromptTemplate:
    """The template called ``name`` (a template object is returned unchanged)."""
    if isinstance(name, PromptTemplate):
        return name
    try:
        return PROMPT_TEMPLATES[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(PROMPT_TEMPLATES))
        raise ValueError(f"unknown prompt template {name!r}; valid names: {valid}") from None

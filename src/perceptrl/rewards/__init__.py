"""Rewards: prompt templates, answer verifiers and the RLVR reward function.

- :mod:`.templates`: ``PROMPT_TEMPLATES``, ``get_template(name)``; ``boxed`` (default),
  ``think_boxed``, ``answer_tags``.
- :mod:`.verifiers`: ``verify(pred, gold, answer_type)`` for ``integer``, ``number``, ``choice``,
  ``yesno``, ``word``, ``math``; math-verify runs in time-bounded worker processes.
- :mod:`.reward`: ``RewardFunction`` (``reward = 0.9 * accuracy + 0.1 * format``).
"""

from .reward import RewardFunction
from .templates import (
    DEFAULT_TEMPLATE,
    PROMPT_TEMPLATES,
    AnswerTagsTemplate,
    BoxedTemplate,
    PromptTemplate,
    ThinkBoxedTemplate,
    answer_regions,
    extract_boxed,
    get_template,
    register_template,
    scan_boxed,
)
from .verifiers import (
    ANSWER_TYPES,
    MathVerifyPool,
    configure_math,
    math_pool,
    normalize_word,
    parse_choice,
    parse_number,
    verify,
)

__all__ = [
    "RewardFunction",
    "DEFAULT_TEMPLATE",
    "PROMPT_TEMPLATES",
    "PromptTemplate",
    "BoxedTemplate",
    "ThinkBoxedTemplate",
    "AnswerTagsTemplate",
    "answer_regions",
    "extract_boxed",
    "get_template",
    "register_template",
    "scan_boxed",
    "ANSWER_TYPES",
    "MathVerifyPool",
    "configure_math",
    "math_pool",
    "normalize_word",
    "parse_choice",
    "parse_number",
    "verify",
]

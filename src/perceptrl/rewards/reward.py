"""The RLVR reward: ``r = accuracy_weight * accuracy + format_weight * format``.

``ALGORITHMS.md`` section 1 (PAPO, DUPL and NoisyRollout recipes): ``r = 0.9 * accuracy + 0.1 *
format``; accuracy is 1 when the verifier accepts the template's extracted final answer, format is 1
when the completion has the template's required structure. An empty or ambiguous answer is wrong.

Example::

    reward_fn = RewardFunction(template="boxed")
    scores = reward_fn(completions, samples)  # one Sample per completion (repeat it G times)
    scores["reward"], scores["accuracy"], scores["format"]  # lists of floats, same order
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from perceptrl.data.types import Sample

from .templates import DEFAULT_TEMPLATE, PromptTemplate, get_template
from .verifiers import configure_math, math_pool, verify

__all__ = ["RewardFunction"]


class RewardFunction:
    """Score completions against their samples' gold answers.

    Args:
        template: prompt template name (or object) whose ``extract`` and ``format_ok`` are used.
        accuracy_weight: weight of the 0/1 accuracy term.
        format_weight: weight of the 0/1 format term.
        num_threads: verify with this many threads (and as many math-verify worker processes);
            0 or 1 verifies in the calling thread. Results do not depend on it: each distinct
            (answer, gold, answer type) is verified once per call and results keep their order.
        start_math: start the math-verify worker processes now, in the background (about 0.7 s
            of start-up, 60 MB each), so that the first ``math`` answer does not wait for them.

    Calling the object returns ``{"reward": [...], "accuracy": [...], "format": [...]}``.
    """

    def __init__(
        self,
        template: str | PromptTemplate = DEFAULT_TEMPLATE,
        accuracy_weight: float = 0.9,
        format_weight: float = 0.1,
        num_threads: int = 0,
        start_math: bool = True,
    ) -> None:
        self.template = get_template(template)
        self.accuracy_weight = float(accuracy_weight)
        self.format_weight = float(format_weight)
        self.num_threads = int(num_threads)
        if self.num_threads > 1:
            math_pool().grow(self.num_threads)
        if start_math:
            configure_math(start=True)

    def __repr__(self) -> str:
        return (
            f"RewardFunction(template={self.template.name!r}, accuracy_weight="
            f"{self.accuracy_weight}, format_weight={self.format_weight})"
        )

    def __call__(self, completions: Sequence[str], samples: Sequence[Sample]) -> dict[str, list[float]]:
        if len(completions) != len(samples):
            raise ValueError(
                f"got {len(completions)} completions but {len(samples)} samples; pass one sample "
                "per completion (repeat each prompt's sample for its G completions)"
            )
        parsed = [self.template.analyse(c) for c in completions]
        answers = [a for a, _ in parsed]
        fmt = [1.0 if ok else 0.0 for _, ok in parsed]
        keys = [(a, s.answer, s.answer_type) for a, s in zip(answers, samples)]
        unique = list(dict.fromkeys(keys))
        if self.num_threads > 1 and len(unique) > 1:
            with ThreadPoolExecutor(self.num_threads, thread_name_prefix="perceptrl-reward") as pool:
                results = list(pool.map(lambda k: verify(*k), unique))
        else:
            results = [verify(*k) for k in unique]
        correct = dict(zip(unique, results))
        acc = [1.0 if correct[k] else 0.0 for k in keys]
        reward = [self.accuracy_weight * a + self.format_weight * f for a, f in zip(acc, fmt)]
        return {"reward": reward, "accuracy": acc, "format": fmt}

    def score(self, completion: str, sample: Sample) -> dict[str, float]:
        """Scores of a single completion (same keys as :meth:`__call__`, floats)."""
        out = self([completion], [sample])
        return {k: v[0] for k, v in out.items()}

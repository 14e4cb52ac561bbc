"""Where prompts come from: the built-in synthetic suite or local dataset files.

:func:`limit_prompt_length` applies ``data.max_prompt_length`` (prompt tokens as the model sees
them: chat template and image tokens included) to either source.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from perceptrl.data.types import Sample

logger = logging.getLogger(__name__)


class PromptSource(Protocol):
    def train_sample(self, index: int) -> Sample: ...

    def val_samples(self) -> list[Sample]: ...


class SyntheticSource:
    """The built-in suite: unlimited seeded training prompts, a fixed held-out set."""

    def __init__(self, families: list[str], difficulty: int, image_size: int, seed: int, val_per_family: int,
                 label_noise: float = 0.0, val_split: str = "test"):
        from perceptrl.data.synthetic import SyntheticTask

        self.task = SyntheticTask(families=families, difficulty=difficulty, image_size=image_size, seed=seed,
                                  label_noise=label_noise)
        self.val_per_family = val_per_family
        self.val_split = val_split

    def train_sample(self, index: int) -> Sample:
        return self.task.train_sample(index)

    def val_samples(self) -> list[Sample]:
        return self.task.held_out_set(self.val_per_family, self.val_split)


def build_source(data_cfg, seed: int) -> PromptSource:
    if data_cfg.train_files:
        from perceptrl.data.files import FileSource

        return FileSource(data_cfg, seed)
    return SyntheticSource(data_cfg.families, data_cfg.difficulty, data_cfg.image_size, seed, data_cfg.val_per_family,
                           data_cfg.label_noise, data_cfg.val_split)


def _where(sample: Sample) -> tuple[str, int | None]:
    meta = sample.meta or {}
    if "file" in meta:
        return str(meta["file"]), meta.get("row")
    return f"synthetic prompt {sample.id}", None


class _CheckedSource:
    """A source whose every prompt is checked as it is drawn (unlimited sources: nothing to drop up front)."""

    def __init__(self, source: PromptSource, check: Callable[[Sample], bool]):
        self.source, self.check = source, check

    def train_sample(self, index: int) -> Sample:
        sample = self.source.train_sample(index)
        self.check(sample)
        return sample

    def val_samples(self) -> list[Sample]:
        samples = self.source.val_samples()
        for sample in samples:
            self.check(sample)
        return samples

    def __getattr__(self, name):
        return getattr(self.source, name)


def limit_prompt_length(source: PromptSource, length_of: Callable[[Sample], int], max_length: int | None,
                        drop: bool) -> PromptSource:
    """Apply ``data.max_prompt_length`` (``max_length``; None: no limit) to ``source``.

    ``length_of(sample)``: the prompt's tokens, chat template and image tokens included (the policy's
    ``prompt_length``). Data files (``FileSource``): every training and validation row is measured
    once, before training (as EasyR1's ``filter_overlong_prompts`` does); with ``drop`` the longer rows
    are dropped, counted and logged, otherwise the first one is an error naming its file and row. The
    synthetic suite's prompts are checked as they are drawn, and one over the limit is an error (its
    prompts all have about the same length: lower ``data.image_size`` or raise the limit).
    """
    if max_length is None:
        return source
    dropped_examples: list[str] = []

    def keep(sample: Sample, may_drop: bool = drop) -> bool:
        n = length_of(sample)
        if n <= max_length:
            return True
        file, row = _where(sample)
        from perceptrl.data.files import DataError

        where = DataError(file, row, None, "").location  # "<file>: record <row>", as every data error
        if may_drop:
            if len(dropped_examples) < 3:
                dropped_examples.append(f"{where} ({n} tokens)")
            return False
        hint = ("set data.filter_overlong_prompts=true to drop such rows" if row is not None
                else "lower data.image_size or raise data.max_prompt_length")
        raise DataError(file, row, "prompt", f"{n} tokens (chat template and image tokens included) exceed "
                        f"data.max_prompt_length = {max_length}; {hint}", "overlong_prompt")

    if hasattr(source, "keep_rows"):
        n_train, n_val = source.keep_rows(keep)
        if n_train or n_val:
            logger.warning("data.max_prompt_length = %d: dropped %d training and %d validation rows with longer "
                           "prompts (e.g. %s)", max_length, n_train, n_val, ", ".join(dropped_examples))
        source.prompts_dropped = (n_train, n_val)
        return source
    return _CheckedSource(source, lambda sample: keep(sample, may_drop=False))

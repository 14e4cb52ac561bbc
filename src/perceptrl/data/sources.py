"""Where prompts come from: the built-in synthetic suite or local dataset files."""

from __future__ import annotations

from typing import Protocol

from perceptrl.data.types import Sample


class PromptSource(Protocol):
    def train_sample(self, index: int) -> Sample: ...

    def val_samples(self) -> list[Sample]: ...


class SyntheticSource:
    """The built-in suite: unlimited seeded training prompts, a fixed held-out set."""

    def __init__(self, families: list[str], difficulty: int, image_size: int, seed: int, val_per_family: int,
                 label_noise: float = 0.0):
        from perceptrl.data.synthetic import SyntheticTask

        self.task = SyntheticTask(families=families, difficulty=difficulty, image_size=image_size, seed=seed,
                                  label_noise=label_noise)
        self.val_per_family = val_per_family

    def train_sample(self, index: int) -> Sample:
        return self.task.train_sample(index)

    def val_samples(self) -> list[Sample]:
        return self.task.test_set(self.val_per_family)


def build_source(data_cfg, seed: int) -> PromptSource:
    if data_cfg.train_files:
        from perceptrl.data.files import FileSource

        return FileSource(data_cfg, seed)
    return SyntheticSource(data_cfg.families, data_cfg.difficulty, data_cfg.image_size, seed, data_cfg.val_per_family,
                           data_cfg.label_noise)

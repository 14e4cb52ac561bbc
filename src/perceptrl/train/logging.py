"""Per-step metrics to JSONL, TensorBoard and Weights & Biases, plus a console progress bar.

``train.report_to`` picks the loggers: ``jsonl`` (``metrics.jsonl``, always written: perceptrl
reads it back on resume and in ``perceptrl compare``), ``tensorboard`` (``<output_dir>/tensorboard``)
and ``wandb`` (optional: ``pip install 'perceptrl[wandb]'``; project ``$WANDB_PROJECT`` or
``perceptrl``; ``WANDB_MODE=offline`` keeps it on disk under ``<output_dir>/wandb``). A resumed run
continues the same W&B run (its id is kept in ``<output_dir>/wandb/perceptrl-run-id``), with the
training step as the x axis, so the steps redone after a crash are plotted at their own step.
A logger that fails never stops training.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WANDB_ID_FILE = "perceptrl-run-id"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class MetricsLogger:
    """Appends one JSON object per step to ``metrics.jsonl``; mirrors scalars to the other loggers.

    ``report_to``: names from ``train.report_to`` (``None``: jsonl and tensorboard, ``tensorboard``
    decides). ``run_config``: the run's ``Config`` (W&B shows it with the run).
    """

    def __init__(self, output_dir: str | Path, tensorboard: bool = True, filename: str = "metrics.jsonl",
                 report_to: list[str] | None = None, run_config=None):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        reporters = set(report_to) if report_to is not None else ({"tensorboard"} if tensorboard else set())
        self._tb = self._open_tensorboard() if "tensorboard" in reporters else None
        self._wandb = self._open_wandb(run_config, filename) if "wandb" in reporters else None

    def _open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(str(self.output_dir / "tensorboard"))
        except ImportError:  # tensorboard is declared, but logging must never stop training
            return None

    def _open_wandb(self, run_config, filename: str):
        import os
        import secrets

        import wandb  # checked when the run starts (perceptrl.train.run_dir.check_train_options)

        folder = self.output_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)
        id_file.write_text(run_id)
        kind = "sft" if filename.startswith("sft") else getattr(run_config, "recipe", "run")
        try:
            run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "perceptrl"), dir=str(self.output_dir), id=run_id,
                resume="allow", name=f"{self.output_dir.name}-{kind}", job_type="sft" if kind == "sft" else "train",
                config=run_config.to_dict() if run_config is not None else None,
                settings=wandb.Settings(console="off", quiet=True),
            )
        except Exception as err:  # noqa: BLE001 - not logged in, no network in online mode, ...
            from perceptrl.config import ConfigError

            raise ConfigError(f"train.report_to: wandb could not start ({type(err).__name__}: {err}); run `wandb login`, "
                              "set WANDB_MODE=offline, or leave wandb out of train.report_to") from None
        run.define_metric("step")
        run.define_metric("*", step_metric="step")
        return run

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and _scalar(value):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            scalars = {k: v for k, v in row.items() if _scalar(v)}
            try:
                self._wandb.log(scalars)
            except Exception as err:  # noqa: BLE001 - a logger must never stop training
                log.warning("wandb: could not log step %d (%s); logging to wandb stops", step, err)
                self._wandb = None

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def progress(total: int, desc: str, enabled: bool = True, initial: int = 0):
    """A tqdm bar with ETA on stderr (silent when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

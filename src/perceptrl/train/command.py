"""The command line that started a run, for its ``run.json`` and model card.

The CLI records it in the environment (``PERCEPTRL_COMMAND``), so that worker processes a command
starts (``perceptrl compare --jobs N``) record the command the user typed. Kept free of heavy
imports: the CLI calls it before it parses anything.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

ENV = "PERCEPTRL_COMMAND"


def set_command(argv: list[str]):
    """Record ``perceptrl <argv>`` for this process and the workers it starts; returns a function that
    puts back what was there before (the CLI calls it when the command ends)."""
    before = os.environ.get(ENV)
    os.environ[ENV] = " ".join(shlex.quote(a) for a in ["perceptrl", *argv])

    def restore() -> None:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before

    return restore


def command_line() -> str:
    """The recorded command, or a note that the run was started from Python."""
    return os.environ.get(ENV) or f"{Path(sys.argv[0]).name} (Python API; the full config is in config.yaml)"

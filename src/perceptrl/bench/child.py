"""Benchmark cases in fresh processes, and the memory probes they read.

Every case runs in its own Python process (``python -m <module> CASE_JSON``, which prints
``RESULT <json>``), so that its peak memory is its own and no case warms caches for the next.
The probes read Linux's ``/proc/self``; ``reset_peak_rss`` says whether the peak could be reset.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict

RESULT_PREFIX = "RESULT "
MB = 2**20


def run_in_child(module: str, case, what: str, threads: int, env: dict | None = None,
                 timeout: float | None = None) -> dict:
    """Run ``module``'s ``child_main`` on the dataclass ``case`` in a fresh process; its result dict."""
    child_env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(threads),
                     MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore", **(env or {}))
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(asdict(case))],
                          capture_output=True, text=True, env=child_env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def child_main(run, case_type, argv: list[str] | None = None) -> int:
    """The child's side: build the case from its JSON argument, run it, print its result."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    out = run(case_type(**json.loads(argv[0])))
    print(RESULT_PREFIX + json.dumps(out), flush=True)
    return 0


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set size to its current size (Linux); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory since the last ``reset_peak_rss`` (else since the process started)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / MB

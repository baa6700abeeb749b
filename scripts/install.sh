#!/usr/bin/env bash
# Install sj_parallel for development into the active Python environment:
#   torch + torchvision, SpikingJelly (2.0.0 by default, or SJ_VERSION=0.0.0.0.14),
#   the package in editable mode with its dev, example and docs extras.
#
# SpikingJelly 2.0.0 hard-requires torchaudio, whose wheels pin one exact torch
# build; `import spikingjelly.datasets` only needs torchaudio to import, so we install
# it without its pin and keep the torch build below.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SJ_VERSION=${SJ_VERSION:-2.0.0}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
TORCHAUDIO_SPEC=${TORCHAUDIO_SPEC:-"torchaudio==2.11.0"}

pip_q() {
    # pip's local-index warnings are noise here; its exit status is kept.
    "$PY" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "^WARNING: Location" || true; }
    return "${PIPESTATUS[0]}"
}

# shellcheck disable=SC2086
pip_q $TORCH_SPEC
# shellcheck disable=SC2086
pip_q --no-deps $TORCHAUDIO_SPEC
pip_q -r scripts/requirements-spikingjelly.txt
pip_q --no-deps "spikingjelly==${SJ_VERSION}"
pip_q -e ".[dev,example,docs]"
# NVRTC 12 (for the sm_70/sm_80/sm_90 compile checks) must be intact next to torch's
# CUDA 13 wheels; reinstall it if a shared-namespace install dropped its library.
if ! "$PY" - <<'PYEOF'
import os, sys
import nvidia.cuda_nvrtc as m
lib = os.path.join(list(m.__path__)[0], "lib", "libnvrtc.so.12")
sys.exit(0 if os.path.exists(lib) else 1)
PYEOF
then
    pip_q --force-reinstall --no-deps nvidia-cuda-nvrtc-cu12
fi
"$PY" - <<'PYEOF'
import torch, spikingjelly, sj_parallel
from importlib.metadata import version
print("installed: torch", torch.__version__, "| spikingjelly", version("spikingjelly"),
      "| sj_parallel", sj_parallel.__version__)
PYEOF

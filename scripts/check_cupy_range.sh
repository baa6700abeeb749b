#!/usr/bin/env bash
# The oldest and the newest CuPy that setup.cfg allows, checked without a GPU: each is
# installed into a throwaway --target directory, put first on PYTHONPATH of the active
# (project) environment, and the CuPy API test plus the fake-GPU tests of the cupy
# backend (real launcher and op code, real RawModule/RawKernel, kernels in the CPU
# emulation) run against it.
#
#   bash scripts/check_cupy_range.sh            # 13.0.0 and 14.2.0 (about 3 min)
#   CUPY_VERSIONS="13.6.0" bash scripts/check_cupy_range.sh
#
# CuPy 13.0-13.2 are built against NumPy 1.x, so NumPy 1.26 goes with them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
VERSIONS=${CUPY_VERSIONS:-"13.0.0 14.2.0"}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sjp-cupy-range.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
for v in $VERSIONS; do
    extra=()
    case "$v" in 13.[012].*) extra=("numpy==1.26.4") ;; esac
    echo "== cupy-cuda12x $v"
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$TMP/$v" "cupy-cuda12x==$v" fastrlock "${extra[@]}" 2>&1 \
        | { grep -v "^WARNING: Location" || true; }
    PYTHONPATH="$TMP/$v:$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q \
        -p no:cacheprovider tests/test_cuda_cupy_api.py tests/test_cuda_emulation_ops.py
done

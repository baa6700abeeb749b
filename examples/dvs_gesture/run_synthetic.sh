#!/usr/bin/env bash
# The "main job": train a small PSN DVSGestureNet on the built-in SYNTHETIC gestures
# on the CPU (a couple of minutes on 2 cores) and print the test accuracy.
# Extra arguments are passed on, e.g. `--neuron mpe-psn` or `--data-dir /data/DVS128Gesture`.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python examples/dvs_gesture/train.py \
    --device cpu -T 8 --img-size 32 --channels 32 --hidden 256 \
    --epochs 20 -b 8 --lr 5e-3 --neuron psn \
    --out-dir runs/dvs_gesture_synthetic --overwrite "$@"

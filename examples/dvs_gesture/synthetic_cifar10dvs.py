"""Synthetic CIFAR10-DVS in the real raw layout, for SpikingJelly's ``CIFAR10DVS``.

The generator writes what the figshare download holds::

    <root>/download/<class>.zip       # <class>/cifar10_<class>_<i>.aedat (AEDAT 2.0)
    <root>/synthetic.json             # what was generated, with the MD5s

for the ten classes, so SpikingJelly's own loader checks, extracts, parses the
recordings and integrates frames. The one adaptation, for the synthetic root only:
:func:`loader_class` lists the synthetic zips' MD5s instead of the official ones.
Sample ``i < test_per_class`` of each class is in the test split (as samples 0-99
are in the real data's split).

Each class is an outline (a plane-like cross, a box, a V, a triangle, antlers, a
ring, a filled disc, a diagonal, a hull with a mast, two boxes) that moves along a
small square path, as the monitor images of the real recordings do, firing events
at its edges, with per-sample jitter of position, size and timing and 15% uniform
noise events. As a command::

    python examples/dvs_gesture/synthetic_cifar10dvs.py OUT_DIR --train 6 --test 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import zipfile
from pathlib import Path

import cifar10dvs
import numpy as np
import synthetic

FORMAT_VERSION = 1
SIZE = 128
# outlines as line segments (x0, y0, x1, y1) in [-1, 1]; None: a filled disc
_TEMPLATES = {
    "airplane": [(-1, 0, 1, 0), (-0.2, -0.6, -0.2, 0.6), (0.8, -0.3, 0.8, 0.3)],
    "automobile": [(-1, -0.5, 1, -0.5), (1, -0.5, 1, 0.5), (1, 0.5, -1, 0.5),
                   (-1, 0.5, -1, -0.5)],
    "bird": [(-1, -0.6, 0, 0.4), (0, 0.4, 1, -0.6)],
    "cat": [(-0.9, 0.8, 0.9, 0.8), (0.9, 0.8, 0, -0.8), (0, -0.8, -0.9, 0.8)],
    "deer": [(-0.5, 1, -0.5, -1), (0.5, 1, 0.5, -1), (-0.5, -0.3, -1, -0.9),
             (0.5, -0.3, 1, -0.9)],
    "dog": "ring",
    "frog": None,
    "horse": [(-1, 1, 1, -1)],
    "ship": [(-1, 0.5, 1, 0.5), (-0.6, 0.9, 0.6, 0.9), (0, 0.5, 0, -0.9)],
    "truck": [(-1, -0.2, 0.2, -0.2), (0.2, -0.2, 0.2, 0.6), (0.2, 0.6, -1, 0.6),
              (-1, 0.6, -1, -0.2), (0.4, 0.1, 1, 0.1), (1, 0.1, 1, 0.6)],
}  # fmt: skip


def _outline(name: str, n: int, rng: np.random.Generator):
    """``n`` points on the class outline and their unit normals."""
    tpl = _TEMPLATES[name]
    if tpl is None or tpl == "ring":
        a = rng.uniform(0, 2 * np.pi, n)
        r = np.sqrt(rng.uniform(0, 1, n)) if tpl is None else np.ones(n)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1), np.stack(
            [np.cos(a), np.sin(a)], 1
        )
    seg = np.array(tpl, dtype=float)
    length = np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1])
    k = rng.choice(len(seg), n, p=length / length.sum())
    u = rng.uniform(0, 1, n)[:, None]
    pts = seg[k, :2] + u * (seg[k, 2:] - seg[k, :2])
    d = (seg[k, 2:] - seg[k, :2]) / length[k, None]
    normal = np.stack([-d[:, 1], d[:, 0]], 1) * rng.choice([-1, 1], n)[:, None]
    return pts, normal


def sample_events(name: str, n_events: int, noise: float, rng) -> np.ndarray:
    """Events (t, x, y, p) of one sample of class ``name``, sorted by time (µs)."""
    n_noise = int(n_events * noise)
    n_sig = n_events - n_noise
    duration = int(rng.uniform(1.1e6, 1.3e6))
    t = np.sort(rng.integers(0, duration, n_sig))
    pts, normal = _outline(name, n_sig, rng)
    scale = rng.uniform(25, 35)
    cx, cy = rng.uniform(54, 74, 2)
    # a square path of four moves, one per quarter of the recording
    amp = rng.uniform(4, 8)
    corners = np.array([(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)], dtype=float) * amp
    phase = t / duration * 4
    q = np.minimum(phase.astype(int), 3)
    frac = (phase - q)[:, None]
    pos = corners[q] + frac * (corners[q + 1] - corners[q])
    vel = corners[q + 1] - corners[q]
    x = cx + scale * pts[:, 0] + pos[:, 0] + rng.normal(0, 0.6, n_sig)
    y = cy + scale * pts[:, 1] + pos[:, 1] + rng.normal(0, 0.6, n_sig)
    p = ((normal * vel).sum(1) > 0).astype(np.int64)
    ev = np.stack(
        [
            np.concatenate([t, rng.integers(0, duration, n_noise)]),
            np.clip(
                np.concatenate([x, rng.integers(0, SIZE, n_noise)]).round(), 0, 127
            ),
            np.clip(
                np.concatenate([y, rng.integers(0, SIZE, n_noise)]).round(), 0, 127
            ),
            np.concatenate([p, rng.integers(0, 2, n_noise)]),
        ],
        1,
    ).astype(np.int64)
    return ev[np.argsort(ev[:, 0], kind="stable")]


def write_aedat2(path: Path, events: np.ndarray) -> None:
    """Write events (t, x, y, p), as SpikingJelly will read them, as AEDAT 2.0.

    SpikingJelly maps a recording's address bits to ``x = 127 - y_raw``,
    ``y = 127 - x_raw``, ``p = 1 - p_raw``; this writes the inverse.
    """
    t, x, y, p = (events[:, i] for i in range(4))
    x_raw, y_raw, p_raw = 127 - y, 127 - x, 1 - p
    data = np.empty((len(events), 2), dtype=">u4")
    data[:, 0] = (y_raw << 8) | (x_raw << 1) | p_raw
    data[:, 1] = t
    with open(path, "wb") as f:
        f.write(b"#!AER-DAT2.0\r\n")
        f.write(b"# This is a raw AE data file - do not edit\r\n")
        f.write(b"# Data format is int32 address, int32 timestamp (8 bytes total)\r\n")
        f.write(b"# SYNTHETIC CIFAR10-DVS stand-in written by sj_parallel\r\n")
        f.write(data.tobytes())


def generate(
    root,
    train_per_class: int = 6,
    test_per_class: int = 2,
    events_per_sample: int = 1500,
    noise: float = 0.15,
    seed: int = 0,
) -> Path:
    """Write a synthetic CIFAR10-DVS root (built aside, then renamed)."""
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError("need at least one train and one test sample per class")
    with synthetic.building(root, events_per_sample) as work:
        rng = np.random.default_rng(seed)
        download = work / "download"
        download.mkdir()
        src = work / "src"
        for name in cifar10dvs.CLASS_NAMES:
            (src / name).mkdir(parents=True)
            for i in range(train_per_class + test_per_class):
                ev = sample_events(name, events_per_sample, noise, rng)
                write_aedat2(src / name / f"cifar10_{name}_{i}.aedat", ev)
            with zipfile.ZipFile(download / f"{name}.zip", "w") as z:
                for f in sorted((src / name).iterdir()):
                    z.write(f, f"{name}/{f.name}")
        shutil.rmtree(src)
        manifest = {
            "format_version": FORMAT_VERSION,
            "synthetic": True,
            "train_per_class": train_per_class,
            "test_per_class": test_per_class,
            "events_per_sample": events_per_sample,
            "noise": noise,
            "seed": seed,
            "samples": {
                "train": 10 * train_per_class,
                "test": 10 * test_per_class,
            },
            "resources": [
                [f"{n}.zip", "synthetic", synthetic._md5(download / f"{n}.zip")]
                for n in cifar10dvs.CLASS_NAMES
            ],
        }
        (work / "synthetic.json").write_text(json.dumps(manifest, indent=2))
    return Path(root)


def loader_class(root):
    """SpikingJelly's ``CIFAR10DVS`` (see :func:`cifar10dvs.loader_class`) with the
    synthetic files' MD5s: the only change, and only for synthetic roots."""
    base = cifar10dvs.loader_class()
    resources = [tuple(r) for r in synthetic.read_manifest(root)["resources"]]

    class SyntheticCIFAR10DVS(base):
        resource_url_md5 = staticmethod(lambda: list(resources))

    return SyntheticCIFAR10DVS


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", help="root folder to create (must not exist or be empty)")
    p.add_argument("--train", type=int, default=6, help="training samples per class")
    p.add_argument("--test", type=int, default=2, help="test samples per class")
    p.add_argument("--events-per-sample", type=int, default=1500)
    p.add_argument("--noise", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    root = generate(a.out_dir, a.train, a.test, a.events_per_sample, a.noise, a.seed)
    print(
        f"SYNTHETIC CIFAR10-DVS written to {root}: {10 * a.train} train / "
        f"{10 * a.test} test samples, 10 classes"
    )


if __name__ == "__main__":
    main()

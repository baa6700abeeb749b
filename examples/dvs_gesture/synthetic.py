"""Synthetic DVS128 Gesture data in the real raw layout, for SpikingJelly's loader.

The generator writes what IBM's download contains::

    <root>/download/DvsGesture.tar.gz        # DvsGesture/trials_to_{train,test}.txt,
                                             # userXX_<lighting>.aedat (AEDAT 3.1),
                                             # userXX_<lighting>_labels.csv
    <root>/download/gesture_mapping.csv, LICENSE.txt, README.txt
    <root>/synthetic.json                    # what was generated, with the MD5s

so SpikingJelly's own ``DVS128Gesture`` extracts the archive, parses the AEDAT files,
splits them with the label CSVs and integrates frames. The one adaptation, for the
synthetic root only: SpikingJelly checks the official files' MD5s, so
:func:`loader_class` returns a ``DVS128Gesture`` subclass whose ``resource_url_md5``
lists the synthetic files' MD5s (read from ``synthetic.json``). Nothing else differs.

Each trial holds one sample of each of the 11 classes, a blob of events moving with a
class-specific motion (four directions, two rotations, two oscillations, a diagonal,
an expanding ring, a fast oscillation), per-sample jitter of position, size and speed,
and uniform noise events. As a command::

    python examples/dvs_gesture/synthetic.py OUT_DIR --train-trials 8 --test-trials 3
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import struct
import tarfile
import tempfile
from pathlib import Path
from typing import List, Tuple

import numpy as np

N_CLASSES = 11
SIZE = 128
LIGHTINGS = ("fluorescent", "led", "natural", "lab", "fluorescent_led")
CLASS_NAMES = (
    "move right",
    "move left",
    "move up",
    "move down",
    "rotate clockwise",
    "rotate counter-clockwise",
    "oscillate horizontally",
    "oscillate vertically",
    "move diagonally",
    "expanding ring",
    "fast horizontal oscillation",
)
FORMAT_VERSION = 1


def _trajectory(cls: int, u: np.ndarray, rng: np.random.Generator):
    """Blob centre, velocity direction and radius over normalised time ``u``."""
    cx, cy = rng.uniform(44, 84, size=2)
    span = rng.uniform(40, 60)
    r = np.full_like(u, rng.uniform(7, 12))
    w = 2 * np.pi
    if cls in (0, 1, 2, 3, 8):
        d = {0: (1, 0), 1: (-1, 0), 2: (0, -1), 3: (0, 1), 8: (0.7, 0.7)}[cls]
        x = cx + d[0] * span * (u - 0.5)
        y = cy + d[1] * span * (u - 0.5)
        vx, vy = np.full_like(u, d[0]), np.full_like(u, d[1])
    elif cls in (4, 5):
        sign = 1.0 if cls == 4 else -1.0
        a = sign * w * u * rng.uniform(0.9, 1.2)
        rad = span / 2.5
        x, y = cx + rad * np.cos(a), cy + rad * np.sin(a)
        vx, vy = -sign * np.sin(a), sign * np.cos(a)
    elif cls in (6, 7, 10):
        cycles = 5.0 if cls == 10 else 2.0
        s = np.sin(w * cycles * u)
        ds = np.cos(w * cycles * u)
        amp = span / 2
        if cls == 7:
            x, y, vx, vy = np.full_like(u, cx), cy + amp * s, 0 * u, ds
        else:
            x, y, vx, vy = cx + amp * s, np.full_like(u, cy), ds, 0 * u
    else:  # expanding ring
        x, y = np.full_like(u, cx), np.full_like(u, cy)
        vx, vy = 0 * u, 0 * u
        r = 4 + 40 * u
    return x, y, vx, vy, r


def gesture_events(
    cls: int, t0: int, duration: int, n_events: int, noise: float, rng
) -> np.ndarray:
    """Events (t, x, y, p) of one gesture sample, sorted by time."""
    n_noise = int(n_events * noise)
    n_sig = n_events - n_noise
    t = np.sort(rng.integers(t0, t0 + duration, size=n_sig))
    u = (t - t0) / duration
    x, y, vx, vy, r = _trajectory(cls, u, rng)
    theta = rng.uniform(0, 2 * np.pi, size=n_sig)
    ex, ey = np.cos(theta), np.sin(theta)
    px = x + r * ex + rng.normal(0, 0.7, size=n_sig)
    py = y + r * ey + rng.normal(0, 0.7, size=n_sig)
    if cls == 9:
        p = np.ones(n_sig, dtype=np.int64)  # the ring's edge moves outwards
    else:
        p = (ex * vx + ey * vy > 0).astype(np.int64)  # ON at the leading edge
    tn = rng.integers(t0, t0 + duration, size=n_noise)
    xn = rng.integers(0, SIZE, size=n_noise)
    yn = rng.integers(0, SIZE, size=n_noise)
    pn = rng.integers(0, 2, size=n_noise)
    ev = np.stack(
        [
            np.concatenate([t, tn]),
            np.clip(np.concatenate([px, xn]).round(), 0, SIZE - 1),
            np.clip(np.concatenate([py, yn]).round(), 0, SIZE - 1),
            np.concatenate([p, pn]),
        ],
        1,
    ).astype(np.int64)
    return ev[np.argsort(ev[:, 0], kind="stable")]


def write_aedat31(path: Path, events: np.ndarray, packet: int = 4096) -> None:
    """Write polarity events (t, x, y, p) as an AEDAT 3.1 file."""
    with open(path, "wb") as f:
        for line in (
            b"#!AER-DAT3.1\r\n",
            b"#Format: RAW\r\n",
            b"#Source 1: DVS128 (sj_parallel synthetic)\r\n",
            b"#!END-HEADER\r\n",
        ):
            f.write(line)
        for i in range(0, len(events), packet):
            chunk = events[i : i + packet]
            n = len(chunk)
            # eventType 1 (polarity), source 1, eventSize 8, eventTSOffset 4,
            # eventTSOverflow 0, eventCapacity, eventNumber, eventValid
            f.write(struct.pack("<HHIIIIII", 1, 1, 8, 4, 0, n, n, n))
            data = np.empty((n, 2), dtype="<u4")
            data[:, 0] = (
                (chunk[:, 1] << 17) | (chunk[:, 2] << 2) | (chunk[:, 3] << 1) | 1
            )
            data[:, 1] = chunk[:, 0]
            f.write(data.tobytes())


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def building(root, events_per_sample: int):
    """Checks, then a temporary folder beside ``root`` to write the data set into;
    it becomes ``root`` when the block ends, and is removed if the block fails."""
    if events_per_sample < 64:
        raise ValueError("events_per_sample must be >= 64 (frames need >= T events)")
    root = Path(root)
    if (root / "synthetic.json").exists():
        raise FileExistsError(f"{root} already holds a synthetic dataset")
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
    os.chmod(work, 0o755)
    try:
        yield work
        if root.exists():
            if any(root.iterdir()):
                raise FileExistsError(f"{root} exists and is not empty")
            root.rmdir()
        os.replace(work, root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def generate(
    root: str | os.PathLike,
    train_trials: int = 8,
    test_trials: int = 3,
    events_per_sample: int = 2000,
    noise: float = 0.15,
    seed: int = 0,
) -> Path:
    """Write a synthetic DVS128 Gesture root (atomically: built aside, then renamed).

    Every trial contains one sample of each class, so every class has
    ``train_trials`` training and ``test_trials`` test samples.
    """
    if train_trials < 1 or test_trials < 1:
        raise ValueError("need at least one train and one test trial (every class)")
    with building(root, events_per_sample) as work:
        rng = np.random.default_rng(seed)
        src = work / "DvsGesture"
        src.mkdir()
        trials = {"train": [], "test": []}
        n = 0
        for split, count in (("train", train_trials), ("test", test_trials)):
            for i in range(count):
                n += 1
                name = f"user{n:02d}_{LIGHTINGS[i % len(LIGHTINGS)]}"
                order = rng.permutation(N_CLASSES)
                t = 1_000_000
                rows, chunks = [], []
                for cls in order:
                    dur = int(rng.uniform(0.8, 1.2) * 1_000_000)
                    ev = gesture_events(cls, t, dur, events_per_sample, noise, rng)
                    chunks.append(ev)
                    rows.append((cls + 1, t, t + dur))
                    t += dur + 200_000
                write_aedat31(src / f"{name}.aedat", np.concatenate(chunks))
                with open(src / f"{name}_labels.csv", "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["class", "startTime_usec", "endTime_usec"])
                    w.writerows(rows)
                trials[split].append(f"{name}.aedat")
        for split in ("train", "test"):
            (src / f"trials_to_{split}.txt").write_text("\n".join(trials[split]) + "\n")
        download = work / "download"
        download.mkdir()
        with tarfile.open(download / "DvsGesture.tar.gz", "w:gz") as tar:
            tar.add(src, arcname="DvsGesture")
        shutil.rmtree(src)
        mapping = io.StringIO()
        mapping.write("action,label\n")
        for i, name in enumerate(CLASS_NAMES):
            mapping.write(f"{name},{i + 1}\n")
        (download / "gesture_mapping.csv").write_text(mapping.getvalue())
        (download / "LICENSE.txt").write_text(
            "Synthetic data generated by sj_parallel.\n"
        )
        (download / "README.txt").write_text(
            "SYNTHETIC DVS128 Gesture stand-in written by sj_parallel's example; "
            "not the IBM dataset.\n"
        )
        files = (
            "DvsGesture.tar.gz",
            "gesture_mapping.csv",
            "LICENSE.txt",
            "README.txt",
        )
        manifest = {
            "format_version": FORMAT_VERSION,
            "synthetic": True,
            "train_trials": train_trials,
            "test_trials": test_trials,
            "events_per_sample": events_per_sample,
            "noise": noise,
            "seed": seed,
            "classes": list(CLASS_NAMES),
            "samples": {
                "train": train_trials * N_CLASSES,
                "test": test_trials * N_CLASSES,
            },
            "resources": [[f, "synthetic", _md5(download / f)] for f in files],
        }
        (work / "synthetic.json").write_text(json.dumps(manifest, indent=2))
    return Path(root)


def read_manifest(root: str | os.PathLike) -> dict:
    with open(Path(root) / "synthetic.json") as f:
        return json.load(f)


def loader_class(root: str | os.PathLike):
    """SpikingJelly's ``DVS128Gesture`` with the synthetic files' MD5s.

    The only change from the real loader, and only for synthetic roots.
    """
    from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

    resources: List[Tuple[str, str, str]] = [
        tuple(r) for r in read_manifest(root)["resources"]
    ]

    class SyntheticDVS128Gesture(DVS128Gesture):
        resource_url_md5 = staticmethod(lambda: list(resources))

    return SyntheticDVS128Gesture


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", help="root folder to create (must not exist or be empty)")
    p.add_argument("--train-trials", type=int, default=8)
    p.add_argument("--test-trials", type=int, default=3)
    p.add_argument("--events-per-sample", type=int, default=2000)
    p.add_argument("--noise", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    root = generate(
        a.out_dir, a.train_trials, a.test_trials, a.events_per_sample, a.noise, a.seed
    )
    m = read_manifest(root)
    print(
        f"SYNTHETIC DVS128 Gesture written to {root}: {m['samples']['train']} train / "
        f"{m['samples']['test']} test samples, 11 classes"
    )


if __name__ == "__main__":
    main()

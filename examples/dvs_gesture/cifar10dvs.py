"""CIFAR10-DVS through SpikingJelly's ``CIFAR10DVS`` loader, with the papers' split.

CIFAR10-DVS has no official train/test split. The MPE-PSN and PSN papers (both
taking TEBN's code) use samples 0-99 of every class (``cifar10_<class>_<i>``,
``i < 100``) as the test set and 100-999 as the training set: TEBN's
``move_data.py``, and SpikingJelly 2.0's ``CIFAR10DVSTEBNSplit``. :class:`TEBNSplit`
selects exactly those files from SpikingJelly's ``CIFAR10DVS`` frames (any number of
samples per class; ``test_per_class`` is 100 for the real data), on every
SpikingJelly version, and ignores the ``train/``/``test/`` link folders that
``CIFAR10DVSTEBNSplit`` or ``move_data.py`` may have put into the frames folder.

SpikingJelly downloads CIFAR10-DVS itself (ten zips from figshare, MD5-checked) into
``root/download``, extracts them, converts the AEDAT 2.0 recordings to
``root/events_np/<class>/*.npz`` and integrates frames into
``root/frames_number_<T>_split_by_number``. One repair, for SpikingJelly 0.0.0.0.14
only: its AEDAT reader uses the binary mode of ``np.fromstring`` (removed in NumPy
2.x) and ``np.bool`` (absent from NumPy 1.24-1.26) inside a thread pool that hides
the error, leaving an empty ``events_np``. :func:`loader_class` then returns a
subclass whose conversion step reads the files with :func:`read_aedat`
(SpikingJelly's bit layout, NumPy's ``frombuffer``) and removes a half-written
``events_np`` on failure. SpikingJelly 2.0 has its own working reader and is used
unchanged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import torch

CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
TEST_PER_CLASS = 100  # TEBN's split: samples 0-99 of each class are the test set


def read_aedat(path) -> Dict[str, np.ndarray]:
    """Events ``t, x, y, p`` of a CIFAR10-DVS recording, as SpikingJelly reads them.

    AEDAT 2.0: ``#`` header lines, then big-endian ``uint32`` pairs (address,
    timestamp); address bits: ``x = (a & 0xFE) >> 1``, ``y = (a & 0x7F00) >> 8``,
    ``p = a & 1``; SpikingJelly returns ``x' = 127 - y``, ``y' = 127 - x``,
    ``p' = 1 - p``.
    """
    with open(path, "rb") as fp:
        start = 0
        line = fp.readline()
        text = line.decode().strip()
        while text and text[0] == "#":
            start += len(line)
            line = fp.readline()
            try:
                text = line.decode().strip()
            except UnicodeDecodeError:
                break
        fp.seek(start)
        data = np.frombuffer(fp.read(), dtype=">u4")
    if len(data) % 2:
        raise ValueError(f"{path}: odd number of 32-bit words after the header")
    addr, t = data[::2], data[1::2]
    x = (addr & 0xFE) >> 1
    y = (addr & 0x7F00) >> 8
    p = (addr & 1).astype(bool)
    return {"t": t, "x": 127 - y, "y": 127 - x, "p": 1 - p.astype(int)}


def _convert_all(extract_root, events_np_root) -> None:
    try:
        for cls in sorted(os.listdir(extract_root)):
            out = Path(events_np_root) / cls
            out.mkdir()
            for f in sorted(os.listdir(Path(extract_root) / cls)):
                ev = read_aedat(Path(extract_root) / cls / f)
                np.savez(out / (os.path.splitext(f)[0] + ".npz"), **ev)
    except BaseException:
        shutil.rmtree(events_np_root, ignore_errors=True)
        raise


def loader_class():
    """SpikingJelly's ``CIFAR10DVS``, repaired where its reader cannot work."""
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    if hasattr(CIFAR10DVS, "create_raw_from_extracted"):  # SpikingJelly 2.x
        return CIFAR10DVS

    class CIFAR10DVSNumPy2(CIFAR10DVS):
        """SpikingJelly 0.0.0.0.14's ``CIFAR10DVS`` with a NumPy-2-safe reader."""

        @staticmethod
        def create_events_np_files(extract_root: str, events_np_root: str):
            _convert_all(extract_root, events_np_root)

    return CIFAR10DVSNumPy2


def sample_index(path) -> int:
    """``i`` of ``.../cifar10_<class>_<i>.npz``."""
    return int(Path(path).stem.rsplit("_", 1)[1])


class TEBNSplit(torch.utils.data.Dataset):
    """The train or test part of a ``CIFAR10DVS`` dataset, split as the papers do.

    Test: the samples with index ``< test_per_class`` in every class; train: the
    rest. Labels follow :data:`CLASS_NAMES` (as SpikingJelly's folder order does).
    """

    def __init__(self, ds, train: bool, test_per_class: int = TEST_PER_CLASS):
        root = Path(ds.root)
        self.ds, self.items = ds, []
        for i, (path, _) in enumerate(ds.samples):
            rel = Path(path).relative_to(root)
            if len(rel.parts) != 2 or rel.parts[0] not in CLASS_NAMES:
                continue  # link folders train/ and test/ of CIFAR10DVSTEBNSplit
            if (sample_index(path) >= test_per_class) == train:
                self.items.append((i, CLASS_NAMES.index(rel.parts[0])))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j):
        i, y = self.items[j]
        return self.ds[i][0], y

    def names(self):
        return [Path(self.ds.samples[i][0]).stem for i, _ in self.items]

"""CIFAR10-DVS in the DVS example: synthetic recordings through SpikingJelly's own
``CIFAR10DVS`` loader, the papers' (TEBN's) split, and short trainings of the papers'
networks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "dvs_gesture"))

import cifar10dvs  # noqa: E402
import synthetic_cifar10dvs as syn  # noqa: E402
import train  # noqa: E402

TINY = [
    "--dataset", "cifar10dvs", "-T", "4", "--img-size", "16", "--channels", "4",
    "--hidden", "32", "-b", "8", "--no-progress", "--synthetic-train", "2",
    "--synthetic-test", "1", "--synthetic-events", "200", "--epochs", "1",
]  # fmt: skip
KW = dict(data_type="frame", frames_number=4, split_by="number")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return syn.generate(tmp_path_factory.mktemp("c10") / "syn", 3, 2, 150, seed=1)


@pytest.fixture(scope="module")
def dataset(root):
    return syn.loader_class(root)(str(root), **KW)


def test_synthetic_parses_with_spikingjelly(root, dataset):
    assert len(dataset) == 50
    for name in cifar10dvs.CLASS_NAMES:
        assert len(list((root / "events_np" / name).glob("*.npz"))) == 5
        assert (root / "extract" / name / f"cifar10_{name}_0.aedat").exists()
    x, _ = dataset[0]
    assert tuple(x.shape) == (4, 2, 128, 128) and x.sum() == 150


def test_the_papers_split(dataset):
    train_set = cifar10dvs.TEBNSplit(dataset, True, test_per_class=2)
    test_set = cifar10dvs.TEBNSplit(dataset, False, test_per_class=2)
    assert (len(train_set), len(test_set)) == (30, 20)
    for part, idx in ((test_set, {0, 1}), (train_set, {2, 3, 4})):
        names = part.names()
        assert {int(n.rsplit("_", 1)[1]) for n in names} == idx
        for (_, y), n in zip(part.items, names):
            assert n.split("_")[1] == cifar10dvs.CLASS_NAMES[y]
    assert sorted({y for _, y in test_set.items}) == list(range(10))
    x, y = test_set[3]
    assert x.shape[0] == 4 and 0 <= y < 10


def test_split_ignores_link_folders(root, dataset):
    """CIFAR10DVSTEBNSplit (SpikingJelly 2.0) and TEBN's move_data.py add train/ and
    test/ folders of links into the frames folder; the split must not change."""
    before = cifar10dvs.TEBNSplit(dataset, False, 2)
    frames = root / "frames_number_4_split_by_number"
    for part, idx in (("test", range(2)), ("train", range(2, 5))):
        for name in cifar10dvs.CLASS_NAMES:
            (frames / part / name).mkdir(parents=True)
            for i in idx:
                f = f"cifar10_{name}_{i}.npz"
                os.symlink(frames / name / f, frames / part / name / f)
    try:
        again = syn.loader_class(root)(str(root), **KW)
        assert len(again) == 100  # the folder loader now sees the links as well
        after = cifar10dvs.TEBNSplit(again, False, 2)
        assert after.names() == before.names()
        assert [y for _, y in after.items] == [y for _, y in before.items]
    finally:
        import shutil

        shutil.rmtree(frames / "test")
        shutil.rmtree(frames / "train")


def test_reader_equals_spikingjelly(tmp_path):
    rng = np.random.default_rng(0)
    ev = syn.sample_events("truck", 3000, 0.2, rng)
    f = tmp_path / "cifar10_truck_0.aedat"
    syn.write_aedat2(f, ev)
    got = cifar10dvs.read_aedat(f)
    for i, k in enumerate("txyp"):
        assert np.array_equal(got[k], ev[:, i]), k
    from spikingjelly.datasets import cifar10_dvs

    sj_read = getattr(cifar10_dvs, "_load_origin_data", None)  # SpikingJelly 2.x
    if sj_read is None:  # 0.0.0.0.14: works only where NumPy still has its API
        try:
            ref = cifar10_dvs.CIFAR10DVS.load_origin_data(str(f))
        except (AttributeError, ValueError) as e:
            assert cifar10dvs.loader_class() is not cifar10_dvs.CIFAR10DVS
            pytest.skip(f"SpikingJelly's own reader fails with this NumPy: {e}")
    else:
        ref = sj_read(f)
        assert cifar10dvs.loader_class() is cifar10_dvs.CIFAR10DVS
    for k in "txyp":
        assert np.array_equal(np.asarray(ref[k]).astype(np.int64), got[k]), k


@pytest.mark.parametrize(
    "extra",
    [
        # the PSN paper's network: sliding PSN (k=2, exponential init)
        ["--arch", "vggsnn", "--neuron", "sliding-psn", "--k", "2", "--resize",
         "bilinear-noaa"],
        # the MPE-PSN paper's: MPE-PSN, paper wiring, mixup, membrane loss
        ["--arch", "vggsnn", "--neuron", "mpe-psn", "--mixup", "--mem-loss-weight",
         "0.01", "--test-drop-last", "--mixup-labels", "soft"],
        # any network on any data set
        ["--neuron", "lif", "--augment", "--dropout-mode", "step"],
    ],
    ids=["psn-paper", "mpe-paper", "sj-lif"],
)  # fmt: skip
def test_training_on_synthetic_cifar10dvs(extra, tmp_path_factory, tmp_path):
    cache = tmp_path_factory.getbasetemp() / "c10_cache"
    out = tmp_path / "run"
    args = [*TINY, *extra, "--cache-dir", cache, "--out-dir", out]
    assert train.main([str(a) for a in args]) == 0
    (r,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert 0 <= r["test_acc"] <= 1
    if "mpe-psn" in extra:
        assert r["mem_loss_weight"] == 0.01 and "test_acc_sampled" in r
        assert r["test_samples"] == 8  # --test-drop-last: 10 in batches of 8
    else:
        assert r["test_samples"] == 10


def test_empty_events_folder_is_reported(tmp_path):
    root = tmp_path / "c10"
    (root / "events_np" / "airplane").mkdir(parents=True)
    with pytest.raises(train.DataError, match="holds no .npz files"):
        train._check_root(root, 4, "cifar10dvs")

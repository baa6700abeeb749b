"""The DVS128-Gesture example: synthetic data through SpikingJelly's loader, training
with every neuron, kill-and-resume, torchrun, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dvs_gesture"
sys.path.insert(0, str(EXAMPLE))

import synthetic  # noqa: E402
import train  # noqa: E402

TINY = [
    "-T", "4", "--img-size", "16", "--channels", "4", "--hidden", "32",
    "-b", "8", "--no-progress", "--synthetic-train-trials", "2",
    "--synthetic-test-trials", "1", "--synthetic-events", "300",
]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dvs_cache")


def _run(args, cwd=None, env=None, expect_ok=True):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE / "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _metrics(out: Path):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def test_synthetic_parses_with_spikingjelly(tmp_path):
    root = synthetic.generate(tmp_path / "syn", 2, 1, events_per_sample=200, seed=1)
    cls = synthetic.loader_class(root)
    tr = cls(
        str(root), train=True, data_type="frame", frames_number=8, split_by="number"
    )
    te = cls(
        str(root), train=False, data_type="frame", frames_number=8, split_by="number"
    )
    assert len(tr) == 22 and len(te) == 11
    assert sorted({int(y) for _, y in tr.samples}) == list(range(11))
    assert sorted({int(y) for _, y in te.samples}) == list(range(11))
    x, y = tr[0]
    assert tuple(x.shape) == (8, 2, 128, 128) and x.sum() > 0
    # the raw layout is the real one: events_np holds the split samples
    assert len(list((root / "events_np" / "train").glob("*/*.npz"))) == 22
    ev = synthetic.gesture_events(4, 0, 10**6, 500, 0.1, np.random.default_rng(0))
    assert len(ev) == 500 and (ev[:, 1] < 128).all() and (ev[:, 2] < 128).all()


def test_aedat_round_trip(tmp_path):
    import numpy as np
    from spikingjelly.datasets import utils as sj_utils

    load = getattr(sj_utils, "load_aedat_v3", None)
    if load is None:
        from spikingjelly import datasets as sjds

        load = sjds.load_aedat_v3
    rng = np.random.default_rng(0)
    ev = synthetic.gesture_events(0, 5, 10**5, 5000, 0.2, rng)
    synthetic.write_aedat31(tmp_path / "a.aedat", ev, packet=1000)
    got = load(str(tmp_path / "a.aedat"))
    for i, k in enumerate("txyp"):
        assert np.array_equal(got[k], ev[:, i]), k


@pytest.mark.parametrize("neuron", train.NEURONS)
def test_each_neuron_trains(neuron, cache, tmp_path):
    out = tmp_path / "run"
    loss = "tet" if neuron == "mpe-psn" else "mse"
    args = ["--cache-dir", str(cache), "--out-dir", str(out), "--neuron", neuron]
    _run([*TINY, *args, "--epochs", "1", "--loss", loss])
    rows = _metrics(out)
    assert len(rows) == 1 and rows[0]["test_acc"] >= 0
    assert (out / "latest.pt").exists() and (out / "best.pt").exists()
    assert list((out / "tensorboard").iterdir())


def test_learns_well_above_chance(cache, tmp_path):
    out = tmp_path / "run"
    args = ["-T", "4", "--img-size", "16", "--channels", "16", "--hidden", "128",
            "-b", "8", "--no-progress", "--synthetic-train-trials", "4",
            "--synthetic-test-trials", "2", "--synthetic-events", "600",
            "--epochs", "12", "--lr", "5e-3", "--neuron", "psn"]  # fmt: skip
    _run([*args, "--cache-dir", str(cache), "--out-dir", str(out)])
    best = max(r["test_acc"] for r in _metrics(out))
    assert best >= 3 / 11, best  # chance is 1/11


def test_kill_and_resume_matches_uninterrupted(cache, tmp_path):
    common = [*TINY, "--cache-dir", str(cache), "--neuron", "mpe-psn", "--epochs", "3",
              "--augment", "--lr", "5e-3"]  # fmt: skip
    _run([*common, "--out-dir", str(tmp_path / "full")])
    _run([*common, "--out-dir", str(tmp_path / "cut"), "--stop-after-epochs", "1"])
    assert len(_metrics(tmp_path / "cut")) == 1
    proc = _run([*common, "--out-dir", str(tmp_path / "cut")], expect_ok=False)
    assert proc.returncode != 0 and "--resume" in proc.stderr + proc.stdout
    _run([*common, "--out-dir", str(tmp_path / "cut"), "--resume"])
    assert _metrics(tmp_path / "cut") == _metrics(tmp_path / "full")


def test_torchrun_two_processes(cache, tmp_path):
    out = tmp_path / "ddp"
    # make sure the synthetic data exists so both ranks only read it
    _run([*TINY, "--cache-dir", str(cache), "--out-dir", str(tmp_path / "warm"),
          "--epochs", "1"])  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         "--nproc_per_node", "2", str(EXAMPLE / "train.py"), *TINY,
         "--cache-dir", str(cache), "--out-dir", str(out), "--epochs", "2",
         "--device", "cpu"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(_metrics(out)) == 2  # one set of logs, written by rank 0 only
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "latest.pt"]
    assert proc.stdout.count("test accuracy:") == 1


def test_bad_paths_and_arguments(cache, tmp_path):
    out = ["--out-dir", str(tmp_path / "a")]
    p = _run([*TINY, "--data-dir", str(tmp_path / "nope"), *out], expect_ok=False)
    assert p.returncode != 0 and "does not exist" in p.stderr
    (tmp_path / "empty").mkdir()
    p = _run([*TINY, "--data-dir", str(tmp_path / "empty"), *out], expect_ok=False)
    assert "is not a DVS128 Gesture root" in p.stderr and "download" in p.stderr
    root = synthetic.generate(tmp_path / "few", 1, 1, events_per_sample=64, seed=3)
    cls = synthetic.loader_class(root)
    cls(str(root), train=True, data_type="event")  # convert to events_np
    ev = next((root / "events_np").glob("*/*/*.npz"))
    import numpy as np

    with np.load(ev) as z:
        n = len(z["t"])
    a = train.parse_args([*TINY, "-T", str(n + 1)])
    with pytest.raises(train.DataError, match=r"fewer than T=\d+ frames"):
        train._check_root(root, a.T)
    (root / "frames_number_4_split_by_number.building").touch()
    with pytest.raises(train.DataError, match=r"\.building marks an unfinished"):
        train._check_root(root, 4)
    p = _run([*TINY, "--img-size", "24"], expect_ok=False)
    assert "power of two" in p.stderr
    p = _run([*TINY, "--neuron", "masked-psn", "--k", "9"], expect_ok=False)
    assert "--k must be in [1, T=4]" in p.stderr

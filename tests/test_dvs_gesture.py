"""The DVS example: synthetic gestures through SpikingJelly's loader, every network
and neuron, the papers' options (mixup, dropout per step, membrane-loss epochs, MPE
evaluation), kill-and-resume, torchrun, and clear errors.

Training runs call ``train.main`` in-process on tiny networks (4 channels, 16x16,
T=4); only the torchrun test starts processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dvs_gesture"
sys.path.insert(0, str(EXAMPLE))

import synthetic  # noqa: E402
import train  # noqa: E402
from _common.mixup import AuthorsMixup  # noqa: E402

import sj_parallel as sjp  # noqa: E402

TINY = [
    "-T", "4", "--img-size", "16", "--channels", "4", "--hidden", "32",
    "-b", "8", "--no-progress", "--synthetic-train", "2",
    "--synthetic-test", "1", "--synthetic-events", "300",
]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dvs_cache")


def _train(*args):
    assert train.main([str(a) for a in args]) == 0


def _metrics(out: Path):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def _usage_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        train.parse_args([str(a) for a in args])
    assert e.value.code == 2
    return capsys.readouterr().err


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
    _train(*TINY, "--cache-dir", cache, "--out-dir", out, "--neuron", neuron,
           "--epochs", "1")  # fmt: skip
    rows = _metrics(out)
    assert len(rows) == 1 and 0 <= rows[0]["test_acc"] <= 1
    assert (out / "latest.pt").exists() and (out / "best.pt").exists()
    assert list((out / "tensorboard").iterdir())


def test_authors_network_with_their_options(cache, tmp_path):
    """mpe-dvsgesture + MPE-PSN in the authors' wiring, mixup, dropout per step,
    the membrane loss for the first epoch only; both test accuracies reported."""
    out = tmp_path / "run"
    _train(*TINY, "--cache-dir", cache, "--out-dir", out, "--arch", "mpe-dvsgesture",
           "--neuron", "mpe-psn", "--mpe-estimate-from", "current", "--mixup",
           "--mixup-last-epoch", "0", "--mem-loss-epochs", "1", "--epochs", "2",
           "--augment", "--opt", "sgd", "--lr", "0.05", "--weight-decay", "5e-4",
           "--drop-last")  # fmt: skip
    r0, r1 = _metrics(out)
    assert (r0["mixup"], r1["mixup"]) == (True, False)
    assert (r0["mem_loss_weight"], r1["mem_loss_weight"]) == (0.001, 0.0)
    for r in (r0, r1):  # the deterministic estimate is the default
        assert r["test_acc"] == r["test_acc_deterministic"]
        assert 0 <= r["test_acc_sampled"] <= 1
    args = json.loads((out / "args.json").read_text())
    assert (args["loss"], args["dropout_mode"], args["resize"]) == (
        "tet",
        "step",
        "bilinear",
    )


def test_mpe_sample_in_eval_selects_the_sampled_accuracy(cache, tmp_path):
    out = tmp_path / "run"
    _train(*TINY, "--cache-dir", cache, "--out-dir", out, "--arch", "mpe-dvsgesture",
           "--neuron", "mpe-psn", "--mpe-sample-in-eval", "--mpe-loss-weights",
           "softmax", "--loss", "ce", "--epochs", "1")  # fmt: skip
    (r,) = _metrics(out)
    assert r["test_acc"] == r["test_acc_sampled"]
    assert r["test_loss"] == r["test_loss_sampled"]
    ck = torch.load(out / "latest.pt", weights_only=False)
    keys = list(ck["model"])
    assert any(k.endswith("kappa_logit") for k in keys)
    assert not any(k.endswith("coef") for k in keys)


def test_networks_match_the_papers_code():
    """Parameter counts of the full-size networks equal those of the authors'."""
    a = train.parse_args(["--arch", "mpe-dvsgesture", "--img-size", "64",
                          "--neuron", "mpe-psn", "--mpe-estimate-from", "current",
                          "-T", "16"])  # fmt: skip
    net = train.build_net(a, 11)
    C, T = 256, 16
    # their DVSGestureNet(channels=256) with MPE_PSN_(T=16): 5 x [conv (no bias),
    # BN, neuron (threshold + T-1 coef)], Linear(4C, 1024), neuron, Linear(1024, 110)
    mpe = 1 + (T - 1)
    want = 2 * C * 9 + 4 * C * C * 9 + 5 * (2 * C + mpe)
    want += 4 * C * 1024 + 1024 + mpe + 1024 * 110 + 110
    assert sum(p.numel() for p in net.parameters()) == want
    assert len([m for m in net.modules() if isinstance(m, sjp.MPEPSN)]) == 6
    a = train.parse_args(["--arch", "vggsnn", "--dataset", "cifar10dvs",
                          "--img-size", "48", "--neuron", "mpe-psn",
                          "-T", "10"])  # fmt: skip
    net = train.build_net(a, 10)
    # their VGGMPE(T=10): 8 x [conv (bias), BN, MPE_PSN (threshold + T coef)],
    # Linear(512 * 3 * 3, 10)
    widths, c_in, want = (64, 128, 256, 256, 512, 512, 512, 512), 2, 0
    for w in widths:
        want += w * c_in * 9 + w + 2 * w + 1 + 10
        c_in = w
    want += 512 * 9 * 10 + 10
    assert sum(p.numel() for p in net.parameters()) == want
    a = train.parse_args(["--arch", "vggsnn", "--img-size", "48", "--neuron",
                          "sliding-psn", "--k", "2"])  # fmt: skip
    net = train.build_net(a, 10)
    sliding = [m for m in net.modules() if isinstance(m, sjp.SlidingPSN)]
    assert len(sliding) == 8  # PSN paper's VGGPSN: exp-init weights (1/2, 1)
    assert torch.equal(sliding[0].weight.detach(), torch.tensor([0.5, 1.0]))


def test_dropout_modes():
    x = torch.ones(6, 2, 50)
    for mode, shared in (("step", False), ("shared", True)):
        a = train.parse_args([*TINY, "--dropout-mode", mode])
        d = train._dropout(a, 0.5)
        train.finish(torch.nn.Sequential(d), a).train()
        y = d(x)
        assert torch.equal(y[0], y[1]) == shared  # same mask at t=0 and t=1
        assert not torch.equal(y[0, 0], y[0, 1])  # samples get their own masks
    assert train.parse_args(TINY).dropout_mode == "shared"
    assert train.parse_args([*TINY, "--arch", "vggsnn"]).dropout_mode == "step"


def test_resize_as_torchvision():
    """--resize bilinear(-noaa) equals torchvision's Resize on each sample's frames,
    as in the papers' transforms (with and without antialiasing)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    frames = torch.rand(2, 3, 2, 32, 32) * 4  # a batch [N, T, C, H, W]
    for mode, aa in (("bilinear", True), ("bilinear-noaa", False)):
        a = train.parse_args([*TINY, "--arch", "mpe-dvsgesture", "--resize", mode])
        want = [TF.resize(f, [16, 16], InterpolationMode.BILINEAR, antialias=aa)
                for f in frames]  # fmt: skip
        assert torch.equal(train.prepare(frames, a), torch.stack(want, 1))
    a = train.parse_args(TINY)  # SpikingJelly's network: sum pooling by default
    assert a.resize == "area"
    torch.testing.assert_close(train.prepare(frames, a).sum(), frames.sum())


def test_authors_mixup():
    """Batch mixup as timm's Mixup(mode='batch') in the authors' code, labels by
    argmax of the mixed target (hard), or the mixed smoothed target (soft)."""
    y = torch.tensor([0, 3, 3, 7, 1, 2])
    x = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)  # [T, N, F]
    seen = set()
    for seed in range(40):
        ref = np.random.default_rng(seed)
        mixed = ref.random() < 0.5
        lam = float(ref.beta(0.5, 0.5)) if mixed else 1.0
        m = AuthorsMixup(11, np.random.default_rng(seed))
        xm, t = m(x, y)
        want = x * lam + x.flip(1) * (1 - lam) if lam != 1 else x
        torch.testing.assert_close(xm, want)
        assert torch.equal(t, torch.where(torch.tensor(lam > 0.5), y, y.flip(0)))
        soft = AuthorsMixup(11, np.random.default_rng(seed), labels="soft")(x, y)[1]
        torch.testing.assert_close(soft.sum(1), torch.ones(6))
        assert torch.equal(soft.argmax(1), t)
        seen.add(mixed)
    assert seen == {True, False}


def test_losses_fit_the_output_layer(capsys):
    assert train.parse_args(TINY).loss == "mse"
    assert train.parse_args([*TINY, "--arch", "mpe-dvsgesture"]).loss == "tet"
    assert train.parse_args([*TINY, "--arch", "vggsnn", "--loss", "ce"]).loss == "ce"
    err = _usage_error(capsys, *TINY, "--loss", "tet")
    assert "--loss tet does not fit --arch sj-dvsgesture" in err and "mse" in err
    err = _usage_error(capsys, *TINY, "--arch", "vggsnn", "--loss", "mse")
    assert "real-valued logits" in err and "--loss tet or ce" in err
    err = _usage_error(capsys, *TINY, "--arch", "vggsnn", "--img-size", "24")
    assert "multiple of 16" in err


def test_learns_well_above_chance(cache, tmp_path):
    out = tmp_path / "run"
    _train("-T", "4", "--img-size", "16", "--channels", "16", "--hidden", "128",
           "-b", "8", "--no-progress", "--synthetic-train", "4",
           "--synthetic-test", "2", "--synthetic-events", "600",
           "--epochs", "12", "--lr", "5e-3", "--neuron", "psn",
           "--cache-dir", cache, "--out-dir", out)  # fmt: skip
    best = max(r["test_acc"] for r in _metrics(out))
    assert best >= 3 / 11, best  # chance is 1/11


def test_kill_and_resume_matches_uninterrupted(cache, tmp_path):
    """Resume is exact with augmentation, mixup, dropout per step and MPE-PSN
    sampling: every metric equals the uninterrupted run's."""
    common = [*TINY, "--cache-dir", cache, "--arch", "mpe-dvsgesture", "--neuron",
              "mpe-psn", "--epochs", "3", "--augment", "--mixup", "--mixup-prob",
              "1", "--lr", "5e-3", "--mem-loss-epochs", "2"]  # fmt: skip
    _train(*common, "--out-dir", tmp_path / "full")
    _train(*common, "--out-dir", tmp_path / "cut", "--stop-after-epochs", "1")
    assert len(_metrics(tmp_path / "cut")) == 1
    with pytest.raises(SystemExit, match="--resume"):
        _train(*common, "--out-dir", tmp_path / "cut")
    _train(*common, "--out-dir", tmp_path / "cut", "--resume")
    full = _metrics(tmp_path / "full")
    assert _metrics(tmp_path / "cut") == full
    _train(*common, "--out-dir", tmp_path / "plain", "--mixup-prob", "0")
    assert _metrics(tmp_path / "plain")[0]["train_loss"] != full[0]["train_loss"]


def _evaluate_alone(out: Path):
    """Test metrics of ``out/latest.pt`` evaluated in this one process."""
    from _common import engine

    ck = torch.load(out / "latest.pt", weights_only=False)
    a = train.parse_args([])
    vars(a).update(ck["args"])
    _, test_set, classes = train.build_datasets(a, lambda *_: None)
    net = train.build_net(a, classes)
    net.load_state_dict(ck["model"])
    loader = torch.utils.data.DataLoader(test_set, batch_size=a.batch_size)
    return engine.evaluate(
        net, net, loader, a, ck["epoch"], train.make_step(a, None, None)
    )


def test_torchrun_two_processes(cache, tmp_path):
    """Two gloo processes: one set of logs, and every one of the 11 test samples
    evaluated exactly once (DistributedSampler padded them to 12, counting one
    twice); the accuracy equals one process's evaluation of the checkpoint."""
    out = tmp_path / "ddp"
    # make sure the synthetic data exists so both ranks only read it
    _train(*TINY, "--cache-dir", cache, "--out-dir", tmp_path / "warm", "--epochs", 1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         "--nproc_per_node", "2", str(EXAMPLE / "train.py"), *TINY,
         "--cache-dir", str(cache), "--out-dir", str(out), "--epochs", "2",
         "--device", "cpu", "--neuron", "mpe-psn"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _metrics(out)
    assert len(rows) == 2  # one set of logs, written by rank 0 only
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "latest.pt"]
    assert proc.stdout.count("test accuracy:") == 1
    assert [r["test_samples"] for r in rows] == [11, 11]
    alone = _evaluate_alone(out)
    assert alone["test_samples"] == 11
    for key in ("test_acc_deterministic", "test_acc_sampled"):
        assert rows[-1][key] == alone[key], (key, rows[-1], alone)
    assert rows[-1]["test_loss"] == pytest.approx(alone["test_loss"], rel=1e-5)


def test_shards_hold_every_test_sample_once():
    from _common import engine

    for n in range(0, 40):
        for world in range(1, 6):
            shards = [list(engine.shard_indices(n, r, world)) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(n))
            sampler = engine.ShardSampler(n, world - 1, world)
            assert list(sampler) == shards[-1] and len(sampler) == len(shards[-1])


def _hide(monkeypatch, *modules):
    """Make ``import module`` fail as if the package were not installed."""
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in modules):
            monkeypatch.delitem(sys.modules, name)
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def test_runs_without_tensorboard_and_tqdm(cache, tmp_path, monkeypatch, capsys):
    """`pip install .` without the example extra: a note at the start names the
    extra, the run writes metrics.jsonl and checkpoints (it used to crash on
    `import tensorboard` after building the dataset)."""
    _hide(monkeypatch, "tensorboard", "torch.utils.tensorboard", "tqdm")
    out = tmp_path / "run"
    args = [a for a in TINY if a != "--no-progress"]
    _train(*args, "--cache-dir", cache, "--out-dir", out, "--epochs", 1)
    text = capsys.readouterr().out
    first = text.index("note: TensorBoard logs off")
    assert first < text.index("data:")  # before any work
    assert 'pip install ".[example]"' in text and "note: the progress bar off" in text
    assert len(_metrics(out)) == 1 and (out / "latest.pt").exists()
    assert not (out / "tensorboard").exists()


def test_missing_dataset_packages_fail_before_any_work(tmp_path, monkeypatch):
    _hide(monkeypatch, "spikingjelly.datasets")
    with pytest.raises(SystemExit) as info:
        _train(*TINY, "--cache-dir", tmp_path / "c", "--out-dir", tmp_path / "o")
    msg = str(info.value)
    assert "spikingjelly.datasets" in msg and 'pip install ".[example]"' in msg
    assert not (tmp_path / "c").exists() and not (tmp_path / "o").exists()


def test_bad_paths_and_arguments(capsys, tmp_path):
    out = ["--out-dir", tmp_path / "a"]
    with pytest.raises(SystemExit, match="does not exist"):
        _train(*TINY, "--data-dir", tmp_path / "nope", *out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="is not a DVS128 Gesture root.*download"):
        _train(*TINY, "--data-dir", tmp_path / "empty", *out)
    root = synthetic.generate(tmp_path / "few", 1, 1, events_per_sample=64, seed=3)
    cls = synthetic.loader_class(root)
    cls(str(root), train=True, data_type="event")  # convert to events_np
    ev = next((root / "events_np").glob("*/*/*.npz"))
    with np.load(ev) as z:
        n = len(z["t"])
    with pytest.raises(train.DataError, match=r"fewer than T=\d+ frames"):
        train._check_root(root, n + 1)
    (root / "frames_number_4_split_by_number.building").touch()
    with pytest.raises(train.DataError, match=r"\.building marks an unfinished"):
        train._check_root(root, 4)
    assert "power of two" in _usage_error(capsys, *TINY, "--img-size", "24")
    err = _usage_error(capsys, *TINY, "--neuron", "masked-psn", "--k", "9")
    assert "--k must be in [1, T=4]" in err

"""The sequential CIFAR example (the PSN paper's): the network and its column-by-column
feeding, every neuron on FakeData, the paper's mixup/cutmix, exact resume."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import functional, neuron

import sj_parallel as sjp

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "sequential_cifar_train", ROOT / "examples" / "sequential_cifar" / "train.py"
)
seq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seq)
from _common.mixup import MixupCutmix  # noqa: E402  (on sys.path via the example)

NEURONS = ("lif", "psn", "masked-psn", "sliding-psn", "mpe-psn")
TINY = ["--img-size", "8", "--channels", "4", "--k", "4", "-b", "16",
        "--fake-train", "40", "--fake-test", "16", "--no-progress"]  # fmt: skip


def _train(*args):
    assert seq.main([str(a) for a in args]) == 0


def _metrics(out: Path):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


@pytest.mark.parametrize("neu", NEURONS)
def test_each_neuron_trains_on_fakedata(neu, tmp_path):
    out = tmp_path / "run"
    plain = ["--augment", "none", "--mix", "none"] if neu == "psn" else []
    _train(*TINY, *plain, "--neuron", neu, "--epochs", "1", "--out-dir", out)
    (r,) = _metrics(out)
    assert r["test_samples"] == 16 and 0 <= r["test_acc"] <= 1
    assert (out / "latest.pt").exists()


def test_the_papers_network():
    """Parameter count of the paper's CIFAR10Net(channels=128, T=32) with PSN."""
    a = seq.parse_args(["--neuron", "psn"])
    assert (a.T, a.channels, a.k, a.opt, a.lr, a.epochs, a.batch_size) == (
        32, 128, 32, "sgd", 0.1, 256, 128,
    )  # fmt: skip
    assert a.drop_last and a.weight_decay == 0 and not a.exp_init
    net = seq.SequentialCIFARNet(a, 10)
    C, T = 128, 32
    psn = T * T + T
    want = 3 * C * 3 + 5 * C * C * 3 + 6 * (2 * C + psn)
    want += 8 * C * 2 * C + 2 * C + psn + 2 * C * 10 + 10
    assert sum(p.numel() for p in net.parameters()) == want
    lif = seq.SequentialCIFARNet(seq.parse_args(["--neuron", "lif"]), 100)
    lifs = [m for m in lif.modules() if isinstance(m, neuron.LIFNode)]
    assert len(lifs) == 7 and all(m.v_reset is None and m.tau == 2.0 for m in lifs)


def test_columns_are_the_time_steps():
    """Column t of the image is step t: with a causal neuron, changing the last
    column changes only the last step's output."""
    a = seq.parse_args([*TINY, "--neuron", "sliding-psn", "--k", "2"])
    net = seq.finish(seq.SequentialCIFARNet(a, 10), a).eval()
    img = torch.randn(3, 3, 8, 8) * 3
    img2 = img.clone()
    img2[..., -1] += 5 * torch.randn(3, 3, 8)
    with torch.no_grad():
        out, out2 = net(img), net(img2)
        functional.reset_net(net)
        first = net.conv[:3]  # conv, BN, the first neuron layer
        conv = first(img.permute(3, 0, 1, 2))
        conv2 = first(img2.permute(3, 0, 1, 2))
    assert out.shape == (8, 3, 10) and conv.shape[0] == 8
    torch.testing.assert_close(out[:-1], out2[:-1], rtol=0, atol=0)
    torch.testing.assert_close(conv[:-1], conv2[:-1], rtol=0, atol=0)
    assert not torch.equal(conv[-1], conv2[-1])


def test_mixup_cutmix_as_the_paper():
    N, H, W = 6, 8, 8
    x = torch.arange(N, dtype=torch.float64).view(N, 1, 1, 1).expand(N, 3, H, W)
    y = torch.arange(N) % 4
    kinds = set()
    for seed in range(30):
        xm, t = MixupCutmix(4, np.random.default_rng(seed))(x, y)
        torch.testing.assert_close(t.sum(1), torch.ones(N, dtype=t.dtype))
        lam = t[torch.arange(N), y]  # own label's weight (labels differ from roll)
        src = x.roll(1, 0)
        if torch.allclose(
            xm, lam.view(N, 1, 1, 1) * x + (1 - lam.view(N, 1, 1, 1)) * src
        ):
            kinds.add("mixup")
            continue
        kinds.add("cutmix")  # a box pasted from the batch rolled by one
        pasted = (xm == src).double().mean((1, 2, 3))
        kept = (xm == x).double().mean((1, 2, 3))
        torch.testing.assert_close(kept + pasted, torch.ones(N, dtype=t.dtype))
        torch.testing.assert_close(pasted, 1 - lam)
    assert kinds == {"mixup", "cutmix"}


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    common = [*TINY, "--neuron", "masked-psn", "--epochs", "3", "--opt", "adamw",
              "--lr", "1e-3"]  # fmt: skip
    _train(*common, "--out-dir", tmp_path / "full")
    _train(*common, "--out-dir", tmp_path / "cut", "--stop-after-epochs", "1")
    _train(*common, "--out-dir", tmp_path / "cut", "--resume")
    assert _metrics(tmp_path / "cut") == _metrics(tmp_path / "full")
    ck = torch.load(tmp_path / "cut" / "latest.pt", weights_only=False)
    lam = [v for k, v in ck["model"].items() if k.endswith("_lambda_")]
    assert lam and all(float(v) == sjp.masked_psn_lambda(2, 3) for v in lam)
    # resuming with a generator the first run did not have is refused
    _train(
        *common, "--mix", "none", "--out-dir", tmp_path / "m", "--stop-after-epochs", 1
    )
    with pytest.raises(SystemExit, match="no state of the mix generator"):
        _train(*common, "--out-dir", tmp_path / "m", "--resume")


def test_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--download"):
        _train("--data-dir", tmp_path, "--out-dir", tmp_path / "o", "--no-progress")
    with pytest.raises(SystemExit):
        seq.parse_args(["--data-dir", str(tmp_path), "--img-size", "16"])
    assert "applies to FakeData only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        seq.parse_args(["--img-size", "8", "--neuron", "masked-psn"])  # k=32 > T
    assert "--k must be in [1, T=8]" in capsys.readouterr().err

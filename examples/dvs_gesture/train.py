"""Train spiking networks on DVS128 Gesture or CIFAR10-DVS with any neuron.

Networks (``--arch``), each with any ``--neuron`` (SpikingJelly's LIF, sj_parallel's
PSN, masked PSN, sliding PSN, MPE-PSN):

- ``sj-dvsgesture``: SpikingJelly's DVSGestureNet (``classify_dvsg.py``): conv
  blocks down to 4x4, two dropout+linear layers, an output neuron layer and a voting
  layer: firing rates, trained with the firing-rate MSE.
- ``mpe-dvsgesture``: the MPE-PSN authors' DVSGestureNet: conv blocks down to 2x2,
  Dropout -> Linear(4C, 1024) -> neuron -> Dropout -> Linear(1024, 10 x classes) ->
  average of each 10: real-valued logits, trained with TET.
- ``vggsnn``: the CIFAR10-DVS VGG of both papers (TEBN's VGGSNN): eight conv+BN+neuron
  layers (64-128-pool-256-256-pool-512-512-pool-512-512-pool) on 48x48 frames,
  Dropout(0.25), Linear: logits, trained with TET.

Data come from SpikingJelly's own loaders as frames (``frames_number=T,
split_by='number'``): ``DVS128Gesture`` (official split) or ``CIFAR10DVS`` (the papers'
split: samples 0-99 of each class for testing). Without ``--data-dir`` the program
runs on a built-in SYNTHETIC stand-in in the real raw format (generated once under
``--cache-dir``), so it runs anywhere with no download.

Single process::

    python examples/dvs_gesture/train.py --neuron psn -T 16 --epochs 64

Several processes (DistributedDataParallel; gloo on CPU, nccl on GPU)::

    torchrun --nproc_per_node 2 examples/dvs_gesture/train.py --neuron psn ...

The published settings, with commands, are in docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import layer

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
import cifar10dvs  # noqa: E402
import synthetic  # noqa: E402
import synthetic_cifar10dvs  # noqa: E402
from _common import engine  # noqa: E402
from _common.losses import LOSSES, check_loss, hard, task_loss  # noqa: E402
from _common.mixup import AuthorsMixup  # noqa: E402
from _common.neurons import (  # noqa: E402
    NEURONS,
    add_neuron_args,
    check_neuron_args,
    finish,
    make_neuron,
)

DATASETS = ("dvs128-gesture", "cifar10dvs")
CLASSES = {"dvs128-gesture": 11, "cifar10dvs": 10}
#: per network: output layer, default channels / hidden units / dropout / resize
ARCHS = {
    "sj-dvsgesture": dict(
        head="spiking", channels=128, hidden=512, dropout="shared", resize="area"
    ),
    "mpe-dvsgesture": dict(
        head="logits", channels=256, hidden=1024, dropout="step", resize="bilinear"
    ),
    "vggsnn": dict(
        head="logits", channels=64, hidden=None, dropout="step", resize="bilinear"
    ),
}
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
__all__ = ["NEURONS", "ARCHS", "DATASETS", "main", "parse_args"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=DATASETS, default="dvs128-gesture")
    d.add_argument("--data-dir", help="a real dataset root; default: synthetic")
    d.add_argument(
        "--cache-dir",
        default=None,
        help="where the synthetic dataset is generated (once); default "
        "~/.cache/sj_parallel/{dvs_gesture,cifar10dvs}_synthetic",
    )
    d.add_argument(
        "--synthetic-train",
        "--synthetic-train-trials",
        type=int,
        default=8,
        help="synthetic gestures: training trials (11 samples each); synthetic "
        "CIFAR10-DVS: training samples per class",
    )
    d.add_argument("--synthetic-test", "--synthetic-test-trials", type=int, default=3)
    d.add_argument("--synthetic-events", type=int, default=2000)
    d.add_argument("-T", type=int, default=16, help="frames per sample (time steps)")
    d.add_argument("--img-size", type=int, default=None, help="input resize (pixels)")
    d.add_argument(
        "--resize",
        choices=("area", "bilinear", "bilinear-noaa"),
        default=None,
        help="area: sum pooling (keeps event counts); bilinear: torchvision's "
        "Resize on tensors (antialiased, torchvision >= 0.17); bilinear-noaa: the "
        "same without antialiasing (torchvision < 0.17); default: per --arch",
    )
    d.add_argument("--augment", action="store_true", help="random crop (pad 4) + flip")
    x = p.add_argument_group("mixup (the MPE-PSN authors')")
    x.add_argument("--mixup", action="store_true", help="batch mixup, see --mixup-*")
    x.add_argument("--mixup-alpha", type=float, default=0.5)
    x.add_argument("--mixup-prob", type=float, default=0.5, help="per batch")
    x.add_argument(
        "--mixup-last-epoch",
        type=int,
        default=140,
        help="mix while epoch <= this (the authors switch off for epoch > 140)",
    )
    x.add_argument(
        "--mixup-labels",
        choices=("hard", "soft"),
        default="hard",
        help="hard: the argmax of the mixed target (the authors); soft: the mixed, "
        "smoothed probabilities",
    )
    x.add_argument("--mixup-smoothing", type=float, default=0.1)
    m = p.add_argument_group("network")
    m.add_argument("--arch", choices=tuple(ARCHS), default="sj-dvsgesture")
    m.add_argument("--channels", type=int, default=None, help="default: per --arch")
    m.add_argument("--hidden", type=int, default=None, help="default: per --arch")
    m.add_argument(
        "--dropout-mode",
        choices=("step", "shared"),
        default=None,
        help="step: a new mask per time step (the papers' code); shared: one mask "
        "for all steps (SpikingJelly's layer.Dropout); default: per --arch",
    )
    add_neuron_args(p, k=2, exp_init=True)
    t = engine.add_training_args(p, epochs=64, batch_size=16, opt="adam", lr=1e-3)
    t.add_argument(
        "--loss",
        choices=LOSSES,
        default=None,
        help="mse: firing-rate MSE (spiking output layer); tet or ce: on logits; "
        "default: the one the network's output layer was made for",
    )
    t.add_argument("--tet-means", type=float, default=1.0)
    t.add_argument("--tet-lambda", type=float, default=1e-3)
    engine.add_output_args(p, out_dir="runs/dvs_gesture")
    a = p.parse_args(argv)
    arch = ARCHS[a.arch]
    for k in ("channels", "hidden", "resize"):
        if getattr(a, k) is None:
            setattr(a, k, arch[k])
    if a.dropout_mode is None:
        a.dropout_mode = arch["dropout"]
    if a.img_size is None:
        a.img_size = 128
    if a.cache_dir is None:
        name = {"dvs128-gesture": "dvs_gesture", "cifar10dvs": "cifar10dvs"}
        a.cache_dir = str(
            DEFAULT_CACHE / "sj_parallel" / f"{name[a.dataset]}_synthetic"
        )
    if a.T < 1:
        p.error("-T must be >= 1")
    engine.check_training_args(p, a)
    check_neuron_args(p, a)
    s = a.img_size
    if a.arch == "vggsnn":
        if s < 16 or s % 16:
            p.error(f"--img-size must be a multiple of 16 for vggsnn, got {s}")
    elif s < 4 or s & (s - 1):
        p.error(f"--img-size must be a power of two >= 4, got {s}")
    try:
        a.loss = check_loss(a.loss, arch["head"], a.arch)
    except ValueError as e:
        p.error(str(e))
    return a


# ----------------------------------------------------------------------- data
class DataError(RuntimeError):
    """A data folder problem the user must fix; the message says how."""


def _check_root(
    root: Path, T: int, dataset: str = "dvs128-gesture", count: bool = True
) -> None:
    """Clear errors for unusable roots; ``count``: check every sample has ``>= T``
    events (needed until the frames for this ``T`` are built)."""
    markers = sorted(root.glob("*.building"))
    if markers:
        raise DataError(
            f"{markers[0]} marks an unfinished SpikingJelly build in {root}. Remove "
            f"that marker and the half-built folder next to it, then run again."
        )
    events = root / "events_np"
    if dataset == "dvs128-gesture" and not (
        events.is_dir() or (root / "download").is_dir()
    ):
        raise DataError(
            f"{root} is not a DVS128 Gesture root: expected {root}/download/ holding "
            "DvsGesture.tar.gz, gesture_mapping.csv, LICENSE.txt and README.txt "
            "(downloaded manually from IBM), or an already converted "
            f"{root}/events_np/. See examples/dvs_gesture/README.md."
        )
    if events.is_dir() and count:
        files = sorted(events.rglob("*.npz"))
        if not files:
            raise DataError(
                f"{events} holds no .npz files (an interrupted conversion?): remove "
                "it and run again"
            )
        for f in files:
            with np.load(f) as z:
                n = len(z["t"])
            if n < T:
                raise DataError(
                    f"{f} has {n} events, fewer than T={T} frames need with "
                    "split_by='number'; use a smaller -T"
                )


def _synthetic_root(a: argparse.Namespace, log):
    if a.dataset == "dvs128-gesture":
        mod, version = synthetic, synthetic.FORMAT_VERSION
        key = f"v{version}_tr{a.synthetic_train}_te{a.synthetic_test}"
    else:
        mod, version = synthetic_cifar10dvs, synthetic_cifar10dvs.FORMAT_VERSION
        key = f"c10dvs_v{version}_tr{a.synthetic_train}_te{a.synthetic_test}"
    root = Path(a.cache_dir) / f"{key}_ev{a.synthetic_events}"
    if not (root / "synthetic.json").exists():
        if engine.is_main():
            mod.generate(root, a.synthetic_train, a.synthetic_test, a.synthetic_events)
        engine.barrier()
    m = synthetic.read_manifest(root)
    log(
        f"data: SYNTHETIC {a.dataset} stand-in at {root} ({m['samples']['train']} "
        f"train / {m['samples']['test']} test samples); pass --data-dir for the "
        "real dataset"
    )
    return root, mod.loader_class(root), m


def build_datasets(a: argparse.Namespace, log):
    """(train set, test set, number of classes) from SpikingJelly's loader."""
    test_per_class = cifar10dvs.TEST_PER_CLASS
    if a.data_dir:
        root = Path(a.data_dir)
        if not root.is_dir():
            raise DataError(f"--data-dir {root} does not exist")
        if a.dataset == "dvs128-gesture":
            from spikingjelly.datasets.dvs128_gesture import DVS128Gesture as cls
        else:
            cls = cifar10dvs.loader_class()
            if not (root / "events_np").is_dir():
                log(
                    f"CIFAR10-DVS: SpikingJelly checks (and, where missing, downloads "
                    f"from figshare) the ten class zips in {root}/download"
                )
        log(f"data: {a.dataset} from {root}")
    else:
        root, cls, m = _synthetic_root(a, log)
        test_per_class = m.get("test_per_class", test_per_class)
    fresh = not (root / f"frames_number_{a.T}_split_by_number").is_dir()
    _check_root(root, a.T, a.dataset, count=fresh)
    kw = dict(data_type="frame", frames_number=a.T, split_by="number")

    def load():
        if a.dataset == "dvs128-gesture":
            return cls(str(root), train=True, **kw), cls(str(root), train=False, **kw)
        ds = cls(str(root), **kw)
        return (
            cifar10dvs.TEBNSplit(ds, True, test_per_class),
            cifar10dvs.TEBNSplit(ds, False, test_per_class),
        )

    if engine.is_main():  # one process converts, the others wait and then read
        train, test = load()
    engine.barrier()
    if not engine.is_main():
        train, test = load()
    _check_root(root, a.T, a.dataset, count=fresh)
    return train, test, CLASSES[a.dataset]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # x [T, N, C, H, W]: the same crop/flip for every step of a sample (as
    # torchvision's RandomCrop(size, padding=4) and RandomHorizontalFlip on a
    # sample's [T, C, H, W] frames)
    T, N, C, H, W = x.shape
    pad = F.pad(x.flatten(0, 1), (4, 4, 4, 4)).view(T, N, C, H + 8, W + 8)
    out = torch.empty_like(x)
    for n in range(N):
        i, j = torch.randint(0, 9, (2,), generator=gen).tolist()
        crop = pad[:, n, :, i : i + H, j : j + W]
        if torch.rand((), generator=gen) < 0.5:
            crop = crop.flip(-1)
        out[:, n] = crop
    return out


def prepare(frames, a, gen=None) -> torch.Tensor:
    x = torch.as_tensor(frames).float().transpose(0, 1)  # [N, T, ...] -> [T, N, ...]
    T, N = x.shape[:2]
    if a.img_size != x.shape[-1]:
        x = x.flatten(0, 1)
        if a.resize == "area":
            scale = (x.shape[-1] / a.img_size) ** 2  # sum pooling keeps event counts
            x = F.interpolate(x, size=a.img_size, mode="area") * scale
        else:  # torchvision's transforms.Resize on tensors
            x = F.interpolate(
                x,
                size=a.img_size,
                mode="bilinear",
                align_corners=False,
                antialias=a.resize == "bilinear",
            )
        x = x.view(T, N, *x.shape[1:])
    if gen is not None:
        x = _augment(x, gen)
    return x


# ---------------------------------------------------------------------- model
def _dropout(a: argparse.Namespace, p: float) -> nn.Module:
    # step: nn.Dropout on [T, N, F] draws a mask per (t, n), as the papers'
    # SeqToANNContainer(nn.Dropout); shared: SpikingJelly's multi-step Dropout
    # draws one mask per sample for all steps
    return nn.Dropout(p) if a.dropout_mode == "step" else layer.Dropout(p)


def _conv_pool_blocks(a: argparse.Namespace, blocks: int):
    mods, c_in = [], 2
    for _ in range(blocks):
        mods += [
            layer.Conv2d(c_in, a.channels, 3, padding=1, bias=False),
            layer.BatchNorm2d(a.channels),
            make_neuron(a),
            layer.MaxPool2d(2, 2),
        ]
        c_in = a.channels
    return nn.Sequential(*mods)


class SJDVSGestureNet(nn.Module):
    """SpikingJelly's DVSGestureNet, with as many conv blocks as reach 4x4."""

    def __init__(self, a: argparse.Namespace, classes: int):
        super().__init__()
        self.conv = _conv_pool_blocks(a, int(math.log2(a.img_size // 4)))
        self.fc = nn.Sequential(
            layer.Flatten(),
            _dropout(a, 0.5),
            layer.Linear(a.channels * 16, a.hidden),
            make_neuron(a),
            _dropout(a, 0.5),
            layer.Linear(a.hidden, classes * 10),
            make_neuron(a),
            layer.VotingLayer(10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))  # [T, N, classes] firing rates per step


class MPEDVSGestureNet(nn.Module):
    """The MPE-PSN authors' DVSGestureNet: conv blocks down to 2x2 (five at 64x64),
    then logits (no output neuron) averaged over groups of 10."""

    def __init__(self, a: argparse.Namespace, classes: int):
        super().__init__()
        self.conv = _conv_pool_blocks(a, int(math.log2(a.img_size // 2)))
        self.fc = nn.Sequential(
            layer.Flatten(),
            _dropout(a, 0.5),
            layer.Linear(a.channels * 4, a.hidden),
            make_neuron(a),
            _dropout(a, 0.5),
            layer.Linear(a.hidden, classes * 10),
            layer.VotingLayer(10),  # = their AvgPool1d(10, 10) on the logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))  # [T, N, classes] logits per step


class VGGSNN(nn.Module):
    """The CIFAR10-DVS VGG of the PSN and MPE-PSN papers' code (TEBN's VGGSNN
    without TEBN): widths C, 2C, 4C, 4C, 8C, 8C, 8C, 8C (C = 64), conv with bias +
    BN + neuron, 2x2 average pooling after every second layer, Dropout(0.25), one
    linear layer to the logits. Conv weights: kaiming-normal (fan_out, relu)."""

    def __init__(self, a: argparse.Namespace, classes: int):
        super().__init__()
        c = a.channels
        widths = (c, 2 * c, 4 * c, 4 * c, 8 * c, 8 * c, 8 * c, 8 * c)
        mods, c_in = [], 2
        for i, w in enumerate(widths):
            mods += [
                layer.Conv2d(c_in, w, 3, padding=1),
                layer.BatchNorm2d(w),
                make_neuron(a),
            ]
            if i % 2:
                mods.append(layer.AvgPool2d(2))
            c_in = w
        self.features = nn.Sequential(*mods)
        side = a.img_size // 16
        self.classifier = nn.Sequential(
            layer.Flatten(),
            _dropout(a, 0.25),
            layer.Linear(widths[-1] * side * side, classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # [T, N, classes] logits per step


NETS = {
    "sj-dvsgesture": SJDVSGestureNet,
    "mpe-dvsgesture": MPEDVSGestureNet,
    "vggsnn": VGGSNN,
}


def build_net(a: argparse.Namespace, classes: int) -> nn.Module:
    return finish(NETS[a.arch](a, classes), a)


# ------------------------------------------------------------------------ main
def make_step(a: argparse.Namespace, aug_gen, mixer):
    dev = torch.device(a.device)

    def step(model, batch, train: bool, epoch: int):
        frames, y = batch
        x = prepare(frames, a, aug_gen if train else None).to(dev)
        y = torch.as_tensor(y).to(dev)
        target = y
        if train and mixer is not None and epoch <= a.mixup_last_epoch:
            x, target = mixer(x, y)
        out = model(x).float()  # [T, N, classes]
        loss = task_loss(a.loss, out, target, a)
        correct = (out.mean(0).argmax(1) == hard(target)).sum().item()
        return loss, correct, len(y)

    return step


DATA_FIX = (
    '`pip install ".[example]"` (h5py) and `pip install -r '
    "scripts/requirements-spikingjelly.txt`, plus torchvision and (SpikingJelly "
    "2.0) torchaudio builds that match your torch; `bash scripts/install.sh` installs "
    "all of it in a fresh environment"
)


def main(argv=None) -> int:
    a = parse_args(argv)
    # before any data is generated or converted
    engine.require("spikingjelly.datasets", "SpikingJelly's dataset loaders", DATA_FIX)
    run = engine.start_run(a)
    try:
        train_set, test_set, classes = build_datasets(a, run.log)
    except DataError as e:
        raise SystemExit(f"data error: {e}") from None
    net = build_net(a, classes)
    rngs = {}
    if a.augment:
        rngs["augment"] = torch.Generator().manual_seed(a.seed + 1)
    mixer = None
    if a.mixup:
        rngs["mixup"] = np.random.default_rng(a.seed + 2)
        mixer = AuthorsMixup(
            classes,
            rngs["mixup"],
            alpha=a.mixup_alpha,
            prob=a.mixup_prob,
            smoothing=a.mixup_smoothing,
            labels=a.mixup_labels,
        )
    describe = (
        f"{a.arch} on {a.dataset}, neuron={a.neuron}, backend={a.backend}, T={a.T}, "
        f"{a.img_size}x{a.img_size}, loss={a.loss}"
    )
    engine.fit(
        a,
        run,
        net,
        train_set,
        test_set,
        make_step(a, rngs.get("augment"), mixer),
        rngs=rngs,
        epoch_info=lambda e: {"mixup": mixer is not None and e <= a.mixup_last_epoch},
        describe=describe,
    )
    engine.finish_run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

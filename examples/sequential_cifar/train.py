"""Sequential CIFAR10/100: the PSN paper's long-term-dependency experiment.

Fang et al. (NeurIPS 2023), ``sequential_cifar/train_secf10.py`` of
fangwei123456/Parallel-Spiking-Neuron: an image is fed column by column, so a
32x32 image is a sequence of T = 32 steps, each a [3, 32] column. The network
(``CIFAR10Net`` there) is two stages of three [Conv1d(k=3, no bias), BN, neuron]
layers, each stage followed by 1-d average pooling, then Flatten -> Linear(8C, 2C) ->
neuron -> Linear(2C, classes); the output is averaged over the T steps (real-valued
logits). Training as the paper's: cross-entropy with label smoothing 0.1, mixup
(alpha 0.2) or cutmix (alpha 1), one per batch, with soft labels; random flip,
TrivialAugmentWide, normalisation and random erasing (p 0.1); cosine schedule;
AMP; SGD lr 0.1 momentum 0.9 (AdamW lr 0.001 for sliding PSN), batch 128, 256
epochs, C = 128.

Neurons (``--neuron``): ``psn`` (the paper's "if5"), ``masked-psn`` (``--k 32``:
"if5pmd8", λ ramped over the first eighth of training), ``sliding-psn`` (``--k 32``:
"mspsn"), ``lif`` (SpikingJelly's LIFNode, tau 2, soft reset, detached reset),
``mpe-psn`` (not in the paper).

Data: ``--data-dir DIR`` reads CIFAR10/100 with torchvision (``--download`` fetches
it); without ``--data-dir`` the program runs on torchvision's ``FakeData`` (random
images, ``--fake-train``/``--fake-test`` samples), which checks the pipeline, not the
accuracy. Commands for the paper's numbers are in docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import layer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import engine  # noqa: E402
from _common.losses import hard, mean_ce  # noqa: E402
from _common.mixup import MixupCutmix  # noqa: E402
from _common.neurons import (  # noqa: E402
    add_neuron_args,
    check_neuron_args,
    finish,
    make_neuron,
)

# normalisation of the paper's code
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": (
        (0.5070751592371323, 0.48654887331495095, 0.4409178433670343),
        (0.2673342858792401, 0.2564384629170883, 0.27615047132568404),
    ),
}
CLASSES = {"cifar10": 10, "cifar100": 100}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=tuple(CLASSES), default="cifar10")
    d.add_argument("--data-dir", help="torchvision CIFAR root; default: FakeData")
    d.add_argument("--download", action="store_true", help="let torchvision fetch it")
    d.add_argument("--fake-train", type=int, default=256, help="FakeData samples")
    d.add_argument("--fake-test", type=int, default=64)
    d.add_argument(
        "--img-size",
        type=int,
        default=32,
        help="FakeData image side (= time steps T); CIFAR is 32",
    )
    d.add_argument(
        "--augment",
        choices=("paper", "none"),
        default="paper",
        help="paper: flip, TrivialAugmentWide, random erasing (p 0.1)",
    )
    d.add_argument(
        "--mix",
        choices=("paper", "none"),
        default="paper",
        help="paper: mixup (alpha 0.2) or cutmix (alpha 1) per batch, soft labels",
    )
    d.add_argument("--label-smoothing", type=float, default=0.1)
    m = p.add_argument_group("network")
    m.add_argument("--channels", type=int, default=128)
    add_neuron_args(p, k=32, exp_init=False)
    engine.add_training_args(p, epochs=256, batch_size=128, opt="sgd", lr=0.1)
    p.set_defaults(drop_last=True)  # the paper's training loader drops the last batch
    engine.add_output_args(p, out_dir="runs/sequential_cifar")
    a = p.parse_args(argv)
    if a.data_dir and a.img_size != 32:
        p.error("CIFAR images are 32x32: --img-size applies to FakeData only")
    if a.img_size < 4 or a.img_size % 4:
        p.error(f"--img-size must be a multiple of 4, got {a.img_size}")
    a.T = a.img_size  # one step per column
    engine.check_training_args(p, a)
    check_neuron_args(p, a)
    return a


def build_datasets(a: argparse.Namespace, log):
    import torchvision
    from torchvision import transforms as tr
    from torchvision.transforms import autoaugment

    mean, std = STATS[a.dataset]
    test_tf = tr.Compose([tr.ToTensor(), tr.Normalize(mean, std)])
    if a.augment == "paper":  # the paper's ClassificationPresetTrain
        train_tf = tr.Compose(
            [
                tr.RandomHorizontalFlip(0.5),
                autoaugment.TrivialAugmentWide(
                    interpolation=tr.InterpolationMode.BILINEAR
                ),
                tr.PILToTensor(),
                tr.ConvertImageDtype(torch.float),
                tr.Normalize(mean, std),
                tr.RandomErasing(p=0.1),
            ]
        )
    else:
        train_tf = test_tf
    if a.data_dir is None:
        classes = CLASSES[a.dataset]
        size = (3, a.img_size, a.img_size)
        fake = torchvision.datasets.FakeData
        log(
            f"data: FakeData stand-in ({a.fake_train} train / {a.fake_test} test "
            f"random {a.img_size}x{a.img_size} images, {classes} classes); pass "
            "--data-dir for CIFAR"
        )
        return (
            fake(a.fake_train, size, classes, train_tf, random_offset=0),
            fake(a.fake_test, size, classes, test_tf, random_offset=10**6),
        )
    cls = getattr(torchvision.datasets, a.dataset.upper())
    log(f"data: {a.dataset} from {a.data_dir}")
    try:
        if engine.is_main():  # one process downloads, the others wait
            cls(a.data_dir, train=True, download=a.download)
            cls(a.data_dir, train=False, download=a.download)
        engine.barrier()
        return (
            cls(a.data_dir, train=True, transform=train_tf),
            cls(a.data_dir, train=False, transform=test_tf),
        )
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted."
        raise SystemExit(
            f"data error: {e} ({a.data_dir}); pass --download to let torchvision "
            "fetch it"
        ) from None


class SequentialCIFARNet(nn.Module):
    """The PSN paper's ``CIFAR10Net``: columns of an image as time steps.

    Input ``[N, 3, H, W]``; the time steps are the W columns, each ``[3, H]``;
    output ``[W, N, classes]`` logits.
    """

    def __init__(self, a: argparse.Namespace, classes: int):
        super().__init__()
        c, mods, c_in = a.channels, [], 3
        for _ in range(2):
            for _ in range(3):
                mods += [
                    layer.Conv1d(c_in, c, kernel_size=3, padding=1, bias=False),
                    layer.BatchNorm1d(c),
                    make_neuron(a, lif_v_reset=None),
                ]
                c_in = c
            mods.append(layer.AvgPool1d(2))
        self.conv = nn.Sequential(*mods)
        features = c * (a.img_size // 4)
        self.fc = nn.Sequential(
            layer.Flatten(),
            layer.Linear(features, features // 4),
            make_neuron(a, lif_v_reset=None),
            layer.Linear(features // 4, classes),
        )

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = img.permute(3, 0, 1, 2)  # [N, C, H, W] -> [W, N, C, H]
        return self.fc(self.conv(x))


def make_step(a: argparse.Namespace, mixer):
    dev = torch.device(a.device)

    def step(model, batch, train: bool, epoch: int):
        img, y = (t.to(dev) for t in batch)
        target = y
        if train and mixer is not None:
            img, target = mixer(img, y)
        out = model(img).float()  # [T, N, classes]
        if train:
            loss = mean_ce(out, target, a.label_smoothing)
        else:
            loss = F.cross_entropy(out.mean(0), y)
        correct = (out.mean(0).argmax(1) == hard(target)).sum().item()
        return loss, correct, len(y)

    return step


def main(argv=None) -> int:
    a = parse_args(argv)
    engine.require(
        "torchvision",
        "The sequential CIFAR example (datasets and augmentation)",
        "install the torchvision build that matches your torch (`pip install "
        'torchvision`; `bash scripts/install.sh` pins both), and `pip install ".'
        '[example]"` for TensorBoard logs and the progress bar',
    )
    run = engine.start_run(a)
    train_set, test_set = build_datasets(a, run.log)
    classes = CLASSES[a.dataset]
    net = finish(SequentialCIFARNet(a, classes), a)
    rngs, mixer = {}, None
    if a.mix == "paper":
        rngs["mix"] = np.random.default_rng(a.seed + 2)
        mixer = MixupCutmix(classes, rngs["mix"])
    describe = (
        f"sequential {a.dataset}, neuron={a.neuron}, backend={a.backend}, "
        f"T={a.T}, C={a.channels}"
    )
    engine.fit(
        a, run, net, train_set, test_set, make_step(a, mixer), rngs=rngs,
        describe=describe,
    )  # fmt: skip
    engine.finish_run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

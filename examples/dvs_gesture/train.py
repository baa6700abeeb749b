"""Train a DVSGestureNet on DVS128 Gesture with SpikingJelly or sj_parallel neurons.

The network and training loop follow SpikingJelly's ``classify_dvsg.py``: frames from
SpikingJelly's own ``DVS128Gesture`` loader (``frames_number=T, split_by='number'``),
five-ish [Conv3x3, BN, neuron, MaxPool2] blocks, two dropout+linear layers, a voting
layer, ``functional.reset_net`` after every batch.

Without ``--data-dir`` it runs on built-in SYNTHETIC gestures (generated once under
``--cache-dir``), so it runs anywhere with no download. With ``--data-dir`` pointing at
a real DVS128 Gesture root (see README.md beside this file) it trains on the real data.

Single process::

    python examples/dvs_gesture/train.py --neuron psn -T 16 --epochs 64
Several processes (DistributedDataParallel; gloo on CPU, nccl on GPU)::

    torchrun --nproc_per_node 2 examples/dvs_gesture/train.py --neuron psn ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic  # noqa: E402

import sj_parallel as sjp  # noqa: E402

NEURONS = ("lif", "psn", "masked-psn", "sliding-psn", "mpe-psn")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = p.add_argument_group("data")
    d.add_argument("--data-dir", help="a real DVS128 Gesture root; default: synthetic")
    d.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE / "sj_parallel" / "dvs_gesture_synthetic"),
        help="where the synthetic dataset is generated (once)",
    )
    d.add_argument("--synthetic-train-trials", type=int, default=8)
    d.add_argument("--synthetic-test-trials", type=int, default=3)
    d.add_argument("--synthetic-events", type=int, default=2000)
    d.add_argument("-T", type=int, default=16, help="frames per sample (time steps)")
    d.add_argument("--img-size", type=int, default=128, help="input resize (pixels)")
    d.add_argument("--augment", action="store_true", help="random crop (pad 4) + flip")
    d.add_argument("--workers", type=int, default=0)
    m = p.add_argument_group("model")
    m.add_argument("--neuron", choices=NEURONS, default="psn")
    m.add_argument("--backend", choices=("torch", "cupy"), default="torch")
    m.add_argument("--channels", type=int, default=128)
    m.add_argument("--hidden", type=int, default=512)
    m.add_argument("--k", type=int, default=2, help="order of masked/sliding PSN")
    m.add_argument("--tau", type=float, default=None, help="LIF tau / MPE decay")
    m.add_argument(
        "--mpe-estimate-from", choices=("previous", "current"), default="previous"
    )
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=64)
    t.add_argument("-b", "--batch-size", type=int, default=16)
    t.add_argument("--opt", choices=("adam", "sgd"), default="adam")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--loss", choices=("mse", "tet"), default="mse")
    t.add_argument("--mem-loss-weight", type=float, default=0.001)
    t.add_argument("--mem-loss-epochs", type=int, default=None, help="default: all")
    t.add_argument("--amp", action="store_true")
    t.add_argument("--seed", type=int, default=2023)
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    o = p.add_argument_group("output")
    o.add_argument("--out-dir", default="runs/dvs_gesture")
    o.add_argument("--resume", action="store_true", help="continue from latest.pt")
    o.add_argument("--overwrite", action="store_true", help="start over in --out-dir")
    o.add_argument(
        "--stop-after-epochs", type=int, default=None, help=argparse.SUPPRESS
    )
    o.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.T < 1 or a.epochs < 1 or a.batch_size < 1:
        p.error("-T, --epochs and --batch-size must be >= 1")
    if a.img_size < 4 or a.img_size & (a.img_size - 1):
        p.error(f"--img-size must be a power of two >= 4, got {a.img_size}")
    if a.neuron == "masked-psn" and not 1 <= a.k <= a.T:
        p.error(f"--k must be in [1, T={a.T}] for masked-psn, got {a.k}")
    return a


# ----------------------------------------------------------------------- data
class DataError(RuntimeError):
    """A data folder problem the user must fix; the message says how."""


def _check_root(root: Path, T: int) -> None:
    markers = sorted(root.glob("*.building"))
    if markers:
        raise DataError(
            f"{markers[0]} marks an unfinished SpikingJelly build in {root}. Remove "
            f"that marker and the half-built folder next to it, then run again."
        )
    events = root / "events_np"
    if not events.is_dir() and not (root / "download").is_dir():
        raise DataError(
            f"{root} is not a DVS128 Gesture root: expected {root}/download/ holding "
            "DvsGesture.tar.gz, gesture_mapping.csv, LICENSE.txt and README.txt "
            "(downloaded manually from IBM), or an already converted "
            f"{root}/events_np/. See examples/dvs_gesture/README.md."
        )
    if events.is_dir():
        for f in sorted(events.glob("*/*/*.npz")):
            with np.load(f) as z:
                n = len(z["t"])
            if n < T:
                raise DataError(
                    f"{f} has {n} events, fewer than T={T} frames need with "
                    "split_by='number'; use a smaller -T"
                )


def build_datasets(a: argparse.Namespace, log):
    if a.data_dir:
        root = Path(a.data_dir)
        if not root.is_dir():
            raise DataError(f"--data-dir {root} does not exist")
        from spikingjelly.datasets.dvs128_gesture import DVS128Gesture as cls

        log(f"data: DVS128 Gesture from {root}")
    else:
        key = (
            f"v{synthetic.FORMAT_VERSION}_tr{a.synthetic_train_trials}_"
            f"te{a.synthetic_test_trials}_ev{a.synthetic_events}"
        )
        root = Path(a.cache_dir) / key
        if not (root / "synthetic.json").exists():
            if _is_main():
                synthetic.generate(
                    root, a.synthetic_train_trials, a.synthetic_test_trials,
                    a.synthetic_events,
                )  # fmt: skip
            _barrier()
        cls = synthetic.loader_class(root)
        m = synthetic.read_manifest(root)
        log(
            f"data: SYNTHETIC DVS128 Gesture stand-in at {root} "
            f"({m['samples']['train']} train / {m['samples']['test']} test samples); "
            "pass --data-dir for the real dataset"
        )
    _check_root(root, a.T)
    kw = dict(data_type="frame", frames_number=a.T, split_by="number")
    if _is_main():  # one process converts, the others wait and then read
        train = cls(str(root), train=True, **kw)
        test = cls(str(root), train=False, **kw)
    _barrier()
    if not _is_main():
        train = cls(str(root), train=True, **kw)
        test = cls(str(root), train=False, **kw)
    _check_root(root, a.T)
    return train, test


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # x [T, N, C, H, W]: the same crop/flip for every step of a sample
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
        scale = (x.shape[-1] / a.img_size) ** 2  # sum pooling keeps event counts
        x = F.interpolate(x.flatten(0, 1), size=a.img_size, mode="area") * scale
        x = x.view(T, N, *x.shape[1:])
    if gen is not None:
        x = _augment(x, gen)
    return x


# ---------------------------------------------------------------------- model
def make_neuron(a: argparse.Namespace) -> nn.Module:
    if a.neuron == "lif":
        return neuron.LIFNode(
            tau=2.0 if a.tau is None else a.tau,
            surrogate_function=surrogate.ATan(),
            detach_reset=True,
        )
    if a.neuron == "psn":
        return sjp.PSN(a.T)
    if a.neuron == "masked-psn":
        return sjp.MaskedPSN(a.k, a.T)
    if a.neuron == "sliding-psn":
        return sjp.SlidingPSN(a.k)
    return sjp.MPEPSN(
        a.T, tau=0.25 if a.tau is None else a.tau, estimate_from=a.mpe_estimate_from
    )


class DVSGestureNet(nn.Module):
    """SpikingJelly's DVSGestureNet shape, with as many conv blocks as reach 4x4."""

    def __init__(self, a: argparse.Namespace):
        super().__init__()
        blocks = int(math.log2(a.img_size // 4))
        conv = []
        c_in = 2
        for _ in range(blocks):
            conv += [
                layer.Conv2d(c_in, a.channels, 3, padding=1, bias=False),
                layer.BatchNorm2d(a.channels),
                make_neuron(a),
                layer.MaxPool2d(2, 2),
            ]
            c_in = a.channels
        self.conv = nn.Sequential(*conv)
        self.fc = nn.Sequential(
            layer.Flatten(),
            layer.Dropout(0.5),
            layer.Linear(a.channels * 16, a.hidden),
            make_neuron(a),
            layer.Dropout(0.5),
            layer.Linear(a.hidden, 110),
            make_neuron(a),
            layer.VotingLayer(10),
        )
        functional.set_step_mode(self, "m")
        if a.neuron != "lif":
            sjp.set_backend(self, a.backend)
        elif a.backend == "cupy":
            functional.set_backend(self, "cupy", neuron.LIFNode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))  # [T, N, 11] firing rates per step


def task_loss(out: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mse":  # SpikingJelly's firing-rate MSE
        return F.mse_loss(out.mean(0), F.one_hot(y, 11).float())
    # TET (MPE-PSN recipe): mean_t CE(out_t) plus a small MSE towards 1
    ce = torch.stack([F.cross_entropy(o, y) for o in out]).mean()
    return (1 - 0.001) * ce + 0.001 * F.mse_loss(out, torch.ones_like(out))


# ---------------------------------------------------------------- distributed
def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _setup_distributed(a) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if a.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        if a.device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            a.device = f"cuda:{local}"
    return world


# ------------------------------------------------------------------ checkpoint
def save_atomic(obj, path: Path) -> None:
    """Write to a temporary file, then rename: a crash never leaves a broken file."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    st = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ------------------------------------------------------------------------ main
def run_epoch(net, loader, a, epoch, opt=None, scaler=None, aug_gen=None):
    train = opt is not None
    net.train(train)
    dev = torch.device(a.device)
    amp_dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    use_mem = a.neuron == "mpe-psn" and (
        a.mem_loss_epochs is None or epoch < a.mem_loss_epochs
    )
    w = a.mem_loss_weight if use_mem else 0.0
    tot = torch.zeros(3, dtype=torch.float64, device=dev)  # loss sum, correct, count
    it = loader
    if _is_main() and not a.no_progress:
        from tqdm import tqdm

        it = tqdm(
            loader, desc=f"epoch {epoch} {'train' if train else 'test'}", leave=False
        )
    for frames, y in it:
        x = prepare(frames, a, aug_gen if train else None).to(dev)
        y = torch.as_tensor(y).to(dev)
        with (
            torch.set_grad_enabled(train),
            torch.autocast(dev.type, dtype=amp_dtype, enabled=a.amp),
        ):
            out = net(x)
            loss = task_loss(out.float(), y, a.loss)
            if train and w > 0:
                loss = (1 - w) * loss + w * sjp.membrane_loss(net)
        if train:
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        functional.reset_net(net)
        tot += torch.tensor(
            [loss.item() * len(y), (out.mean(0).argmax(1) == y).sum().item(), len(y)],
            dtype=torch.float64,
            device=dev,
        )
    if dist.is_initialized():
        dist.all_reduce(tot)
    return tot[0].item() / tot[2].item(), tot[1].item() / tot[2].item()


def main(argv=None) -> int:
    a = parse_args(argv)
    world = _setup_distributed(a)
    out = Path(a.out_dir)
    log = print if _is_main() else (lambda *_: None)
    latest = out / "latest.pt"
    if _is_main():
        if latest.exists() and not (a.resume or a.overwrite):
            raise SystemExit(
                f"{out} already has checkpoints: pass --resume to continue or "
                "--overwrite to start over"
            )
        if a.resume and not latest.exists():
            raise SystemExit(f"--resume: no checkpoint at {latest}")
        out.mkdir(parents=True, exist_ok=True)
        if a.overwrite and not a.resume:  # start the metrics file over as well
            (out / "metrics.jsonl").unlink(missing_ok=True)
    _barrier()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(a.seed)
    try:
        train_set, test_set = build_datasets(a, log)
    except DataError as e:
        raise SystemExit(f"data error: {e}") from None

    def loader(ds, train):
        sampler = None
        if world > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(
                ds, shuffle=train, seed=a.seed
            )
        return torch.utils.data.DataLoader(
            ds,
            batch_size=a.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            num_workers=a.workers,
            drop_last=False,
            generator=torch.Generator().manual_seed(a.seed) if train else None,
        )

    train_loader, test_loader = loader(train_set, True), loader(test_set, False)
    dev = torch.device(a.device)
    net = DVSGestureNet(a).to(dev)
    model = net
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    if a.opt == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    else:
        opt = torch.optim.SGD(
            net.parameters(), lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay
        )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.epochs)
    scaler = torch.amp.GradScaler(dev.type, enabled=a.amp and dev.type == "cuda")
    aug_gen = torch.Generator().manual_seed(a.seed + 1) if a.augment else None
    start, best = 0, -1.0
    if a.resume:
        ck = torch.load(latest, map_location=dev, weights_only=False)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        start, best = ck["epoch"] + 1, ck["best_acc"]
        set_rng_state(ck["rng"])
        if aug_gen is not None:
            aug_gen.set_state(ck["aug_rng"])
        log(f"resumed from {latest} at epoch {start}")
    writer = None
    if _is_main():
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
        (out / "args.json").write_text(json.dumps(vars(a), indent=2))
    log(f"model: DVSGestureNet, neuron={a.neuron}, backend={a.backend}, T={a.T}")
    test_acc = 0.0
    for epoch in range(start, a.epochs):
        t0 = time.time()
        for m in net.modules():
            if isinstance(m, sjp.MaskedPSN):
                m.lambda_ = sjp.masked_psn_lambda(epoch, a.epochs)
        if world > 1:
            train_loader.sampler.set_epoch(epoch)
        else:  # the shuffle order depends on the epoch only, so resuming repeats it
            train_loader.generator.manual_seed(a.seed * 1000 + epoch)
        tr_loss, tr_acc = run_epoch(model, train_loader, a, epoch, opt, scaler, aug_gen)
        sched.step()
        te_loss, test_acc = run_epoch(model, test_loader, a, epoch)
        best = max(best, test_acc)
        rec = {
            "epoch": epoch,
            "train_loss": tr_loss,
            "train_acc": tr_acc,
            "test_loss": te_loss,
            "test_acc": test_acc,
            "best_test_acc": best,
            "lr": opt.param_groups[0]["lr"],
            "seconds": round(time.time() - t0, 2),
        }
        if _is_main():
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
                writer.add_scalar(k, rec[k], epoch)
            ck = {
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "best_acc": best,
                "rng": rng_state(),
                "aug_rng": None if aug_gen is None else aug_gen.get_state(),
                "args": vars(a),
            }
            if test_acc >= best:
                save_atomic(ck, out / "best.pt")
            save_atomic(ck, latest)
            log(
                f"epoch {epoch}: train loss {tr_loss:.4f} acc {tr_acc:.3f} | "
                f"test loss {te_loss:.4f} acc {test_acc:.3f} (best {best:.3f}) "
                f"[{rec['seconds']} s]"
            )
        _barrier()
        if a.stop_after_epochs is not None and epoch + 1 >= a.stop_after_epochs:
            log(f"stopping after epoch {epoch} as asked")
            break
    if writer is not None:
        writer.close()
    log(f"test accuracy: {test_acc:.4f} (best {best:.4f})")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

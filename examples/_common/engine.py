"""The training loop of the examples: exact resume, atomic checkpoints, DDP, AMP.

A program parses its arguments (with the groups below), calls :func:`start_run`
(distributed set-up, run folder checks, seeds), builds its data and network, and
hands a ``step`` function to :func:`fit`::

    def step(model, batch, train, epoch):
        ...  # forward pass (under autocast), task loss
        return loss, n_correct, n_samples

:func:`fit` adds the MPE-PSN membrane loss, runs the optimizer, calls
``functional.reset_net`` after every batch, evaluates (for MPE-PSN twice: with the
deterministic estimate and with sampling), writes ``metrics.jsonl``, TensorBoard
scalars (when TensorBoard is installed; :func:`start_run` checks the optional
packages before any work), ``latest.pt`` and ``best.pt``. Under ``torchrun`` every
test sample is evaluated exactly once, whatever the number of processes
(:func:`shard_indices`; the counts are summed over the processes). ``--resume``
continues exactly where a run stopped: model, optimizer, scheduler, scaler, the
global RNGs and every generator passed in ``rngs`` come back, and the shuffling order
depends on the epoch only, so the metrics equal those of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from spikingjelly.activation_based import functional

import sj_parallel as sjp

from .neurons import mpe_modules, start_epoch


# ------------------------------------------------------------------ arguments
def add_training_args(
    p: argparse.ArgumentParser,
    *,
    epochs: int,
    batch_size: int,
    opt: str,
    lr: float,
    weight_decay: float = 0.0,
) -> argparse._ArgumentGroup:
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=epochs)
    t.add_argument("-b", "--batch-size", type=int, default=batch_size)
    t.add_argument("--opt", choices=("adam", "adamw", "sgd"), default=opt)
    t.add_argument("--lr", type=float, default=lr)
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    t.add_argument("--weight-decay", type=float, default=weight_decay)
    t.add_argument(
        "--drop-last", action="store_true", help="drop the last incomplete batch"
    )
    t.add_argument(
        "--test-drop-last",
        action="store_true",
        help="drop the last incomplete test batch too (the MPE-PSN authors' "
        "CIFAR10-DVS accuracies are over 992 of the 1000 test samples)",
    )
    t.add_argument("--amp", action="store_true", help="mixed precision (training)")
    t.add_argument("--seed", type=int, default=2023)
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--workers", type=int, default=0, help="data loading processes")
    return t


def add_output_args(p: argparse.ArgumentParser, out_dir: str) -> None:
    o = p.add_argument_group("output")
    o.add_argument("--out-dir", default=out_dir)
    o.add_argument("--resume", action="store_true", help="continue from latest.pt")
    o.add_argument("--overwrite", action="store_true", help="start over in --out-dir")
    o.add_argument(
        "--stop-after-epochs", type=int, default=None, help=argparse.SUPPRESS
    )
    o.add_argument("--no-progress", action="store_true")


def check_training_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.epochs < 1 or a.batch_size < 1:
        p.error("--epochs and --batch-size must be >= 1")
    if a.resume and a.overwrite:
        p.error("--resume and --overwrite exclude each other")


# ---------------------------------------------------------------- distributed
def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _setup_distributed(a) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if a.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        if a.device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            a.device = f"cuda:{local}"
    return world


def shard_indices(n: int, rank: int, world: int) -> range:
    """The test samples process ``rank`` of ``world`` evaluates: every ``world``-th
    from ``rank`` on. The shards are disjoint and together hold each of the ``n``
    samples exactly once (``DistributedSampler`` pads them to equal sizes with
    repeated samples instead, which would count those twice)."""
    return range(rank, n, world)


class ShardSampler(torch.utils.data.Sampler):
    """Sequential sampler over :func:`shard_indices` (no padding, no shuffle)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = shard_indices(n, rank, world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def sync_buffers(net: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics), so all of
    them evaluate the model rank 0 checkpoints; DDP syncs buffers only before
    training forward passes, each process then updates its own copy."""
    if dist.is_initialized():
        for b in net.buffers():
            dist.broadcast(b, 0)


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


def _gen_state(g):
    return g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state


def _set_gen_state(g, st) -> None:
    if isinstance(g, torch.Generator):
        g.set_state(st)
    else:
        g.bit_generator.state = st


# ------------------------------------------------------------------- the run
class Run:
    """What :func:`start_run` sets up: world size, output folder, logger."""

    def __init__(self, world: int, out: Path):
        self.world, self.out = world, out
        self.log = print if is_main() else (lambda *_: None)


#: optional packages of the examples: (module, what it gives, what runs without it)
OPTIONAL = (
    ("torch.utils.tensorboard", "TensorBoard logs", "the metrics go to metrics.jsonl"),
    ("tqdm", "the progress bar", "no progress bar"),
)
EXTRA_HINT = (
    '`pip install ".[example]"` from the repository root (or `pip install '
    "tensorboard tqdm`)"
)


def require(module: str, what: str, fix: str) -> None:
    """Exit before any work when ``module``, which the program cannot run without,
    does not import: the error, what needs it and the command that installs it."""
    try:
        importlib.import_module(module)
    except Exception as e:
        raise SystemExit(
            f"{what} needs {module}, which cannot be imported ({type(e).__name__}: "
            f"{e}). Fix: {fix}"
        ) from None


def check_optional(a: argparse.Namespace, log=print) -> None:
    """Check the optional packages before any work starts and switch off what needs
    a missing one, with a note naming the extra to install (``a.tensorboard`` and
    ``a.no_progress``); nothing fails later for a missing optional package."""
    a.tensorboard = getattr(a, "tensorboard", True)
    for module, gives, instead in OPTIONAL:
        wanted = a.tensorboard if module.endswith("tensorboard") else not a.no_progress
        if not wanted:
            continue
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or a broken install of it
            log(
                f"note: {gives} off: {module.split('.')[-1]} cannot be imported "
                f"({type(e).__name__}: {e}); {instead}. Install it with {EXTRA_HINT}"
            )
            if module.endswith("tensorboard"):
                a.tensorboard = False
            else:
                a.no_progress = True


def start_run(a: argparse.Namespace) -> Run:
    """Distributed set-up, optional packages, run-folder checks (never overwrite
    silently), seeds."""
    world = _setup_distributed(a)
    check_optional(a, print if is_main() else (lambda *_: None))
    out = Path(a.out_dir)
    latest = out / "latest.pt"
    if is_main():
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
    barrier()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(a.seed)
    return Run(world, out)


def make_optimizer(a, params):
    if a.opt == "adam":
        return torch.optim.Adam(params, lr=a.lr, weight_decay=a.weight_decay)
    if a.opt == "adamw":
        return torch.optim.AdamW(params, lr=a.lr, weight_decay=a.weight_decay)
    return torch.optim.SGD(
        params, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay
    )


def mem_loss_weight(net, a, epoch: int) -> float:
    """The MPE-PSN membrane-loss weight of this epoch (0 without MPE-PSN, or from
    epoch ``--mem-loss-epochs`` on, as the authors' ``epoch < 150``)."""
    if not mpe_modules(net):
        return 0.0
    if a.mem_loss_epochs is not None and epoch >= a.mem_loss_epochs:
        return 0.0
    return a.mem_loss_weight


def run_epoch(model, net, loader, a, epoch, step, opt=None, scaler=None):
    """One pass over ``loader``; (mean loss, accuracy, samples) over all processes."""
    train = opt is not None
    model.train(train)
    dev = torch.device(a.device)
    amp_dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    w = mem_loss_weight(net, a, epoch)
    tot = torch.zeros(3, dtype=torch.float64, device=dev)  # loss sum, correct, count
    it = loader
    if is_main() and not a.no_progress:
        from tqdm import tqdm

        it = tqdm(
            loader, desc=f"epoch {epoch} {'train' if train else 'test'}", leave=False
        )
    for batch in it:
        with (
            torch.set_grad_enabled(train),
            # mixed precision for training only: the papers' code tests in float32
            torch.autocast(dev.type, dtype=amp_dtype, enabled=a.amp and train),
        ):
            loss, correct, n = step(model, batch, train, epoch)
            if train and w > 0:  # as the authors: (1 - w) * task + w * membrane
                loss = (1 - w) * loss + w * sjp.membrane_loss(net)
        if train:
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        functional.reset_net(model)
        tot += torch.tensor(
            [loss.item() * n, float(correct), n], dtype=torch.float64, device=dev
        )
    if dist.is_initialized():
        dist.all_reduce(tot)
    n = tot[2].item()
    return tot[0].item() / n, tot[1].item() / n, int(n)


def evaluate(model, net, loader, a, epoch, step) -> Dict[str, float]:
    """Test metrics; for MPE-PSN both the deterministic and the sampled estimate.

    ``test_acc``/``test_loss`` are the ones ``--mpe-sample-in-eval`` selects (they
    decide the best epoch); ``*_deterministic`` and ``*_sampled`` are both logged.
    """
    mpe = mpe_modules(net)
    if not mpe:
        loss, acc, n = run_epoch(model, net, loader, a, epoch, step)
        return {"test_loss": loss, "test_acc": acc, "test_samples": n}
    rec = {}
    try:
        for mode in ("deterministic", "sampled"):
            for m in mpe:
                m.sample_in_eval = mode == "sampled"
            loss, acc, rec["test_samples"] = run_epoch(
                model, net, loader, a, epoch, step
            )
            rec[f"test_loss_{mode}"], rec[f"test_acc_{mode}"] = loss, acc
    finally:
        for m in mpe:
            m.sample_in_eval = a.mpe_sample_in_eval
    main = "sampled" if a.mpe_sample_in_eval else "deterministic"
    rec["test_loss"], rec["test_acc"] = (
        rec[f"test_loss_{main}"],
        rec[f"test_acc_{main}"],
    )
    return rec


def fit(
    a: argparse.Namespace,
    run: Run,
    net: nn.Module,
    train_set,
    test_set,
    step: Callable,
    *,
    rngs: Optional[Dict[str, object]] = None,
    epoch_info: Optional[Callable[[int], dict]] = None,
    describe: str = "",
) -> float:
    """Train ``a.epochs`` epochs (or continue with ``--resume``); returns the last
    test accuracy.

    :param step: ``step(model, batch, train, epoch) -> (loss, n_correct, n)``
    :param rngs: generators (``torch.Generator`` or ``numpy.random.Generator``) the
        step draws from; their states go into every checkpoint
    :param epoch_info: extra per-epoch entries for ``metrics.jsonl``
    """
    rngs = dict(rngs or {})
    out, log, world = run.out, run.log, run.world

    def train_loader_of(ds):
        sampler = None
        if world > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(
                ds, shuffle=True, seed=a.seed
            )
        return torch.utils.data.DataLoader(
            ds,
            batch_size=a.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=a.workers,
            drop_last=a.drop_last,
            generator=torch.Generator().manual_seed(a.seed),
        )

    def test_loader_of(ds):
        """Every test sample exactly once over all processes (the same samples as
        one process evaluates: with --test-drop-last, the whole batches of one)."""
        n = len(ds)
        if a.test_drop_last:
            n -= n % a.batch_size
        if world == 1:
            if n < len(ds):
                ds = torch.utils.data.Subset(ds, range(n))
            return torch.utils.data.DataLoader(
                ds, batch_size=a.batch_size, num_workers=a.workers
            )
        sampler = ShardSampler(n, dist.get_rank(), world)
        return torch.utils.data.DataLoader(
            ds, batch_size=a.batch_size, sampler=sampler, num_workers=a.workers
        )

    train_loader, test_loader = train_loader_of(train_set), test_loader_of(test_set)
    dev = torch.device(a.device)
    net = net.to(dev)
    model = net
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    opt = make_optimizer(a, net.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=a.epochs)
    scaler = torch.amp.GradScaler(dev.type, enabled=a.amp and dev.type == "cuda")
    start, best = 0, -1.0
    latest = out / "latest.pt"
    if a.resume:
        ck = torch.load(latest, map_location=dev, weights_only=False)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        start, best = ck["epoch"] + 1, ck["best_acc"]
        set_rng_state(ck["rng"])
        for name, g in rngs.items():
            if name not in ck["generators"]:
                raise SystemExit(
                    f"--resume: {latest} has no state of the {name} generator; "
                    f"resume with the options of the first run ({out / 'args.json'})"
                )
            _set_gen_state(g, ck["generators"][name])
        log(f"resumed from {latest} at epoch {start}")
    writer = None
    if is_main():
        if a.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        (out / "args.json").write_text(json.dumps(vars(a), indent=2))
    n_par = sum(p.numel() for p in net.parameters())
    log(f"model: {describe} ({n_par / 1e6:.3f} M parameters)")
    test_acc = 0.0
    for epoch in range(start, a.epochs):
        t0 = time.time()
        start_epoch(net, epoch, a.epochs)
        if world > 1:
            train_loader.sampler.set_epoch(epoch)
        else:  # the shuffle order depends on the epoch only, so resuming repeats it
            train_loader.generator.manual_seed(a.seed * 1000 + epoch)
        tr_loss, tr_acc, _ = run_epoch(
            model, net, train_loader, a, epoch, step, opt, scaler
        )
        sched.step()
        rec = {"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc}
        if mpe_modules(net):
            rec["mem_loss_weight"] = mem_loss_weight(net, a, epoch)
        if epoch_info is not None:
            rec.update(epoch_info(epoch))
        # every process evaluates rank 0's model (the one checkpointed) on its own
        # shard of the test set, without DDP's wrapper (the shards differ in size)
        sync_buffers(net)
        rec.update(evaluate(net, net, test_loader, a, epoch, step))
        test_acc = rec["test_acc"]
        best = max(best, test_acc)
        rec["best_test_acc"] = best
        rec["lr"] = opt.param_groups[0]["lr"]
        rec["seconds"] = round(time.time() - t0, 2)
        if is_main():
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            for k, v in rec.items():
                if writer is not None and k.startswith(("train_", "test_")):
                    if k != "test_samples":
                        writer.add_scalar(k, v, epoch)
            ck = {
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "best_acc": best,
                "rng": rng_state(),
                "generators": {k: _gen_state(g) for k, g in rngs.items()},
                "args": vars(a),
            }
            if test_acc >= best:
                save_atomic(ck, out / "best.pt")
            save_atomic(ck, latest)
            extra = ""
            if "test_acc_sampled" in rec:
                extra = (
                    f" [deterministic {rec['test_acc_deterministic']:.3f}, "
                    f"sampled {rec['test_acc_sampled']:.3f}]"
                )
            log(
                f"epoch {epoch}: train loss {tr_loss:.4f} acc {tr_acc:.3f} | "
                f"test loss {rec['test_loss']:.4f} acc {test_acc:.3f}{extra} "
                f"(best {best:.3f}) [{rec['seconds']} s]"
            )
        barrier()
        if a.stop_after_epochs is not None and epoch + 1 >= a.stop_after_epochs:
            log(f"stopping after epoch {epoch} as asked")
            break
    if writer is not None:
        writer.close()
    log(f"test accuracy: {test_acc:.4f} (best {best:.4f})")
    return test_acc


def finish_run() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

"""Task losses on time-first outputs ``[T, N, classes]``, for what each was made for.

A *spiking* output layer (SpikingJelly's DVSGestureNet: neurons, then a voting layer)
gives firing rates in [0, 1]; SpikingJelly trains it with the MSE between the mean
firing rate and the one-hot label. A *logits* output layer (the MPE-PSN and PSN
papers' networks: a linear layer, no neuron) gives real values; the papers train it
with TET. Targets are class indices ``[N]`` or class probabilities ``[N, classes]``
(mixup with soft labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("mse", "tet", "ce")
#: the losses that make sense for each kind of output layer; the first is the default
LOSSES_FOR_HEAD = {"spiking": ("mse",), "logits": ("tet", "ce")}
_WHY = {
    "mse": "the firing-rate MSE compares mean spike rates in [0, 1] with one-hot "
    "targets",
    "tet": "TET applies a cross-entropy to every step's real-valued logits",
    "ce": "the cross-entropy of the mean output expects real-valued logits",
}


def check_loss(loss: str, head: str, arch: str) -> str:
    """The loss to use (``loss`` or the head's default); ``ValueError`` if unfit."""
    allowed = LOSSES_FOR_HEAD[head]
    if loss is None:
        return allowed[0]
    if loss not in allowed:
        kind = (
            "ends in spiking neurons and a voting layer (firing rates)"
            if head == "spiking"
            else "ends in a linear layer (real-valued logits, no output neuron)"
        )
        raise ValueError(
            f"--loss {loss} does not fit --arch {arch}: the network {kind}, and "
            f"{_WHY[loss]}. Use --loss {' or '.join(allowed)} with this network, or "
            "pick a network whose output layer fits the loss."
        )
    return loss


def _probs(target: torch.Tensor, classes: int) -> torch.Tensor:
    if target.dim() == 1:
        return F.one_hot(target, classes).float()
    return target.float()


def rate_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SpikingJelly's ``classify_dvsg.py`` loss: MSE(mean firing rate, one-hot)."""
    return F.mse_loss(out.mean(0), _probs(target, out.shape[-1]))


def tet(
    out: torch.Tensor, target: torch.Tensor, means: float = 1.0, lamb: float = 1e-3
) -> torch.Tensor:
    """TET (Deng et al. 2022) as the papers' code computes it.

    ``(1 - lamb) * mean_t CE(out[t], target) + lamb * MSE(out, means)``.
    """
    ce = torch.stack([F.cross_entropy(o, target) for o in out]).mean()
    if lamb == 0:
        return ce
    return (1 - lamb) * ce + lamb * F.mse_loss(out, torch.full_like(out, means))


def mean_ce(out: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0):
    """Cross-entropy of the time-averaged output (the papers' non-TET option)."""
    return F.cross_entropy(out.mean(0), target, label_smoothing=smoothing)


def task_loss(kind: str, out: torch.Tensor, target: torch.Tensor, a) -> torch.Tensor:
    if kind == "mse":
        return rate_mse(out, target)
    if kind == "tet":
        return tet(out, target, a.tet_means, a.tet_lambda)
    return mean_ce(out, target)


def hard(target: torch.Tensor) -> torch.Tensor:
    """Class indices of a target (indices stay, probabilities give their argmax)."""
    return target if target.dim() == 1 else target.argmax(-1)

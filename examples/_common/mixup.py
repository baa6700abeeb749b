"""Batch mixing as the two papers' code does it, with its own random generator.

Both draw from a ``numpy.random.Generator`` that the training loop saves in every
checkpoint, so ``--resume`` replays the same mixing.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def smoothed_one_hot(y: torch.Tensor, classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / classes
    return torch.full((len(y), classes), off, device=y.device).scatter_(
        1, y.long().view(-1, 1), 1.0 - smoothing + off
    )


class AuthorsMixup:
    """The MPE-PSN authors' mixup (timm's ``Mixup``, ``mode='batch'``, no cutmix).

    Their DVS-Gesture and CIFAR10-DVS programs build it with ``mixup_alpha=0.5,
    prob=0.5, mode='batch', label_smoothing=0.1`` and switch it off for
    ``epoch > 140``. Per batch: with probability ``prob`` draw
    ``lam ~ Beta(alpha, alpha)`` and mix every sample with the batch reversed,
    ``x = lam * x + (1 - lam) * x.flip(batch)``; else ``lam = 1`` (unchanged). The
    mixed target is ``lam * smooth(y) + (1 - lam) * smooth(y.flip(0))``.

    ``labels='hard'`` (the authors): their code then takes ``target.argmax(-1)``, so
    the label is the class of the sample with the larger weight (``y`` when
    ``lam > 0.5``, the reversed batch's when ``lam < 0.5``, the smaller class index
    at an exact tie); label smoothing then has no effect, and the loss sees hard
    labels. ``labels='soft'`` (our option): the smoothed mixed probabilities
    themselves.

    :param batch_dim: the batch dimension of the inputs (1 for time-first
        ``[T, N, ...]``; the authors' inputs are batch-first, dimension 0)
    """

    def __init__(
        self,
        classes: int,
        rng: np.random.Generator,
        alpha: float = 0.5,
        prob: float = 0.5,
        smoothing: float = 0.1,
        labels: str = "hard",
        batch_dim: int = 1,
    ):
        if labels not in ("hard", "soft"):
            raise ValueError(f"labels must be 'hard' or 'soft', got {labels!r}")
        self.classes, self.rng = classes, rng
        self.alpha, self.prob, self.smoothing = alpha, prob, smoothing
        self.labels, self.batch_dim = labels, batch_dim

    def draw(self) -> float:
        if self.rng.random() < self.prob:
            return float(self.rng.beta(self.alpha, self.alpha))
        return 1.0

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        lam = self.draw()
        if lam != 1.0:
            x = x * lam + x.flip(self.batch_dim) * (1.0 - lam)
        t = smoothed_one_hot(y, self.classes, self.smoothing)
        t = t * lam + t.flip(0) * (1.0 - lam)
        return x, (t.argmax(-1) if self.labels == "hard" else t)


class MixupCutmix:
    """The PSN paper's sequential-CIFAR mixing (torchvision's reference recipe).

    Its ``collate_fn`` applies ``RandomChoice([RandomMixup(p=1, alpha=0.2),
    RandomCutmix(p=1, alpha=1.0)])`` to every batch: one of the two, chosen with
    equal probability, pairs each image with the batch rolled by one. Mixup:
    ``x = lam * x + (1 - lam) * roll(x)``, ``lam ~ Beta(0.2, 0.2)``. Cutmix:
    ``lam ~ Beta(1, 1)``, a box of side ``sqrt(1 - lam)`` times the image at a
    uniform centre (clipped at the border) is pasted from the rolled batch and
    ``lam`` becomes the area left. Targets are soft: ``lam * one_hot(y) + (1 - lam)
    * one_hot(roll(y))`` (the loss adds label smoothing 0.1). Inputs
    ``[N, C, H, W]``.
    """

    def __init__(
        self,
        classes: int,
        rng: np.random.Generator,
        mixup_alpha: float = 0.2,
        cutmix_alpha: float = 1.0,
    ):
        self.classes, self.rng = classes, rng
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        t = F.one_hot(y, self.classes).to(x.dtype)
        x_r, t_r = x.roll(1, 0), t.roll(1, 0)
        if self.rng.random() < 0.5:
            lam = float(self.rng.beta(self.mixup_alpha, self.mixup_alpha))
            x = x * lam + x_r * (1.0 - lam)
        else:
            lam = float(self.rng.beta(self.cutmix_alpha, self.cutmix_alpha))
            H, W = x.shape[-2:]
            cx, cy = int(self.rng.integers(W)), int(self.rng.integers(H))
            r = 0.5 * math.sqrt(1.0 - lam)
            rw, rh = int(r * W), int(r * H)
            x1, y1 = max(cx - rw, 0), max(cy - rh, 0)
            x2, y2 = min(cx + rw, W), min(cy + rh, H)
            x = x.clone()
            x[..., y1:y2, x1:x2] = x_r[..., y1:y2, x1:x2]
            lam = 1.0 - (x2 - x1) * (y2 - y1) / (W * H)
        return x, t * lam + t_r * (1.0 - lam)

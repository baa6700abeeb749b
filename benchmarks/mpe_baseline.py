"""MPE-PSN exactly as its authors wrote it (Chrazqee/MPE-PSN), in plain torch.

A standalone re-implementation (it imports nothing from sj_parallel) of the authors'
two modules, used as the benchmark baseline and as the reference that
``tests/test_mpe_authors.py`` compares sj_parallel's ``MPEPSN`` with:

* ``wiring="previous"``: ``MPE_PSN`` of ``cifar/model/MPE_PSN.py`` and
  ``cifar10dvs/models.py`` (the paper's Fig. 2): ``h_t = I_t + tau * û_{t-1}``,
  loss ``mean(coef * mse(û_t, u_t))`` with ``T`` weights ``coef`` = 1/T.
* ``wiring="current"``: ``MPE_PSN_`` of ``DVSGusture/models.py`` and
  ``NCaltech101/models.py``: ``h_0 = I_0``, ``h_t = I_t + tau * û_t``, loss over the
  ``T - 1`` pairs ``(û_t, u_{t-1})`` with ``T - 1`` weights ``coef`` = 1/(T-1).

The operations are theirs, one for one: ``sigmoid``, ``torch.bernoulli``, the
estimate ``(1 - b) * I``, a concatenated zero step, the triangle surrogate
(``(z > 0)`` forward, ``max(0, 1 - |z|)`` backward), ``u = (1 - o) * h`` with the
spike NOT detached, and ``(F.mse_loss(..., reduction="none") * coef).mean()``, all
through autograd, which keeps every intermediate for backward. The loss is computed
in every forward pass (also in eval mode), as in their code.

Layout: their code is batch-first ``[N, T, ...]`` with ``coef`` of shape
``[1, n, 1, 1, 1]``, which lines up with time for 5-D (conv) inputs. With
``batch_first=False`` the same math runs on time-first ``[T, N, ...]`` input with
``coef`` broadcast along time for any rank (what the benchmarks use).

``sampler``: optional ``callable(p) -> b`` replacing ``torch.bernoulli(p)`` (tests
pass sj_parallel's samples so both draw the same Bernoulli numbers).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F


class TriangularSurrogate(torch.autograd.Function):
    """The authors' triangle surrogate (alpha = 1): ``(z > 0)``, ``max(0, 1 - |z|)``."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return (z > 0).float() if z.dtype == torch.float32 else (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g.clone() * (1.0 - z.abs()).clamp(min=0)


class AuthorsMPEPSN(torch.nn.Module):
    """The authors' ``MPE_PSN`` (``wiring="previous"``) / ``MPE_PSN_`` (``"current"``).

    :param T: time steps
    :param tau: decay multiplier (0.25 in all their runs)
    :param wiring: ``"previous"`` or ``"current"``
    :param batch_first: ``True`` for their ``[N, T, ...]`` layout
    :param sampler: replaces ``torch.bernoulli`` (``callable(p) -> b``)
    """

    def __init__(
        self,
        T: int,
        tau: float = 0.25,
        wiring: str = "previous",
        batch_first: bool = True,
        sampler: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ):
        super().__init__()
        if wiring not in ("previous", "current"):
            raise ValueError(f"wiring must be 'previous' or 'current', got {wiring!r}")
        self.T = T
        self.tau = tau
        self.wiring = wiring
        self.batch_first = batch_first
        self.sampler = sampler
        self.threshold = torch.nn.Parameter(torch.as_tensor(1.0))
        n = T if wiring == "previous" else T - 1
        self.coef = torch.nn.Parameter(
            torch.tensor([1 / n for _ in range(n)]).view(1, n, 1, 1, 1)
        )
        self.mem_loss = 0

    def _coef(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_first:
            return self.coef  # [1, n, 1, 1, 1] as theirs
        n = self.coef.shape[1]
        return self.coef.view(n, *([1] * (x.dim() - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = 1 if self.batch_first else 0  # the time dim
        sig_x = torch.sigmoid(x)
        b = torch.bernoulli(sig_x) if self.sampler is None else self.sampler(sig_x)
        mem_hat = (1 - b) * x
        shape = list(x.shape)
        shape[d] = 1
        v_0 = torch.zeros(shape, device=x.device, dtype=x.dtype)
        if self.wiring == "previous":
            mem_hat = torch.cat((v_0, mem_hat), dim=d)
            mem_memo = mem_hat.narrow(d, 0, x.shape[d]) * self.tau + x
            o_t = TriangularSurrogate.apply(mem_memo - self.threshold)
            mem_real = (1 - o_t) * mem_memo
            est, target = mem_hat.narrow(d, 1, x.shape[d]), mem_real
        else:
            mem_hat = torch.cat((v_0, mem_hat.narrow(d, 1, x.shape[d] - 1)), dim=d)
            mem_memo = mem_hat * self.tau + x
            o_t = TriangularSurrogate.apply(mem_memo - self.threshold)
            mem_real = (1 - o_t) * mem_memo
            n = x.shape[d] - 1
            est, target = mem_hat.narrow(d, 1, n), mem_real.narrow(d, 0, n)
        self.mem_loss = (
            F.mse_loss(est, target, reduction="none") * self._coef(x)
        ).mean()
        return o_t

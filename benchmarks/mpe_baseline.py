"""MPE-PSN as the paper's official code writes it: plain torch and autograd (baseline).

This is the straightforward implementation the benchmarks compare sj_parallel's
MPE-PSN against (time-first here; the official code is batch-first): sigmoid, a
``torch.bernoulli`` sample, the estimate ``(1 - b) * I`` shifted by one step, the decay,
and a triangle-surrogate threshold through autograd, which keeps every intermediate
for backward.
"""

from __future__ import annotations

import torch


class _Triangle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * (1 - z.abs()).clamp(min=0)


class PaperMPEPSN(torch.nn.Module):
    """Baseline MPE-PSN (paper wiring), input ``[T, N, *]``.

    In training mode it also computes the auxiliary membrane-estimation loss (kept in
    ``self.mem_loss``), as the official code does, so that it does the same work as
    sj_parallel's MPE-PSN in training.
    """

    def __init__(self, T: int, tau: float = 0.25, v_threshold: float = 1.0):
        super().__init__()
        self.tau = tau
        self.v_threshold = torch.nn.Parameter(torch.tensor(v_threshold))
        self.kappa = torch.nn.Parameter(torch.full((T,), 1.0 / T))
        self.mem_loss = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(x)
        b = torch.bernoulli(p.detach())
        u_hat = (1 - b) * x
        prev = torch.cat([torch.zeros_like(u_hat[:1]), u_hat[:-1]])
        h = self.tau * prev + x
        o = _Triangle.apply(h - self.v_threshold)
        if self.training:
            u = (1 - o.detach()) * h
            mse = (u_hat - u).pow(2).flatten(1).mean(1)
            self.mem_loss = (self.kappa * mse).mean()
        return o

"""The neurons the examples can plug into any of their networks."""

from __future__ import annotations

import argparse
from typing import List

import torch.nn as nn
from spikingjelly.activation_based import functional, neuron, surrogate

import sj_parallel as sjp

NEURONS = ("lif", "psn", "masked-psn", "sliding-psn", "mpe-psn")


def add_neuron_args(p: argparse.ArgumentParser, *, k: int, exp_init: bool) -> None:
    g = p.add_argument_group("neuron")
    g.add_argument(
        "--neuron",
        choices=NEURONS,
        default="psn",
        help="lif: SpikingJelly's LIFNode (the baseline); the others: sj_parallel",
    )
    g.add_argument("--backend", choices=("torch", "cupy"), default="torch")
    g.add_argument("--k", type=int, default=k, help="order of masked/sliding PSN")
    g.add_argument(
        "--exp-init",
        action=argparse.BooleanOptionalAction,
        default=exp_init,
        help="sliding PSN weights 2^-(k-1)..1/2, 1 (else kaiming-uniform)",
    )
    g.add_argument("--tau", type=float, default=None, help="LIF tau / MPE decay")
    g.add_argument(
        "--mpe-estimate-from",
        choices=("previous", "current"),
        default="previous",
        help="MPE-PSN wiring: the paper's (previous) or the authors' DVS code's",
    )
    g.add_argument(
        "--mpe-loss-weights",
        choices=("linear", "softmax"),
        default="linear",
        help="MPE-PSN membrane-loss step weights: the authors' linear coef, or "
        "non-negative softmax weights",
    )
    g.add_argument(
        "--mpe-sample-in-eval",
        action="store_true",
        help="MPE-PSN: the test accuracy that counts (best, checkpoints) is the one "
        "with Bernoulli sampling, as in the authors' code; both are always reported",
    )
    g.add_argument(
        "--mem-loss-weight",
        type=float,
        default=0.001,
        help="MPE-PSN: loss = (1 - w) * task + w * sum of layer membrane losses",
    )
    g.add_argument(
        "--mem-loss-epochs",
        type=int,
        default=None,
        help="MPE-PSN: use the membrane loss while epoch < this (default: always)",
    )


def check_neuron_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.neuron == "masked-psn" and not 1 <= a.k <= a.T:
        p.error(f"--k must be in [1, T={a.T}] for masked-psn, got {a.k}")
    if a.neuron in ("masked-psn", "sliding-psn") and a.k < 1:
        p.error(f"--k must be >= 1, got {a.k}")
    if a.neuron == "mpe-psn" and a.mpe_estimate_from == "current" and a.T < 2:
        p.error("--mpe-estimate-from current needs -T >= 2")
    if not 0.0 <= a.mem_loss_weight <= 1.0:
        p.error(f"--mem-loss-weight must be in [0, 1], got {a.mem_loss_weight}")


def make_neuron(a: argparse.Namespace, lif_v_reset=0.0) -> nn.Module:
    """One neuron of the kind ``a.neuron`` asks for (time steps ``a.T``)."""
    if a.neuron == "lif":
        return neuron.LIFNode(
            tau=2.0 if a.tau is None else a.tau,
            surrogate_function=surrogate.ATan(),
            detach_reset=True,
            v_reset=lif_v_reset,
        )
    if a.neuron == "psn":
        return sjp.PSN(a.T)
    if a.neuron == "masked-psn":
        return sjp.MaskedPSN(a.k, a.T)
    if a.neuron == "sliding-psn":
        return sjp.SlidingPSN(a.k, exp_init=a.exp_init)
    return sjp.MPEPSN(
        a.T,
        tau=0.25 if a.tau is None else a.tau,
        estimate_from=a.mpe_estimate_from,
        sample_in_eval=a.mpe_sample_in_eval,
        mem_loss_weights=a.mpe_loss_weights,
    )


def finish(net: nn.Module, a: argparse.Namespace) -> nn.Module:
    """Multi-step mode everywhere, and the backend ``a.backend``."""
    functional.set_step_mode(net, "m")
    if a.neuron != "lif":
        sjp.set_backend(net, a.backend)
    elif a.backend == "cupy":
        functional.set_backend(net, "cupy", neuron.LIFNode)
    return net


def start_epoch(net: nn.Module, epoch: int, epochs: int) -> None:
    """Per-epoch schedules: the masked PSN's λ ramp (the PSN paper's)."""
    for m in net.modules():
        if isinstance(m, sjp.MaskedPSN):
            m.lambda_ = sjp.masked_psn_lambda(epoch, epochs)


def mpe_modules(net: nn.Module) -> List[sjp.MPEPSN]:
    return [m for m in net.modules() if isinstance(m, sjp.MPEPSN)]

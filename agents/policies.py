"""Policy networks: observations ``(batch, obs_dim)`` to k-subset logits ``(batch, n)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from subset_rl.estimators import IndirectLogits

__all__ = ["POLICIES", "FreeLogits", "IPLogits", "MLPLogits", "build_policy"]

POLICIES: tuple[str, ...] = ("auto", "mlp", "free", "ip")


class MLPLogits(nn.Module):
    """A tanh MLP from observations to logits (a conditional policy).

    Args:
        obs_dim: observation size.
        n: number of items.
        hidden: hidden layer sizes.
    """

    def __init__(self, obs_dim: int, n: int, hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = obs_dim
        for width in hidden:
            layers += [nn.Linear(last, width), nn.Tanh()]
            last = width
        layers.append(nn.Linear(last, n))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)


class FreeLogits(nn.Module):
    """One free logit vector shared by every context (an unconditional policy).

    Args:
        n: number of items.
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n))

    def forward(self, obs: Tensor) -> Tensor:
        return self.logits.expand(obs.shape[0], -1)


class IPLogits(nn.Module):
    r"""Unconditional logits :math:`W\psi + b` (the IP-CAE indirect parameterization).

    Args:
        n: number of items.
        embedding_dim: size of :math:`\psi`.
    """

    def __init__(self, n: int, embedding_dim: int = 32) -> None:
        super().__init__()
        self.ip = IndirectLogits(n, embedding_dim)

    def forward(self, obs: Tensor) -> Tensor:
        return self.ip().expand(obs.shape[0], -1)


def build_policy(policy: str | nn.Module, obs_dim: int, n: int, contextual: bool) -> nn.Module:
    """The policy module for a name, or the given module.

    ``"auto"`` is ``"mlp"`` for objectives whose observation carries the context and ``"free"``
    for context-free objectives (a constant observation).

    Raises:
        ValueError: for an unknown name.
        TypeError: for anything that is neither a name nor an ``nn.Module``.
    """
    if isinstance(policy, nn.Module):
        return policy
    if not isinstance(policy, str):
        raise TypeError(f"policy must be one of {POLICIES} or an nn.Module, found {policy!r}")
    if policy == "auto":
        policy = "mlp" if contextual else "free"
    if policy == "mlp":
        return MLPLogits(obs_dim, n)
    if policy == "free":
        return FreeLogits(n)
    if policy == "ip":
        return IPLogits(n)
    raise ValueError(f"policy must be one of {POLICIES} or an nn.Module, found {policy!r}")

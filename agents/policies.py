"""Policy networks: observations ``(batch, obs_dim)`` to k-subset logits ``(batch, n)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from subset_rl.defaults import POLICIES
from subset_rl.estimators import IndirectLogits

__all__ = ["POLICIES", "FreeLogits", "IPLogits", "MLPLogits", "PairwiseLogits", "build_policy"]



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


class PairwiseLogits(nn.Module):
    r"""Scores each item from its own features and the query's: a permutation-equivariant policy.

    For observations laid out as ``[query, item_1, ..., item_n]`` (each ``d`` features, as in
    ``KNNVoting-v0``), :math:`l_i = \mathrm{MLP}([q, x_i, (x_i - q)^2])`: the same small network
    for every item, so it learns "which item suits this query" instead of a map from a flat
    ``(n + 1) d`` vector to ``n`` logits.

    Args:
        n: number of items.
        d: features per item (and of the query).
        hidden: hidden width.
    """

    def __init__(self, n: int, d: int, hidden: int = 64) -> None:
        super().__init__()
        self.n, self.d = n, d
        self.net = nn.Sequential(
            nn.Linear(3 * d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, obs: Tensor) -> Tensor:
        x = obs.reshape(obs.shape[0], self.n + 1, self.d)
        query, items = x[:, :1].expand(-1, self.n, -1), x[:, 1:]
        return self.net(torch.cat([query, items, (items - query) ** 2], dim=-1)).squeeze(-1)


def build_policy(
    policy: str | nn.Module,
    obs_dim: int,
    n: int,
    contextual: bool,
    item_features: int | None = None,
) -> nn.Module:
    """The policy module for a name, or the given module.

    ``"auto"`` is ``"pairwise"`` when the observation is a query and ``n`` items of
    ``item_features`` features each (``obs_dim == (n + 1) * item_features``), ``"mlp"`` for other
    objectives whose observation carries the context, and ``"free"`` for context-free
    objectives (a constant observation).

    Raises:
        ValueError: for an unknown name, or ``"pairwise"`` without a query + items layout.
        TypeError: for anything that is neither a name nor an ``nn.Module``.
    """
    if isinstance(policy, nn.Module):
        return policy
    if not isinstance(policy, str):
        raise TypeError(f"policy must be one of {POLICIES} or an nn.Module, found {policy!r}")
    pairwise_ok = item_features is not None and obs_dim == (n + 1) * item_features
    if policy == "auto":
        policy = "pairwise" if pairwise_ok else "mlp" if contextual else "free"
    if policy == "pairwise":
        if not pairwise_ok:
            raise ValueError(
                f"policy 'pairwise' needs observations [query, item_1..item_n] of "
                f"(n + 1) * d features; found obs_dim={obs_dim} for n={n} "
                f"(item features: {item_features})"
            )
        return PairwiseLogits(n, int(item_features))
    if policy == "mlp":
        return MLPLogits(obs_dim, n)
    if policy == "free":
        return FreeLogits(n)
    if policy == "ip":
        return IPLogits(n)
    raise ValueError(f"policy must be one of {POLICIES} or an nn.Module, found {policy!r}")

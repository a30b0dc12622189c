r"""Relaxed top-k Gumbel-softmax (GS) and its straight-through variant (STGS).

Xie & Ermon (2019) relax the Gumbel top-k trick. With Gumbel-perturbed keys
:math:`g = l + G`, :math:`G_i \overset{iid}{\sim} \mathrm{Gumbel}(0, 1)`, the top-k of :math:`g`
is a draw of sequential sampling without replacement. Its relaxation at temperature
:math:`\tau > 0` runs ``k`` soft arg-max rounds, each softly removing what the last one picked:

.. math::

    \alpha^{(1)} = g, \qquad
    a^{(j)} = \operatorname{softmax}\bigl(\alpha^{(j)} / \tau\bigr), \qquad
    \alpha^{(j+1)} = \alpha^{(j)} + \log\bigl(1 - a^{(j)}\bigr), \qquad
    \tilde z = \sum_{j=1}^{k} a^{(j)}.

Each round sums to one, so :math:`\sum_i \tilde z_i = k` (an entry may exceed 1 at high
temperature, when an item is picked softly in several rounds), and as :math:`\tau \to 0` every
:math:`a^{(j)}` tends to the one-hot of the j-th largest key, so :math:`\tilde z` tends to the
k-hot top-k of :math:`g`. The estimator is biased twice: the relaxation, and the fact that Gumbel
top-k samples sequential-without-replacement rather than the conditional Poisson distribution.

STGS (straight-through) returns the hard top-k of the same keys in the forward pass and the
gradient of the relaxation in the backward pass:
:math:`z = \mathrm{topk}(g) + \tilde z - \bot\tilde z`.

References:
    * S. M. Xie, S. Ermon. Reparameterizable subset sampling via continuous relaxations.
      IJCAI 2019.
    * E. Jang, S. Gu, B. Poole. Categorical reparameterization with Gumbel-softmax. ICLR 2017.
    * Y. Bengio, N. Léonard, A. Courville. Estimating or propagating gradients through
      stochastic neurons for conditional computation. 2013 (straight-through).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_k, check_logits, check_positive, gumbel_like, topk_khot

__all__ = ["relaxed_topk", "straight_through_topk"]


def _relax_keys(keys: Tensor, k: int, tau: float) -> Tensor:
    tiny = torch.finfo(keys.dtype).tiny
    soft = torch.zeros_like(keys)
    alpha = keys
    for round_ in range(k):
        a = torch.softmax(alpha / tau, dim=-1)
        soft = soft + a
        if round_ + 1 < k:
            alpha = alpha + torch.log((1.0 - a).clamp_min(tiny))
    return soft


def relaxed_topk(
    logits: Tensor,
    k: int,
    tau: float = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""GS: relaxed top-k Gumbel-softmax sample (Xie & Ermon 2019), differentiable in ``logits``.

    Args:
        logits: ``(..., n)`` logits (``-inf`` = never chosen; each row needs ``k`` finite ones).
        k: subset size, ``1 <= k <= n``.
        tau: temperature :math:`\tau > 0`; smaller is closer to k-hot, with noisier gradients.
        generator: optional ``torch.Generator`` (on the logits' device) for the Gumbel noise.

    Returns:
        ``(..., n)`` relaxed k-hot vector: non-negative entries, each row summing to ``k``.
        Not exactly k-hot (see :func:`straight_through_topk` for a hard forward pass); at high
        temperature an entry can exceed 1 (an item picked softly in several rounds), and as
        :math:`\tau \to 0` the entries tend to the 0/1 top-k of the perturbed keys.
    """
    logits = check_logits(logits)
    k = check_k(k, logits.shape[-1])
    tau = check_positive(tau, "tau")
    keys = logits + gumbel_like(logits.detach(), generator)
    return _relax_keys(keys, k, tau)


def straight_through_topk(
    logits: Tensor,
    k: int,
    tau: float = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""STGS: hard Gumbel top-k in the forward pass, relaxed top-k gradient in the backward pass.

    :math:`z = \mathrm{topk}(l + G) + \tilde z - \bot\tilde z` with :math:`\tilde z` the
    :func:`relaxed_topk` of the same perturbed keys.

    Args:
        logits: ``(..., n)`` logits.
        k: subset size, ``1 <= k <= n``.
        tau: temperature of the backward relaxation.
        generator: optional ``torch.Generator`` for the Gumbel noise.

    Returns:
        ``(..., n)`` tensor that is exactly k-hot in value (a Gumbel top-k draw), whose gradient
        is that of the relaxation.
    """
    logits = check_logits(logits)
    k = check_k(k, logits.shape[-1])
    tau = check_positive(tau, "tau")
    keys = logits + gumbel_like(logits.detach(), generator)
    hard = topk_khot(keys.detach(), k)
    soft = _relax_keys(keys, k, tau)
    return hard + (soft - soft.detach())

r"""Exact KL divergence between two k-subset distributions, registered with torch.

Importing this module registers :func:`kl_ksubset_ksubset` for
``torch.distributions.kl_divergence(p, q)`` with ``p`` and ``q`` both
:class:`~subset_rl.KSubsetPolicy` (importing :mod:`subset_rl` does it). Stable-Baselines3's
``kl_divergence`` (used by sb3-contrib's TRPO) calls torch's on the ``.distribution`` of its
distributions, so TRPO works with :class:`~subset_rl.sb3.KSubsetActorCriticPolicy`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import register_kl

from .distribution import KSubsetPolicy

__all__ = ["kl_ksubset_ksubset"]


@register_kl(KSubsetPolicy, KSubsetPolicy)
def kl_ksubset_ksubset(p: KSubsetPolicy, q: KSubsetPolicy) -> Tensor:
    r"""Exact :math:`\mathrm{KL}(p \,\|\, q)` of two k-subset distributions with the same n and k.

    With :math:`\log p(z) = \langle l_p, z\rangle - \log Z_p` and
    :math:`Z_p = e_k(\exp l_p)` (likewise for ``q``), the log-ratio is linear in ``z``, so its
    expectation only needs the marginals :math:`\pi_p = E_p[z]`:

    .. math::

        \mathrm{KL}(p \,\|\, q) = E_p\!\left[\log \frac{p(z)}{q(z)}\right]
        = \sum_i \pi_{p,i}\,(l_{p,i} - l_{q,i}) - \log Z_p + \log Z_q .

    Masked items (logit ``-inf``): an item masked in ``p`` has :math:`\pi_{p,i} = 0` and
    contributes nothing (whatever ``q`` says); an item available in ``p`` but masked in ``q``
    (so ``p`` gives positive probability to subsets ``q`` excludes) makes the divergence
    ``+inf`` (for ``k >= 1``). Masked entries are replaced by safe values before any product,
    so neither the value nor the gradient holds NaN.

    Differentiable with respect to both logits: :math:`\nabla_{l_q} = \pi_q - \pi_p` and
    :math:`\nabla_{l_p} = \mathrm{Cov}_p(z)\,(l_p - l_q)`. Second derivatives (TRPO's
    Fisher-vector products) differentiate the marginals twice more, i.e. use third derivatives
    of :math:`\log Z_p`. The marginals are a lazy property: if ``p.marginals`` was first read
    under ``torch.no_grad()`` it carries no graph, and the :math:`\nabla_{l_p}` part is lost.

    Args:
        p: The distribution the expectation is taken under, batch shape ``B_p``.
        q: The reference distribution, batch shape ``B_q`` broadcastable with ``B_p``.

    Returns:
        Tensor of shape ``broadcast(B_p, B_q)``, ``>= 0`` up to rounding, ``+inf`` where
        ``q`` excludes an item ``p`` can choose.

    Raises:
        ValueError: If ``p`` and ``q`` have different ``n`` or ``k``, or batch shapes that do
            not broadcast.

    Example:
        >>> p = KSubsetPolicy(torch.tensor([1.0, 0.0, -1.0]), k=2)
        >>> q = KSubsetPolicy(torch.zeros(3), k=2)
        >>> torch.distributions.kl_divergence(p, q)
        tensor(0.2662)
    """
    n_p, n_q = p.event_shape[-1], q.event_shape[-1]
    if n_p != n_q:
        raise ValueError(
            f"kl_divergence(p, q) of KSubsetPolicy: expected the same number of items n, found "
            f"n={n_p} for p (logits shape {tuple(p.logits.shape)}) and n={n_q} for q (logits "
            f"shape {tuple(q.logits.shape)})"
        )
    if p.k != q.k:
        raise ValueError(
            f"kl_divergence(p, q) of KSubsetPolicy: expected the same subset size k, found "
            f"k={p.k} for p and k={q.k} for q (the supports are disjoint)"
        )
    try:
        torch.broadcast_shapes(p.batch_shape, q.batch_shape)
    except RuntimeError as err:
        raise ValueError(
            f"kl_divergence(p, q) of KSubsetPolicy: expected broadcastable batch shapes, found "
            f"{tuple(p.batch_shape)} for p and {tuple(q.batch_shape)} for q"
        ) from err

    lp, lq = p.logits, q.logits
    avail_p, avail_q = torch.isfinite(lp), torch.isfinite(lq)
    both = avail_p & avail_q
    safe_p = torch.where(avail_p, lp, torch.zeros_like(lp))
    safe_q = torch.where(avail_q, lq, torch.zeros_like(lq))
    diff = torch.where(both, safe_p - safe_q, torch.zeros_like(safe_p - safe_q))
    kl = (p.marginals * diff).sum(-1) - p.log_normalizer + q.log_normalizer
    if p.k == 0:  # one subset, the empty one, under both
        return kl
    excluded = (avail_p & ~avail_q).any(-1)
    return torch.where(excluded, torch.full_like(kl, math.inf), kl)

r"""SIMPLE: exact k-subset sample forward, gradient of the exact marginals backward.

Ahmed et al. (2023) draw :math:`z \sim p_l` exactly (here the conditional Poisson sampler of
:class:`~subset_rl.KSubsetPolicy`) and replace the Jacobian of the non-differentiable sample by
that of its expectation, the marginals :math:`\pi(l) = E[z] = \nabla_l \log e_k(\exp l)`:

.. math::

    z_{\text{out}} = z + \pi(l) - \bot\pi(l), \qquad
    \nabla_l L(z_{\text{out}}) = \frac{\partial \pi}{\partial l}^{\!\top} \nabla_z L(z)
    = \nabla^2_l \log e_k(\exp l)\; \nabla_z L(z).

The forward value is the exact sample; the backward is a vector-Hessian product of the log
normalizer, obtained by differentiating the (differentiable) exact marginals of
:func:`subset_rl.marginals`. The estimator is biased unless :math:`L` is linear in :math:`z`
(then it is exact), but has low variance.

References:
    * K. Ahmed, Z. Zeng, M. Niepert, G. Van den Broeck. SIMPLE: A gradient estimator for
      k-subset sampling. ICLR 2023.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..distribution import KSubsetPolicy
from ..poisson_binomial import marginals
from ._common import check_k, check_logits

__all__ = ["simple_sample"]


def simple_sample(logits: Tensor, k: int, *, generator: torch.Generator | None = None) -> Tensor:
    r"""SIMPLE: exact k-hot sample :math:`z \sim p_l` with the gradient of :math:`\pi(l)`.

    Args:
        logits: ``(..., n)`` logits (``-inf`` = never chosen); one draw per row. To draw several
            samples per context, expand the logits (e.g. ``logits.expand(S, *logits.shape)``).
        k: subset size, ``1 <= k <= n``.
        generator: optional ``torch.Generator`` for the exact sampler.

    Returns:
        ``(..., n)`` tensor, exactly k-hot in value, with backward
        :math:`\nabla_l = (\partial\pi/\partial l)^\top \nabla_z`.
    """
    logits = check_logits(logits)
    k = check_k(k, logits.shape[-1])
    z = KSubsetPolicy(logits.detach(), k).sample(generator=generator)
    if not (logits.requires_grad and torch.is_grad_enabled()):
        return z
    pi = marginals(logits, k)
    return z + (pi - pi.detach())

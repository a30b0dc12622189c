r"""Intermediate-loss sampling, generalised from categorical draws to k-subsets.

**The categorical proposal.** Draw :math:`z \sim p_l` exactly in the forward pass. In the
backward pass, given the downstream gradient :math:`g = \nabla_z L` at the draw, form the
distribution that one gradient step of size :math:`\lambda` on the downstream loss would give,
:math:`q = p_{l'}` with :math:`l' = l - \lambda g` (for a categorical,
:math:`q \propto p\,e^{-\lambda g}`), and backpropagate through the *intermediate loss*

.. math::

    \mathcal{L}_{\text{int}}(l) = \frac{1}{\lambda}\,\mathrm{KL}\bigl(\bot q \,\|\, p_l\bigr),

i.e. the gradient passed to the logits is :math:`\nabla_l \mathcal{L}_{\text{int}}` instead of
the (undefined) Jacobian of the draw. Fitting :math:`p_l` to the improved target by maximum
likelihood is the same idea as the I-MLE target distribution, but with exact expectations in
place of a perturb-and-MAP finite difference.

**Generalisation to k-subsets.** The k-subset (conditional Poisson) family
:math:`p_l(z) = \exp(\langle l, z\rangle - A(l))`, :math:`A(l) = \log e_k(\exp l)`, is an
exponential family with sufficient statistic :math:`z` and mean parameter
:math:`\pi(l) = \nabla A(l)`, the exact marginals. So the KL between two members is available in
closed form from the exact log normalizer and marginals (:func:`subset_rl.log_normalizer`,
:func:`subset_rl.marginals`), with no enumeration of the :math:`\binom{n}{k}` subsets:

.. math::

    \mathrm{KL}(p_{l'} \,\|\, p_l) = \langle \pi(l'),\, l' - l\rangle - A(l') + A(l),

and its gradient with respect to :math:`l` is :math:`\pi(l) - \pi(l')`. The estimator is
therefore

.. math::

    \widehat{\nabla}_l L = \frac{\pi(l) - \pi(l - \lambda g)}{\lambda}
    \;\xrightarrow[\lambda \to 0]{}\; \nabla^2 A(l)\, g,

an exact finite difference of the marginals along the downstream gradient (as
:math:`\lambda \to 0` it tends to SIMPLE's vector-Hessian product; larger :math:`\lambda` looks
further ahead). For ``k = 1`` it reduces to the categorical proposal, with
:math:`\pi = \operatorname{softmax}(l)`.

References:
    * M. Niepert, P. Minervini, L. Franceschi. Implicit MLE. NeurIPS 2021 (target distribution
      :math:`l - \lambda \nabla_z L` and the MLE-style intermediate loss).
    * K. Ahmed et al. SIMPLE. ICLR 2023 (the :math:`\lambda \to 0` limit).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..distribution import KSubsetPolicy
from ..poisson_binomial import log_normalizer, marginals
from ._common import check_k, check_logits, check_positive

__all__ = ["intermediate_loss_sample", "ksubset_kl_divergence"]


def ksubset_kl_divergence(q_logits: Tensor, p_logits: Tensor, k: int) -> Tensor:
    r""":math:`\mathrm{KL}(q \| p)` between two k-subset distributions, in closed form.

    .. math::

        \mathrm{KL}(p_{l_q} \| p_{l_p}) = \langle \pi(l_q),\, l_q - l_p\rangle - A(l_q) + A(l_p),
        \qquad A = \log e_k \circ \exp.

    Differentiable in both arguments (its gradient in ``p_logits`` is
    :math:`\pi(l_p) - \pi(l_q)`). Items masked (``-inf``) in ``q`` contribute nothing; an item
    available in ``q`` but masked in ``p`` makes the divergence ``+inf``.

    Args:
        q_logits: ``(..., n)`` logits of :math:`q`.
        p_logits: ``(..., n)`` logits of :math:`p`, broadcastable with ``q_logits``.
        k: subset size.

    Returns:
        ``(...)`` divergences (broadcast batch shape), ``>= 0`` up to rounding.
    """
    q_logits = check_logits(q_logits, "q_logits")
    p_logits = check_logits(p_logits, "p_logits")
    if q_logits.shape[-1] != p_logits.shape[-1]:
        raise ValueError(
            "q_logits and p_logits must have the same number of items n, found "
            f"{q_logits.shape[-1]} and {p_logits.shape[-1]}"
        )
    k = check_k(k, q_logits.shape[-1])
    q_logits, p_logits = torch.broadcast_tensors(q_logits, p_logits)
    pi_q = marginals(q_logits, k)
    avail = torch.isfinite(q_logits)
    diff = torch.where(avail, q_logits - p_logits, torch.zeros_like(q_logits))
    cross = torch.where(avail, pi_q * diff, torch.zeros_like(diff)).sum(-1)
    return cross - log_normalizer(q_logits, k) + log_normalizer(p_logits, k)


class _IntermediateLoss(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, k: int, lambda_: float, generator: torch.Generator | None
    ) -> Tensor:
        z = KSubsetPolicy(logits, k).sample(generator=generator)
        ctx.save_for_backward(logits)
        ctx.k, ctx.lambda_ = k, lambda_
        return z

    @staticmethod
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        (logits,) = ctx.saved_tensors
        k, lam = ctx.k, ctx.lambda_
        with torch.enable_grad():
            current = logits.detach().requires_grad_(True)
            target = (logits - lam * grad_z).detach()
            loss = ksubset_kl_divergence(target, current, k).sum() / lam
            (grad,) = torch.autograd.grad(loss, current)
        return grad, None, None, None


def intermediate_loss_sample(
    logits: Tensor,
    k: int,
    lambda_: float = 1.0,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Exact k-subset draw whose backward goes through the intermediate KL loss.

    Forward: :math:`z \sim p_l` (exact conditional Poisson sampler). Backward: the gradient of
    :math:`\frac{1}{\lambda}\mathrm{KL}(p_{l - \lambda g} \| p_l)` w.r.t. :math:`l`, which is
    :math:`(\pi(l) - \pi(l - \lambda g)) / \lambda` (see the module docstring).

    Args:
        logits: ``(..., n)`` logits, one draw per row (expand them for several).
        k: subset size, ``1 <= k <= n``.
        lambda_: step size :math:`\lambda > 0` of the target distribution.
        generator: optional ``torch.Generator`` for the exact sampler.

    Returns:
        ``(..., n)`` exactly k-hot tensor with the intermediate-loss backward.
    """
    logits = check_logits(logits)
    k = check_k(k, logits.shape[-1])
    lambda_ = check_positive(lambda_, "lambda_")
    return _IntermediateLoss.apply(logits, k, lambda_, generator)

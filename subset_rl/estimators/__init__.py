r"""Gradient estimators for k-subset sampling.

Score-function estimators (any black-box ``f``):

* :func:`sfess_surrogate` / :func:`sfess` / :func:`sfess_gradient`: SFESS, optionally with the
  leave-one-out baseline (SFESS+VR), gradient :math:`\frac1N\sum_j A_j (z_j - \pi)`.

Pathwise estimators (differentiable ``f``), each a function from batched logits ``(..., n)`` to
a k-hot (or relaxed k-hot) tensor with its own backward:

* :func:`relaxed_topk` (GS), :func:`straight_through_topk` (STGS),
* :func:`simple_sample` (SIMPLE),
* :func:`imle_topk` (I-MLE) and :class:`AdaptiveIMLE` (AIMLE),
* :func:`intermediate_loss_sample` (intermediate-loss sampling via :func:`ksubset_kl_divergence`).

Parameterizations: :class:`IndirectLogits` (IP, :math:`l = W\psi + b`) and
:class:`ConcreteSelector` (concrete autoencoder, direct or IP-CAE) with :func:`unique_percentage`.
"""

from .imle import AdaptiveIMLE, imle_topk, sum_of_gamma_noise
from .indirect import ConcreteSelector, IndirectLogits, unique_percentage
from .intermediate import intermediate_loss_sample, ksubset_kl_divergence
from .relaxed import relaxed_topk, straight_through_topk
from .score_function import (
    SFESSResult,
    loo_advantages,
    rank_utilities,
    sfess,
    sfess_gradient,
    sfess_surrogate,
)
from .simple import simple_sample

__all__ = [
    "AdaptiveIMLE",
    "ConcreteSelector",
    "IndirectLogits",
    "SFESSResult",
    "imle_topk",
    "intermediate_loss_sample",
    "ksubset_kl_divergence",
    "loo_advantages",
    "rank_utilities",
    "relaxed_topk",
    "sfess",
    "sfess_gradient",
    "sfess_surrogate",
    "simple_sample",
    "straight_through_topk",
    "sum_of_gamma_noise",
    "unique_percentage",
]

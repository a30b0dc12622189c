r"""The two protocols of the experiments: ``"exact"`` (ours, the default) and ``"paper"``.

``"paper"`` reproduces what the SFESS paper's released code (Wijk, Vinuesa & Azizpour,
ICLR 2025) does where it differs from the exact treatment of the k-subset distribution used by
``"exact"``. The differences, one per row of :data:`PROTOCOL_DIFFERENCES`:

* **SFESS / SFESS+VR samples.** ``"paper"`` draws Gumbel top-k samples (sequential sampling
  without replacement, ``KSubsetPolicy(..., sampler="gumbel")``) and scores them with the exact
  conditional-Poisson score :math:`z - \pi`; the estimator is then biased. ``"exact"`` draws
  exact conditional-Poisson samples (unbiased).
* **I-MLE noise.** ``"paper"`` perturbs the logits with Gumbel(0, 1) noise (scaled by the noise
  temperature); ``"exact"`` with the sum-of-gamma noise of Niepert et al. tailored to top-k.
* **SIMPLE.** ``"paper"`` (:func:`paper_simple_sample`) follows the SIMPLE code the paper ships:
  Gumbel top-k on the raw scores :math:`s` forward, and backward the gradient of the marginals of
  independent Bernoulli variables with :math:`\log P(b_i = 1) = s_i` conditioned on
  :math:`\sum b = k`, the weight of :math:`b_i = 0`, :math:`\log(1 - e^{-|s_i|})`, being
  detached; equivalently the exact marginals of the effective logits
  :math:`s - \bot\log(1 - e^{-|s|})`. ``"exact"`` follows the SIMPLE paper: an exact sample of
  :math:`p_s` forward and the gradient of its exact marginals :math:`\pi(s)` backward.
* **VAE KL term.** ``"paper"`` (:func:`approx_kl_to_uniform`) uses the approximate KL of Niepert
  et al.: per latent variable, the KL of the *categorical* :math:`\mathrm{softmax}(l_j)` to the
  uniform categorical, :math:`\log n - H(\mathrm{softmax}(l_j))`, averaged over the ``d``
  latents (and included in the score-function reward, as in the paper's code). ``"exact"`` uses
  the exact KL of the k-subset posterior to the uniform k-subset prior,
  :math:`\log\binom{n}{k} - H(p_{l_j})`, summed over the ``d`` latents (the negative ELBO).
* **Feature-selection decoder.** ``"paper"`` has two hidden layers of 200 (the released code's
  ``--hidden 200 200``); ``"exact"`` one (the paper's text).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..distribution import KSubsetPolicy
from ..estimators._common import check_k, check_logits, check_positive, gumbel_like
from ..estimators.imle import _PerturbAndMAP, _StepRule
from ..poisson_binomial import marginals

__all__ = [
    "DEFAULT_HIDDEN",
    "PROTOCOLS",
    "PROTOCOL_DIFFERENCES",
    "ProtocolDifference",
    "approx_kl_to_uniform",
    "check_protocol",
    "paper_imle_topk",
    "paper_simple_logits",
    "paper_simple_sample",
]

PROTOCOLS = ("exact", "paper")
"""``"exact"``: ours (exact samples, exact KL); ``"paper"``: the paper's released code."""

DEFAULT_HIDDEN = {"exact": (200,), "paper": (200, 200)}
"""Hidden sizes of the feature-selection (and IP-CAE) decoder per protocol."""


class ProtocolDifference(NamedTuple):
    """One difference between the protocols (a row of the table in ``examples/RESULTS.md``).

    Attributes:
        what: The part of the experiments concerned.
        exact: What ``--protocol exact`` does.
        paper: What ``--protocol paper`` (the paper's code) does.
        reason: Why ``exact`` differs.
    """

    what: str
    exact: str
    paper: str
    reason: str


PROTOCOL_DIFFERENCES: tuple[ProtocolDifference, ...] = (
    ProtocolDifference(
        "SFESS, SFESS+VR samples",
        "exact conditional-Poisson samples",
        "Gumbel top-k samples",
        "the score z - pi is that of the conditional Poisson distribution: only its own samples "
        "make the estimator unbiased (the paper names the mismatch as its limitation)",
    ),
    ProtocolDifference(
        "I-MLE perturbation",
        "sum-of-gamma noise (Niepert et al. 2021)",
        "Gumbel(0, 1) noise",
        "sum-of-gamma perturb-and-MAP marginals are closer to those of the k-subset distribution",
    ),
    ProtocolDifference(
        "SIMPLE",
        "exact sample forward, gradient of the exact marginals pi(s)",
        "Gumbel top-k on the raw scores forward; marginals with the scores as log-probabilities "
        "(log P(b=1) = s, detached log P(b=0) = log(1 - e^-|s|)) backward",
        "the SIMPLE paper's estimator, with samples and marginals of the same distribution",
    ),
    ProtocolDifference(
        "VAE KL term (and metric)",
        "exact KL(k-subset posterior || uniform k-subsets), summed over the d latents",
        "approximate KL (categorical softmax vs uniform, Niepert et al.), averaged over d",
        "the exact negative ELBO of the model that is trained",
    ),
    ProtocolDifference(
        "feature-selection decoder",
        "one hidden layer of 200 (the paper's text)",
        "two hidden layers of 200 (the released code, --hidden 200 200)",
        "the paper's text",
    ),
)
"""Every difference between ``--protocol exact`` and ``--protocol paper``."""


def check_protocol(protocol: object) -> str:
    """Returns ``protocol`` if it is one of :data:`PROTOCOLS`.

    Raises:
        ValueError: Otherwise (the message lists the known protocols).
    """
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {list(PROTOCOLS)}, found {protocol!r}")
    return protocol


def paper_simple_logits(scores: Tensor) -> Tensor:
    r"""Effective logits of the paper's SIMPLE marginals: :math:`s - \bot\log(1 - e^{-|s|})`.

    The paper's SIMPLE code gives literal :math:`b_i = 1` the log-weight :math:`s_i` and
    :math:`b_i = 0` the detached log-weight :math:`\log(1 - e^{-|s_i|})` (``log1mexp``, with
    :math:`|s_i| = 0` replaced by ``1e-10``); conditioning on :math:`\sum b = k` gives the
    conditional Poisson distribution with these logits. For :math:`s_i < 0` (a true
    log-probability) they are :math:`\mathrm{logit}(e^{s_i})`.

    Args:
        scores: ``(..., n)`` raw scores (``-inf`` allowed).

    Returns:
        ``(..., n)`` logits, differentiable in ``scores`` with Jacobian the identity.
    """
    scores = check_logits(scores, "scores")
    with torch.no_grad():
        a = scores.abs().clamp_min(1e-10)
        ln2 = math.log(2.0)
        neg = torch.where(a < ln2, torch.log(-torch.expm1(-a)), torch.log1p(-torch.exp(-a)))
    return scores - neg


def paper_simple_sample(
    scores: Tensor, k: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """SIMPLE as in the paper's code: Gumbel top-k forward, :func:`paper_simple_logits` marginals.

    Args:
        scores: ``(..., n)`` raw scores; one draw per row.
        k: Subset size, ``1 <= k <= n``.
        generator: Optional generator of the Gumbel noise.

    Returns:
        ``(..., n)`` k-hot in value; backward: the Jacobian of the marginals of
        ``paper_simple_logits(scores)``.
    """
    scores = check_logits(scores, "scores")
    k = check_k(k, scores.shape[-1])
    z = KSubsetPolicy(scores.detach(), k, sampler="gumbel", validate_args=False).sample(
        generator=generator
    )
    if not (scores.requires_grad and torch.is_grad_enabled()):
        return z
    pi = marginals(paper_simple_logits(scores), k)
    return z + (pi - pi.detach())


def paper_imle_topk(
    logits: Tensor,
    k: int,
    lambda_: float = 1.0,
    *,
    noise_temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""I-MLE as in the paper's code: top-k of :math:`l + \tau G`, :math:`G \sim` Gumbel(0, 1).

    The backward is the library's I-MLE finite difference (target :math:`l - \lambda\nabla_z L`
    with the same noise, divided by :math:`\lambda`; the paper uses :math:`\lambda = 1`).

    Args:
        logits: ``(..., n)`` logits, one draw per row.
        k: Subset size.
        lambda_: Step size of the target distribution.
        noise_temperature: Scale :math:`\tau` of the Gumbel noise.
        generator: Optional generator of the noise.

    Returns:
        ``(..., n)`` exactly k-hot tensor with the I-MLE backward.
    """
    logits = check_logits(logits)
    k = check_k(k, logits.shape[-1])
    lambda_ = check_positive(lambda_, "lambda_")
    tau = check_positive(noise_temperature, "noise_temperature")
    noise = tau * gumbel_like(logits.detach(), generator)
    return _PerturbAndMAP.apply(logits, noise, k, _StepRule(lambda_), False)


def approx_kl_to_uniform(logits: Tensor) -> Tensor:
    r"""The paper's approximate KL: :math:`\log n - H(\mathrm{softmax}(l))` per row.

    Args:
        logits: ``(..., n)`` logits of one latent variable per row.

    Returns:
        ``logits.shape[:-1]``: the KL of the categorical ``softmax(logits)`` to the uniform one.
        The paper's VAE averages it over the latents (and the batch).
    """
    logits = check_logits(logits)
    n = logits.shape[-1]
    log_p = torch.log_softmax(logits, dim=-1)
    entropy = -(log_p.exp() * log_p).nan_to_num(nan=0.0).sum(-1)
    return math.log(n) - entropy

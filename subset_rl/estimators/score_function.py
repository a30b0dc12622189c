r"""Score-function estimators for k-subset sampling: SFESS and SFESS with a leave-one-out baseline.

For :math:`z \sim p_l` (the k-subset distribution :class:`~subset_rl.KSubsetPolicy`) and any
black-box :math:`f`, the score of the conditional Poisson distribution is available in closed
form, :math:`\nabla_l \log p_l(z) = z - \pi(l)` with :math:`\pi` the exact marginals, so

.. math::

    \nabla_l\, \mathbb{E}_{z \sim p_l}[f(z)] = \mathbb{E}[f(z)\,(z - \pi)]
    \approx \frac{1}{N} \sum_{j=1}^N A_j\,(z_j - \pi), \qquad z_j \overset{iid}{\sim} p_l,

with advantages :math:`A_j = f(z_j)` (SFESS) or, for SFESS+VR, the leave-one-out baseline

.. math::

    A_j = f(z_j) - \frac{1}{N-1}\sum_{i \ne j} f(z_i) = \frac{N}{N-1}\bigl(f(z_j) - \bar f\bigr).

Because the baseline of sample :math:`j` is independent of :math:`z_j` and
:math:`\mathbb{E}[z_j - \pi] = 0`, the estimate stays unbiased. Subtracting the plain mean
:math:`\bar f` (which contains :math:`f(z_j)`) instead would shrink the expectation by
:math:`(N-1)/N`; that is why the baseline here is the true leave-one-out mean.

Unbiasedness needs *exact* samples of :math:`p_l` (``sampler="exact"``). Gumbel top-k draws
come from a different distribution and bias the estimate (the limitation noted by the SFESS paper).

References:
    * K. Wijk, R. Vinuesa, H. Azizpour. SFESS: Score Function Estimators for k-Subset Sampling.
      ICLR 2025.
    * W. Kool, H. van Hoof, M. Welling. Buy 4 REINFORCE samples, get a baseline for free! 2019.
    * R. J. Williams. Simple statistical gradient-following algorithms for connectionist
      reinforcement learning. Machine Learning 8, 1992.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from ..distribution import KSubsetPolicy
from ..poisson_binomial import marginals
from ._common import check_int, check_tensor

__all__ = ["SFESSResult", "loo_advantages", "sfess", "sfess_gradient", "sfess_surrogate"]

Baseline = Literal["loo", "none"]
Reduction = Literal["mean", "sum", "none"]
_BASELINES = ("loo", "none")
_REDUCTIONS = ("mean", "sum", "none")


class SFESSResult(NamedTuple):
    """What :func:`sfess` returns.

    Attributes:
        surrogate: scalar (or ``batch_shape`` for ``reduction="none"``) whose value is the Monte
            Carlo mean reward and whose gradient is the SFESS(+VR) estimate.
        samples: the k-hot draws, ``(N, *batch_shape, n)``.
        rewards: ``f(samples)``, ``(N, *batch_shape)``.
    """

    surrogate: Tensor
    samples: Tensor
    rewards: Tensor


def loo_advantages(rewards: Tensor) -> Tensor:
    r"""Leave-one-out advantages :math:`A_j = f_j - \frac{1}{N-1}\sum_{i \ne j} f_i` along dim 0.

    Args:
        rewards: ``(N, ...)`` rewards of ``N >= 2`` samples of the same context.

    Returns:
        ``(N, ...)`` advantages (same dtype and device), computed without gradient tracking.

    Raises:
        ValueError: if ``N < 2`` (a leave-one-out baseline needs another sample).
    """
    rewards = check_tensor(rewards, "rewards")
    if rewards.dim() < 1:
        raise ValueError("rewards must have a leading sample dimension (N, ...), found shape ()")
    num = rewards.shape[0]
    if num < 2:
        raise ValueError(
            "the leave-one-out baseline needs N >= 2 samples per context along dim 0, found "
            f"N={num} (rewards shape {tuple(rewards.shape)}); draw more samples or use "
            'baseline="none"'
        )
    r = rewards.detach()
    total = r.sum(0, keepdim=True)
    return r - (total - r) / (num - 1)


def _check_samples(dist: KSubsetPolicy, z: Tensor, rewards: Tensor) -> None:
    if not isinstance(dist, KSubsetPolicy):
        raise TypeError(f"dist must be a KSubsetPolicy, found {type(dist).__name__}")
    check_tensor(z, "z")
    check_tensor(rewards, "rewards")
    expected = dist.batch_shape + dist.event_shape
    if z.dim() != len(expected) + 1 or z.shape[1:] != expected:
        raise ValueError(
            "z must have shape (N, *batch_shape, n) = (N, "
            f"{', '.join(str(s) for s in expected)}), found {tuple(z.shape)}"
        )
    if rewards.shape != z.shape[:-1]:
        raise ValueError(
            f"rewards must have shape (N, *batch_shape) = {tuple(z.shape[:-1])} matching z, "
            f"found {tuple(rewards.shape)}"
        )


def _advantages(rewards: Tensor, baseline: Baseline | Tensor) -> Tensor:
    if isinstance(baseline, Tensor):
        try:
            return (rewards.detach() - baseline.detach()).expand(rewards.shape)
        except RuntimeError as err:
            raise ValueError(
                f"a tensor baseline must broadcast to the rewards' shape {tuple(rewards.shape)}, "
                f"found {tuple(baseline.shape)}"
            ) from err
    if baseline == "loo":
        return loo_advantages(rewards)
    if baseline == "none":
        return rewards.detach()
    raise ValueError(f"baseline must be one of {_BASELINES} or a Tensor, found {baseline!r}")


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, found {reduction!r}")


def sfess_surrogate(
    dist: KSubsetPolicy,
    z: Tensor,
    rewards: Tensor,
    baseline: Baseline | Tensor = "loo",
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Surrogate objective whose gradient is the SFESS(+VR) estimate of :math:`\nabla E[f]`.

    Per context (batch entry) the surrogate is

    .. math::

        S = \frac{1}{N}\sum_j \Bigl[f(z_j) + A_j\bigl(\log p_l(z_j) - \bot\log p_l(z_j)\bigr)\Bigr],

    where :math:`\bot` stops gradients: its value is the Monte Carlo mean reward and its gradient
    w.r.t. the logits (and so w.r.t. any network that produced them) is
    :math:`\frac{1}{N}\sum_j A_j (z_j - \pi)`. Call ``.backward()`` on it to *ascend*
    :math:`E[f]` with a maximiser, or on ``-surrogate`` / with a minimiser when ``f`` is a loss:
    the gradient points uphill of :math:`E[f]` in both cases.

    Args:
        dist: the policy that drew ``z``; its logits carry the graph to the parameters.
        z: ``(N, *batch_shape, n)`` k-hot samples of ``dist`` (``N`` draws of every context).
        rewards: ``(N, *batch_shape)`` values ``f(z)``; treated as constants (detached).
        baseline: ``"loo"`` (leave-one-out, needs ``N >= 2``), ``"none"`` (plain SFESS), or a
            tensor broadcastable to ``rewards`` subtracted as is (e.g. a learned value). A
            tensor baseline must not depend on ``z_j`` for the estimate to stay unbiased.
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for ``batch_shape``.

    Returns:
        The surrogate (a scalar unless ``reduction="none"``).

    Raises:
        TypeError: if ``dist`` is not a :class:`~subset_rl.KSubsetPolicy` or inputs are not tensors.
        ValueError: on shape mismatches, an unknown option, or ``baseline="loo"`` with ``N < 2``.
    """
    _check_samples(dist, z, rewards)
    adv = _advantages(rewards, baseline)
    log_p = dist.log_prob(z)
    per_sample = rewards.detach() + adv * (log_p - log_p.detach())
    return _reduce(per_sample.mean(0), reduction)


def sfess_gradient(
    dist: KSubsetPolicy, z: Tensor, rewards: Tensor, baseline: Baseline | Tensor = "loo"
) -> Tensor:
    r"""The SFESS(+VR) estimate :math:`\frac{1}{N}\sum_j A_j (z_j - \pi)` itself, w.r.t. the logits.

    Same estimator as :func:`sfess_surrogate`, returned explicitly (no autograd), for analysis.

    Args:
        dist: the policy that drew ``z``.
        z: ``(N, *batch_shape, n)`` k-hot samples.
        rewards: ``(N, *batch_shape)`` rewards.
        baseline: as in :func:`sfess_surrogate`.

    Returns:
        ``(*batch_shape, n)`` gradient estimate per context, no gradient attached.
    """
    _check_samples(dist, z, rewards)
    adv = _advantages(rewards, baseline)
    with torch.no_grad():
        pi = marginals(dist.logits.detach(), dist.k)
        return (adv.unsqueeze(-1) * (z.to(pi.dtype) - pi)).mean(0)


def sfess(
    dist: KSubsetPolicy,
    f: Callable[[Tensor], Tensor],
    num_samples: int,
    baseline: Baseline | Tensor = "loo",
    reduction: Reduction = "mean",
    generator: torch.Generator | None = None,
) -> SFESSResult:
    """Draw ``num_samples`` subsets per context, score them with ``f``, build the surrogate.

    ``num_samples`` is the variance-reduction knob: with ``baseline="loo"`` each sample's
    baseline is the mean reward of the other ``num_samples - 1``.

    Args:
        dist: the policy (use ``sampler="exact"`` for an unbiased estimate).
        f: batched black box, ``(N, *batch_shape, n)`` k-hot -> ``(N, *batch_shape)`` rewards.
        num_samples: ``N``, draws per context (``>= 2`` for ``"loo"``).
        baseline: as in :func:`sfess_surrogate`.
        reduction: as in :func:`sfess_surrogate`.
        generator: optional ``torch.Generator`` for the draws.

    Returns:
        :class:`SFESSResult` ``(surrogate, samples, rewards)``.
    """
    num_samples = check_int(num_samples, "num_samples", 1)
    if isinstance(baseline, str) and baseline == "loo" and num_samples < 2:
        raise ValueError(
            f"the leave-one-out baseline needs num_samples >= 2, found num_samples={num_samples}; "
            'use more samples or baseline="none"'
        )
    z = dist.sample((num_samples,), generator=generator)
    rewards = f(z)
    check_tensor(rewards, "f(z)")
    surrogate = sfess_surrogate(dist, z, rewards, baseline=baseline, reduction=reduction)
    return SFESSResult(surrogate, z, rewards)


def rank_utilities(rewards: Tensor) -> Tensor:
    r"""NES fitness shaping: rewards replaced by centred weights of their ranks (along dim 0).

    For ``N`` rewards of one context, the one of rank :math:`r` (1 = best) gets

    .. math::

        u_r = \frac{\max(0, \log(N/2 + 1) - \log r)}{\sum_{s=1}^N \max(0, \log(N/2 + 1)
        - \log s)} - \frac1N,

    (Wierstra et al., "Natural Evolution Strategies", JMLR 2014): the weights sum to zero, the
    better half gets positive weight decreasing with rank, the rest ``-1/N``. Equal rewards share
    the mean of their weights; NaN ranks last. The result does not depend on the rewards' scale
    or on any monotone transform of them, which makes a score-function step robust to heavy
    tails, but its expectation is not :math:`\nabla E[f]` (use it for search, not for unbiased
    estimates).

    Args:
        rewards: ``(N, *batch_shape)`` rewards.

    Returns:
        ``(N, *batch_shape)`` utilities in the rewards' dtype (``N = 1`` gives zeros).
    """
    if not isinstance(rewards, Tensor):
        raise TypeError(f"rewards: expected a Tensor, found {type(rewards).__name__}")
    if rewards.dim() < 1:
        raise ValueError(f"rewards: expected shape (N, ...), found {tuple(rewards.shape)}")
    num = rewards.shape[0]
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    r = torch.arange(1, num + 1, dtype=torch.float64, device=rewards.device)
    w = (math.log(num / 2 + 1) - torch.log(r)).clamp_min(0.0)
    w = (w / w.sum() - 1.0 / num).to(dtype)
    v = rewards.detach().to(dtype)
    v = torch.where(torch.isnan(v), torch.full_like(v, -math.inf), v)
    order = torch.argsort(v, dim=0, descending=True, stable=True)
    shape = (num,) + (1,) * (v.dim() - 1)
    u = torch.empty_like(v).scatter_(0, order, w.reshape(shape).expand_as(v).contiguous())
    equal = (v.unsqueeze(0) == v.unsqueeze(1)).to(dtype)  # (N, N, *batch)
    return (equal * u.unsqueeze(0)).sum(1) / equal.sum(1)

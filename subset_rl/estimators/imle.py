r"""I-MLE and adaptive I-MLE (AIMLE): perturb-and-MAP with a finite-difference target.

**Forward.** Perturb the logits with sum-of-gamma noise and take the MAP state of the k-subset
distribution, i.e. the top-k (Niepert et al. 2021):

.. math::

    z = \mathrm{MAP}(l + \epsilon) = \mathrm{topk}(l + \epsilon), \qquad
    \epsilon = \frac{\tau}{k}\Bigl(\sum_{i=1}^{s}
        \Gamma\bigl(\tfrac1k, \tfrac{k}{i}\bigr) - \log s\Bigr),

the sum-of-gamma noise whose perturb-and-MAP marginals match those of a k-subset distribution
more closely than Gumbel noise (:math:`\Gamma(\alpha, \beta)` has shape :math:`\alpha` and scale
:math:`\beta`; :math:`s` terms, temperature :math:`\tau`).

**Backward.** Given :math:`g = \nabla_z L`, the target distribution has logits
:math:`l' = l - \lambda g` (one step of size :math:`\lambda` downhill); with the *same* noise,

.. math::

    \widehat{\nabla}_l L = \frac{1}{\lambda}\bigl(\mathrm{MAP}(l + \epsilon)
    - \mathrm{MAP}(l - \lambda g + \epsilon)\bigr)

(one-sided), or the central difference (``two_sided=True``, as AIMLE recommends)

.. math::

    \widehat{\nabla}_l L = \frac{1}{2\lambda}\bigl(\mathrm{MAP}(l + \lambda g + \epsilon)
    - \mathrm{MAP}(l - \lambda g + \epsilon)\bigr).

The gradient is zero unless the step changes the top-k, so :math:`\lambda` trades bias (large)
against sparsity (small).

**AIMLE** (Minervini et al. 2023) chooses :math:`\lambda` per row as
:math:`\lambda = \beta \,\|l + \epsilon\|_2 / \|g\|_2` and adapts :math:`\beta` online: it keeps an
exponential moving average :math:`\bar\nu` of the number of non-zero gradient entries per row
(the gradient density) and after every backward pass sets
:math:`\beta \leftarrow \max(0, \beta + \eta\,\mathrm{sign}(c - \bar\nu))`, raising the step
while gradients are sparser than the target :math:`c` and lowering it once they are denser.
(The paper scales by :math:`\|l\|_2`; we use the perturbed logits :math:`l + \epsilon`, whose
top-k the step must change, so that :math:`\lambda` does not vanish at :math:`l = 0`, e.g. for
zero-initialised logits. The two agree when :math:`\|l\| \gg \|\epsilon\|`.)

References:
    * M. Niepert, P. Minervini, L. Franceschi. Implicit MLE: Backpropagating through discrete
      exponential family distributions. NeurIPS 2021.
    * P. Minervini, L. Franceschi, M. Niepert. Adaptive perturbation-based gradient estimation
      for discrete latent variable models. AAAI 2023.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ._common import check_int, check_k, check_logits, check_positive, topk_khot

__all__ = ["AdaptiveIMLE", "imle_topk", "sum_of_gamma_noise"]


def sum_of_gamma_noise(
    like: Tensor,
    k: int,
    *,
    num_terms: int = 10,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Sum-of-gamma noise :math:`\frac{\tau}{k}(\sum_{i=1}^s \Gamma(1/k, k/i) - \log s)`.

    Args:
        like: tensor whose shape, dtype and device the noise takes.
        k: subset size (the noise is tailored to top-k MAP states).
        num_terms: :math:`s`, number of gamma terms.
        temperature: :math:`\tau > 0`, scale of the noise.
        generator: optional ``torch.Generator`` (on ``like``'s device).

    Returns:
        Noise shaped like ``like``, no gradient.
    """
    like = check_logits(like, "like")
    k = check_k(k, like.shape[-1])
    num_terms = check_int(num_terms, "num_terms", 1)
    temperature = check_positive(temperature, "temperature")
    with torch.no_grad():
        shape = torch.full_like(like, 1.0 / k, memory_format=torch.contiguous_format)
        total = torch.zeros_like(shape)
        for i in range(1, num_terms + 1):
            # torch._standard_gamma is the only gamma sampler that accepts a generator.
            total += torch._standard_gamma(shape, generator=generator) * (k / i)
        return (temperature / k) * (total - math.log(num_terms))


class _StepRule:
    """Fixed perturbation size :math:`\\lambda` (plain I-MLE)."""

    def __init__(self, lambda_: float) -> None:
        self.lambda_ = lambda_

    def step_size(self, perturbed: Tensor, grad: Tensor) -> Tensor | float:
        return self.lambda_

    def observe(self, grad: Tensor) -> None:
        return None


class _PerturbAndMAP(torch.autograd.Function):
    """Top-k of perturbed logits, with the I-MLE finite-difference backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, noise: Tensor, k: int, rule: Any, two_sided: bool
    ) -> Tensor:
        z = topk_khot(logits + noise, k)
        ctx.save_for_backward(logits, noise, z)
        ctx.k, ctx.rule, ctx.two_sided = k, rule, two_sided
        return z

    @staticmethod
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, None, None, None, None]:  # type: ignore[override]
        logits, noise, z = ctx.saved_tensors
        k, rule = ctx.k, ctx.rule
        lam = rule.step_size(logits + noise, grad_z)
        lam_safe = lam.clamp_min(torch.finfo(logits.dtype).tiny) if isinstance(lam, Tensor) else lam
        z_minus = topk_khot(logits - lam * grad_z + noise, k)
        if ctx.two_sided:
            z_plus = topk_khot(logits + lam * grad_z + noise, k)
            grad = (z_plus - z_minus) / (2.0 * lam_safe)
        else:
            grad = (z - z_minus) / lam_safe
        rule.observe(grad)
        return grad, None, None, None, None


def imle_topk(
    logits: Tensor,
    k: int,
    lambda_: float = 10.0,
    *,
    noise_temperature: float = 1.0,
    num_terms: int = 10,
    two_sided: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""I-MLE (Niepert et al. 2021): perturb-and-MAP top-k with the finite-difference backward.

    Args:
        logits: ``(..., n)`` logits, one draw per row (expand them for several).
        k: subset size, ``1 <= k <= n``.
        lambda_: perturbation size :math:`\lambda > 0` of the target
            :math:`l' = l - \lambda \nabla_z L`; the gradient is divided by it.
        noise_temperature: :math:`\tau` of the sum-of-gamma noise.
        num_terms: :math:`s`, terms of the sum-of-gamma noise.
        two_sided: use the central difference (see the module docstring).
        generator: optional ``torch.Generator`` for the noise.

    Returns:
        ``(..., n)`` exactly k-hot tensor :math:`\mathrm{topk}(l + \epsilon)` with the I-MLE
        backward.
    """
    logits = check_logits(logits)
    k = check_k(k, logits.shape[-1])
    lambda_ = check_positive(lambda_, "lambda_")
    noise = sum_of_gamma_noise(
        logits, k, num_terms=num_terms, temperature=noise_temperature, generator=generator
    )
    return _PerturbAndMAP.apply(logits, noise, k, _StepRule(lambda_), bool(two_sided))


class _AdaptiveRule:
    def __init__(self, module: AdaptiveIMLE) -> None:
        self.module = module

    def step_size(self, perturbed: Tensor, grad: Tensor) -> Tensor:
        finite = torch.where(torch.isfinite(perturbed), perturbed, torch.zeros_like(perturbed))
        theta_norm = torch.linalg.vector_norm(finite, dim=-1, keepdim=True)
        grad_norm = torch.linalg.vector_norm(grad, dim=-1, keepdim=True)
        beta = self.module.beta.to(device=perturbed.device, dtype=perturbed.dtype)
        ratio = theta_norm / grad_norm.clamp_min(torch.finfo(perturbed.dtype).tiny)
        return torch.where(grad_norm > 0, beta * ratio, torch.zeros_like(ratio))

    def observe(self, grad: Tensor) -> None:
        if self.module.training:
            self.module._update(grad)


class AdaptiveIMLE(nn.Module):
    r"""AIMLE (Minervini et al. 2023): I-MLE with :math:`\lambda` adapted to a gradient density.

    Per row :math:`\lambda = \beta \|l + \epsilon\|_2 / \|\nabla_z L\|_2` (finite entries only),
    and in training mode every backward pass updates the state

    .. math::

        \bar\nu \leftarrow \rho\,\bar\nu + (1-\rho)\,\nu, \qquad
        \beta \leftarrow \max\bigl(0,\ \beta + \eta\,\mathrm{sign}(c - \bar\nu)\bigr),

    where :math:`\nu` is the mean number of non-zero gradient entries per row and :math:`c` is
    ``target_nonzeros`` (the target gradient density; with top-k a change of the MAP state
    swaps items in pairs, so each informative row has at least two non-zeros). The state lives
    in buffers (``beta``, ``nonzeros_ema``), so it is saved in ``state_dict`` and moves with
    ``.to(device)``.

    Args:
        k: subset size.
        initial_beta: starting :math:`\beta \ge 0`.
        beta_step: :math:`\eta > 0`, the additive update of :math:`\beta`.
        target_nonzeros: :math:`c > 0`, target mean number of non-zero gradient entries per row.
        decay: :math:`\rho \in [0, 1)`, decay of the moving average.
        noise_temperature: :math:`\tau` of the sum-of-gamma noise.
        num_terms: terms of the sum-of-gamma noise.
        two_sided: central differences (default, as in AIMLE).

    Example:
        >>> aimle = AdaptiveIMLE(k=3)
        >>> logits = torch.randn(8, 10, requires_grad=True)
        >>> z = aimle(logits)  # exactly 3-hot rows
        >>> (z * torch.randn(10)).sum().backward()  # gradient, and beta adapts
    """

    beta: Tensor
    nonzeros_ema: Tensor

    def __init__(
        self,
        k: int,
        *,
        initial_beta: float = 1.0,
        beta_step: float = 1e-3,
        target_nonzeros: float = 1.0,
        decay: float = 0.9,
        noise_temperature: float = 1.0,
        num_terms: int = 10,
        two_sided: bool = True,
    ) -> None:
        super().__init__()
        self.k = check_int(k, "k", 1)
        if not (
            isinstance(initial_beta, (int, float))
            and math.isfinite(initial_beta)
            and initial_beta >= 0
        ):
            raise ValueError(f"initial_beta must be a finite float >= 0, found {initial_beta!r}")
        self.beta_step = check_positive(beta_step, "beta_step")
        self.target_nonzeros = check_positive(target_nonzeros, "target_nonzeros")
        if not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0):
            raise ValueError(f"decay must be a float in [0, 1), found {decay!r}")
        self.decay = float(decay)
        self.noise_temperature = check_positive(noise_temperature, "noise_temperature")
        self.num_terms = check_int(num_terms, "num_terms", 1)
        self.two_sided = bool(two_sided)
        self.register_buffer("beta", torch.tensor(float(initial_beta), dtype=torch.float64))
        self.register_buffer(
            "nonzeros_ema", torch.tensor(self.target_nonzeros, dtype=torch.float64)
        )

    def forward(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Exactly k-hot :math:`\\mathrm{topk}(l + \\epsilon)` with the adaptive I-MLE backward.

        Args:
            logits: ``(..., n)`` logits, one draw per row.
            generator: optional ``torch.Generator`` for the noise.
        """
        logits = check_logits(logits)
        k = check_k(self.k, logits.shape[-1])
        noise = sum_of_gamma_noise(
            logits,
            k,
            num_terms=self.num_terms,
            temperature=self.noise_temperature,
            generator=generator,
        )
        return _PerturbAndMAP.apply(logits, noise, k, _AdaptiveRule(self), self.two_sided)

    @torch.no_grad()
    def _update(self, grad: Tensor) -> None:
        rows = max(grad.numel() // max(grad.shape[-1], 1), 1)
        nonzeros = (grad != 0).sum().to(self.nonzeros_ema) / rows
        self.nonzeros_ema.mul_(self.decay).add_((1.0 - self.decay) * nonzeros)
        direction = torch.where(self.nonzeros_ema < self.target_nonzeros, 1.0, -1.0)
        self.beta.add_(self.beta_step * direction.to(self.beta)).clamp_(min=0.0)

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, beta={float(self.beta):.4g}, target_nonzeros={self.target_nonzeros}, "
            f"two_sided={self.two_sided}"
        )

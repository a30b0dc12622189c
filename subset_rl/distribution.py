r"""The k-subset (conditional Poisson) distribution, a :class:`torch.distributions.Distribution`."""

from __future__ import annotations

import itertools
import math
import numbers
from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.utils import lazy_property

from .constraints import KHot
from .poisson_binomial import METHODS, Method, sample_conditional_poisson
from .poisson_binomial import log_normalizer as _log_normalizer
from .poisson_binomial import marginals as _marginals

__all__ = ["KSubsetPolicy"]

Sampler = Literal["exact", "gumbel"]
SAMPLERS: tuple[str, ...] = ("exact", "gumbel")
#: Largest support :meth:`KSubsetPolicy.enumerate_support` will materialise.
MAX_ENUMERATE = 1_000_000


def _check_k(k: object, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be an int in [0, n={n}], found {k!r} of type {type(k).__name__}")
    k = int(k)
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n={n}], found k={k}")
    return k


class KSubsetPolicy(Distribution):
    r"""Distribution over k-hot vectors :math:`z \in \{0,1\}^n`, :math:`\sum_i z_i = k`.

    .. math::

        p(z) = \frac{\exp\langle l, z\rangle}{e_k(\exp l)}, \qquad
        \log p(z) = \langle l, z\rangle - \log e_k(\exp l),

    the conditional Poisson distribution: independent :math:`\mathrm{Bernoulli}(\sigma(l_i))`
    conditioned on exactly ``k`` successes. The normalizer :math:`e_k` (the k-th elementary
    symmetric polynomial) is computed exactly through the Poisson-binomial pmf after a
    centring shift of the logits (see :mod:`subset_rl.poisson_binomial`); its gradient gives the
    marginals :math:`\pi_i = P(z_i = 1)`, and the score is
    :math:`\nabla_l \log p(z) = z - \pi`.

    Args:
        logits: ``(*batch_shape, n)`` float tensor. ``-inf`` marks an item that is never chosen;
            NaN and ``+inf`` are errors. Device and dtype of every result follow the logits.
        k: subset size, a Python int in ``[0, n]``; each row needs at least ``k`` finite logits.
        sampler: ``"exact"`` (default) draws from this distribution itself (count splitting
            down a tree of Poisson-binomial pmfs). ``"gumbel"`` takes the top-k of Gumbel-perturbed
            logits: fast, but it samples *without replacement sequentially*, a different
            distribution, which biases score-function gradients.
        method: normalizer, ``"auto"`` (fastest exact), ``"tree"`` or ``"dft"``.
        validate_args: check the arguments and the values given to :meth:`log_prob`. ``None``
            means yes (unlike torch's default, this does not switch off under ``python -O``).

    Example:
        >>> d = KSubsetPolicy(torch.zeros(5), k=2)
        >>> d.sample((3,)).sum(-1)
        tensor([2., 2., 2.])
        >>> d.log_prob(d.mode).exp()  # 1 / C(5, 2)
        tensor(0.1000)
    """

    arg_constraints = {"logits": constraints.real_vector}
    has_rsample = False
    has_enumerate_support = True

    def __init__(
        self,
        logits: Tensor,
        k: int,
        *,
        sampler: Sampler = "exact",
        method: Method = "auto",
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(logits, Tensor):
            raise TypeError(f"logits must be a torch.Tensor, found {type(logits).__name__}")
        if logits.dim() < 1:
            raise ValueError("logits must have at least 1 dimension (..., n), found shape ()")
        if not logits.is_floating_point():
            raise TypeError(f"logits must be a floating-point tensor, found dtype {logits.dtype}")
        n = logits.shape[-1]
        self.k = _check_k(k, n)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, found {sampler!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, found {method!r}")
        self.sampler = sampler
        self.method = method
        validate = True if validate_args is None else bool(validate_args)
        if validate:
            self._check_logits(logits, self.k)
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)
        self._validate_args = validate

    @staticmethod
    def _check_logits(logits: Tensor, k: int) -> None:
        with torch.no_grad():
            if bool(torch.isnan(logits).any()):
                count = int(torch.isnan(logits).sum())
                raise ValueError(
                    f"logits must not contain NaN, found {count} NaN value(s) in logits of "
                    f"shape {tuple(logits.shape)}"
                )
            if bool((logits == math.inf).any()):
                raise ValueError("logits must be finite or -inf (masked), found +inf")
            available = torch.isfinite(logits).sum(-1)
            if logits.numel() > 0 and bool((available < k).any()):
                worst = int(available.min())
                raise ValueError(
                    f"each row needs at least k={k} available (finite-logit) items, found a row "
                    f"with {worst}"
                )

    # ------------------------------------------------------------------ torch plumbing
    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self) -> constraints.Constraint:
        return KHot(self.k)

    @property
    def param_shape(self) -> torch.Size:
        return self.logits.shape

    def expand(self, batch_shape, _instance=None):  # type: ignore[no-untyped-def]
        new = self._get_checked_instance(KSubsetPolicy, _instance)
        batch_shape = torch.Size(batch_shape)
        new.k = self.k
        new.sampler = self.sampler
        new.method = self.method
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        if "log_normalizer" in self.__dict__:
            new.log_normalizer = self.log_normalizer.expand(batch_shape)
        if "marginals" in self.__dict__:
            new.marginals = self.marginals.expand(batch_shape + self.event_shape)
        super(KSubsetPolicy, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # ------------------------------------------------------------------ quantities
    @lazy_property
    def log_normalizer(self) -> Tensor:
        r""":math:`\log e_k(\exp l)`, shape ``batch_shape``."""
        return _log_normalizer(self.logits, self.k, self.method)

    @lazy_property
    def marginals(self) -> Tensor:
        r"""Inclusion probabilities :math:`\pi_i = P(z_i = 1)`, shape ``batch_shape + (n,)``.

        Differentiable with respect to the logits (second derivatives of :math:`\log e_k`).
        """
        return _marginals(self.logits, self.k, self.method)

    @property
    def mean(self) -> Tensor:
        """The marginals: :math:`E[z] = \\pi`."""
        return self.marginals

    @property
    def variance(self) -> Tensor:
        """Per-item variance :math:`\\pi (1 - \\pi)`."""
        pi = self.marginals
        return pi * (1 - pi)

    @property
    def mode(self) -> Tensor:
        """The most probable subset: the top-k of the logits, as a k-hot vector."""
        return self._top_k(self.logits)

    def _top_k(self, scores: Tensor) -> Tensor:
        out = torch.zeros_like(self.logits)
        if self.k == 0:
            return out
        idx = scores.topk(self.k, dim=-1).indices
        return out.scatter(-1, idx, 1.0)

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\langle l, z\rangle - \log e_k(\exp l)`; shape broadcast of ``batch_shape``."""
        value = self._check_value(value)
        sel = torch.where(value > 0, self.logits, torch.zeros_like(self.logits))
        return sel.sum(-1) - self.log_normalizer

    def _check_value(self, value: Tensor) -> Tensor:
        if not isinstance(value, Tensor):
            raise TypeError(f"value must be a torch.Tensor, found {type(value).__name__}")
        n = self.event_shape[0]
        if value.dim() < 1 or value.shape[-1] != n:
            raise ValueError(
                f"value must have trailing size n={n} (shape (..., {n})), found shape "
                f"{tuple(value.shape)}"
            )
        if self._validate_args:
            try:
                torch.broadcast_shapes(value.shape, self.logits.shape)
            except RuntimeError as err:
                raise ValueError(
                    f"value of shape {tuple(value.shape)} does not broadcast with the batch "
                    f"shape {tuple(self.batch_shape)} (+ event shape ({n},))"
                ) from err
            ok = self.support.check(value)
            if not bool(ok.all()):
                row = value.expand(torch.broadcast_shapes(value.shape, ok.shape + (n,)))
                first = row.reshape(-1, n)[int((~ok).reshape(-1).nonzero()[0])]
                shown = first.tolist() if n <= 20 else f"a vector of {n} entries"
                raise ValueError(
                    f"value must be k-hot along the last dim (entries in {{0, 1}} summing to "
                    f"k={self.k}); found {shown} (sum {float(first.sum()):g})"
                )
        return value.to(self.logits.dtype)

    def entropy(self) -> Tensor:
        r""":math:`H = \log e_k(\exp l) - \sum_i \pi_i l_i` (masked items contribute 0)."""
        safe = torch.where(torch.isfinite(self.logits), self.logits, torch.zeros_like(self.logits))
        return self.log_normalizer - (self.marginals * safe).sum(-1)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """All ``C(n, k)`` k-hot vectors, shape ``(C(n, k), *batch_shape, n)`` (or with ones).

        Raises:
            ValueError: if ``C(n, k)`` exceeds ``MAX_ENUMERATE``.
        """
        n = self.event_shape[0]
        count = math.comb(n, self.k)
        if count > MAX_ENUMERATE:
            raise ValueError(
                f"enumerate_support needs C(n, k) <= {MAX_ENUMERATE}, found C({n}, {self.k}) = "
                f"{count}"
            )
        values = torch.zeros(count, n, dtype=self.logits.dtype, device=self.logits.device)
        if self.k > 0:
            idx = torch.tensor(
                list(itertools.combinations(range(n), self.k)), device=self.logits.device
            )
            values.scatter_(1, idx, 1.0)
        values = values.reshape((count,) + (1,) * len(self.batch_shape) + (n,))
        if expand:
            values = values.expand((count,) + self.batch_shape + (n,))
        return values

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw k-hot samples, shape ``sample_shape + batch_shape + (n,)``, no gradient.

        Args:
            sample_shape: leading sample dimensions.
            generator: optional ``torch.Generator`` (on the logits' device) for reproducibility.
        """
        sample_shape = torch.Size(sample_shape)
        n = self.event_shape[0]
        num = sample_shape.numel()
        flat = self.logits.detach().reshape(-1, n)
        if self.sampler == "exact":
            z = sample_conditional_poisson(flat, self.k, num, generator=generator)
        else:
            z = self._sample_gumbel(flat, num, generator)
        return z.reshape(sample_shape + self.batch_shape + (n,))

    def _sample_gumbel(self, flat: Tensor, num: int, generator: torch.Generator | None) -> Tensor:
        with torch.no_grad():
            # Gumbel(0, 1) = -log(E) with E ~ Exp(1).
            e = torch.empty((num,) + flat.shape, dtype=flat.dtype, device=flat.device)
            e.exponential_(generator=generator)
            gumbel = -torch.log(e.clamp_min(torch.finfo(flat.dtype).tiny))
            scores = flat + gumbel
            out = torch.zeros_like(scores)
            if self.k == 0:
                return out
            return out.scatter_(-1, scores.topk(self.k, dim=-1).indices, 1.0)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(logits: {tuple(self.logits.shape)}, k: {self.k}, "
            f"sampler: {self.sampler!r}, method: {self.method!r})"
        )

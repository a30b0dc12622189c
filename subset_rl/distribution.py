r"""The k-subset (conditional Poisson) distribution, a :class:`torch.distributions.Distribution`."""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.utils import lazy_property

from .constraints import KHot
from .poisson_binomial import (
    METHODS,
    EntropyFunction,
    Layout,
    LogNormalizerFunction,
    Method,
    check_k,
    check_logits,
    check_tensor,
    compute_dtype,
    log_normalizer_2d,
    make_layout,
    marginals_2d,
    sample_2d,
)

__all__ = ["KSubsetPolicy"]

Sampler = Literal["exact", "gumbel"]
SAMPLERS: tuple[str, ...] = ("exact", "gumbel")
#: Largest support :meth:`KSubsetPolicy.enumerate_support` will materialise.
MAX_ENUMERATE = 1_000_000


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
        validate_args: check the logits (NaN, ``+inf``, fewer than ``k`` available items) and
            the values given to :meth:`log_prob`. ``None`` follows torch's default,
            :meth:`torch.distributions.Distribution.set_default_validate_args` (on unless
            switched off there); under ``python -O``, where torch's default turns off, ``None``
            still validates: pass ``False`` to skip the checks (one host sync each).

    Numerics:
        Any finite logits of any spread (soft masks such as ``-1e8``, clusters thousands apart),
        any ``0 <= k <= m`` (``m`` available items; rows with ``2k > m`` are computed through
        the complement :math:`e_k(w) = \prod_i w_i\, e_{m-k}(1/w)`), and float16/bfloat16
        (computed in float32, returned in the input's dtype). Empty batches and ``n = 0`` give
        empty results.

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
        logits = check_tensor(logits)
        n = logits.shape[-1]
        self.k = check_k(k, n)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, found {sampler!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, found {method!r}")
        self.sampler = sampler
        self.method = method
        if validate_args is None:
            # torch's default (Distribution._validate_args) is __debug__ unless changed through
            # set_default_validate_args; under python -O we keep validating.
            validate = bool(Distribution._validate_args) or not __debug__
        else:
            validate = bool(validate_args)
        if validate:
            check_logits(logits, self.k)
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)
        self._validate_args = validate

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
        old_batch = len(self.batch_shape)
        for name in ("_log_z64", "log_normalizer", "marginals", "_detached"):
            if name in self.__dict__:
                value = self.__dict__[name]
                values = value if isinstance(value, tuple) else (value,)
                values = tuple(v.expand(batch_shape + v.shape[old_batch:]) for v in values)
                new.__dict__[name] = values if isinstance(value, tuple) else values[0]
        super(KSubsetPolicy, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # ------------------------------------------------------------------ quantities
    @property
    def _flat(self) -> Tensor:
        return self.logits.reshape(self.batch_shape.numel(), self.event_shape[0])

    @lazy_property
    def _layout(self) -> Layout:
        """Complement, per-row subset size and centring shift, shared by every computation."""
        return make_layout(self._flat, self.k)

    @lazy_property
    def _log_z64(self) -> Tensor:
        """:math:`\\log e_k` in float64 (large terms summed exactly), differentiable if needed.

        With grad: one forward+backward of the normalizer (:class:`LogNormalizerFunction`),
        which also caches the marginals. Without: a forward pass only.
        """
        if self.logits.requires_grad and torch.is_grad_enabled():
            log_z, pi = LogNormalizerFunction.apply(self._flat, self._layout, self.method)
            if "_detached" not in self.__dict__:
                self.__dict__["_detached"] = (
                    log_z.detach().reshape(self.batch_shape),
                    pi.reshape(self.logits.shape),
                )
            return log_z.reshape(self.batch_shape)
        if "_detached" in self.__dict__:
            return self._detached[0]
        with torch.no_grad():
            out = log_normalizer_2d(self._flat.detach(), self._layout, self.method)
        return out.reshape(self.batch_shape)

    @lazy_property
    def log_normalizer(self) -> Tensor:
        r""":math:`\log e_k(\exp l)`, shape ``batch_shape``, in the dtype of the logits."""
        return self._log_z64.to(self.logits.dtype)

    @lazy_property
    def _detached(self) -> tuple[Tensor, Tensor]:
        """``(float64 log normalizer, marginals)`` without gradient, from one pass."""
        log_z, pi = marginals_2d(self._flat, self._layout, self.method, create_graph=False)
        return log_z.reshape(self.batch_shape), pi.reshape(self.logits.shape)

    @lazy_property
    def marginals(self) -> Tensor:
        r"""Inclusion probabilities :math:`\pi_i = P(z_i = 1)`, shape ``batch_shape + (n,)``.

        Entries in ``[0, 1]``, rows summing to ``k``. Differentiable with respect to the logits
        (second derivatives of :math:`\log e_k`) when they require grad.
        """
        if not (self.logits.requires_grad and torch.is_grad_enabled()):
            return self._detached[1]
        _, pi = marginals_2d(self._flat, self._layout, self.method, create_graph=True)
        return pi.reshape(self.logits.shape)

    @property
    def mean(self) -> Tensor:
        """The marginals: :math:`E[z] = \\pi`."""
        return self.marginals

    @property
    def variance(self) -> Tensor:
        """Per-item variance :math:`\\pi (1 - \\pi)`, never negative."""
        pi = self.marginals
        return (pi * (1 - pi)).clamp_min(0)

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
        r""":math:`H = \log e_k(\exp l) - \sum_i \pi_i l_i` (masked items contribute 0).

        Summed in float64 (the two terms can be large and nearly equal), clipped at 0 by value.
        Its gradient :math:`-\operatorname{Cov}(z)\,l` is computed only when backpropagated
        with a nonzero weight (see :class:`~subset_rl.poisson_binomial.EntropyFunction`).
        """
        if not (self.logits.requires_grad and torch.is_grad_enabled()):
            return self.entropy_value()
        self._log_z64  # noqa: B018  (fills the shared (log_z, pi) cache)
        log_z, pi = self._detached
        rows, n = self.batch_shape.numel(), self.event_shape[0]
        h = EntropyFunction.apply(
            self._flat, log_z.reshape(rows), pi.reshape(rows, n), self._layout, self.method
        )
        return h.reshape(self.batch_shape).to(self.logits.dtype)

    def entropy_value(self) -> Tensor:
        """The entropy without its gradient, from the normalizer and marginals' shared pass.

        Cheaper than ``entropy().detach()`` when the logits require grad: no second-order graph
        is built (for ``ent_coef = 0`` in PPO, where the entropy is only logged).
        """
        with torch.no_grad():
            log_z, pi = self._detached
            safe = torch.where(torch.isfinite(self.logits), self.logits, 0.0).double()
            return (log_z - (pi.double() * safe).sum(-1)).clamp_min(0).to(self.logits.dtype)

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
        flat = self.logits.detach().reshape(self.batch_shape.numel(), n)
        if self.sampler == "exact":
            z = sample_2d(flat, self._layout, num, generator)
        else:
            z = self._sample_gumbel(flat, num, generator)
        return z.reshape(sample_shape + self.batch_shape + (n,))

    def _sample_gumbel(self, flat: Tensor, num: int, generator: torch.Generator | None) -> Tensor:
        with torch.no_grad():
            dt = compute_dtype(flat.dtype)
            out = torch.zeros((num,) + flat.shape, dtype=flat.dtype, device=flat.device)
            if self.k == 0 or out.numel() == 0:
                return out
            # Gumbel(0, 1) = -log(-log U): two logs of a uniform, cheaper than exponential_().
            finfo = torch.finfo(dt)
            u = torch.rand(out.shape, dtype=dt, device=flat.device, generator=generator)
            u = u.clamp(finfo.tiny, 1 - finfo.eps / 2)
            scores = flat.to(dt) - torch.log(-torch.log(u))
            return out.scatter_(-1, scores.topk(self.k, dim=-1).indices, 1.0)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(logits: {tuple(self.logits.shape)}, k: {self.k}, "
            f"sampler: {self.sampler!r}, method: {self.method!r})"
        )

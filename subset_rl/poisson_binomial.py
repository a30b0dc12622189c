r"""Exact normalizer, marginals and sampler of the conditional Poisson (k-subset) distribution.

For logits :math:`l \in \mathbb{R}^n`, weights :math:`w_i = e^{l_i}` and
:math:`\theta_i = \sigma(l_i)`, the normalizer of :math:`p(z) \propto \exp\langle l, z\rangle`
over k-hot :math:`z` is the elementary symmetric polynomial

.. math::

    \log e_k(w) = \log \mathrm{PB}_k(\theta) + \sum_i \operatorname{softplus}(l_i),

where :math:`\mathrm{PB}_k(\theta) = P(\sum_i b_i = k)` for independent
:math:`b_i \sim \mathrm{Bernoulli}(\theta_i)` is the Poisson-binomial pmf. Because
:math:`e_k(w e^c) = e^{kc} e_k(w)`, every logit may be shifted by a constant :math:`c`; we pick
:math:`c` (detached) with :math:`\sum_i \sigma(l_i + c) \approx k`, which puts :math:`k` at the
mode of the Poisson-binomial (Darroch 1964) so that :math:`\mathrm{PB}_k` never underflows:

.. math::

    \log e_k(w) = \log \mathrm{PB}_k(\sigma(l + c)) + \sum_i \operatorname{softplus}(l_i + c) - k c.

Two exact methods compute :math:`\mathrm{PB}_k`:

* ``"tree"`` multiplies the per-item factors :math:`1 + e^{x_i} t` (proportional to the
  Bernoulli pmfs :math:`(1-\theta_i) + \theta_i t`) in a balanced binary tree, truncating every
  partial product at degree :math:`k` (direct convolution for short polynomials, FFT
  convolution for long ones) and rescaling each node by its largest coefficient. Every node is
  thus a rescaled pmf, stable in float32; work is :math:`O(n \log n \log k)` and parallel over
  the tree. The same tree of node pmfs drives the exact sampler
  (:func:`sample_conditional_poisson`).
* ``"dft"`` is the closed form of Fernandez & Williams (2010), as used in the SFESS paper,

  .. math::

      \mathrm{PB}_k = \frac{1}{M} \sum_{j=0}^{M-1} e^{-i\omega_j k}
      \prod_{i=1}^n \left(1 - \theta_i + \theta_i e^{i\omega_j}\right), \qquad
      \omega_j = 2\pi j / M,

  evaluated in real arithmetic (log-modulus and centred phase per factor) after the shift. With
  :math:`M = n + 1` it is exact; since the characteristic function decays like
  :math:`e^{-v\omega^2/2}` (:math:`v = \sum_i\theta_i(1-\theta_i)`), a smaller :math:`M` only
  aliases the mass :math:`P(|S - k| \ge M)`, which Bernstein's inequality bounds; we choose the
  smallest odd :math:`M \le n + 1` that makes that bound negligible at the working precision.

``"auto"`` takes the DFT for small problems (few rows, small ``n``; fewer, larger operations)
and the tree otherwise, by a data-independent work estimate (no device synchronisation).

Marginals (inclusion probabilities) are :math:`\pi = \nabla_l \log e_k`, obtained by automatic
differentiation of the normalizer (so they are themselves differentiable, as SIMPLE needs).

Robustness (any finite logits, any ``0 <= k <= m`` with ``m`` available items):

* rows with ``2k > m`` use the complement :math:`e_k(w) = \prod_i w_i\, e_{m-k}(1/w)` (negated
  logits, ``m - k`` chosen), so no row ever works above degree ``min(k, n - k)``;
* the shift is bracketed by order statistics of the logits and found by safeguarded Newton steps
  (:func:`_centering_shift`) in float64, so soft masks (``-1e8``) and clusters thousands apart
  cost nothing, and is added to the logits in float64 before one rounding;
* the large parts of :math:`\log e_k` (the leaves' log-scales, the complement's
  :math:`\prod w`, :math:`k c`) are summed in float64 as :math:`\sum_{L} l_i + (|P| - k) c`,
  never adding ``c`` to a logit, so nothing cancels;
* float16/bfloat16 run in float32; the DFT always runs in float64.

:class:`LogNormalizerFunction` computes :math:`\log e_k` and :math:`\pi` in one pass (one
forward and one backward of the normalizer) for ``log_prob``; :class:`EntropyFunction` computes
the entropy's gradient :math:`-\operatorname{Cov}(z)\, l` only when it is backpropagated with a
nonzero weight.

References:
    * S. X. Chen, A. P. Dempster, J. S. Liu. Weighted finite population sampling to maximize
      entropy. Biometrika 81(3), 1994 (conditional Poisson sampling).
    * M. Fernandez, S. Williams. Closed-form expression for the Poisson-binomial probability
      density function. IEEE Trans. Aerospace and Electronic Systems 46(2), 2010.
    * K. Ahmed et al. SIMPLE: A gradient estimator for k-subset sampling. ICLR 2023.
    * K. Wijk, R. Vinuesa, H. Azizpour. SFESS: Score function estimators for k-subset sampling.
      ICLR 2025.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "METHODS",
    "SAMPLE_METHODS",
    "EntropyFunction",
    "Layout",
    "LogNormalizerFunction",
    "Method",
    "PmfTree",
    "centering_shift",
    "check_k",
    "check_logits",
    "check_tensor",
    "log_normalizer",
    "make_layout",
    "marginals",
    "poisson_binomial_pmf_tree",
    "sample_conditional_poisson",
]

Method = Literal["auto", "tree", "dft"]
METHODS: tuple[str, ...] = ("auto", "tree", "dft")
SAMPLE_METHODS: tuple[str, ...] = ("auto", "tree", "rejective")

# Polynomials shorter than this are multiplied directly (exact, non-negative); longer ones by FFT.
_DIRECT_MAX_LEN = 9
# Safeguarded Newton steps for the centring shift: at most this many (each halves the bracket
# at worst, so even a bracket spanning the whole float64 range closes), stopping as soon as
# every row is centred. On the CPU convergence is checked after every step; elsewhere every
# ``_SHIFT_CHECK_EVERY`` steps (one host sync each; a typical call needs one).
_SHIFT_MAX_ITERS = 2100
_SHIFT_CHECK_EVERY = 6
_SHIFT_CHECK_EVERY_CPU = 1  # a host sync is free on the CPU (tests set 6 to run the GPU path)


# --------------------------------------------------------------------------------------------
# Argument checks (shared with KSubsetPolicy)
# --------------------------------------------------------------------------------------------
def check_k(k: object, n: int) -> int:
    """``k`` as an int in ``[0, n]``, or a ``ValueError`` naming what was found."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be an int in [0, n={n}], found {k!r} of type {type(k).__name__}")
    k = int(k)
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n={n}], found k={k}")
    return k


def check_tensor(logits: object) -> Tensor:
    """``logits`` if it is a floating-point tensor with at least one dimension, else raises."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, found {type(logits).__name__}")
    if logits.dim() < 1:
        raise ValueError("logits must have at least 1 dimension (..., n), found shape ()")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, found dtype {logits.dtype}")
    return logits


def check_logits(logits: Tensor, k: int) -> None:
    """``ValueError`` for NaN, ``+inf``, ``|l| > finfo.max / 8``, or fewer than ``k`` finite."""
    if logits.numel() == 0:
        return
    limit = torch.finfo(compute_dtype(logits.dtype)).max / 8
    with torch.no_grad():
        # Fast path, one host sync: |l| <= limit is False for NaN, +-inf and huge values.
        usable = logits.abs() <= limit
        ok = usable | (logits == -math.inf)
        if bool(ok.all() & (usable.sum(-1) >= k).all()):
            return
        nan = torch.isnan(logits)
        finite = torch.isfinite(logits)
        available = finite.sum(-1)
        huge = finite & ~usable
        bad = torch.stack(
            [nan.sum(), (logits == math.inf).sum(), (available < k).sum(), huge.sum()]
        ).tolist()
    if bad[0]:
        raise ValueError(
            f"logits must not contain NaN, found {bad[0]} NaN value(s) in logits of shape "
            f"{tuple(logits.shape)}"
        )
    if bad[1]:
        raise ValueError("logits must be finite or -inf (masked), found +inf")
    if bad[3]:
        raise ValueError(
            f"finite logits must have magnitude <= finfo({compute_dtype(logits.dtype)}).max / 8 "
            f"= {limit:.3g} (the shifted logits must not overflow), found {bad[3]} larger "
            "value(s); use -inf to mask an item"
        )
    if bad[2]:
        worst = int(available.min())
        raise ValueError(
            f"each row needs at least k={k} available (finite-logit) items, found a row with "
            f"{worst}"
        )


def _check_method(method: object, allowed: tuple[str, ...] = METHODS) -> None:
    if method not in allowed:
        raise ValueError(f"method must be one of {allowed}, found {method!r}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 and bfloat16 are computed in float32 (and returned in their own dtype)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# --------------------------------------------------------------------------------------------
# Layout: complement, per-row subset size and centring shift (all detached, computed once)
# --------------------------------------------------------------------------------------------
class Layout(NamedTuple):
    r"""What every exact computation of one ``(B, n)`` problem shares (no gradient).

    Attributes:
        finite: ``(B, n)`` available items.
        flip: ``(B,)`` rows computed through the complement, those with ``2k > m``
            (:math:`m` available items): :math:`e_k(w) = \prod_{i \le m} w_i\,e_{m-k}(1/w)`,
            so that these rows choose the ``m - k`` items left out, with negated logits.
        kk: ``(B,)`` int64 subset size of the (possibly complemented) row, ``kk <= m / 2``.
        K: a Python int with ``kk <= K`` for every row: ``min(k, n - k)``.
        shift: ``(B, 1)`` float64 centring shift of the (possibly negated) logits: float64
            even for float32 logits, since e.g. ``1e8 + c`` must resolve fractions of a unit.
        feasible: ``(B,)`` rows with at least ``k`` available items.
    """

    finite: Tensor
    flip: Tensor
    kk: Tensor
    K: int
    shift: Tensor
    feasible: Tensor


def _oriented(logits: Tensor, layout: Layout) -> Tensor:
    """Logits in compute dtype, negated on complemented rows (``-inf`` stays ``-inf``)."""
    x = logits.to(compute_dtype(logits.dtype))
    neg = layout.finite & layout.flip.unsqueeze(-1)
    return torch.where(neg, -x, x)


def make_layout(logits: Tensor, k: int) -> Layout:
    """The :class:`Layout` of ``(B, n)`` logits for subset size ``k``."""
    x = logits.detach().to(compute_dtype(logits.dtype))
    B, n = x.shape
    finite = torch.isfinite(x)
    m = finite.sum(-1)
    flip = 2 * k > m
    kk = torch.where(flip, m - k, torch.full_like(m, k))
    feasible = kk >= 0
    kk = kk.clamp_min(0)
    K = min(k, n - k)
    x = torch.where(finite & flip.unsqueeze(-1), -x, x)
    shift = _centering_shift(x.double(), kk, finite, K)
    return Layout(finite, flip, kk, K, shift, feasible)


def _apply_shift(x: Tensor, shift: Tensor) -> Tensor:
    """``x + shift`` rounded once to the dtype of ``x`` (added in float64), gradient 1."""
    if x.dtype == torch.float64:
        return x + shift
    value = (x.detach().double() + shift).to(x.dtype)
    if not x.requires_grad:
        return value
    safe = torch.where(torch.isfinite(x), x, torch.zeros_like(x))  # -inf - -inf would be NaN
    return value + (safe - safe.detach())


def _centering_shift(x: Tensor, kk: Tensor, finite: Tensor, K: int | None = None) -> Tensor:
    r"""Detached ``c`` per row with :math:`S(c) = \sum_i \sigma(x_i + c) \approx k` (``kk``).

    A bracket from order statistics (:math:`s_1 \ge s_2 \ge \dots` the sorted finite logits,
    :math:`m` of them, :math:`k \le m/2`):

    * :math:`c_{hi} = -s_{2k}`: the top :math:`2k` items have :math:`\sigma \ge 1/2`, so
      :math:`S \ge k`;
    * :math:`c_{lo} = -s_k - \log(m - k)`: the top :math:`k - 1` items give less than
      :math:`k - 1` and the other :math:`m - k + 1` at most :math:`1/(m - k + 1)` each.

    Its width is :math:`s_k - s_{2k} + \log m`, not the spread of all logits, so soft masks
    (``-1e8``) or far-apart clusters outside the ranks ``k..2k`` cost nothing. Newton steps on
    :math:`g(c) = \log S(c) - \log k` (exact in the exponential tail where :math:`S` is a sum
    of :math:`e^{x_i + c}`), started at the midpoint :math:`-(s_k + s_{k+1})/2` of the gap between
    chosen and unchosen ranks, fall back to bisection whenever they leave the bracket, so the
    iteration always converges. It stops when :math:`|S - k| \le 0.2 \max(1, \sqrt{v})`
    (:math:`v = \sum_i \sigma(1 - \sigma)`, the Poisson-binomial variance), which keeps ``k``
    within a fifth of a standard deviation of the mean. Rows with ``k = 0`` get
    :math:`c = -s_1 - 40` (unused, but keeps every intermediate finite).
    """
    B, n = x.shape
    dt = x.dtype
    if n == 0 or B == 0:
        return torch.zeros(B, 1, dtype=dt, device=x.device)
    # The ranks 1..2k are all that is read: a top-2K instead of a full sort (K >= every kk).
    width = n if K is None else min(n, max(2 * K, 1))
    s = torch.topk(x, width, dim=-1).values  # descending, -inf (masked) last
    n = width
    m = finite.sum(-1, keepdim=True)
    k1 = kk.unsqueeze(-1)
    idx_a = (k1 - 1).clamp(0, n - 1)
    a = s.gather(-1, idx_a)  # s_k
    b = s.gather(-1, k1.clamp(max=n - 1))  # s_{k+1}
    s2 = s.gather(-1, (2 * k1 - 1).clamp(0, n - 1))  # s_{2k}
    kf = k1.to(dt)
    lo = -a - torch.log((m - k1).clamp_min(1).to(dt))
    hi = -s2
    c = -0.5 * (a + b)
    # A midpoint between two finite values that overflows (e.g. +-3e38 in float32): halve first.
    c = torch.where(torch.isfinite(c), c, -(0.5 * a + 0.5 * b))
    active = (k1 > 0) & torch.isfinite(lo) & torch.isfinite(hi) & torch.isfinite(c)
    # Rows choosing nothing: every theta below e^-40, so PB_0 ~ 1 (its value is not used).
    c = torch.where(active, c, torch.where(torch.isfinite(s[:, :1]), -s[:, :1] - 40, 0.0))
    lo = torch.where(active, lo, c)
    hi = torch.where(active, hi, c)
    kf = torch.where(active, kf, 1.0)
    every = _SHIFT_CHECK_EVERY_CPU if x.device.type == "cpu" else _SHIFT_CHECK_EVERY
    eps = torch.finfo(dt).eps
    for it in range(_SHIFT_MAX_ITERS):
        t = torch.sigmoid(x + c)  # float64: t (1 - t) is accurate enough for the step
        S = t.sum(-1, keepdim=True)
        v = (t - t * t).sum(-1, keepdim=True)
        f = S - kf
        if it % every == 0:
            closed = (hi - lo) <= 4 * eps * torch.maximum(lo.abs(), hi.abs())
            done = (f.abs() <= 0.2 * v.sqrt().clamp_min(1.0)) | ~active | closed
            if bool(done.all()):
                break
        lo = torch.where(f <= 0, c, lo)
        hi = torch.where(f >= 0, c, hi)
        newton = c - (torch.log(S) - torch.log(kf)) * S / v
        inside = (newton >= lo) & (newton <= hi)  # False for NaN/inf steps
        mid = 0.5 * lo + 0.5 * hi
        c = torch.where(inside, newton, mid)
    return c


def centering_shift(logits: Tensor, k: int) -> Tensor:
    r"""A detached constant per row with :math:`\sum_i \sigma(l_i + c) \approx k`.

    See :func:`_centering_shift` for the bracket and the iteration. Any ``c`` gives the same
    distribution; a centred one puts ``k`` at the mode of the Poisson-binomial.

    Args:
        logits: ``(B, n)`` logits, ``-inf`` for masked items.
        k: subset size, ``0 <= k <= n``.

    Returns:
        ``(B, 1)`` shift, detached, in the compute dtype of ``logits``.
    """
    x = logits.detach().to(compute_dtype(logits.dtype))
    finite = torch.isfinite(x)
    kk = torch.full(x.shape[:-1], k, dtype=torch.int64, device=x.device)
    # Centring is defined for k <= m / 2 through the bracket; larger k by the mirror image.
    m = finite.sum(-1)
    flip = 2 * kk > m
    xo = torch.where(finite & flip.unsqueeze(-1), -x, x)
    kk2 = torch.where(flip, (m - kk).clamp_min(0), kk)
    c = _centering_shift(xo.double(), kk2, finite, min(k, x.shape[-1] - k))
    return torch.where(flip.unsqueeze(-1), -c, c).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Tree of Poisson-binomial pmfs
# --------------------------------------------------------------------------------------------
def _polymul_direct(a: Tensor, b: Tensor, length: int) -> Tensor:
    """Coefficients ``[0, length)`` of ``a * b`` along the last dim (equal short lengths ``L``).

    ``out[j] = sum_i a[i] b[j - i]`` as ``L`` shifted slices of one zero-padded ``b``: exact up
    to rounding and non-negative for pmfs.
    """
    L = a.shape[-1]
    bp = torch.nn.functional.pad(b, (L - 1, L - 1))  # bp[t + L - 1] = b[t]
    out = a[..., :1] * bp[..., L - 1 : L - 1 + length]
    for i in range(1, L):
        out = out + a[..., i : i + 1] * bp[..., L - 1 - i : L - 1 - i + length]
    return out


def _polymul_fft(a: Tensor, b: Tensor, length: int) -> Tensor:
    """Coefficients ``[0, length)`` of ``a * b`` by real FFT (equal lengths ``L``)."""
    L = a.shape[-1]
    size = 2 * L - 1
    nfft = 1 << (size - 1).bit_length()
    fa = torch.fft.rfft(a, n=nfft)
    fb = torch.fft.rfft(b, n=nfft)
    return torch.fft.irfft(fa * fb, n=nfft)[..., :length]


class PmfTree(NamedTuple):
    """The output of :func:`poisson_binomial_pmf_tree` (see there)."""

    levels: list[Tensor]
    log_scale: Tensor
    bounds: list[tuple[Tensor, Tensor]]
    tops: list[Tensor]


def poisson_binomial_pmf_tree(shifted: Tensor, k: int, *, clean: bool = False) -> PmfTree:
    r"""All node polynomials of a balanced product tree of Bernoulli factors, truncated at ``k``.

    Item ``i`` contributes the factor :math:`1 + r_i x` with :math:`r_i = e^{x_i}`
    (:math:`x` the shifted logits), stored as ``[e^{-x_i^+}, e^{x_i - x_i^+}]``, i.e. divided by
    :math:`e^{x_i^+}`, :math:`x_i^+ = \max(x_i, 0)`: both entries are exact exponentials, so no
    ``1 - theta`` is ever rounded (whose correlated rounding errors would add up over thousands
    of items). The leaves' divisors :math:`\sum_i x_i^+` are the caller's to add back (exactly:
    :func:`log_normalizer_2d`). The ``n`` items are padded with :math:`r = 0` items to a power
    of two ``N``; level ``j`` holds, for each of the ``N / 2^j`` nodes, the coefficients
    ``0..min(2^j, k)`` of the product of its ``2^j`` factors, divided by their maximum (the
    ``tops``); the logs of those divisors are accumulated (detached, float64) per node. Each
    node's coefficients are proportional to the Poisson-binomial pmf of the number of successes
    among its items, and entries outside the node's feasible count range are exactly zero.

    Args:
        shifted: ``(B, n)`` shifted logits (``-inf`` for masked items, no ``+inf``).
        k: truncation degree (the largest count of interest).
        clean: clamp FFT round-off below zero to zero (for sampling tables; breaks gradients).

    Returns:
        :class:`PmfTree` ``(levels, log_scale, bounds, tops)``: ``levels[j]`` has shape
        ``(B, N / 2^j, min(2^j, k) + 1)``; ``log_scale`` is the root's ``(B,)`` float64 sum of
        log-divisors, so that :math:`\log e_j(e^{x}) = \log` ``levels[-1][:, 0, j]``
        ``+ log_scale + sum_i max(x_i, 0)`` for ``j <= k``; ``bounds[j] = (lo, hi)`` are integer
        tensors ``(B, N / 2^j)`` of feasible counts; ``tops[j]`` is the ``(B, N / 2^{j+1}, 1)``
        divisor of level ``j + 1``.
    """
    B, n = shifted.shape
    N = 1 << max(0, (n - 1).bit_length())
    pos = shifted.detach().clamp_min(0)
    if N > n:
        shifted = torch.nn.functional.pad(shifted, (0, N - n), value=-math.inf)
        pos = torch.nn.functional.pad(pos, (0, N - n))
    x = torch.stack([torch.exp(-pos), torch.exp(shifted - pos)], dim=-1)  # (B, N, 2)
    hi = (x[..., 1] > 0).to(torch.int64)
    lo = (x[..., 0] == 0).to(torch.int64)
    scale = torch.zeros(B, N, dtype=torch.float64, device=x.device)
    levels, bounds, tops = [x], [(lo, hi)], []
    tiny = torch.finfo(x.dtype).tiny
    while x.shape[1] > 1:
        a, b = x[:, 0::2], x[:, 1::2]
        L = a.shape[-1]
        length = min(2 * L - 1, k + 1)
        lo = lo[:, 0::2] + lo[:, 1::2]
        hi = hi[:, 0::2] + hi[:, 1::2]
        scale = scale[:, 0::2] + scale[:, 1::2]
        if L <= _DIRECT_MAX_LEN:
            x = _polymul_direct(a, b, length)
        else:
            x = _polymul_fft(a, b, length) * _support(lo, hi, length)
            if clean:
                x = x.clamp_min(0)
        top = x.detach().amax(-1, keepdim=True).clamp_min(tiny)
        x = x / top
        scale = scale + top.squeeze(-1).double().log()
        levels.append(x)
        bounds.append((lo, hi))
        tops.append(top)
    return PmfTree(levels, scale[:, 0], bounds, tops)


def _support(lo: Tensor, hi: Tensor, length: int) -> Tensor:
    """``(..., length)`` mask of the counts ``lo <= j <= hi`` of each node."""
    idx = torch.arange(length, device=lo.device)
    return (idx >= lo.unsqueeze(-1)) & (idx <= hi.unsqueeze(-1))


# --------------------------------------------------------------------------------------------
# Fernandez-Williams DFT
# --------------------------------------------------------------------------------------------
def _frequency_count(n: int, v: float, off: float, dtype: torch.dtype) -> int:
    """Smallest odd ``M <= n + 1`` (or ``n + 1``) whose aliasing error is below working precision.

    Aliased mass is ``P(|S - k| >= M) <= 2 exp(-t^2 / (2 (v + t / 3)))`` with
    ``t = M - |E S - k|`` (Bernstein), ``v`` the variance of ``S``. With the shift, ``k`` is
    (within one) the mode, so ``PB_k`` is at least about ``1 / (n + 1)``; a bound below
    ``delta / (n + 1)``, ``delta = eps / 1000``, is a relative error well below ``eps``.
    """
    if not (math.isfinite(v) and math.isfinite(off)):
        return n + 1
    delta = torch.finfo(dtype).eps * 1e-3
    big_l = math.log(2 * (n + 1) / delta)
    t = big_l / 3 + math.sqrt(big_l**2 / 9 + 2 * v * big_l)
    M = int(math.ceil(t + off)) + 1
    if M >= n + 1:
        return n + 1
    return M | 1  # odd: omega = pi never occurs


def _log_pb_dft(
    theta: Tensor,
    k: int | Tensor,
    num_frequencies: int | None = None,
    theta_bar: Tensor | None = None,
    precision: torch.dtype | None = None,
) -> Tensor:
    r""":math:`\log \mathrm{PB}_k(\theta)` by the DFT over ``M`` frequencies, real arithmetic.

    Args:
        theta: ``(B, n)`` success probabilities.
        k: the count, an int or a ``(B,)`` integer tensor (one per row).
        num_frequencies: ``M``; by default the smallest that aliases below working precision.
        theta_bar: ``1 - theta`` computed without rounding (``sigmoid(-x)``), if available.
        precision: the dtype whose precision ``M`` must reach (default: that of ``theta``).
    """
    tb = 1 - theta if theta_bar is None else theta_bar
    kt = torch.as_tensor(k, device=theta.device).to(theta.dtype)
    kt = kt.unsqueeze(-1) if kt.dim() == 1 else kt
    if num_frequencies is None:
        with torch.no_grad():
            v_off = torch.stack(
                [(theta * tb).sum(-1).amax(), (theta.sum(-1) - kt.squeeze(-1)).abs().amax()]
            ).tolist()
        target = theta.dtype if precision is None else precision
        num_frequencies = _frequency_count(theta.shape[-1], v_off[0], v_off[1], target)
    M = num_frequencies
    half = (M - 1) // 2  # frequencies 1..half; conjugates M-half..M-1 give the same real part
    j = torch.arange(1, half + 1, dtype=torch.float64, device=theta.device)
    omega64 = 2 * math.pi * j / M
    omega = omega64.to(theta.dtype).unsqueeze(-1)  # (F, 1)
    cos_w = torch.cos(omega64).to(theta.dtype).unsqueeze(-1)
    sin_w = torch.sin(omega64).to(theta.dtype).unsqueeze(-1)
    th = theta.unsqueeze(-2)  # (B, 1, n)
    thb = tb.unsqueeze(-2)
    # |1 - th + th e^{iw}|^2 = 1 - 2 th (1 - th)(1 - cos w); phase centred by subtracting th * w.
    log_mod = 0.5 * torch.log1p(-2 * (th * thb) * (1 - cos_w)).sum(-1)  # (B, F)
    phase = (torch.atan2(th * sin_w, thb + th * cos_w) - th * omega).sum(-1)
    resid = (theta.sum(-1, keepdim=True) - kt) * omega.squeeze(-1)
    total = torch.exp(log_mod) * torch.cos(phase + resid)
    if M % 2 == 0:  # the Nyquist frequency omega = pi appears once: prod(1 - 2 theta) (-1)^k
        sign = 1 - 2 * torch.remainder(kt.squeeze(-1), 2)
        extra = torch.prod(tb - theta, dim=-1) * sign
    else:
        extra = 0.0
    pb = (1 + 2 * total.sum(-1) + extra) / M
    return torch.log(pb)


# --------------------------------------------------------------------------------------------
# The normalizer
# --------------------------------------------------------------------------------------------
#: ``auto`` uses the DFT while ``rows * n * M / 2`` (its number of complex factors) stays below
#: this; measured on a 2-core CPU, one thread (the DFT runs in float64, the tree's marginals by
#: its hand-written backward): forward only, the DFT is 2.6x faster at one row of n = 256,
#: k = 10 and 1.7x at 8 rows of n = 100; forward and marginals, the tree is faster from 8 rows
#: of n = 256 on (1.5x) and at (8, 784, 50) by 2.9x.
_DFT_AUTO_MAX_WORK = 30_000


def _auto_method(rows: int, n: int, k: int, dtype: torch.dtype, device: torch.device) -> str:
    """The faster exact method, decided without looking at the data.

    On CPU, the DFT below a work bound (its frequency count bounded with the largest variance a
    centred Poisson-binomial of ``k <= n / 2`` successes can have, ``k (1 - k / n)``), the tree
    above. Off the CPU always the tree: it never synchronises with the host, while the DFT reads
    its frequency count back.
    """
    if device.type != "cpu" or n == 0:
        return "tree"
    M = _frequency_count(n, k * (1 - k / n), 1.0, dtype)
    return "dft" if rows * n * (M // 2) <= _DFT_AUTO_MAX_WORK else "tree"


def log_normalizer_2d(logits: Tensor, layout: Layout, method: str) -> Tensor:
    r"""``log e_k(exp(logits))`` for ``(B, n)`` logits, as a float64 ``(B,)`` tensor.

    With :math:`x` the (possibly negated) shifted logits and :math:`P = \{i: x_i > 0\}`:
    :math:`\log e_k = \log \mathrm{coef}_k + \text{node scales} + \sum_{L} l_i + (|P| - k)c`
    (tree; :math:`L = P` on plain rows and the available items outside :math:`P` on complemented
    rows) or the same with :math:`\log \mathrm{PB}_k + \sum_i \log(1 + e^{-|x_i|})` (DFT).
    The large terms are summed in float64 without adding ``c`` to any logit, so logits in the
    thousands or a shift of ``1e8`` cost no digits. The value is exact; the gradient flows
    through the differentiable parts (the complement's :math:`\sum l` enters as
    ``s - s.detach()``). Infeasible rows give ``-inf``.
    """
    B, n = logits.shape
    finite, flip, kk, K, c, feasible = layout
    x = _oriented(logits, layout)
    flip_col = flip.unsqueeze(-1)
    safe = torch.where(finite, logits, torch.zeros_like(logits))
    # The complement's prod(w) enters only through its gradient here (an indicator); its value
    # is folded into exact per-item terms below, so no huge sums ever cancel.
    offset = torch.where(flip_col, safe, torch.zeros_like(safe)).double().sum(-1)
    offset = offset - offset.detach()
    if K == 0 or B == 0:
        l64 = safe.detach().double()
        value = torch.where(flip, torch.where(finite, l64, 0.0).sum(-1), 0.0)
    else:
        if method == "auto":
            method = _auto_method(B, n, K, x.dtype, x.device)
        xs = _apply_shift(x, c)
        # The leaves' log-scales max(xs, 0) together with the complement's prod(w), summed
        # without ever adding c to a logit (which would round the logit away when |c| is
        # large): with P = {xs > 0}, plain rows give sum_P (l + c) and complemented rows
        # sum_{not P} l + |P| c (there l + max(c - l, 0) = c on P). Both are
        # sum_L l + (|P| - kk) c, and the count difference is 0 for a centred shift.
        l64 = safe.detach().double()
        base = _base_terms(l64, xs, layout)
        if method == "tree":
            # The leaves' log-scales max(xs, 0) are in ``base``; the tree's log_scale holds only
            # its node normalisations (so no huge log-scales are added and subtracted again).
            levels, log_scale, _, _ = poisson_binomial_pmf_tree(xs, K)
            coef = levels[-1][:, 0, :].gather(-1, kk.unsqueeze(-1)).squeeze(-1)
            coef = torch.where(feasible & (kk > 0), coef, torch.ones_like(coef))
            body = torch.log(coef).double() + log_scale + base
        else:
            # The DFT sums phases over all n items: float64 throughout (it only runs for small
            # problems on the CPU, where float64 costs little), so float32 keeps 1e-4 marginals.
            xd = xs.double()
            theta, theta_bar = torch.sigmoid(xd), torch.sigmoid(-xd)
            log_pb = _log_pb_dft(theta, kk, theta_bar=theta_bar, precision=x.dtype)
            # softplus(xs) = max(xs, 0) + log1p(exp(-|xs|)): the first part exact in base.
            small = torch.log1p(torch.exp(-xs.detach().abs()))
            small = torch.where(finite, small, torch.zeros_like(small))
            sp = torch.nn.functional.softplus(xs)
            sp = torch.where(finite, sp, torch.zeros_like(sp)).sum(-1)
            exact = small.double().sum(-1) + base
            body = log_pb.double() + exact + (sp - sp.detach()).double()
        all_l = torch.where(flip, torch.where(finite, l64, 0.0).sum(-1), 0.0)
        # Rows choosing nothing (k = 0, or k = m through the complement) have one subset.
        value = torch.where(kk > 0, body, all_l)
    out = value + offset
    return torch.where(feasible, out, torch.full_like(out, -math.inf))


def _base_terms(l64: Tensor, xs: Tensor, layout: Layout) -> Tensor:
    """``sum_L l + (|P| - kk) c`` in float64 (see :func:`log_normalizer_2d`), no gradient."""
    finite, flip, kk = layout.finite, layout.flip, layout.kk
    pos = (xs.detach() > 0) & finite
    take_l = torch.where(flip.unsqueeze(-1), finite & ~pos, pos)
    base = torch.where(take_l, l64, torch.zeros_like(l64)).sum(-1)
    return base + (pos.sum(-1) - kk).double() * layout.shift.squeeze(-1)


def _correlate(g: Tensor, b: Tensor, L: int) -> Tensor:
    """``out[i] = sum_m g[m] b[m - i]`` for ``i < L`` (``g`` of length ``<= 2L - 1``)."""
    length = g.shape[-1]
    if L <= _DIRECT_MAX_LEN:
        gp = torch.nn.functional.pad(g, (0, 2 * L - 1 - length))
        out = b[..., :1] * gp[..., :L]
        for s_ in range(1, L):
            out = out + b[..., s_ : s_ + 1] * gp[..., s_ : s_ + L]
        return out
    nfft = 1 << (2 * L - 2).bit_length()
    fg = torch.fft.rfft(g, n=nfft)
    fb = torch.fft.rfft(b, n=nfft)
    return torch.fft.irfft(fg * fb.conj(), n=nfft)[..., :L]


@torch.no_grad()
def _tree_log_coef_and_grad(xs: Tensor, kk: Tensor, K: int) -> tuple[Tensor, Tensor]:
    r"""``log coef_kk + node scales`` (float64) and its gradient w.r.t. ``xs``, no autograd.

    The forward is :func:`poisson_binomial_pmf_tree`; the backward is its outside pass written
    out: a node ``y = mask * (a * b)[:len] / top`` (``top`` constant) sends
    :math:`G_a[i] = \sum_m G_p[m]\, b[m - i]` and :math:`G_b[i] = \sum_m G_p[m]\, a[m - i]`
    (:math:`G_p = G_y \cdot mask / top`) to its children, by direct sums for short and FFT
    correlations for long polynomials; at a leaf ``[e^{-pos}, e^{x - pos}]`` the gradient is
    ``G[1] * e^{x - pos}``. Same numbers as autograd through the tree, 1.25-1.5x faster
    (``benchmarks/bench_tree_backward.py``).
    """
    n = xs.shape[-1]
    levels, log_scale, bounds, tops = poisson_binomial_pmf_tree(xs, K)
    root = levels[-1][:, 0, :]
    coef = root.gather(-1, kk.unsqueeze(-1)).squeeze(-1)
    ok = coef > 0
    safe_coef = torch.where(ok, coef, torch.ones_like(coef))
    log_coef = torch.log(safe_coef).double() + log_scale
    g = torch.zeros_like(root).scatter(-1, kk.unsqueeze(-1), (1 / safe_coef).unsqueeze(-1))
    g = (g * ok.unsqueeze(-1)).unsqueeze(1)  # (B, 1, L_root)
    for j in range(len(tops) - 1, -1, -1):
        a, b = levels[j][:, 0::2], levels[j][:, 1::2]
        L = a.shape[-1]
        gp = g / tops[j]
        if L > _DIRECT_MAX_LEN:  # the level was masked to its support
            gp = gp * _support(*bounds[j + 1], gp.shape[-1])
        ga = _correlate(gp, b, L)
        gb = _correlate(gp, a, L)
        g = torch.stack([ga, gb], dim=2).flatten(1, 2)  # children interleaved: (B, 2 nodes, L)
    grad = (g[..., 1] * levels[0][..., 1])[:, :n]  # leaf: d e^{x - pos} / dx = e^{x - pos}
    return log_coef, grad


def _tree_marginals(logits: Tensor, layout: Layout) -> tuple[Tensor, Tensor]:
    """``(log_z, pi)`` by the tree with its hand-written backward (no graph, no autograd)."""
    finite, flip, kk, K, c, feasible = layout
    with torch.no_grad():
        x = _oriented(logits, layout)
        xs = _apply_shift(x, c)
        l64 = torch.where(finite, logits, torch.zeros_like(logits)).double()
        log_coef, grad = _tree_log_coef_and_grad(xs, kk, K)
        all_l = torch.where(flip, l64.sum(-1), 0.0)
        body = log_coef + _base_terms(l64, xs, layout)
        log_z = torch.where(kk > 0, body, all_l)
        log_z = torch.where(feasible, log_z, torch.full_like(log_z, -math.inf))
        grad = torch.where((kk > 0).unsqueeze(-1), grad, torch.zeros_like(grad))
        fin = finite.to(grad.dtype)
        pi = torch.where(flip.unsqueeze(-1), fin - grad, grad)
        pi = torch.where(feasible.unsqueeze(-1), pi, torch.zeros_like(pi))
        return log_z, pi.clamp(0, 1).to(logits.dtype)


def marginals_2d(
    logits: Tensor, layout: Layout, method: str, create_graph: bool
) -> tuple[Tensor, Tensor]:
    """``(log_z, pi)`` for ``(B, n)`` logits: the gradient of :func:`log_normalizer_2d`.

    ``create_graph`` keeps ``pi`` differentiable (second derivatives of ``log e_k``); otherwise
    both results are detached. ``pi`` is clipped to ``[0, 1]`` by value only (the gradient
    passes unchanged), in the dtype of ``logits``.
    """
    B, n = logits.shape
    if method == "auto" and layout.K > 0 and B > 0:
        method = _auto_method(B, n, layout.K, compute_dtype(logits.dtype), logits.device)
    if not create_graph and method == "tree" and layout.K > 0 and B > 0:
        return _tree_marginals(logits.detach(), layout)
    with torch.enable_grad():
        leaf = logits if create_graph else logits.detach().requires_grad_(True)
        log_z = log_normalizer_2d(leaf, layout, method)
        if leaf.numel() == 0:
            pi = torch.zeros_like(leaf)
        else:
            (pi,) = torch.autograd.grad(log_z.sum(), leaf, create_graph=create_graph)
    pi = pi + (pi.clamp(0, 1) - pi).detach()
    if not create_graph:
        log_z, pi = log_z.detach(), pi.detach()
    return log_z, pi


class LogNormalizerFunction(torch.autograd.Function):
    r"""``(log_z, pi)`` of ``(B, n)`` logits from one pass, with :math:`\nabla \log e_k = \pi`.

    The forward runs the normalizer and its gradient once without keeping a graph (so a
    ``log_prob`` costs one forward and one backward of the normalizer, and the marginals come
    for free); the backward is ``g * pi``. Under ``create_graph`` (second derivatives, e.g.
    TRPO's Fisher-vector products) the backward recomputes ``pi`` with its graph, so higher
    derivatives stay exact. ``pi`` is returned non-differentiable.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, layout: Layout, method: str) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        log_z, pi = marginals_2d(logits.detach(), layout, method, create_graph=False)
        ctx.layout, ctx.method = layout, method
        ctx.save_for_backward(logits, pi)
        ctx.mark_non_differentiable(pi)
        return log_z, pi

    @staticmethod
    def backward(ctx, g: Tensor, _g_pi: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        logits, pi = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: pi as a function of the logits
            _, pi = marginals_2d(logits, ctx.layout, ctx.method, create_graph=True)
        return (g.unsqueeze(-1) * pi).to(logits.dtype), None, None


class EntropyFunction(torch.autograd.Function):
    r"""Entropy :math:`H = \log e_k - \sum_i \pi_i l_i` from a precomputed ``(log_z, pi)``.

    The gradient :math:`\nabla H = -\operatorname{Cov}(z)\, l` (a Hessian-vector product of
    :math:`\log e_k`) is computed in the backward only, and skipped when the incoming gradient
    is zero (PPO's ``ent_coef = 0``: the entropy is in the loss with weight 0).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, log_z: Tensor, pi: Tensor, layout: Layout, method: str
    ) -> Tensor:
        safe = torch.where(layout.finite, logits, torch.zeros_like(logits)).double()
        h = log_z - (pi.double() * safe).sum(-1)
        ctx.layout, ctx.method = layout, method
        ctx.save_for_backward(logits)
        return h.clamp_min(0)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, None, None, None, None]:  # type: ignore[override]
        (logits,) = ctx.saved_tensors
        if not bool(g.any()):
            return torch.zeros_like(logits), None, None, None, None
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            leaf = logits if create_graph else logits.detach().requires_grad_(True)
            _, pi = marginals_2d(leaf, ctx.layout, ctx.method, create_graph=True)
            v = torch.where(ctx.layout.finite, leaf, torch.zeros_like(leaf)).detach()
            (cov_l,) = torch.autograd.grad((pi * v).sum(), leaf, create_graph=create_graph)
        return (-g.unsqueeze(-1) * cov_l).to(logits.dtype), None, None, None, None


def _flatten(logits: Tensor, k: object, method: object, methods: tuple[str, ...]) -> Tensor:
    logits = check_tensor(logits)
    check_k(k, logits.shape[-1])
    _check_method(method, methods)
    return logits.reshape(math.prod(logits.shape[:-1]), logits.shape[-1])


def log_normalizer(logits: Tensor, k: int, method: Method = "auto") -> Tensor:
    r"""Log normalizer :math:`\log e_k(\exp(l))` of the k-subset distribution, batched.

    Args:
        logits: ``(..., n)`` logits; ``-inf`` marks an item that can never be chosen.
        k: subset size, ``0 <= k <= n``; each row needs at least ``k`` finite logits.
        method: ``"tree"``, ``"dft"`` or ``"auto"`` (the fastest exact method).

    Returns:
        ``(...,)`` tensor in the dtype of ``logits``, differentiable; its gradient is the
        vector of marginals.

    Raises:
        TypeError: ``logits`` not a floating-point tensor, or ``k`` not an int.
        ValueError: ``k`` outside ``[0, n]``, NaN or ``+inf`` logits, a row with fewer than
            ``k`` finite logits, or an unknown method.
    """
    flat = _flatten(logits, k, method, METHODS)
    check_logits(flat, int(k))
    layout = make_layout(flat, int(k))
    out = log_normalizer_2d(flat, layout, method)
    return out.to(logits.dtype).reshape(logits.shape[:-1])


def marginals(logits: Tensor, k: int, method: Method = "auto") -> Tensor:
    r"""Inclusion probabilities :math:`\pi_i = P(z_i = 1) = \partial \log e_k / \partial l_i`.

    Computed by differentiating :func:`log_normalizer`; when ``logits`` requires grad the result
    is differentiable again (second derivatives of :math:`\log e_k`).

    Args:
        logits: ``(..., n)`` logits.
        k: subset size.
        method: normalizer method, see :func:`log_normalizer`.

    Returns:
        ``(..., n)`` tensor with rows summing to ``k``, entries in ``[0, 1]``; masked items get
        exactly 0.

    Raises:
        The same errors as :func:`log_normalizer`.
    """
    flat = _flatten(logits, k, method, METHODS)
    check_logits(flat, int(k))
    layout = make_layout(flat, int(k))
    create_graph = logits.requires_grad and torch.is_grad_enabled()
    _, pi = marginals_2d(flat, layout, method, create_graph)
    return pi.reshape(logits.shape)


# --------------------------------------------------------------------------------------------
# Exact sampler
# --------------------------------------------------------------------------------------------
#: ``sampler="auto"`` draws by rejection while ``trials * samples * rows * n`` stays below this.
_REJECTIVE_MAX_WORK = 300_000


def _rejective_trials(n: int, k: int) -> int:
    """Proposals per sample for rejective sampling: about 8 / P(sum = k), so a miss is rare.

    After the shift, ``P(sum = k)`` is the Poisson-binomial pmf at its mode, roughly
    ``1 / sqrt(2 pi v)``, and ``v <= k (1 - k / n)`` for every row (``k <= n / 2``).
    """
    v = k * (1 - k / n) if n else 0.0
    return int(math.ceil(8 * (1 + math.sqrt(2 * math.pi * v))))


def sample_conditional_poisson(
    logits: Tensor,
    k: int,
    num_samples: int,
    generator: torch.Generator | None = None,
    method: str = "auto",
) -> Tensor:
    r"""Exact samples from the conditional Poisson distribution.

    Two exact samplers, both drawing independent Bernoulli(:math:`\theta`) variables
    (:math:`\theta = \sigma(l + c)` with the centring shift) conditioned on their sum being
    ``k``, which is the CP distribution for any shift. Rows with ``2k > m`` (``m`` available
    items) draw the ``m - k`` items left out instead, with negated logits (the complement of
    a CP sample is a CP sample of the negated logits).

    * ``"tree"`` splits counts down the tree of node pmfs of
      :func:`poisson_binomial_pmf_tree` (shared by all samples of a row): a node holding ``m``
      chosen items gives ``j`` of them to its left child ``A`` with probability

      .. math:: P(|A| = j \mid |A| + |B| = m) \propto \mathrm{pmf}_A(j)\,\mathrm{pmf}_B(m - j),

      from ``m = k`` at the root down to the leaves: ``log2(n)`` levels, each vectorised over
      samples, rows and nodes.
    * ``"rejective"`` draws ``T`` Bernoulli proposals per sample at once and keeps the first
      whose sum is ``k`` (acceptance about :math:`1/\sqrt{2\pi v}` after the shift). If any
      sample gets no acceptance, the whole call is redrawn with the tree, so the output is
      exact either way. Few, large operations: the fast choice for few samples of few rows.

    ``"auto"`` uses rejection on CPU while ``T * num_samples * rows * n`` is small, the tree
    otherwise.

    Args:
        logits: ``(B, n)`` logits (``-inf`` = never chosen), at least ``k`` finite per row.
        k: subset size.
        num_samples: samples per row.
        generator: optional ``torch.Generator`` for reproducibility.
        method: ``"auto"``, ``"tree"`` or ``"rejective"``.

    Returns:
        ``(num_samples, B, n)`` tensor of 0/1 in the dtype of ``logits``, exactly ``k`` ones.

    Raises:
        The errors of :func:`log_normalizer`, and ``ValueError`` for a negative
        ``num_samples`` or logits that are not 2-D.
    """
    logits = check_tensor(logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, n), found shape {tuple(logits.shape)}")
    check_k(k, logits.shape[-1])
    _check_method(method, SAMPLE_METHODS)
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral):
        raise TypeError(f"num_samples must be an int, found {type(num_samples).__name__}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, found {num_samples}")
    check_logits(logits, int(k))
    layout = make_layout(logits, int(k))
    return sample_2d(logits, layout, int(num_samples), generator, method)


def sample_2d(
    logits: Tensor,
    layout: Layout,
    num_samples: int,
    generator: torch.Generator | None,
    method: str = "auto",
) -> Tensor:
    """Exact samples ``(S, B, n)`` of ``(B, n)`` logits with a precomputed :class:`Layout`.

    Rows whose logits hold NaN (only possible without validation) come back as NaN rows, so
    the failure surfaces downstream instead of as a plausible subset.
    """
    B, n = logits.shape
    out_dtype = logits.dtype
    S = num_samples
    dev = logits.device
    with torch.no_grad():
        x = _oriented(logits.detach(), layout)
        if layout.K == 0 or S == 0 or B == 0:
            z = torch.zeros(S, B, n, dtype=x.dtype, device=dev)
        else:
            shifted = _apply_shift(x, layout.shift)
            trials = _rejective_trials(n, layout.K)
            z = None
            if method == "rejective" or (
                method == "auto"
                and dev.type == "cpu"
                and trials * S * B * n <= _REJECTIVE_MAX_WORK
            ):
                # A short round first (about 3 / acceptance proposals, enough for most
                # calls), the full one only if some sample missed, then the tree.
                short = max(1, (3 * trials) // 8)
                z = _sample_rejective(shifted, layout.kk, S, short, generator)
                if z is None:
                    z = _sample_rejective(shifted, layout.kk, S, trials, generator)
            if z is None:
                z = _sample_tree(shifted, layout.kk, layout.K, S, generator)
        # Complemented rows drew the items left out.
        fin = layout.finite.to(z.dtype)
        z = torch.where(layout.flip.view(1, B, 1), fin - z, z)
        bad = torch.isnan(logits).any(-1) | ~layout.feasible
        z = torch.where(bad.view(1, B, 1), torch.full_like(z, math.nan), z)
        return z.to(out_dtype)


def _sample_rejective(
    shifted: Tensor, kk: Tensor, S: int, trials: int, generator: torch.Generator | None
) -> Tensor | None:
    """First proposal with sum ``kk`` out of ``trials`` per sample, or ``None`` if any missed."""
    B, n = shifted.shape
    theta = torch.sigmoid(shifted)
    u = torch.rand(trials, S, B, n, dtype=theta.dtype, device=theta.device, generator=generator)
    proposals = u < theta
    accepted = proposals.sum(-1) == kk  # (T, S, B)
    if not bool(accepted.any(0).all()):
        return None
    first = accepted.to(torch.int8).argmax(0)  # (S, B): index of the first accepted proposal
    index = first.view(1, S, B, 1).expand(1, S, B, n)
    return proposals.gather(0, index)[0].to(shifted.dtype)


def _sample_tree(
    shifted: Tensor, kk: Tensor, K: int, S: int, generator: torch.Generator | None
) -> Tensor:
    """The tree sampler (see :func:`sample_conditional_poisson`), ``kk`` ones per row.

    Each split draws ``j`` by inverting the split CDF with ``u = 1 - rand()`` in ``(0, 1]``:
    ``j = #{i : cdf_i < u * cdf_last}``. Entries outside a child's feasible range are exactly
    zero, so the CDF is flat there and ``j`` lands in the feasible range by construction (no
    clamping). Counts are int32.
    """
    B, n = shifted.shape
    dev, dt = shifted.device, shifted.dtype
    levels = poisson_binomial_pmf_tree(shifted, K, clean=True).levels
    counts = kk.to(torch.int32).view(1, B, 1).expand(S, B, 1)
    tiny = torch.finfo(dt).tiny
    for level in range(len(levels) - 2, -1, -1):
        pmf = levels[level]  # (B, 2 * nodes, L)
        a, b = pmf[:, 0::2], pmf[:, 1::2]  # (B, nodes, L)
        nodes, L = a.shape[1], a.shape[2]
        m = counts  # (S, B, nodes)
        if L == 2:
            # Leaves: only m == 1 is random; A gets the item w.p. a1 b0 / (a1 b0 + a0 b1).
            # ja = (m + [u < q]) // 2 gives 0, [u < q], 1 for m = 0, 1, 2.
            pa = a[..., 1] * b[..., 0]
            pb = a[..., 0] * b[..., 1]
            q = pa / (pa + pb).clamp_min(tiny)
            u = torch.rand(S, B, nodes, dtype=dt, device=dev, generator=generator)
            ja = (m + (u < q).to(torch.int32)) >> 1
        else:
            # win[s, j] = b[(2L - 2 - s) - j] (zero outside 0..L-1): the reversed, padded
            # b seen through sliding windows, a view. Row s = 2L - 2 - m holds b[m - j].
            win = torch.nn.functional.pad(b.flip(-1), (L - 1, L - 1)).unfold(-1, L, 1)
            row = (2 * L - 2) - m  # (S, B, nodes), m <= 2L - 2 always
            if 2 * L - 1 <= 2 * S:
                # Few counts: tabulate the split CDF once per node, shared by all samples,
                # then read rows by one flat index_select.
                table = (a.unsqueeze(-2) * win).cumsum(-1)  # (B, nodes, 2L - 1, L)
                flat = table.reshape(-1, L)
                base = (
                    torch.arange(B, device=dev, dtype=torch.int32).view(1, B, 1) * nodes
                    + torch.arange(nodes, device=dev, dtype=torch.int32).view(1, 1, nodes)
                ) * (2 * L - 1)
                cdf = flat.index_select(0, (base + row).reshape(-1)).view(S, B, nodes, L)
            else:
                b_idx = torch.arange(B, device=dev).view(1, B, 1)
                n_idx = torch.arange(nodes, device=dev).view(1, 1, nodes)
                cdf = (a.unsqueeze(0) * win[b_idx, n_idx, row.long()]).cumsum(-1)
            u = 1 - torch.rand(S, B, nodes, 1, dtype=dt, device=dev, generator=generator)
            ja = (cdf < u * cdf[..., -1:]).sum(-1, dtype=torch.int32)
        counts = torch.stack([ja, m - ja], dim=-1).flatten(-2)
    return counts[..., :n].to(dt)

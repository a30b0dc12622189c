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

References:
    * S. X. Chen, A. P. Dempster, J. S. Liu. Weighted finite population sampling to maximize
      entropy. Biometrika 81(3), 1994 (conditional Poisson sampling).
    * M. Fernandez, S. Williams. Closed-form expression for the Poisson-binomial probability
      density function. IEEE Trans. Aerospace and Electronic Systems 46(2), 2010.
    * K. Ahmed et al. SIMPLE: A gradient estimator for k-subset sampling. ICLR 2023.
    * H. Wijk et al. SFESS: Score function estimators for k-subset sampling. ICLR 2025.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "METHODS",
    "Method",
    "centering_shift",
    "log_normalizer",
    "marginals",
    "poisson_binomial_pmf_tree",
    "sample_conditional_poisson",
]

Method = Literal["auto", "tree", "dft"]
METHODS: tuple[str, ...] = ("auto", "tree", "dft")

# Polynomials shorter than this are multiplied directly (exact, non-negative); longer ones by FFT.
_DIRECT_MAX_LEN = 9
# Newton iterations for the centring shift (the shift needs to be good, not exact).
_SHIFT_ITERS = 12


# --------------------------------------------------------------------------------------------
# The centring shift
# --------------------------------------------------------------------------------------------
def centering_shift(logits: Tensor, k: int) -> Tensor:
    r"""A detached constant per row with :math:`\sum_i \sigma(l_i + c) \approx k`.

    Safeguarded Newton on the increasing function :math:`f(c) = \sum_i \sigma(l_i + c) - k`,
    bracketed by :math:`c_{lo} = \operatorname{logit}(k/n) - \max_i l_i` (where :math:`f \le 0`)
    and :math:`c_{hi} = \operatorname{logit}(k/m) - \min_{i: l_i > -\infty} l_i` (where
    :math:`f \ge 0`; :math:`m` is the number of finite logits). Any :math:`c` gives the same
    distribution; a centred one keeps :math:`\mathrm{PB}_k` at the mode of the Poisson-binomial.

    Args:
        logits: ``(B, n)`` logits, ``-inf`` for masked items; at least ``k`` finite per row and
            ``0 < k < m``.
        k: subset size.

    Returns:
        ``(B, 1)`` shift, detached, in the dtype of ``logits``.
    """
    x = logits.detach()
    finite = torch.isfinite(x)
    n = x.shape[-1]
    m = finite.sum(-1, keepdim=True).to(x.dtype)
    lmax = x.masked_fill(~finite, -math.inf).amax(-1, keepdim=True)
    lmin = x.masked_fill(~finite, math.inf).amin(-1, keepdim=True)
    lo = math.log(k / (n - k)) - lmax if k < n else -lmax
    hi = torch.log(k / (m - k).clamp_min(0.5)) - lmin
    lo = torch.as_tensor(lo, dtype=x.dtype, device=x.device).expand_as(hi).clone()
    c = 0.5 * (lo + hi)
    for _ in range(_SHIFT_ITERS):
        s = torch.sigmoid(x + c)
        f = s.sum(-1, keepdim=True) - k
        fp = (s * (1 - s)).sum(-1, keepdim=True)
        lo = torch.where(f <= 0, c, lo)
        hi = torch.where(f >= 0, c, hi)
        newton = c - f / fp.clamp_min(torch.finfo(x.dtype).tiny)
        inside = (newton > lo) & (newton < hi)
        c = torch.where(inside, newton, 0.5 * (lo + hi))
    return c


# --------------------------------------------------------------------------------------------
# Tree of Poisson-binomial pmfs
# --------------------------------------------------------------------------------------------
def _polymul_direct(a: Tensor, b: Tensor, length: int) -> Tensor:
    """Coefficients ``[0, length)`` of ``a * b`` along the last dim (equal short lengths ``L``).

    A sum of ``L`` shifted copies of ``b``: exact up to rounding and non-negative for pmfs.
    """
    L = a.shape[-1]
    pad = torch.nn.functional.pad
    out = pad(a[..., :1] * b, (0, L - 1))
    for i in range(1, L):
        out = out + pad(a[..., i : i + 1] * b, (i, L - 1 - i))
    return out[..., :length]


def _polymul_fft(a: Tensor, b: Tensor, length: int) -> Tensor:
    """Coefficients ``[0, length)`` of ``a * b`` by real FFT (equal lengths ``L``)."""
    L = a.shape[-1]
    size = 2 * L - 1
    nfft = 1 << (size - 1).bit_length()
    fa = torch.fft.rfft(a, n=nfft)
    fb = torch.fft.rfft(b, n=nfft)
    return torch.fft.irfft(fa * fb, n=nfft)[..., :length]


def poisson_binomial_pmf_tree(
    shifted: Tensor, k: int, *, clean: bool = False
) -> tuple[list[Tensor], Tensor, list[tuple[Tensor, Tensor]]]:
    r"""All node polynomials of a balanced product tree of Bernoulli factors, truncated at ``k``.

    Item ``i`` contributes the factor :math:`1 + r_i x` with :math:`r_i = e^{x_i}`
    (:math:`x` the shifted logits), stored as ``[e^{-x_i^+}, e^{x_i - x_i^+}]`` with log-scale
    :math:`x_i^+ = \max(x_i, 0)`: both entries are exact exponentials, so no ``1 - theta`` is
    ever rounded (whose correlated rounding errors would add up over thousands of items). The
    ``n`` items are padded with :math:`r = 0` items to a power of two ``N``; level ``j`` holds,
    for each of the ``N / 2^j`` nodes, the coefficients ``0..min(2^j, k)`` of the product of its
    ``2^j`` factors, divided by their maximum; the divisors are accumulated (detached, float64)
    as a log-scale per node. Each node's coefficients are proportional to the Poisson-binomial
    pmf of the number of successes among its items, and entries outside the node's feasible
    count range are exactly zero.

    Args:
        shifted: ``(B, n)`` shifted logits (``-inf`` for masked items, no ``+inf``).
        k: truncation degree (the count of interest).
        clean: clamp FFT round-off below zero to zero (for sampling tables; breaks gradients).

    Returns:
        ``(levels, log_scale, bounds)``: ``levels[j]`` has shape
        ``(B, N / 2^j, min(2^j, k) + 1)``; ``log_scale`` is the root's ``(B,)`` float64
        log-scale, so that :math:`\log e_k(e^{x}) = \log` ``levels[-1][:, 0, k]`` ``+ log_scale``;
        ``bounds[j] = (lo, hi)`` are integer tensors ``(B, N / 2^j)`` of feasible counts.
    """
    B, n = shifted.shape
    N = 1 << max(0, (n - 1).bit_length())
    if N > n:
        shifted = torch.nn.functional.pad(shifted, (0, N - n), value=-math.inf)
    pos = shifted.detach().clamp_min(0)
    x = torch.stack([torch.exp(-pos), torch.exp(shifted - pos)], dim=-1)  # (B, N, 2)
    scale = pos.double()
    hi = (x[..., 1] > 0).to(torch.int64)
    lo = (x[..., 0] == 0).to(torch.int64)
    levels = [x]
    bounds = [(lo, hi)]
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
            x = _polymul_fft(a, b, length)
            idx = torch.arange(length, device=x.device)
            support = (idx >= lo.unsqueeze(-1)) & (idx <= hi.unsqueeze(-1))
            x = x * support
            if clean:
                x = x.clamp_min(0)
        top = x.detach().amax(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        x = x / top
        scale = scale + top.squeeze(-1).double().log()
        levels.append(x)
        bounds.append((lo, hi))
    return levels, scale[:, 0], bounds


def _log_esp_tree(shifted: Tensor, k: int) -> Tensor:
    """``log e_k(exp(shifted))`` by the product tree."""
    levels, log_scale, _ = poisson_binomial_pmf_tree(shifted, k)
    return torch.log(levels[-1][:, 0, k]) + log_scale.to(shifted.dtype)


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
    delta = torch.finfo(dtype).eps * 1e-3
    big_l = math.log(2 * (n + 1) / delta)
    t = big_l / 3 + math.sqrt(big_l**2 / 9 + 2 * v * big_l)
    M = int(math.ceil(t + off)) + 1
    if M >= n + 1:
        return n + 1
    return M | 1  # odd: omega = pi never occurs


def _dft_num_frequencies(theta: Tensor, k: int) -> int:
    """:func:`_frequency_count` for the variance and centring of these ``theta`` rows."""
    with torch.no_grad():
        t64 = theta.double()
        v = float((t64 * (1 - t64)).sum(-1).max())
        off = float((t64.sum(-1) - k).abs().max())
    return _frequency_count(theta.shape[-1], v, off, theta.dtype)


def _log_pb_dft(theta: Tensor, k: int, num_frequencies: int | None = None) -> Tensor:
    M = num_frequencies if num_frequencies is not None else _dft_num_frequencies(theta, k)
    half = (M - 1) // 2  # frequencies 1..half; conjugates M-half..M-1 give the same real part
    j = torch.arange(1, half + 1, dtype=torch.float64, device=theta.device)
    omega64 = 2 * math.pi * j / M
    omega = omega64.to(theta.dtype).unsqueeze(-1)  # (F, 1)
    cos_w = torch.cos(omega64).to(theta.dtype).unsqueeze(-1)
    sin_w = torch.sin(omega64).to(theta.dtype).unsqueeze(-1)
    th = theta.unsqueeze(-2)  # (B, 1, n)
    # |1 - th + th e^{iw}|^2 = 1 - 2 th (1 - th)(1 - cos w); phase centred by subtracting th * w.
    log_mod = 0.5 * torch.log1p(-2 * th * (1 - th) * (1 - cos_w)).sum(-1)  # (B, F)
    phase = (torch.atan2(th * sin_w, 1 - th + th * cos_w) - th * omega).sum(-1)
    # Reduce (l * (sum theta - k)) exactly enough: frequencies times the small residual.
    resid = (theta.sum(-1, keepdim=True) - k) * omega.squeeze(-1)
    total = torch.exp(log_mod) * torch.cos(phase + resid)
    if M % 2 == 0:  # the Nyquist frequency omega = pi appears once: prod(1 - 2 theta) (-1)^k
        extra = torch.prod(1 - 2 * theta, dim=-1) * (-1.0) ** k
    else:
        extra = 0.0
    pb = (1 + 2 * total.sum(-1) + extra) / M
    return torch.log(pb)


# --------------------------------------------------------------------------------------------
# Public functional API
# --------------------------------------------------------------------------------------------
def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, found {method!r}")


#: ``auto`` uses the DFT while ``rows * n * M / 2`` (its number of complex factors) stays below
#: this; measured on a 2-core CPU, where the tree's ``log2 n`` levels of small ops cost more than
#: the DFT's few large ones below about this size (see benchmarks/README.md).
_DFT_AUTO_MAX_WORK = 250_000


def _auto_method(rows: int, n: int, k: int, dtype: torch.dtype, device: torch.device) -> str:
    """The faster exact method, decided without looking at the data (no device sync).

    On CPU, the DFT below a work bound (its frequency count bounded with the largest variance a
    centred Poisson-binomial with mean ``k`` can have, ``k (1 - k / n)``), the tree above. Off
    the CPU always the tree: it never synchronises with the host, while the DFT reads its
    frequency count back.
    """
    if device.type != "cpu":
        return "tree"
    M = _frequency_count(n, k * (1 - k / n), 1.0, dtype)
    return "dft" if rows * n * (M // 2) <= _DFT_AUTO_MAX_WORK else "tree"


def _log_normalizer_2d(logits: Tensor, k: int, method: str) -> Tensor:
    """``log e_k(exp(logits))`` for ``(B, n)`` logits with at least ``k`` finite per row."""
    finite = torch.isfinite(logits)
    safe = torch.where(finite, logits, torch.zeros_like(logits))
    if k == 0:  # one subset, the empty one
        return safe.sum(-1) * 0
    # Rows with exactly k available items (one subset) need no special case, and checking for
    # them would cost a device sync: the shift pushes their odds up and the tree (or the DFT,
    # log PB_k + sum softplus - k c = sum_i log sigmoid + softplus) gives the sum of logits.
    c = centering_shift(logits, k)
    shifted = logits + c
    if method == "auto":
        method = _auto_method(logits.shape[0], logits.shape[-1], k, logits.dtype, logits.device)
    if method == "tree":
        log_esp = _log_esp_tree(shifted, k)
    else:
        sp = torch.nn.functional.softplus(shifted)
        log_esp = _log_pb_dft(torch.sigmoid(shifted), k) + sp.sum(-1)
    return log_esp - k * c.squeeze(-1)


def log_normalizer(logits: Tensor, k: int, method: Method = "auto") -> Tensor:
    r"""Log normalizer :math:`\log e_k(\exp(l))` of the k-subset distribution, batched.

    Args:
        logits: ``(..., n)`` logits; ``-inf`` marks an item that can never be chosen.
        k: subset size, ``0 <= k <= n``; each row needs at least ``k`` finite logits.
        method: ``"tree"``, ``"dft"`` or ``"auto"`` (the fastest exact method).

    Returns:
        ``(...,)`` tensor, differentiable; its gradient is the vector of marginals.
    """
    _check_method(method)
    shape = logits.shape
    out = _log_normalizer_2d(logits.reshape(-1, shape[-1]), k, method)
    return out.reshape(shape[:-1])


def marginals(logits: Tensor, k: int, method: Method = "auto") -> Tensor:
    r"""Inclusion probabilities :math:`\pi_i = P(z_i = 1) = \partial \log e_k / \partial l_i`.

    Computed by differentiating :func:`log_normalizer`; when ``logits`` requires grad the result
    is differentiable again (second derivatives of :math:`\log e_k`).

    Args:
        logits: ``(..., n)`` logits.
        k: subset size.
        method: normalizer method, see :func:`log_normalizer`.

    Returns:
        ``(..., n)`` tensor with rows summing to ``k``; masked items get exactly 0.
    """
    _check_method(method)
    create_graph = logits.requires_grad and torch.is_grad_enabled()
    with torch.enable_grad():
        leaf = logits if create_graph else logits.detach().requires_grad_(True)
        log_z = log_normalizer(leaf, k, method)
        (pi,) = torch.autograd.grad(log_z.sum(), leaf, create_graph=create_graph)
    return pi


# --------------------------------------------------------------------------------------------
# Exact sampler
# --------------------------------------------------------------------------------------------
#: ``sampler="auto"`` draws by rejection while ``trials * samples * rows * n`` stays below this.
_REJECTIVE_MAX_WORK = 1_000_000
SAMPLE_METHODS: tuple[str, ...] = ("auto", "tree", "rejective")


def _rejective_trials(n: int, k: int) -> int:
    """Proposals per sample for rejective sampling: about 8 / P(sum = k), so a miss is rare.

    After the shift, ``P(sum = k)`` is the Poisson-binomial pmf at its mode, roughly
    ``1 / sqrt(2 pi v)``, and ``v <= k (1 - k / n)`` whatever the logits.
    """
    v = k * (1 - k / n)
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
    ``k``, which is the CP distribution for any shift:

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
    otherwise (the tree never synchronises with the host, so it is the choice on GPUs).

    Args:
        logits: ``(B, n)`` logits (``-inf`` = never chosen), at least ``k`` finite per row.
        k: subset size.
        num_samples: samples per row.
        generator: optional ``torch.Generator`` for reproducibility.
        method: ``"auto"``, ``"tree"`` or ``"rejective"``.

    Returns:
        ``(num_samples, B, n)`` tensor of 0/1 in the dtype of ``logits``, exactly ``k`` ones.
    """
    if method not in SAMPLE_METHODS:
        raise ValueError(f"method must be one of {SAMPLE_METHODS}, found {method!r}")
    B, n = logits.shape
    dev, dt = logits.device, logits.dtype
    S = num_samples
    if k == 0 or S == 0:
        return torch.zeros(S, B, n, dtype=dt, device=dev)
    with torch.no_grad():
        logits = logits.detach()
        shifted = logits + centering_shift(logits, k)
        trials = _rejective_trials(n, k)
        # Rejection reads back whether every sample was accepted (a sync): CPU only in "auto".
        if method == "rejective" or (
            method == "auto" and dev.type == "cpu" and trials * S * B * n <= _REJECTIVE_MAX_WORK
        ):
            z = _sample_rejective(shifted, k, S, trials, generator)
            if z is not None:
                return z
        return _sample_tree(shifted, k, S, generator)


def _sample_rejective(
    shifted: Tensor, k: int, S: int, trials: int, generator: torch.Generator | None
) -> Tensor | None:
    """First proposal with sum ``k`` out of ``trials`` per sample, or ``None`` if any missed."""
    B, n = shifted.shape
    theta = torch.sigmoid(shifted)
    u = torch.rand(trials, S, B, n, dtype=theta.dtype, device=theta.device, generator=generator)
    proposals = u < theta
    accepted = proposals.sum(-1) == k  # (T, S, B)
    if not bool(accepted.any(0).all()):
        return None
    first = accepted.to(torch.int8).argmax(0)  # (S, B): index of the first accepted proposal
    index = first.view(1, S, B, 1).expand(1, S, B, n)
    return proposals.gather(0, index)[0].to(shifted.dtype)


def _sample_tree(
    shifted: Tensor, k: int, S: int, generator: torch.Generator | None
) -> Tensor:
    """The tree sampler (see :func:`sample_conditional_poisson`)."""
    B, n = shifted.shape
    dev, dt = shifted.device, shifted.dtype
    levels, _, bounds = poisson_binomial_pmf_tree(shifted, k, clean=True)
    counts = torch.full((S, B, 1), k, dtype=torch.int64, device=dev)
    b_idx = torch.arange(B, device=dev).view(1, B, 1)
    n_idx = torch.arange(levels[0].shape[1], device=dev).view(1, 1, -1)
    for level in range(len(levels) - 2, -1, -1):
        pmf = levels[level]  # (B, 2 * nodes, L)
        lo, hi = bounds[level]
        a, b = pmf[:, 0::2], pmf[:, 1::2]  # (B, nodes, L)
        lo_a, lo_b, hi_a, hi_b = lo[:, 0::2], lo[:, 1::2], hi[:, 0::2], hi[:, 1::2]
        nodes, L = a.shape[1], a.shape[2]
        m = counts  # (S, B, nodes)
        if L == 2:
            # Leaves: only m == 1 is random; A gets the item w.p. a1 b0 / (a1 b0 + a0 b1).
            pa = a[..., 1] * b[..., 0]
            pb = a[..., 0] * b[..., 1]
            q = pa / (pa + pb).clamp_min(torch.finfo(dt).tiny)
            u = torch.rand(S, B, nodes, dtype=dt, device=dev, generator=generator)
            ja = torch.where(m == 1, (u < q).to(torch.int64), m // 2)
        else:
            # win[s, j] = b[(2L - 2 - s) - j] (zero outside 0..L-1): the reversed, padded
            # b seen through sliding windows, a view. Row s = 2L - 2 - m holds b[m - j].
            win = torch.nn.functional.pad(b.flip(-1), (L - 1, L - 1)).unfold(-1, L, 1)
            row = (2 * L - 2 - m).clamp_min(0)  # (S, B, nodes); m <= 2L - 2 always
            if 2 * L - 1 <= 2 * S:
                # Few counts: tabulate the split CDF once per node, shared by all samples.
                table = (a.unsqueeze(-2) * win).cumsum(-1)  # (B, nodes, 2L - 1, L)
                cdf = table[b_idx, n_idx[:, :, :nodes], row]
            else:
                cdf = (a.unsqueeze(0) * win[b_idx, n_idx[:, :, :nodes], row]).cumsum(-1)
            u = torch.rand(S, B, nodes, 1, dtype=dt, device=dev, generator=generator)
            ja = (cdf <= u * cdf[..., -1:]).sum(-1)
        # Keep the split feasible whatever round-off did (a no-op for a valid draw).
        lo_int = torch.maximum(lo_a.unsqueeze(0), m - hi_b.unsqueeze(0))
        hi_int = torch.minimum(hi_a.unsqueeze(0), m - lo_b.unsqueeze(0))
        ja = torch.minimum(torch.maximum(ja, lo_int), hi_int)
        counts = torch.stack([ja, m - ja], dim=-1).flatten(-2)
    return counts[..., :n].to(dt)

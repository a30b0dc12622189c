"""Independent references for the tests: enumeration and a float64 log-space DP (numpy).

Nothing here imports subset_rl; these are the yardsticks the library is checked against.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def enumerate_subsets(n: int, k: int) -> np.ndarray:
    """All k-hot vectors of length n, shape (C(n, k), n), in lexicographic order."""
    combos = list(itertools.combinations(range(n), k))
    out = np.zeros((len(combos), n))
    for row, c in enumerate(combos):
        out[row, list(c)] = 1.0
    return out


def enumerated_pmf(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(subsets, pmf) of the k-subset distribution for one row of logits, by enumeration."""
    logits = np.asarray(logits, dtype=np.float64)
    subsets = enumerate_subsets(logits.shape[-1], k)
    with np.errstate(invalid="ignore"):
        scores = np.where(subsets > 0, logits, 0.0).sum(-1)
    scores = scores - scores.max()
    p = np.exp(scores)
    return subsets, p / p.sum()


def log_esp_dp(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """log e_k(exp(logits)) and the marginals by a float64 log-space DP (forward-backward).

    ``logits`` is ``(n,)`` or ``(R, n)``; rows are processed together. With
    F[i, j] = log e_j(w_1..w_i) and G[i, j] = log e_j(w_{i+1}..w_n),
    pi_i = exp(l_i + logsumexp_j(F[i-1, j] + G[i, k-1-j]) - log e_k). O(nk) time and memory.

    Returns:
        ``(log_z, pi)`` with shapes ``(R,)`` and ``(R, n)`` (or ``()`` and ``(n,)``).
    """
    logits = np.asarray(logits, dtype=np.float64)
    single = logits.ndim == 1
    x = np.atleast_2d(logits)
    R, n = x.shape
    F = np.full((n + 1, R, k + 1), -np.inf)
    F[0, :, 0] = 0.0
    with np.errstate(invalid="ignore"):
        for i in range(n):
            F[i + 1, :, 0] = 0.0
            F[i + 1, :, 1:] = np.logaddexp(F[i, :, 1:], F[i, :, :-1] + x[:, i : i + 1])
        log_z = F[n, :, k]
        pi = np.zeros((R, n))
        g = np.full((R, k + 1), -np.inf)  # G after item i
        g[:, 0] = 0.0
        for i in range(n - 1, -1, -1):
            if k >= 1:
                terms = F[i, :, :k] + g[:, :k][:, ::-1]
                mx = terms.max(-1)
                ok = np.isfinite(mx) & np.isfinite(x[:, i])
                safe = np.where(ok, mx, 0.0)
                lse = safe + np.log(np.exp(terms - safe[:, None]).sum(-1))
                pi[:, i] = np.where(ok, np.exp(x[:, i] + lse - log_z), 0.0)
            new = g.copy()
            new[:, 1:] = np.logaddexp(g[:, 1:], g[:, :-1] + x[:, i : i + 1])
            g = new
    if single:
        return log_z[0], pi[0]
    return log_z, pi


def log_esp_complement(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """log e_k and marginals of each row by a float64 log-space DP, through the complement.

    Independent of subset_rl. Rows are ``(R, n)`` with ``-inf`` for masked items; a row with
    ``m`` finite logits and ``2k > m`` uses ``e_k(w) = prod(w) e_{m-k}(1/w)`` (DP over the
    negated finite logits for ``m - k``, then ``pi = 1 - pi'`` on the finite items), so the DP
    never runs past degree ``min(k, m - k)``. Rows with fewer than ``k`` finite logits get
    ``log_z = -inf`` and ``pi = nan``.

    Returns:
        ``(log_z, pi)`` of shapes ``(R,)`` and ``(R, n)``.
    """
    x = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    R, n = x.shape
    log_z = np.full(R, -np.inf)
    pi = np.full((R, n), np.nan)
    for r in range(R):
        row = x[r]
        finite = np.isfinite(row)
        m = int(finite.sum())
        if m < k:
            continue
        flip = 2 * k > m
        kk = m - k if flip else k
        y = row[finite]
        y = -y if flip else y
        if kk == 0:
            lz, p = 0.0, np.zeros(m)
        else:
            lz, p = log_esp_dp(y[None, :], kk)
            lz, p = float(lz[0]), p[0]
        if flip:
            lz = lz + math.fsum(row[finite])  # exactly rounded sum
            p = 1.0 - p
        log_z[r] = lz
        out = np.zeros(n)
        out[finite] = p
        pi[r] = out
    return log_z, pi


def log_esp_exact(logits: np.ndarray, k: int, dps: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """log e_k and marginals of each row in arbitrary-precision arithmetic (mpmath).

    Independent of subset_rl and immune to spread: ``w_i = exp(l_i)`` are mpmath numbers
    (unbounded exponents, ``dps`` significant digits), and the DP
    ``e_j <- e_j + w_i e_{j-1}`` adds only positive terms, so every quantity keeps ``dps``
    relative digits whatever the logits (``1e300`` next to ``1`` included). Marginals are
    ``pi_i = w_i e_{k-1}(w without i) / e_k(w)`` from prefix and suffix tables. Rows with
    ``2k > m`` go through ``e_k(w) = prod(w) e_{m-k}(1/w)``, products only. ``O(n k'^2)`` per
    row with ``k' = min(k, m - k)``: for small rows or small ``k'`` only. Rows with fewer than
    ``k`` finite logits get ``-inf``/NaN.
    """
    import mpmath

    x = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    R, n = x.shape
    log_z = np.full(R, -np.inf)
    pi = np.full((R, n), np.nan)
    with mpmath.workdps(dps):
        zero, one = mpmath.mpf(0), mpmath.mpf(1)
        for r in range(R):
            finite = np.isfinite(x[r])
            m = int(finite.sum())
            if m < k:
                continue
            # Complement in multiplicative form (no cancellation): e_k(w) = prod(w) e_{m-k}(1/w).
            flip = 2 * k > m
            kk = m - k if flip else k
            w = [mpmath.exp(mpmath.mpf(-v if flip else v)) for v in x[r][finite]]
            ek, p = _esp_and_marginals(w, kk, zero, one)
            if flip:
                for v in x[r][finite]:  # prod(w): products keep every relative digit
                    ek = ek * mpmath.exp(mpmath.mpf(v))
                p = [1 - q for q in p]
            log_z[r] = float(mpmath.log(ek))
            out = np.zeros(n)
            out[finite] = [float(q) for q in p]
            pi[r] = out
    return log_z, pi


def _esp_and_marginals(w, k, zero, one):
    """``e_k(w)`` and ``w_i e_{k-1}(w without i) / e_k(w)`` by prefix/suffix DPs (mpmath)."""
    n = len(w)
    pre = [[one] + [zero] * k]
    for wi in w:
        prev = pre[-1]
        pre.append([one] + [prev[j] + wi * prev[j - 1] for j in range(1, k + 1)])
    suf = [[one] + [zero] * k]
    for wi in reversed(w):
        prev = suf[-1]
        suf.append([one] + [prev[j] + wi * prev[j - 1] for j in range(1, k + 1)])
    suf.reverse()  # suf[i] = e_j(w_i..w_{n-1})
    ek = pre[n][k]
    if k == 0:
        return ek, [zero] * n
    p = []
    for i in range(n):
        rest = sum((pre[i][j] * suf[i + 1][k - 1 - j] for j in range(k)), zero)
        p.append(w[i] * rest / ek)
    return ek, p

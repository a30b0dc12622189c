"""Independent references for the tests: enumeration and a float64 log-space DP (numpy).

Nothing here imports subset_rl; these are the yardsticks the library is checked against.
"""

from __future__ import annotations

import itertools

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

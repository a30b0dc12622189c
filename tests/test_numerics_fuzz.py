"""Seeded fuzzing of the core numerics against independent references.

Every case is a batch of rows of one ``(n, k, dtype, method)`` with logits drawn from a mix of
generators that real inputs produce: gentle Gaussians, large offsets, tight and far-apart
clusters, soft masks (``-1e4`` to ``-1e30``), hard masks (``-inf``), ties and extreme spreads up
to the validated range. The references share no code with the library:
:func:`reference.log_esp_exact` (arbitrary precision with mpmath, positive terms only and the
complement in product form, so exact at any spread) for rows up to n = 40 or with
``min(k, m - k) <= 4``, and :func:`reference.log_esp_complement` (a float64 log-space DP through
the complement identity) for larger rows of moderate spread.

Bounds checked (the issue's contract): ``log Z`` relative error ``<= 1e-5`` (float32) /
``1e-10`` (float64), measured as ``|err| / max(1, |log Z|)``; marginals absolute error
``<= 1e-4`` / ``1e-8`` and inside ``[0, 1]``; samples k-hot, never a masked item, never an item
whose reference marginal is below ``1e-12`` and always one above ``1 - 1e-12``; ``log_prob`` of
the samples and its gradient finite, the gradient equal to ``sum_s (z_s - pi)``.

The default run covers 800 cases (3,200 rows, plus 240 on the GPU shift schedule) in a few
seconds; ``-m slow`` runs 800 more cases with ``n`` up to 300 (3,200 rows), and
``tests/test_numerics_edge.py`` covers ``n = 100,000``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import log_esp_complement, log_esp_exact

from subset_rl import KSubsetPolicy

TOL = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-8)}
LIMIT = {torch.float32: 1e30, torch.float64: 1e300}  # well inside the validated range


def _row(rng: np.random.Generator, n: int, dtype: torch.dtype) -> np.ndarray:
    kind = rng.integers(0, 8)
    if kind == 0:  # gentle
        x = rng.standard_normal(n) * 10 ** rng.uniform(-3, 1)
    elif kind == 1:  # big scale and offset
        x = rng.standard_normal(n) * 10 ** rng.uniform(0, 3) + rng.uniform(-1e4, 1e4)
    elif kind == 2:  # clusters a few thousand apart
        centers = rng.uniform(-1, 1, rng.integers(2, 5)) * 10 ** rng.uniform(1, 4)
        x = centers[rng.integers(0, len(centers), n)] + rng.standard_normal(n) * rng.uniform(0, 2)
    elif kind == 3:  # ties
        x = np.round(rng.standard_normal(n) * 2) * rng.uniform(0.5, 3)
    elif kind == 4:  # extreme spread
        x = rng.standard_normal(n) * 3
        hit = rng.random(n) < 0.3
        scale = LIMIT[dtype] * 10 ** -rng.uniform(0, 20, hit.sum())
        x[hit] = rng.choice([-1.0, 1.0], hit.sum()) * scale
    else:  # soft masks on a gentle or spread base
        x = rng.standard_normal(n) * 10 ** rng.uniform(-1, 2)
        hit = rng.random(n) < rng.uniform(0.1, 0.7)
        x[hit] = -(10.0 ** rng.choice([4, 5, 6, 8, 12, 30], hit.sum()))
    hard = rng.random(n) < (0.3 if rng.random() < 0.3 else 0.0)
    x[hard] = -np.inf
    # Round through the tested dtype so that the reference sees the very same numbers.
    return torch.tensor(x, dtype=dtype).double().numpy()


def _cases(seed: int, count: int, n_max: int, rows: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        dtype = torch.float32 if rng.random() < 0.5 else torch.float64
        n = int(rng.integers(1, n_max + 1))
        x = np.stack([_row(rng, n, dtype) for _ in range(rows)])
        m_min = int(np.isfinite(x).sum(-1).min())
        choice = rng.integers(0, 6)
        k = [0, 1, m_min // 2, m_min - 1, m_min, int(rng.integers(0, m_min + 1))][choice]
        k = max(0, min(k, m_min))
        if n > 40 and min(k, m_min - k) > 4:
            # Large rows: the exact reference costs O(n k'^2); keep k' small for it, or use
            # the float64 DP on rows whose spread it resolves.
            if np.abs(np.where(np.isfinite(x), x, 0)).max() > 1e4:
                k = int(rng.integers(0, 5))
        method = ["auto", "tree", "dft"][rng.integers(0, 3)]
        yield x, k, dtype, method


def _reference(x: np.ndarray, k: int):
    m_min = int(np.isfinite(x).sum(-1).min())
    if x.shape[1] <= 40 or min(k, m_min - k) <= 4:
        return log_esp_exact(x, k)
    return log_esp_complement(x, k)


def _check_case(x: np.ndarray, k: int, dtype: torch.dtype, method: str, device, seed: int):
    ref_z, ref_pi = _reference(x, k)
    rtol, atol = TOL[dtype]
    logits = torch.tensor(x, dtype=dtype, device=device)
    where = f"n={x.shape[1]} k={k} {dtype} {method} rows=\n{x}"
    d = KSubsetPolicy(logits.clone().requires_grad_(True), k, method=method)
    log_z = d.log_normalizer.detach().double().cpu().numpy()
    err = np.abs(log_z - ref_z) / np.maximum(1.0, np.abs(ref_z))
    assert np.all(err <= rtol), f"log Z rel err {err.max():.3g} ({log_z} vs {ref_z}) {where}"
    pi = d.marginals.detach().double().cpu().numpy()
    assert np.all((pi >= 0) & (pi <= 1)), f"marginals outside [0, 1] {where}"
    perr = np.abs(pi - ref_pi).max()
    assert perr <= atol, f"marginal abs err {perr:.3g} {where}"
    g = torch.Generator(device=device).manual_seed(seed)
    z = d.sample((16,), generator=g)
    zn = z.double().cpu().numpy()
    assert np.all(zn.sum(-1) == k) and np.all((zn == 0) | (zn == 1)), f"not k-hot {where}"
    assert not np.any(zn[:, ~np.isfinite(x)] > 0), f"a masked item chosen {where}"
    assert not np.any(zn[:, ref_pi < 1e-12] > 0), f"an item with pi < 1e-12 chosen {where}"
    assert np.all(zn[:, ref_pi > 1 - 1e-12] == 1), f"an item with pi > 1-1e-12 left {where}"
    lp = d.log_prob(z)
    assert torch.isfinite(lp).all(), f"log_prob not finite {where}"
    (grad,) = torch.autograd.grad(lp.sum(), d.logits)
    grad = grad.double().cpu().numpy()
    fin = np.isfinite(x)
    expect = (zn - ref_pi[None]).sum(0)
    assert np.all(np.isfinite(grad)), f"gradient not finite {where}"
    gerr = np.abs(np.where(fin, grad - expect, 0)).max()
    assert gerr <= 16 * atol * 2, f"gradient err {gerr:.3g} {where}"
    h = d.entropy().detach().double().cpu().numpy()
    assert np.all(np.isfinite(h)) and np.all(h >= 0), f"entropy {h} {where}"


@pytest.mark.parametrize("seed", range(8))
def test_fuzz_against_exact_reference(seed, device):
    for x, k, dtype, method in _cases(seed, count=100, n_max=24, rows=4):
        _check_case(x, k, dtype, method, device, seed)


def test_fuzz_with_the_gpu_shift_schedule(device, monkeypatch):
    """Off the CPU the shift checks convergence every few steps only: same results."""
    import subset_rl.poisson_binomial as pb

    monkeypatch.setattr(pb, "_SHIFT_CHECK_EVERY_CPU", pb._SHIFT_CHECK_EVERY)
    for x, k, dtype, method in _cases(99, count=40, n_max=24, rows=6):
        _check_case(x, k, dtype, method, device, 99)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(20))
def test_fuzz_large(seed, device):
    for x, k, dtype, method in _cases(1000 + seed, count=40, n_max=300, rows=4):
        _check_case(x, k, dtype, method, device, seed)

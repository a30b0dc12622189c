"""kl_divergence(KSubsetPolicy, KSubsetPolicy) against enumeration: values, gradients, masks,
broadcasting, dtypes and errors. The references (tests/reference.py and an autograd KL over all
subsets written here) share no code with subset_rl."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from reference import enumerate_subsets, enumerated_pmf
from torch.distributions import Categorical, kl_divergence

import subset_rl.kl  # noqa: F401 - registers the KL (until subset_rl/__init__.py imports it)
from subset_rl import KSubsetPolicy

INF = math.inf


# --------------------------------------------------------------------------------------------
# Cases: (n, k, batch shape of p, batch shape of q, masks, seed). Masks: "none"; "subset" (q
# masks a subset of what p masks: every KL finite); "random" (independent masks: some KLs are
# +inf). Every row keeps at least k available items.
# --------------------------------------------------------------------------------------------
CASES = {
    "n1k0": (1, 0, (), (), "none", 0),
    "n1k1": (1, 1, (), (), "none", 1),
    "n4k0-masked": (4, 0, (3,), (3,), "random", 2),
    "n4k4": (4, 4, (2,), (2,), "none", 3),
    "n5k1": (5, 1, (3,), (3,), "none", 4),
    "n5k2-broadcast": (5, 2, (2, 1), (3,), "none", 5),
    "n6k3": (6, 3, (4,), (4,), "none", 6),
    "n6k3-scalar-q": (6, 3, (4,), (), "none", 7),
    "n6k2-subset-masks": (6, 2, (5,), (5,), "subset", 8),
    "n7k3-subset-masks-broadcast": (7, 3, (2, 1, 3), (4, 1), "subset", 13),
    "n7k3-random-masks": (7, 3, (8,), (8,), "random", 10),
    "n6k5-subset-masks": (6, 5, (4,), (4,), "subset", 19),
    "n3k2-scalar-p": (3, 2, (), (2, 2), "none", 12),
}
FINITE = [name for name, case in CASES.items() if case[4] != "random"]


def _masked(shape: tuple[int, ...], n: int, k: int, gen: np.random.Generator) -> np.ndarray:
    """A boolean mask (True = masked) leaving at least k items per row."""
    mask = gen.random(shape + (n,)) < 0.35
    for idx in np.ndindex(*shape):
        row = mask[idx]
        while (~row).sum() < k:
            row[gen.choice(np.flatnonzero(row))] = False
    return mask


def _make(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """float64 numpy logits (with -inf) for p and q."""
    n, k, bp, bq, masks, seed = CASES[name]
    gen = np.random.default_rng(seed)
    lp = gen.normal(size=bp + (n,)) * 1.5
    lq = gen.normal(size=bq + (n,)) * 1.5
    if masks == "random":
        lp[_masked(bp, n, k, gen)] = -INF
        lq[_masked(bq, n, k, gen) & (gen.random(bq + (n,)) < 0.4)] = -INF
    elif masks == "subset":  # q masks some of the items p masks in every row
        shared = np.zeros(n, bool)
        shared[gen.choice(n, gen.integers(1, n - k + 1), replace=False)] = True
        row_p = _masked(bp, n, k, gen) & (gen.random(bp + (n,)) < 0.5)
        mp = shared | row_p
        for idx in np.ndindex(*bp):  # keep k available items in every row of p
            while (~mp[idx]).sum() < k:
                mp[idx][gen.choice(np.flatnonzero(row_p[idx] & mp[idx]))] = False
        lp[mp] = -INF
        lq[np.broadcast_to(shared & (gen.random(n) < 0.7), lq.shape)] = -INF
    return lp, lq, k


def _reference_kl(lp: np.ndarray, lq: np.ndarray, k: int) -> np.ndarray:
    """KL(p || q) row by row, by enumerating all subsets (float64, +inf where q excludes)."""
    shape = np.broadcast_shapes(lp.shape, lq.shape)
    lp, lq = np.broadcast_to(lp, shape), np.broadcast_to(lq, shape)
    out = np.zeros(shape[:-1])
    for idx in np.ndindex(*shape[:-1]):
        _, p = enumerated_pmf(lp[idx], k)
        _, q = enumerated_pmf(lq[idx], k)
        on = p > 0
        if (q[on] == 0).any():
            out[idx] = INF
        else:
            out[idx] = float((p[on] * (np.log(p[on]) - np.log(q[on]))).sum())
    return out


def _enumerated_kl_torch(lp: torch.Tensor, lq: torch.Tensor, k: int) -> torch.Tensor:
    """KL by enumeration in torch (for autograd), float64; finite cases only."""
    n = lp.shape[-1]
    s = torch.as_tensor(enumerate_subsets(n, k), dtype=torch.bool, device=lp.device)  # (C, n)

    def log_pmf(logits: torch.Tensor) -> torch.Tensor:
        scores = torch.where(s, logits.unsqueeze(-2), torch.zeros_like(logits).unsqueeze(-2))
        scores = scores.sum(-1)  # (..., C), -inf for subsets with a masked item
        return scores - scores.logsumexp(-1, keepdim=True)

    a, b = log_pmf(lp), log_pmf(lq)
    a, b = torch.broadcast_tensors(a, b)
    pa = a.exp()
    on = pa > 0
    zero = torch.zeros_like(a)
    return (pa * (torch.where(on, a, zero) - torch.where(on, b, zero))).sum(-1)


def _dists(name: str, dtype: torch.dtype, device: torch.device, grad: bool = False):
    lp, lq, k = _make(name)
    tp = torch.tensor(lp, dtype=dtype, device=device, requires_grad=grad)
    tq = torch.tensor(lq, dtype=dtype, device=device, requires_grad=grad)
    return tp, tq, k


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_enumeration(name: str, dtype: torch.dtype, device: torch.device) -> None:
    tp, tq, k = _dists(name, dtype, device)
    kl = kl_divergence(KSubsetPolicy(tp, k), KSubsetPolicy(tq, k))
    ref = _reference_kl(*_make(name))
    assert kl.shape == ref.shape and kl.dtype == dtype and kl.device.type == device.type
    got = kl.cpu().double().numpy()
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    assert not np.isnan(got).any()
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    finite = np.isfinite(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=tol, atol=tol)
    assert (got[finite] >= -tol).all()


def test_random_masks_give_some_infinite_and_some_finite_kls() -> None:
    """The random-mask cases exercise both branches (the test above is not vacuous)."""
    ref = _reference_kl(*_make("n7k3-random-masks"))
    assert np.isinf(ref).any() and np.isfinite(ref).any()
    assert (_reference_kl(*_make("n4k0-masked")) == 0).all()  # k = 0: one subset under both


def test_k1_is_the_categorical_kl(device: torch.device) -> None:
    lp = torch.randn(5, 6, dtype=torch.float64, device=device)
    lq = torch.randn(5, 6, dtype=torch.float64, device=device)
    lp[0, 2] = -INF  # masked in p only: finite
    lq[1, 3] = -INF  # masked in q only: +inf
    lp[2, 4] = lq[2, 4] = -INF  # masked in both: finite
    ours = kl_divergence(KSubsetPolicy(lp, 1), KSubsetPolicy(lq, 1))
    theirs = kl_divergence(Categorical(logits=lp), Categorical(logits=lq))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    assert torch.isinf(ours[1]) and bool(torch.isfinite(ours[[0, 2, 3, 4]]).all())


def test_kl_of_a_distribution_with_itself_is_zero(device: torch.device) -> None:
    for name in FINITE:
        for dtype in (torch.float32, torch.float64):
            tp, _, k = _dists(name, dtype, device, grad=True)
            p = KSubsetPolicy(tp, k)
            q = KSubsetPolicy(tp.detach().clone().requires_grad_(True), k)
            shifted = KSubsetPolicy(tp.detach() + 3.0, k)  # same distribution (shift invariance)
            tol = 1e-5 if dtype == torch.float32 else 1e-12
            for other in (p, q, shifted):
                kl = kl_divergence(p, other)
                torch.testing.assert_close(kl, torch.zeros_like(kl), atol=tol, rtol=0)
            kl = kl_divergence(p, q)
            kl.sum().backward()
            for g in (tp.grad, q.logits.grad):
                if g is not None:  # k = 0 or k = n: constant, no graph to the logits
                    assert bool(torch.isfinite(g).all())
                    torch.testing.assert_close(g, torch.zeros_like(g), atol=10 * tol, rtol=0)


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FINITE)
def test_gradient_matches_enumeration_float64(name: str, device: torch.device) -> None:
    tp, tq, k = _dists(name, torch.float64, device, grad=True)
    kl = kl_divergence(KSubsetPolicy(tp, k), KSubsetPolicy(tq, k))
    weights = torch.linspace(0.5, 1.5, kl.numel(), dtype=torch.float64, device=device)
    (kl.reshape(-1) * weights).sum().backward()
    rp, rq, _ = _dists(name, torch.float64, device, grad=True)
    ref = _enumerated_kl_torch(rp, rq, k)
    torch.testing.assert_close(kl.detach(), ref.detach(), rtol=1e-10, atol=1e-10)
    (ref.reshape(-1) * weights).sum().backward()
    for ours, ref_leaf in ((tp, rp), (tq, rq)):
        zero = torch.zeros_like(ours)  # k = 0: no graph to the logits
        got = zero if ours.grad is None else ours.grad
        want = zero if ref_leaf.grad is None else ref_leaf.grad
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_gradient_float32_close_to_float64_enumeration(device: torch.device) -> None:
    name = "n7k3-subset-masks-broadcast"
    tp, tq, k = _dists(name, torch.float32, device, grad=True)
    kl_divergence(KSubsetPolicy(tp, k), KSubsetPolicy(tq, k)).sum().backward()
    rp, rq, _ = _dists(name, torch.float64, device, grad=True)
    _enumerated_kl_torch(rp, rq, k).sum().backward()
    assert rp.grad.abs().max() > 0.05 and rq.grad.abs().max() > 0.05
    torch.testing.assert_close(tp.grad.double(), rp.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tq.grad.double(), rq.grad, rtol=1e-4, atol=1e-5)


def test_gradcheck_both_logits(device: torch.device) -> None:
    """Also second order (TRPO's Fisher-vector products differentiate the KL twice)."""
    lp = torch.randn(2, 5, dtype=torch.float64, device=device, requires_grad=True)
    lq = torch.randn(5, dtype=torch.float64, device=device, requires_grad=True)

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return kl_divergence(KSubsetPolicy(a, 2), KSubsetPolicy(b, 2))

    assert torch.autograd.gradcheck(f, (lp, lq))
    assert torch.autograd.gradgradcheck(f, (lp, lq))


def test_infinite_kl_has_no_nan_gradient(device: torch.device) -> None:
    lp = torch.tensor([[0.3, -INF, 1.0, -0.5], [0.3, 0.2, 1.0, -0.5]], device=device)
    lq = torch.tensor([[-INF, -INF, 0.0, 2.0], [0.1, -INF, 0.4, 0.0]], device=device)
    lp.requires_grad_(True)
    lq.requires_grad_(True)
    kl = kl_divergence(KSubsetPolicy(lp, 2), KSubsetPolicy(lq, 2))
    assert kl.tolist() == [INF, INF]
    kl.sum().backward()
    for g in (lp.grad, lq.grad):
        assert g is not None and bool(torch.isfinite(g).all())
    # masked in p only (and k = 0 with any masks): finite, no NaN
    lp2 = torch.tensor([-INF, 0.5, 1.0, -0.5], device=device, requires_grad=True)
    kl = kl_divergence(KSubsetPolicy(lp2, 2), KSubsetPolicy(torch.zeros(4, device=device), 2))
    assert bool(torch.isfinite(kl))
    kl.backward()
    assert bool(torch.isfinite(lp2.grad).all()) and lp2.grad[0] == 0
    zero = kl_divergence(KSubsetPolicy(lp2, 0), KSubsetPolicy(lq[0].detach(), 0))
    assert zero.item() == 0.0


# --------------------------------------------------------------------------------------------
# Errors and registration
# --------------------------------------------------------------------------------------------
def test_different_k_or_n_is_an_error(device: torch.device) -> None:
    z5, z6 = torch.zeros(5, device=device), torch.zeros(6, device=device)
    with pytest.raises(ValueError, match=r"same subset size k, found k=2 for p and k=3 for q"):
        kl_divergence(KSubsetPolicy(z5, 2), KSubsetPolicy(z5, 3))
    with pytest.raises(ValueError, match=r"same number of items n, found n=5 for p .* n=6 for q"):
        kl_divergence(KSubsetPolicy(z5, 2), KSubsetPolicy(z6, 2))
    with pytest.raises(ValueError, match=r"broadcastable batch shapes, found \(2,\) .* \(3,\)"):
        kl_divergence(
            KSubsetPolicy(torch.zeros(2, 5, device=device), 2),
            KSubsetPolicy(torch.zeros(3, 5, device=device), 2),
        )


REGISTRATION_SCRIPT = """
import torch
import subset_rl
p = subset_rl.KSubsetPolicy(torch.tensor([1.0, 0.0, -1.0]), k=2)
print(float(torch.distributions.kl_divergence(p, subset_rl.KSubsetPolicy(torch.zeros(3), k=2))))
"""


def test_import_subset_rl_registers_the_kl() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", REGISTRATION_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert abs(float(proc.stdout.strip()) - 0.266217) < 1e-4

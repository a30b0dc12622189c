"""Messy inputs named in issue 10: soft masks, k near n, half precision, empty shapes, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import log_esp_complement, log_esp_exact
from torch.distributions import Distribution

from subset_rl import KSubsetPolicy, log_normalizer, marginals, sample_conditional_poisson


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask", [-1e4, -1e5, -1e6, -1e8, -1e12, -1e30])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_soft_masks(dtype, mask, k, device):
    x = torch.tensor([mask, 0.3, -0.2], dtype=dtype, device=device)
    ref_z, ref_pi = log_esp_exact(x.double().cpu().numpy()[None], k)
    d = KSubsetPolicy(x, k)
    assert d.log_normalizer.item() == pytest.approx(ref_z[0], rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(d.marginals.double().cpu().numpy(), ref_pi[0], atol=1e-6)
    z = d.sample((500,), generator=torch.Generator(device).manual_seed(0))
    assert torch.all(z.sum(-1) == k) and torch.all((z == 0) | (z == 1))
    if k < 3:  # the soft-masked item (pi ~ exp(mask)) is never drawn unless it must be
        assert torch.all(z[:, 0] == 0)


@pytest.mark.parametrize("n,k", [(3000, 2999), (3000, 2990), (20000, 20000), (20000, 19999)])
def test_k_near_n_float32(n, k, device):
    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(n, generator=g).to(device)
    ref_z, ref_pi = log_esp_exact(x.double().cpu().numpy()[None], k)
    d = KSubsetPolicy(x, k)
    assert abs(d.log_normalizer.item() - ref_z[0]) <= 1e-5 * max(1.0, abs(ref_z[0]))
    assert np.abs(d.marginals.double().cpu().numpy() - ref_pi[0]).max() <= 1e-4
    assert torch.all(d.variance >= 0) and torch.all(torch.isfinite(d.stddev))
    z = d.sample((4,), generator=torch.Generator(device).manual_seed(1))
    assert torch.all(z.sum(-1) == k)
    if k == n:  # one subset: probability 1, entropy 0
        assert d.log_prob(z).abs().max().item() <= 1e-6 * n
        assert d.entropy().item() == pytest.approx(0.0, abs=1e-6 * n)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(10, 3), (300, 299), (3000, 2999), (512, 256)])
def test_half_precision_is_computed_in_float32(dtype, n, k, device):
    x = (torch.randn(n, generator=torch.Generator().manual_seed(n)) * 2).to(dtype).to(device)
    d = KSubsetPolicy(x, k)
    ref = KSubsetPolicy(x.float(), k)
    assert d.log_normalizer.dtype == dtype and d.marginals.dtype == dtype
    assert d.log_normalizer.float().item() == pytest.approx(ref.log_normalizer.item(), rel=1e-2)
    torch.testing.assert_close(d.marginals.float(), ref.marginals, atol=1e-2, rtol=0)
    z = d.sample((8,))
    assert z.dtype == dtype and torch.all(z.float().sum(-1) == k)
    assert torch.all(d.mode.float().sum(-1) == k)
    assert torch.isfinite(d.log_prob(z)).all() and torch.isfinite(d.entropy()).all()
    zg = KSubsetPolicy(x, k, sampler="gumbel").sample((8,))
    assert zg.dtype == dtype and torch.all(zg.float().sum(-1) == k)


@pytest.mark.parametrize("shape", [(0, 5), (2, 0, 4), (3, 0), (0,)])
def test_empty_shapes(shape, device):
    x = torch.zeros(shape, device=device, requires_grad=True)
    d = KSubsetPolicy(x, 0)
    assert d.log_normalizer.shape == shape[:-1]
    assert d.marginals.shape == shape and d.entropy().shape == shape[:-1]
    assert d.sample((3,)).shape == (3,) + shape and d.mode.shape == shape
    assert d.log_prob(torch.zeros(shape, device=device)).shape == shape[:-1]
    if shape[-1] > 0:
        d = KSubsetPolicy(x, 2)
        assert d.sample((2,)).shape == (2,) + shape and d.marginals.shape == shape
        d.log_prob(torch.zeros(shape, device=device)).sum().backward()


def test_variance_never_negative_and_marginals_in_unit_interval(device):
    for n in (1, 7, 1000, 20000):
        d = KSubsetPolicy(torch.randn(n, device=device), n)
        assert torch.all(d.marginals <= 1) and torch.all(d.marginals >= 0)
        assert torch.all(d.variance >= 0) and torch.all(torch.isfinite(d.stddev))


def test_functional_api_errors():
    x = torch.zeros(4)
    for fn in (log_normalizer, marginals):
        with pytest.raises(ValueError, match=r"k must be in \[0, n=4\], found k=5"):
            fn(x, 5)
        with pytest.raises(ValueError, match="at least k=3 available"):
            fn(torch.tensor([0.0, -math.inf, -math.inf, 1.0]), 3)
        with pytest.raises(ValueError, match="NaN"):
            fn(torch.tensor([0.0, math.nan]), 1)
        with pytest.raises(TypeError, match="floating-point"):
            fn(torch.zeros(4, dtype=torch.int64), 1)
        with pytest.raises(ValueError, match="method must be one of"):
            fn(x, 1, "fft")
    with pytest.raises(ValueError, match=r"k must be in \[0, n=4\], found k=5"):
        sample_conditional_poisson(x[None], 5, 3)
    with pytest.raises(ValueError, match="shape \\(B, n\\)"):
        sample_conditional_poisson(x, 1, 3)
    with pytest.raises(ValueError, match="num_samples"):
        sample_conditional_poisson(x[None], 1, -1)


def test_too_large_logits_are_refused():
    big = torch.finfo(torch.float32).max
    with pytest.raises(ValueError, match="magnitude"):
        KSubsetPolicy(torch.tensor([big, 0.0, 1.0]), 1)


def test_default_validate_args_is_honoured():
    bad = torch.tensor([0.0, math.nan, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        KSubsetPolicy(bad, 1)
    before = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        d = KSubsetPolicy(bad, 1)  # no check, no error
        assert not d._validate_args
        assert torch.isnan(d.log_normalizer)
        assert torch.isnan(d.sample((2,))).all()  # a NaN row never looks like a subset
        assert KSubsetPolicy(torch.zeros(3), 1, validate_args=True)._validate_args is True
    finally:
        Distribution.set_default_validate_args(before)


def test_nan_logits_without_validation_give_nan_not_a_crash():
    x = torch.tensor([[0.0, 1.0, 2.0], [0.0, math.nan, 1.0]])
    d = KSubsetPolicy(x, 1, validate_args=False)
    lz = d.log_normalizer
    assert torch.isfinite(lz[0]) and torch.isnan(lz[1])
    z = d.sample((3,))
    assert torch.all(z[:, 0].sum(-1) == 1) and torch.isnan(z[:, 1]).all()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_n_100000(dtype):
    n = 100_000
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, generator=g, dtype=dtype) * 3
    x[::97] = -1e8  # soft masks
    x[::101] = -math.inf
    xs = x.double().numpy()[None]
    m = int(np.isfinite(xs).sum())
    rtol, atol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-10, 1e-8)
    for k in (1, 3, m - 2, m):
        ref_z, ref_pi = log_esp_exact(xs, k)
        d = KSubsetPolicy(x, k)
        assert abs(d.log_normalizer.item() - ref_z[0]) <= rtol * max(1.0, abs(ref_z[0]))
        assert np.abs(d.marginals.double().numpy() - ref_pi[0]).max() <= atol
        assert torch.all(d.sample((2,)).sum(-1) == k)
    for k in (50,):
        ref_z, ref_pi = log_esp_complement(xs, k)
        d = KSubsetPolicy(x, k)
        assert abs(d.log_normalizer.item() - ref_z[0]) <= rtol * max(1.0, abs(ref_z[0]))
        assert np.abs(d.marginals.double().numpy() - ref_pi[0]).max() <= atol

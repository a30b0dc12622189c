"""KSubsetPolicy against independent references: enumeration (small n), float64 DP (large n)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import enumerate_subsets, enumerated_pmf, log_esp_dp
from scipy.stats import chisquare

from subset_rl import KHot, KSubsetPolicy, log_normalizer, marginals, sample_conditional_poisson
from subset_rl.poisson_binomial import _log_pb_dft

INF = math.inf
METHODS = ["tree", "dft", "auto"]


# --------------------------------------------------------------------------------------------
# A registry of small cases (all subsets enumerable), looped over by generic tests.
# --------------------------------------------------------------------------------------------
def _case(n: int, k: int, scale: float = 1.0, offset: float = 0.0, mask=(), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g, dtype=torch.float64) * scale + offset
    for i in mask:
        logits[i] = -INF
    return logits, k


SMALL_CASES = {
    "n6k2": _case(6, 2),
    "n7k3-wide": _case(7, 3, scale=4.0, seed=1),
    "n8k1": _case(8, 1, seed=2),
    "n8k7": _case(8, 7, seed=3),
    "n9k4-offset+5": _case(9, 4, offset=5.0, seed=4),
    "n9k4-offset-5": _case(9, 4, offset=-5.0, seed=5),
    "n10k5": _case(10, 5, scale=0.5, seed=6),
    "n7k3-masked": _case(7, 3, mask=(0, 4), seed=7),
    "n6k2-masked-to-k": _case(6, 2, mask=(1, 2, 3, 5), seed=8),
    "n5k0": _case(5, 0, seed=9),
    "n5k5": _case(5, 5, seed=10),
    "n1k1": _case(1, 1, seed=11),
    "n3k1-equal": (torch.zeros(3, dtype=torch.float64), 1),
    "n12k6-scale10": _case(12, 6, scale=10.0, seed=12),
}


def _enumerated(logits: torch.Tensor, k: int):
    subsets, p = enumerated_pmf(logits.cpu().numpy(), k)
    return subsets, p


@pytest.mark.parametrize("name", list(SMALL_CASES))
@pytest.mark.parametrize("method", METHODS)
def test_small_n_matches_enumeration(name, method, device):
    logits, k = SMALL_CASES[name]
    logits = logits.to(device)
    d = KSubsetPolicy(logits, k, method=method)
    subsets, p = _enumerated(logits, k)
    support = d.enumerate_support()
    assert support.shape == (math.comb(logits.shape[-1], k), logits.shape[-1])
    np.testing.assert_array_equal(support.cpu().numpy(), subsets)
    lp = d.log_prob(support)
    # Normalisation and the pmf itself.
    np.testing.assert_allclose(torch.logsumexp(lp, 0).item(), 0.0, atol=1e-10)
    np.testing.assert_allclose(lp.exp().cpu().numpy(), p, atol=1e-12, rtol=1e-9)
    # Marginals, mean, entropy, mode.
    pi = (p[:, None] * subsets).sum(0)
    np.testing.assert_allclose(d.marginals.cpu().numpy(), pi, atol=1e-10)
    np.testing.assert_allclose(d.mean.cpu().numpy(), pi, atol=1e-10)
    nz = p > 0
    entropy = -(p[nz] * np.log(p[nz])).sum()
    np.testing.assert_allclose(d.entropy().item(), entropy, atol=1e-9)
    best = p.max()
    assert p[(subsets == d.mode.cpu().numpy()).all(-1)].item() == pytest.approx(best, rel=1e-9)
    # Masked items are never included.
    masked = ~torch.isfinite(logits)
    assert torch.all(d.marginals[masked] == 0)


@pytest.mark.parametrize("name", ["n6k2", "n7k3-masked", "n9k4-offset+5", "n8k1", "n8k7"])
@pytest.mark.parametrize("method", ["tree", "dft"])
def test_gradcheck_float64(name, method, device):
    logits, k = SMALL_CASES[name]
    finite = torch.isfinite(logits)
    base = logits.to(device)
    free = base[finite.to(device)].clone().requires_grad_(True)
    z = torch.zeros_like(base)
    z[torch.nonzero(finite.to(device))[:k, 0]] = 1.0

    def full(x):
        out = base.clone()
        out[finite.to(device)] = x
        return out

    def fn(x):
        d = KSubsetPolicy(full(x), k, method=method)
        return d.log_normalizer, d.log_prob(z), d.entropy(), d.marginals

    assert torch.autograd.gradcheck(fn, (free,))
    assert torch.autograd.gradgradcheck(lambda x: log_normalizer(full(x), k, method), (free,))


def test_batched_any_number_of_batch_dims(device):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 7, generator=g, dtype=torch.float64).to(device)
    d = KSubsetPolicy(logits, 3)
    assert d.batch_shape == (2, 3, 4) and d.event_shape == (7,)
    subsets = d.enumerate_support()
    assert subsets.shape == (35, 2, 3, 4, 7)
    lp = d.log_prob(subsets)
    assert lp.shape == (35, 2, 3, 4)
    torch.testing.assert_close(lp.logsumexp(0), torch.zeros(2, 3, 4, dtype=lp.dtype, device=device))
    for idx in [(0, 0, 0), (1, 2, 3)]:
        _, p = _enumerated(logits[idx], 3)
        np.testing.assert_allclose(lp[(slice(None),) + idx].exp().cpu().numpy(), p, rtol=1e-9)
    assert d.marginals.shape == (2, 3, 4, 7)
    assert d.entropy().shape == (2, 3, 4)
    assert d.mode.shape == (2, 3, 4, 7)
    assert d.sample((5,)).shape == (5, 2, 3, 4, 7)
    assert d.enumerate_support(expand=False).shape == (35, 1, 1, 1, 7)


def test_expand_and_support(device):
    logits = torch.randn(6, dtype=torch.float64, device=device)
    d = KSubsetPolicy(logits, 2)
    _ = d.marginals
    e = d.expand((4, 3))
    assert e.batch_shape == (4, 3) and e.k == 2
    torch.testing.assert_close(e.marginals, d.marginals.expand(4, 3, 6))
    torch.testing.assert_close(e.log_normalizer, d.log_normalizer.expand(4, 3))
    assert e.sample().shape == (4, 3, 6)
    assert d.has_rsample is False
    support = d.support
    assert isinstance(support, KHot) and support.event_dim == 1 and support.is_discrete
    values = torch.tensor(
        [[1.0, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 0.5, 0.5, 0, 0, 0], [0, 0, 0, 0, 1, 1]]
    )
    assert support.check(values).tolist() == [True, False, False, True]


def test_k_zero_and_k_equal_n(device):
    logits = torch.randn(3, 5, device=device)
    for k, expected in [(0, torch.zeros(3, 5)), (5, torch.ones(3, 5))]:
        d = KSubsetPolicy(logits, k)
        z = d.sample((4,))
        assert torch.equal(z.cpu(), expected.expand(4, 3, 5))
        torch.testing.assert_close(d.log_prob(z), torch.zeros(4, 3, device=device))
        torch.testing.assert_close(d.marginals.cpu(), expected)
        torch.testing.assert_close(d.entropy(), torch.zeros(3, device=device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_device_and_dtype_follow_logits(dtype, device):
    logits = torch.randn(2, 9, dtype=dtype, device=device)
    d = KSubsetPolicy(logits, 4)
    for t in [d.log_normalizer, d.marginals, d.entropy(), d.mode, d.sample((3,)),
              d.log_prob(d.mode), d.enumerate_support()]:
        assert t.dtype == dtype and t.device.type == device.type
    g = KSubsetPolicy(logits, 4, sampler="gumbel").sample((3,))
    assert g.dtype == dtype and g.device.type == device.type


def test_methods_agree_and_match_dp_on_moderate_sizes(device):
    rng = np.random.default_rng(0)
    for n, k in [(50, 7), (201, 100), (333, 1), (64, 63)]:
        logits = rng.standard_normal(n) * 2
        ref, pi = log_esp_dp(logits, k)
        x = torch.tensor(logits, device=device)
        for method in METHODS:
            assert log_normalizer(x, k, method).item() == pytest.approx(ref, rel=1e-12, abs=1e-9)
            np.testing.assert_allclose(marginals(x, k, method).cpu().numpy(), pi, atol=1e-10)


def test_dft_with_all_frequencies_is_fernandez_williams(device):
    """With M = n + 1 frequencies (even M included) the DFT is the textbook closed form."""
    rng = np.random.default_rng(1)
    for n, k in [(9, 4), (10, 3), (30, 12)]:  # n + 1 = 10 (even), 11 (odd), 31
        theta = torch.tensor(rng.uniform(0.05, 0.95, n), device=device)
        logits = torch.logit(theta)
        ref, _ = log_esp_dp(logits.cpu().numpy(), k)
        log_pb = _log_pb_dft(theta, k, num_frequencies=n + 1)
        softplus = torch.nn.functional.softplus(logits).sum()
        assert (log_pb + softplus).item() == pytest.approx(ref, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Large n in float32 against the float64 log-space DP.
# --------------------------------------------------------------------------------------------
LARGE = [(100, 1), (100, 50), (784, 50), (2000, 1000), (10000, 1), (10000, 100), (10000, 1000)]


def _check_large(n: int, k: int, device: torch.device, methods=("tree", "dft")) -> None:
    rng = np.random.default_rng(n * 7 + k)
    grid = [(s, o) for s in (0.1, 1.0, 10.0) for o in (-5.0, 0.0, 5.0)]
    rows = np.stack([rng.standard_normal(n) * s + o for s, o in grid])
    chunk = max(1, int(3e7 // (n * (k + 1))))  # keep the DP table under ~240 MB
    refs = [log_esp_dp(rows[i : i + chunk], k) for i in range(0, len(rows), chunk)]
    ref_z = np.concatenate([r[0] for r in refs])
    ref_pi = np.concatenate([r[1] for r in refs])
    x = torch.tensor(rows, dtype=torch.float32, device=device, requires_grad=True)
    for method in methods:
        d = KSubsetPolicy(x, k, method=method)
        got = d.log_normalizer.detach().cpu().numpy()
        m = d.marginals
        (grad,) = torch.autograd.grad(d.entropy().sum() + m[:, 0].sum(), x)
        for row, (scale, offset) in enumerate(grid):
            where = f"n={n} k={k} scale={scale} offset={offset} method={method}"
            assert abs(got[row] - ref_z[row]) <= 1e-5 * max(abs(ref_z[row]), 1.0), where
            assert np.abs(m[row].detach().cpu().numpy() - ref_pi[row]).max() <= 1e-4, where
        assert torch.isfinite(m).all() and torch.isfinite(grad).all(), method


@pytest.mark.parametrize(("n", "k"), LARGE)
def test_large_n_float32_matches_float64_dp(n, k, device):
    # The truncated DFT does O(n sqrt(var)) float64 work: checked where it stays quick on 2
    # cores (auto never picks it for these sizes; the slow run checks it at n = 10,000).
    methods = ("tree", "dft") if n <= 2000 else ("tree",)
    _check_large(n, k, device, methods)


@pytest.mark.slow
@pytest.mark.parametrize(("n", "k"), [(10000, 5000), (10000, 1000), (10000, 100), (4096, 2048)])
def test_large_n_float32_matches_float64_dp_slow(n, k, device):
    _check_large(n, k, device, ("tree", "dft"))


def test_float32_without_shift_would_underflow_but_does_not(device):
    """n = 784, k = 50, logits near 0: PB_k(sigmoid(l)) is far below float32's smallest number."""
    logits = 0.01 * torch.arange(784, dtype=torch.float64) / 784
    ref, _ = log_esp_dp(logits.numpy(), 50)
    log_pb = ref - torch.nn.functional.softplus(logits).sum().item()
    assert log_pb < math.log(torch.finfo(torch.float32).tiny)  # unshifted PB_k underflows
    for method in ("tree", "dft"):
        got = log_normalizer(logits.float().to(device), 50, method).item()
        assert got == pytest.approx(ref, rel=1e-6)


# --------------------------------------------------------------------------------------------
# Samplers.
# --------------------------------------------------------------------------------------------
# Each chi-square test uses a fixed seed; under the null hypothesis a p-value below 1e-3 has
# probability 0.1% per test, so with these seeds the tests are deterministic, and a correct
# sampler would fail one of them for 0.1% of seeds.
ALPHA = 1e-3


def _counts(z: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    weights = 2.0 ** np.arange(subsets.shape[1])
    code_of = {int(c): i for i, c in enumerate(subsets @ weights)}
    codes = (z @ weights).astype(np.int64)
    out = np.zeros(len(subsets))
    for c, cnt in zip(*np.unique(codes, return_counts=True), strict=True):
        out[code_of[int(c)]] = cnt
    return out


@pytest.mark.parametrize("method", ["tree", "rejective"])
@pytest.mark.parametrize(
    "name", ["n6k2", "n7k3-wide", "n8k1", "n8k7", "n10k5", "n7k3-masked", "n9k4-offset-5"]
)
def test_exact_sampler_chi_square(name, method, device):
    logits, k = SMALL_CASES[name]
    gen = torch.Generator(device=device).manual_seed(1234)
    x = logits.to(device).float().unsqueeze(0)
    z = sample_conditional_poisson(x, k, 60_000, generator=gen, method=method)[:, 0]
    z = z.cpu().numpy()
    assert (z.sum(-1) == k).all()
    subsets, p = _enumerated(logits, k)
    counts = _counts(z, subsets)
    nz = p > 0
    assert counts[~nz].sum() == 0  # never a subset with a masked item
    pvalue = chisquare(counts[nz], p[nz] * len(z)).pvalue
    assert pvalue > ALPHA, f"{name}: p-value {pvalue}"


def test_auto_sampler_uses_both_methods_and_both_are_exact(device, monkeypatch):
    """Small draws go by rejection, large ones by the tree; a rejection miss falls back."""
    import subset_rl.poisson_binomial as pb

    calls = []
    for name in ("_sample_rejective", "_sample_tree"):
        original = getattr(pb, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(pb, name, spy)
    logits = torch.randn(1, 8, device=device)
    KSubsetPolicy(logits, 3).sample((4,))
    # Rejection answers (after a short round and, rarely, a full one), never the tree.
    assert calls[0] == "_sample_rejective" and set(calls) == {"_sample_rejective"}
    calls.clear()
    KSubsetPolicy(logits.expand(64, 8), 3).sample((4096,))
    assert calls == ["_sample_tree"]
    # A row whose acceptance is tiny with 1 trial: both rejective rounds miss, the tree answers.
    calls.clear()
    monkeypatch.setattr(pb, "_rejective_trials", lambda n, k: 1)
    z = pb.sample_conditional_poisson(torch.randn(2, 40, device=device) * 3, 20, 5)
    assert calls == ["_sample_rejective", "_sample_rejective", "_sample_tree"]
    assert torch.all(z.sum(-1) == 20)


def test_exact_sampler_batched_rows_are_independent_distributions(device):
    logits = torch.stack([SMALL_CASES["n6k2"][0], -SMALL_CASES["n6k2"][0]]).to(device).float()
    d = KSubsetPolicy(logits, 2)
    gen = torch.Generator(device=device).manual_seed(7)
    z = d.sample((40_000,), generator=gen).cpu().numpy()
    for row in range(2):
        subsets, p = _enumerated(logits[row].double(), 2)
        pvalue = chisquare(_counts(z[:, row], subsets), p * len(z)).pvalue
        assert pvalue > ALPHA


def test_exact_sampler_large_n_marginals(device):
    """Empirical inclusion frequencies at n = 300 match the exact marginals (z-test per item)."""
    gen = torch.Generator(device=device).manual_seed(5)
    logits = torch.randn(300, generator=torch.Generator().manual_seed(0)).to(device) * 2
    logits[::7] = -INF
    d = KSubsetPolicy(logits, 40)
    z = d.sample((20_000,), generator=gen)
    assert torch.all(z.sum(-1) == 40) and torch.all(z[:, ::7] == 0)
    pi = d.marginals
    se = (pi * (1 - pi) / z.shape[0]).sqrt().clamp_min(1e-6)
    zscore = ((z.mean(0) - pi) / se).abs()
    # 300 items, |z| > 4.9 has probability 1e-6 each under the null.
    assert zscore.max().item() < 4.9


def test_sampler_method_is_checked():
    with pytest.raises(ValueError, match="method must be one of"):
        sample_conditional_poisson(torch.zeros(1, 4), 2, 1, method="gibbs")


def test_sample_reproducible_with_generator(device):
    logits = torch.randn(4, 50, device=device)
    d = KSubsetPolicy(logits, 10)
    a = d.sample((3,), generator=torch.Generator(device=device).manual_seed(0))
    b = d.sample((3,), generator=torch.Generator(device=device).manual_seed(0))
    assert torch.equal(a, b)


def test_gumbel_top_k_is_a_different_distribution(device):
    """Gumbel top-k samples sequentially without replacement: not the CP pmf (n=10, k=5)."""
    logits, k = _case(10, 5, scale=1.5, seed=21)
    subsets, p = _enumerated(logits, k)
    d = KSubsetPolicy(logits.to(device).float(), k, sampler="gumbel")
    z = d.sample((60_000,), generator=torch.Generator(device=device).manual_seed(0))
    assert (z.sum(-1) == k).all()
    counts = _counts(z.cpu().numpy(), subsets)
    assert chisquare(counts, p * len(z)).pvalue < 1e-12
    # ... and for k = 1 it is exactly the softmax, which the CP distribution also is.
    d1 = KSubsetPolicy(logits.to(device).float(), 1, sampler="gumbel")
    z1 = d1.sample((60_000,), generator=torch.Generator(device=device).manual_seed(0))
    s1, p1 = _enumerated(logits, 1)
    assert chisquare(_counts(z1.cpu().numpy(), s1), p1 * len(z1)).pvalue > ALPHA


def test_masked_items_never_sampled_at_scale(device):
    logits = torch.randn(64, 500, device=device) * 3
    logits[:, :250] = -INF
    for sampler in ("exact", "gumbel"):
        z = KSubsetPolicy(logits, 200, sampler=sampler).sample((8,))
        assert torch.all(z[..., :250] == 0) and torch.all(z.sum(-1) == 200)


# --------------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 2.0}, "k must be an int"),
        ({"k": True}, "k must be an int"),
        ({"k": -1}, r"k must be in \[0, n=5\], found k=-1"),
        ({"k": 6}, r"k must be in \[0, n=5\], found k=6"),
        ({"sampler": "foo"}, "sampler must be one of"),
        ({"method": "foo"}, "method must be one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"logits": torch.zeros(5), "k": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        KSubsetPolicy(**args)


def test_bad_logits():
    with pytest.raises(ValueError, match="NaN"):
        KSubsetPolicy(torch.tensor([0.0, math.nan, 1.0]), 1)
    with pytest.raises(ValueError, match=r"\+inf"):
        KSubsetPolicy(torch.tensor([0.0, INF, 1.0]), 1)
    with pytest.raises(ValueError, match="at least k=3 available"):
        KSubsetPolicy(torch.tensor([[0.0, 1, 2, 3], [0.0, -INF, -INF, 1]]), 3)
    with pytest.raises(TypeError, match="floating-point"):
        KSubsetPolicy(torch.tensor([0, 1, 2]), 1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        KSubsetPolicy([0.0, 1.0], 1)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        KSubsetPolicy(torch.tensor(0.0), 0)


def test_log_prob_rejects_bad_values():
    d = KSubsetPolicy(torch.zeros(2, 4), 2)
    with pytest.raises(ValueError, match="trailing size n=4"):
        d.log_prob(torch.tensor([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="k-hot"):
        d.log_prob(torch.tensor([1.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="k-hot"):
        d.log_prob(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]))
    with pytest.raises(ValueError, match="does not broadcast"):
        d.log_prob(torch.zeros(3, 4).index_fill_(1, torch.tensor([0, 1]), 1.0))
    with pytest.raises(ValueError, match="C\\(n, k\\)"):
        KSubsetPolicy(torch.zeros(60), 30).enumerate_support()


def test_validation_can_be_switched_off_and_survives_python_O():
    d = KSubsetPolicy(torch.zeros(4), 2, validate_args=False)
    d.log_prob(torch.tensor([1.0, 1.0, 1.0, 0.0]))  # no check requested: no error
    assert KSubsetPolicy(torch.zeros(4), 2)._validate_args is True


def test_masked_item_in_value_has_zero_probability():
    d = KSubsetPolicy(torch.tensor([0.0, -INF, 1.0, 2.0]), 2)
    assert d.log_prob(torch.tensor([1.0, 1.0, 0.0, 0.0])).item() == -INF
    assert torch.isfinite(d.log_prob(torch.tensor([1.0, 0.0, 1.0, 0.0])))


def test_enumeration_helper_is_sane():
    subsets = enumerate_subsets(5, 2)
    assert subsets.shape == (10, 5) and (subsets.sum(1) == 2).all()
    assert len({tuple(r) for r in subsets}) == 10

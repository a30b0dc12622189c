"""The effect of each ``--protocol paper`` difference on a toy problem, and the cost savings.

Run (about 2 minutes on 1 busy CPU thread)::

    .venv/bin/python benchmarks/bench_protocol.py [--skip-timing] [--json out.json]

Toy problem (the SFESS paper's, after SIMPLE): ``n = 10`` items, ``k = 5``, logits ``N(0, 1)``,
objective ``f(z) = ||z - b||^2`` with ``b ~ U(0, 1)^n``; five draws of ``(logits, b)``. The true
gradient of ``E_{z ~ p_l}[f(z)]`` comes from enumerating the 252 subsets. For each protocol the
*expected* estimate (Monte Carlo over many draws, or in closed form where there is one) is
compared with it by cosine similarity; for the samplers, the total-variation distance between
the distribution sampled and the k-subset distribution is reported too. Then the VAE's two KL
terms on random logits, the two feature-selection decoders on scikit-learn's digits, and the
measured savings of the cheaper reduced reproduction.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import time

import torch

from subset_rl import KSubsetPolicy, marginals
from subset_rl.estimators import imle_topk, sum_of_gamma_noise
from subset_rl.experiments import (
    EstimatorConfig,
    FeatureSelectionConfig,
    TrainConfig,
    load_splits,
    train_feature_selection,
)
from subset_rl.experiments import feature_selection as fs
from subset_rl.experiments.protocol import (
    approx_kl_to_uniform,
    paper_imle_topk,
    paper_simple_logits,
)
from subset_rl.experiments.vae import kl_to_uniform

N, K = 10, 5
DRAWS = 200_000


def _support() -> torch.Tensor:
    rows = []
    for idx in itertools.combinations(range(N), K):
        z = torch.zeros(N, dtype=torch.float64)
        z[list(idx)] = 1.0
        rows.append(z)
    return torch.stack(rows)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _freq(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    codes = (z.double() @ (2.0 ** torch.arange(N, dtype=torch.float64))).long()
    keys = (support @ (2.0 ** torch.arange(N, dtype=torch.float64))).long()
    counts = torch.bincount(codes, minlength=2**N).double()[keys]
    return counts / counts.sum()


def toy() -> dict[str, list[float]]:
    """Per draw: TV distances and cosines with the true gradient."""
    support = _support()
    out: dict[str, list[float]] = {}
    for draw in range(5):
        gen = torch.Generator().manual_seed(draw)
        logits = torch.randn(N, dtype=torch.float64, generator=gen)
        b = torch.rand(N, dtype=torch.float64, generator=gen)
        f = ((support - b) ** 2).sum(-1)
        p = torch.softmax(support @ logits, 0)
        pi = marginals(logits, K)
        true = (p * f) @ (support - pi)  # exact gradient of E[f]
        # SFESS: expected estimate with exact samples is `true`; with Gumbel top-k samples:
        zg = KSubsetPolicy(logits, K, sampler="gumbel").sample((DRAWS,), generator=gen)
        q = _freq(zg, support)
        sf_gumbel = (q * f) @ (support - pi)
        ze = KSubsetPolicy(logits, K).sample((DRAWS,), generator=gen)
        qe = _freq(ze, support)
        out.setdefault("tv_gumbel_vs_cp", []).append(0.5 * float((q - p).abs().sum()))
        out.setdefault("tv_exact_sampler_mc", []).append(0.5 * float((qe - p).abs().sum()))
        out.setdefault("cos_sfess_exact", []).append(_cos((qe * f) @ (support - pi), true))
        out.setdefault("cos_sfess_gumbel", []).append(_cos(sf_gumbel, true))
        # SIMPLE: grad = J^T E[2(z - b)] with J the Jacobian of the marginals it uses
        lg = logits.clone().requires_grad_()
        (g_ours,) = torch.autograd.grad((marginals(lg, K) * 2 * (pi - b)).sum(), lg)
        mean_g = q @ support  # E[z] under Gumbel top-k
        (g_paper,) = torch.autograd.grad(
            (marginals(paper_simple_logits(lg), K) * 2 * (mean_g - b)).sum(), lg
        )
        out.setdefault("cos_simple_exact", []).append(_cos(g_ours, true))
        out.setdefault("cos_simple_paper", []).append(_cos(g_paper, true))
        # I-MLE: expected finite-difference gradient under each noise (20k draws)
        for name, fn in (("imle_sum_of_gamma", imle_topk), ("imle_gumbel", paper_imle_topk)):
            rows = logits.expand(20_000, N).clone().requires_grad_()
            z = fn(rows, K, 1.0, generator=gen)
            (g,) = torch.autograd.grad((z * 2 * (z.detach() - b)).sum(), rows)
            out.setdefault(f"cos_{name}", []).append(_cos(g.mean(0), true))
    gen = torch.Generator().manual_seed(0)
    like = torch.zeros(100_000, N)
    out["noise_std_sum_of_gamma"] = [float(sum_of_gamma_noise(like, K, generator=gen).std())]
    out["noise_std_gumbel"] = [math.pi / math.sqrt(6.0)]
    return out


def vae_kl() -> dict[str, float]:
    """Exact KL summed over d vs the approximate KL averaged over d, on random logits."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(128, 10, 10, generator=gen, requires_grad=True)
    exact = kl_to_uniform(KSubsetPolicy(logits, 5, validate_args=False)).sum(-1).mean()
    approx = approx_kl_to_uniform(logits).mean()
    (g_exact,) = torch.autograd.grad(exact, logits)
    (g_approx,) = torch.autograd.grad(approx, logits)
    return {
        "kl_exact_sum_over_d": float(exact),
        "kl_approx_mean_over_d": float(approx),
        "grad_cosine": _cos(g_exact, g_approx),
        "grad_norm_ratio": float(g_exact.norm() / g_approx.norm()),
    }


def decoders() -> dict[str, list[float]]:
    """Validation BCE of feature selection on digits (k=5, 300 steps, lr 1e-2), per decoder."""
    data = load_splits("digits", val_size=300)
    out: dict[str, list[float]] = {}
    for hidden in ((200,), (200, 200)):
        for estimator in ("stgs", "sfess_vr"):
            for seed in (0, 1, 2):
                cfg = FeatureSelectionConfig(
                    k=5,
                    hidden=hidden,
                    train=TrainConfig(
                        steps=300, lr=1e-2, eval_every=300, estimator=EstimatorConfig(vr_samples=8)
                    ),
                )
                r = train_feature_selection(data, estimator, cfg, seed=seed)
                out.setdefault(f"{estimator} hidden={hidden}", []).append(r.val_values[-1])
    return out


def timing() -> dict[str, float]:
    """ms per SFESS+VR feature-selection step (MNIST k=50), dense vs k-input first layer."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    data = load_splits("mnist", val_size=2000)
    out["load_mnist_splits_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import subset_rl.experiments"], check=True)
    out["python_import_s"] = time.perf_counter() - t0
    for hidden in ((200,), (200, 200)):
        for sparse in (False, True):
            fs.SPARSE_FIRST_LAYER = sparse
            cfg = FeatureSelectionConfig(
                k=50, hidden=hidden, train=TrainConfig(steps=25, eval_every=25)
            )
            r = train_feature_selection(data, "sfess_vr", cfg, seed=0)
            label = f"hidden={hidden} {'k-input' if sparse else 'dense'}"
            out[f"sfess_vr ms/step {label}"] = 1e3 * r.seconds_per_step
    fs.SPARSE_FIRST_LAYER = True
    return out


def main() -> None:
    """Runs every measurement and prints (and optionally writes) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, object] = {"toy": toy(), "vae_kl": vae_kl(), "decoders": decoders()}
    if not args.skip_timing:
        results["timing"] = timing()
    for section, values in results.items():
        print(f"## {section}")
        for key, value in values.items():  # type: ignore[union-attr]
            if isinstance(value, list):
                mean = sum(value) / len(value)
                print(f"{key}: mean {mean:.4f}  [{', '.join(f'{v:.4f}' for v in value)}]")
            else:
                print(f"{key}: {value:.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()

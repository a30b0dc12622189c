r"""Toy study: gradient estimators for k-subset sampling against the exact gradient.

The toy problem of the SIMPLE and SFESS papers: minimise

.. math:: E_{z \sim p_l}\bigl[\|z - b\|^2\bigr], \qquad b \sim N(0, I_n), \quad n = 10,\ k = 5,

so all :math:`\binom{10}{5} = 252` subsets can be enumerated and the exact gradient w.r.t. the
logits :math:`l \sim N(0, I_n)` is known. For every estimator we draw 10,000 independent
single-sample estimates (SFESS+VR: one estimate uses N = 2 ... 32 samples) per seed, in one
vectorised batch, and report over 10 seeds:

* ``bias``: :math:`\|\bar g - g^*\|` with :math:`\bar g` the mean estimate, and ``rel_bias``
  :math:`= \text{bias}/\|g^*\|` (Monte Carlo noise alone gives about
  :math:`\sqrt{\text{variance}/M}`, reported relative as ``rel_bias_noise``: a ``rel_bias``
  near it is indistinguishable from zero);
* ``variance``: total variance :math:`E\|g - \bar g\|^2` (trace of the covariance), and
  ``rel_variance`` :math:`= \text{variance}/\|g^*\|^2`;
* ``one_minus_cos``: mean over estimates of :math:`1 - \cos(g, g^*)` (an all-zero estimate,
  which I-MLE can return, counts as cosine 0);
* ``cos_of_mean``: :math:`\cos(\bar g, g^*)`, the direction of the estimator's expectation.

SFESS+VR is run with the exact conditional Poisson sampler and with Gumbel top-k samples, to
show the bias that the latter adds. Pathwise estimators differentiate :math:`\|z - b\|^2` through
their relaxation or surrogate backward. AIMLE first adapts its :math:`\beta` for a warm-up of
100 backward passes (batches of 100) on the same problem, then is measured.

Usage::

    python examples/toy_gradients.py            # full study (10 seeds x 10,000 estimates)
    python examples/toy_gradients.py --quick    # smoke run (2 seeds x 1,000 estimates)

Outputs (``--out``, default ``runs/toy_gradients/``, or its ``quick/`` subfolder with
``--quick``; the committed results are rewritten only by ``--out examples/results/toy_gradients``):
``summary.csv`` (mean and std over seeds), ``per_seed.csv`` and
``toy_gradients.png``. The full run takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from subset_rl import KSubsetPolicy
from subset_rl.estimators import (
    AdaptiveIMLE,
    imle_topk,
    intermediate_loss_sample,
    relaxed_topk,
    sfess_surrogate,
    simple_sample,
    straight_through_topk,
)

N_ITEMS, K = 10, 5
RESULTS = Path("runs/toy_gradients")
"""Default output folder (git-ignored); the committed results are in examples/results/."""
METRICS = (
    "bias",
    "rel_bias",
    "rel_bias_noise",
    "variance",
    "rel_variance",
    "one_minus_cos",
    "cos_of_mean",
)


@dataclass(frozen=True)
class Spec:
    """One estimator configuration of the study."""

    name: str
    """Row label."""
    family: str
    """``score`` (SFESS, SFESS+VR) or ``pathwise``."""
    sampler: str
    """Sampler that produced the forward draws."""
    num_samples: int
    """Evaluations of f per estimate."""
    run: Callable[[Tensor, Tensor, torch.Generator], Tensor]
    """(logits (M, n), b (n,), generator) -> M gradient estimates (M, n)."""


def loss_fn(b: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda z: ((z - b) ** 2).sum(-1)


def exact_gradient(logits: Tensor, b: Tensor) -> Tensor:
    """grad_l E||z - b||^2 by enumerating all C(n, k) subsets."""
    leaf = logits.detach().clone().requires_grad_(True)
    dist = KSubsetPolicy(leaf, K)
    support = dist.enumerate_support()  # (C, n)
    expectation = (dist.log_prob(support).exp() * loss_fn(b)(support)).sum()
    (grad,) = torch.autograd.grad(expectation, leaf)
    return grad


def score_spec(num_samples: int, sampler: str) -> Spec:
    baseline = "none" if num_samples == 1 else "loo"
    name = "SFESS" if num_samples == 1 else "SFESS+VR"

    def run(logits: Tensor, b: Tensor, gen: torch.Generator) -> Tensor:
        leaf = logits.detach().clone().requires_grad_(True)
        dist = KSubsetPolicy(leaf, K, sampler=sampler)
        z = dist.sample((num_samples,), generator=gen)
        sfess_surrogate(dist, z, loss_fn(b)(z), baseline=baseline, reduction="sum").backward()
        return leaf.grad

    return Spec(f"{name} N={num_samples} ({sampler})", "score", sampler, num_samples, run)


def pathwise_spec(
    name: str, sampler: str, estimator: Callable[[Tensor, torch.Generator], Tensor]
) -> Spec:
    def run(logits: Tensor, b: Tensor, gen: torch.Generator) -> Tensor:
        leaf = logits.detach().clone().requires_grad_(True)
        loss_fn(b)(estimator(leaf, gen)).sum().backward()
        return leaf.grad

    return Spec(name, "pathwise", sampler, 1, run)


def aimle_spec(warmup_steps: int = 100, warmup_batch: int = 100) -> Spec:
    def run(logits: Tensor, b: Tensor, gen: torch.Generator) -> Tensor:
        module = AdaptiveIMLE(K).to(logits.device)
        for _ in range(warmup_steps):
            leaf = logits[:warmup_batch].detach().clone().requires_grad_(True)
            loss_fn(b)(module(leaf, generator=gen)).sum().backward()
        module.eval()  # measure with the adapted beta, frozen
        leaf = logits.detach().clone().requires_grad_(True)
        loss_fn(b)(module(leaf, generator=gen)).sum().backward()
        return leaf.grad

    return Spec("AIMLE (adaptive, two-sided)", "pathwise", "perturb-and-MAP", 1, run)


def build_specs() -> list[Spec]:
    specs = []
    for sampler in ("exact", "gumbel"):
        specs += [score_spec(n, sampler) for n in (1, 2, 4, 8, 16, 32)]
    for tau in (1.0, 0.1):
        specs.append(
            pathwise_spec(
                f"GS tau={tau:g}", "gumbel", lambda x, g, t=tau: relaxed_topk(x, K, t, generator=g)
            )
        )
        specs.append(
            pathwise_spec(
                f"STGS tau={tau:g}",
                "gumbel",
                lambda x, g, t=tau: straight_through_topk(x, K, t, generator=g),
            )
        )
    specs.append(pathwise_spec("SIMPLE", "exact", lambda x, g: simple_sample(x, K, generator=g)))
    for lam in (1.0, 10.0):
        specs.append(
            pathwise_spec(
                f"I-MLE lambda={lam:g}",
                "perturb-and-MAP",
                lambda x, g, la=lam: imle_topk(x, K, la, generator=g),
            )
        )
    specs.append(aimle_spec())
    for lam in (0.1, 1.0):
        specs.append(
            pathwise_spec(
                f"Intermediate lambda={lam:g}",
                "exact",
                lambda x, g, la=lam: intermediate_loss_sample(x, K, la, generator=g),
            )
        )
    return specs


def metrics(estimates: Tensor, exact: Tensor) -> dict[str, float]:
    mean = estimates.mean(0)
    norm = float(exact.norm())
    bias = float((mean - exact).norm())
    variance = float(((estimates - mean) ** 2).sum(-1).mean())
    cos = torch.nn.functional.cosine_similarity(estimates, exact.expand_as(estimates), dim=-1)
    cos_of_mean = torch.nn.functional.cosine_similarity(mean, exact, dim=0)
    return {
        "bias": bias,
        "rel_bias": bias / norm,
        "rel_bias_noise": math.sqrt(variance / estimates.shape[0]) / norm,
        "variance": variance,
        "rel_variance": variance / norm**2,
        "one_minus_cos": float((1 - cos).mean()),
        "cos_of_mean": float(cos_of_mean),
    }


def run_study(
    seeds: int, num_estimates: int, device: torch.device, dtype: torch.dtype
) -> list[dict[str, object]]:
    specs = build_specs()
    rows: list[dict[str, object]] = []
    for seed in range(seeds):
        problem = torch.Generator().manual_seed(seed)
        logits = torch.randn(N_ITEMS, generator=problem, dtype=dtype).to(device)
        b = torch.randn(N_ITEMS, generator=problem, dtype=dtype).to(device)
        exact = exact_gradient(logits, b)
        batch = logits.expand(num_estimates, N_ITEMS)
        for i, spec in enumerate(specs):
            gen = torch.Generator(device=device).manual_seed(1000 * seed + i)
            estimates = spec.run(batch, b, gen).detach()
            rows.append(
                {
                    "estimator": spec.name,
                    "family": spec.family,
                    "sampler": spec.sampler,
                    "num_samples": spec.num_samples,
                    "seed": seed,
                    "exact_norm": float(exact.norm()),
                    **metrics(estimates, exact),
                }
            )
        print(f"seed {seed}: done ({len(specs)} estimators)", flush=True)
    return rows


def summarise(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    names = list(dict.fromkeys(str(r["estimator"]) for r in rows))
    summary = []
    for name in names:
        sel = [r for r in rows if r["estimator"] == name]
        out: dict[str, object] = {
            k: sel[0][k] for k in ("estimator", "family", "sampler", "num_samples")
        }
        out["seeds"] = len(sel)
        for m in METRICS:
            values = torch.tensor([float(r[m]) for r in sel], dtype=torch.float64)
            out[f"{m}_mean"] = float(values.mean())
            out[f"{m}_std"] = float(values.std()) if len(sel) > 1 else 0.0
        summary.append(out)
    return summary


def _cell(row: dict[str, object], metric: str, width: int) -> str:
    return f"{row[f'{metric}_mean']:.3g} ({row[f'{metric}_std']:.2g})".rjust(width)


def print_table(summary: list[dict[str, object]], num_estimates: int) -> None:
    print(
        f"\nToy problem n={N_ITEMS}, k={K}: mean (std) over {summary[0]['seeds']} seeds, "
        f"{num_estimates} estimates each; noise = MC floor of rel_bias"
    )
    head = (
        f"{'estimator':<30}{'rel_bias':>17}{'noise':>9}{'rel_variance':>21}{'1-cos':>17}"
        f"{'cos(mean)':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in summary:
        print(
            f"{r['estimator']!s:<30}{_cell(r, 'rel_bias', 17)}{r['rel_bias_noise_mean']:>9.3g}"
            f"{_cell(r, 'rel_variance', 21)}{_cell(r, 'one_minus_cos', 17)}"
            f"{r['cos_of_mean_mean']:>10.3f}"
        )


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(summary: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 6.5))
    names = [str(r["estimator"]) for r in summary]
    ypos = list(range(len(names)))
    colours = [
        "tab:blue"
        if r["family"] == "score" and r["sampler"] == "exact"
        else "tab:orange"
        if r["family"] == "score"
        else "tab:green"
        for r in summary
    ]
    for ax, metric, label in (
        (axes[0], "one_minus_cos", "mean 1 - cos(estimate, exact)"),
        (axes[1], "rel_variance", "variance / ||exact||^2"),
    ):
        vals = [float(r[f"{metric}_mean"]) for r in summary]
        errs = [float(r[f"{metric}_std"]) for r in summary]
        ax.barh(ypos, vals, xerr=errs, color=colours)
        ax.set_yticks(ypos, names if ax is axes[0] else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    ax = axes[2]
    for sampler, colour in (("exact", "tab:blue"), ("gumbel", "tab:orange")):
        sel = [r for r in summary if r["family"] == "score" and r["sampler"] == sampler]
        sel.sort(key=lambda r: int(str(r["num_samples"])))
        ns = [int(r["num_samples"]) for r in sel]
        for metric, style in (("one_minus_cos", "-o"), ("rel_bias", "--s")):
            ax.errorbar(
                ns,
                [float(r[f"{metric}_mean"]) for r in sel],
                yerr=[float(r[f"{metric}_std"]) for r in sel],
                fmt=style,
                color=colour,
                label=f"{metric} ({sampler} sampler)",
                capsize=3,
            )
    exact = sorted(
        (r for r in summary if r["family"] == "score" and r["sampler"] == "exact"),
        key=lambda r: int(str(r["num_samples"])),
    )
    ax.plot(
        [int(str(r["num_samples"])) for r in exact],
        [float(r["rel_bias_noise_mean"]) for r in exact],
        ":",
        color="grey",
        label="Monte Carlo noise floor of rel_bias (exact)",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("N (samples per estimate); N=1 is SFESS, N>1 SFESS+VR (leave-one-out)")
    ax.set_title("Score function: exact CP vs Gumbel top-k samples")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(
        f"Gradient estimators on E||z - b||^2, n={N_ITEMS}, k={K} "
        "(blue: SFESS exact sampler, orange: Gumbel top-k sampler, green: pathwise)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds x 1,000 estimates")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--estimates", type=int, default=10_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output folder (default {RESULTS}, or its quick/ with --quick)",
    )
    args = parser.parse_args(argv)
    seeds, estimates = (2, 1_000) if args.quick else (args.seeds, args.estimates)
    start = time.perf_counter()
    rows = run_study(seeds, estimates, torch.device(args.device), getattr(torch, args.dtype))
    summary = summarise(rows)
    print_table(summary, estimates)
    if args.out is None:
        args.out = RESULTS / "quick" if args.quick else RESULTS
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "per_seed.csv", rows)
    write_csv(args.out / "summary.csv", summary)
    plot(summary, args.out / "toy_gradients.png")
    print(
        f"\nwrote {args.out}/summary.csv, per_seed.csv, toy_gradients.png "
        f"in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()

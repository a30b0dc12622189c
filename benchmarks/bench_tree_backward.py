"""The tree's hand-written backward against autograd through the same tree (one process).

Usage:
    python benchmarks/bench_tree_backward.py [--repeats 31] [--threads 1]

Times ``(log Z, marginals)`` of ``(B, n)`` float32 logits two ways, interleaved per shape: the
hand-written outside pass that ``KSubsetPolicy`` uses (``_tree_marginals``) and autograd through
``log_normalizer_2d(..., "tree")``; prints medians and their ratio, and the largest difference
of the marginals (the two must agree to float32 rounding).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import subset_rl.poisson_binomial as pb


def _autograd(x: torch.Tensor, layout: pb.Layout) -> torch.Tensor:
    with torch.enable_grad():
        leaf = x.clone().requires_grad_(True)
        (pi,) = torch.autograd.grad(pb.log_normalizer_2d(leaf, layout, "tree").sum(), leaf)
    return pi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")
    print("| B | n | k | hand-written | autograd | autograd / hand | max abs diff of pi |")
    print("|---|---|---|---|---|---|---|")
    for B, n, k in [(128, 100, 10), (128, 256, 10), (128, 784, 50), (8, 256, 10)]:
        x = torch.randn(B, n, generator=torch.Generator().manual_seed(n + k))
        layout = pb.make_layout(x, k)
        diff = float((pb._tree_marginals(x, layout)[1] - _autograd(x, layout)).abs().max())
        times: dict[str, list[float]] = {"hand": [], "auto": []}
        for _ in range(args.repeats):
            for name in ("hand", "auto"):
                start = time.perf_counter()
                if name == "hand":
                    pb._tree_marginals(x, layout)
                else:
                    _autograd(x, layout)
                times[name].append(time.perf_counter() - start)
        h, a = (statistics.median(times[key]) * 1e3 for key in ("hand", "auto"))
        print(f"| {B} | {n} | {k} | {h:.2f} ms | {a:.2f} ms | {a / h:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()

"""A short tour of KSubsetPolicy on an embedded default (the README's main-job command).

Run with ``make demo`` (or ``python examples/demo.py``). It builds a k-subset distribution over
n = 784 items (an MNIST-sized problem), checks it against brute force on a small case, and shows
exact vs Gumbel top-k sampling and a masked item.
"""

from __future__ import annotations

import itertools
import math
import time

import torch

from subset_rl import KSubsetPolicy


def main() -> None:
    torch.manual_seed(0)

    print("1) A small case, checked by brute force: n = 6, k = 3")
    logits = torch.randn(6, dtype=torch.float64)
    d = KSubsetPolicy(logits, 3)
    subsets = d.enumerate_support()
    probs = d.log_prob(subsets).exp()
    brute = torch.tensor(
        [logits[list(c)].sum().exp().item() for c in itertools.combinations(range(6), 3)],
        dtype=torch.float64,
    )
    brute /= brute.sum()
    print(f"   sum of p over all {len(subsets)} subsets: {probs.sum():.12f}")
    print(f"   max |p - brute force|: {(probs - brute).abs().max():.2e}")
    pi = [round(x, 4) for x in d.marginals.tolist()]
    print(f"   marginals: {pi} (sum {d.marginals.sum():.6f})")
    print(f"   entropy {d.entropy():.4f} nats, mode {d.mode.int().tolist()}")

    print("\n2) n = 784, k = 50, a batch of 128 rows in float32")
    logits = torch.randn(128, 784) * 2 - 3
    start = time.perf_counter()
    d = KSubsetPolicy(logits.requires_grad_(True), 50)
    z = d.sample((32,))
    loss = -d.log_prob(z).mean()
    loss.backward()
    elapsed = time.perf_counter() - start
    print(f"   32 exact samples per row, log_prob and its gradient: {elapsed * 1e3:.0f} ms")
    print(f"   every sample has exactly 50 items: {bool((z.sum(-1) == 50).all())}")
    print(f"   log e_k of row 0: {d.log_normalizer[0]:.4f}; entropy of row 0: {d.entropy()[0]:.3f}")
    print(f"   score identity: grad of log p(z) = z - marginals -> checked: "
          f"{torch.allclose(logits.grad, -(z - d.marginals).mean(0) / 128, atol=1e-6)}")

    print("\n3) Exact sampler vs Gumbel top-k (a different distribution), n = 10, k = 5")
    logits = torch.randn(10) * 1.5
    exact = KSubsetPolicy(logits, 5)
    gumbel = KSubsetPolicy(logits, 5, sampler="gumbel")
    gen = torch.Generator().manual_seed(0)
    freq_exact = exact.sample((100_000,), generator=gen).mean(0)
    freq_gumbel = gumbel.sample((100_000,), generator=gen).mean(0)
    print(f"   exact marginals:          {[round(x, 3) for x in exact.marginals.tolist()]}")
    print(f"   exact sampler frequency:  {[round(x, 3) for x in freq_exact.tolist()]}")
    print(f"   Gumbel top-k frequency:   {[round(x, 3) for x in freq_gumbel.tolist()]}")

    print("\n4) Masking: item 0 has logit -inf and is never chosen")
    logits = torch.tensor([-math.inf, 0.0, 0.5, 1.0, -1.0])
    d = KSubsetPolicy(logits, 2)
    print(f"   marginals {[round(x, 4) for x in d.marginals.tolist()]}, "
          f"item 0 drawn {int(d.sample((10_000,))[:, 0].sum())} times in 10,000 samples")


if __name__ == "__main__":
    main()

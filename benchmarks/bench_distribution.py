"""Side-by-side timings of the k-subset normalizer and samplers (one process, one run).

Usage:
    python benchmarks/bench_distribution.py [--device cpu|cuda] [--repeats 5] [--quick]

Prints a Markdown table: ``log_prob`` forward+backward for each normalizer method next to the
plain, unshifted Fernandez-Williams DFT as the SFESS paper's Listing 1 writes it, then exact vs
Gumbel top-k sampling. Ratios are against the plain DFT (normalizer) and Gumbel (sampler)
measured in the same run. Timings are medians over ``--repeats`` after one warm-up call.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from subset_rl import KSubsetPolicy


def plain_dft_log_normalizer(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The SFESS paper's Listing 1: unshifted Fernandez-Williams DFT, twiddles as ``C ** l``.

    O(n^2) time and an ``(B, n + 1, n)`` complex tensor; underflows in float32 whenever
    ``sum(sigmoid(l))`` is far from ``k``. Kept here only as the baseline to beat.
    """
    n = logits.shape[-1]
    theta = torch.sigmoid(logits)
    cdtype = torch.complex64 if logits.dtype == torch.float32 else torch.complex128
    c = torch.exp(torch.tensor(2j * math.pi / (n + 1), dtype=cdtype, device=logits.device))
    ell = torch.arange(n + 1, device=logits.device)
    twiddle = c**ell  # (n + 1,)
    prod = torch.prod(1 + (twiddle[:, None] - 1) * theta[..., None, :].to(cdtype), dim=-1)
    pmf = (c ** (-ell * k) * prod).sum(-1).real / (n + 1)
    return torch.log(pmf) + torch.nn.functional.softplus(logits).sum(-1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _fwd_bwd(logits: torch.Tensor, k: int, method: str) -> Callable[[], None]:
    z = KSubsetPolicy(logits.detach(), k).mode

    def run() -> None:
        x = logits.detach().requires_grad_(True)
        if method == "plain-dft":
            lp = (z * x).sum(-1) - plain_dft_log_normalizer(x, k)
        else:
            lp = KSubsetPolicy(x, k, method=method).log_prob(z)
        lp.sum().backward()

    return run


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    parser.add_argument(
        "--plain-dft-max-gb", type=float, default=4.0,
        help="skip the plain DFT where its (B, n+1, n) complex tensor exceeds this many GB",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"float32, median of {args.repeats}\n")

    sizes = [(100, 10), (784, 50)] if args.quick else [(100, 10), (784, 50), (4096, 256)]
    batches = [1, 128]
    methods = ["plain-dft", "dft", "tree", "auto"]
    print("log_prob forward+backward (speed-up vs plain DFT in brackets)\n")
    print("| n | k | batch | " + " | ".join(methods) + " |")
    print("|---|---|---|" + "---|" * len(methods))
    for n, k in sizes:
        for batch in batches:
            logits = torch.randn(batch, n, device=device)
            row: dict[str, float | None] = {}
            for method in methods:
                gb = batch * (n + 1) * n * 8 / 1e9
                if method == "plain-dft" and gb > args.plain_dft_max_gb:
                    row[method] = None
                    continue
                if method == "dft" and batch * n * n > 2e8:  # truncated DFT, still O(n sqrt v)
                    pass
                row[method] = timeit(_fwd_bwd(logits, k, method), device, args.repeats)
            base = row["plain-dft"]
            cells = []
            for method in methods:
                t = row[method]
                if method == "plain-dft" and t is None:
                    gb = batch * (n + 1) * n * 8 / 1e9
                    cells.append(f"skipped ({gb:.0f} GB tensor)")
                elif base is None or method == "plain-dft":
                    cells.append(_fmt(t))
                else:
                    cells.append(f"{_fmt(t)} [{base / t:.0f}x]")
            print(f"| {n} | {k} | {batch} | " + " | ".join(cells) + " |", flush=True)

    if not args.quick:
        n, k, batch = 10_000, 5_000, 128
        logits = torch.randn(batch, n, device=device)
        t = timeit(_fwd_bwd(logits, k, "auto"), device, max(1, args.repeats // 2))
        gb = batch * (n + 1) * n * 8 / 1e9
        print(f"| {n} | {k} | {batch} | skipped ({gb:.0f} GB tensor) | — | — | {_fmt(t)} |")

    print("\nsampling 32 samples for each of 128 rows, n = 784, k = 50\n")
    logits = torch.randn(128, 784, device=device)
    t_exact = timeit(lambda: KSubsetPolicy(logits, 50).sample((32,)), device, args.repeats)
    t_gumbel = timeit(
        lambda: KSubsetPolicy(logits, 50, sampler="gumbel").sample((32,)), device, args.repeats
    )
    print("| sampler | time | ratio to Gumbel top-k |")
    print("|---|---|---|")
    print(f"| exact (conditional Poisson) | {_fmt(t_exact)} | {t_exact / t_gumbel:.2f} |")
    print(f"| gumbel (Gumbel top-k, not CP) | {_fmt(t_gumbel)} | 1.00 |")


if __name__ == "__main__":
    main()

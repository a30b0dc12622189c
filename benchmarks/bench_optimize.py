"""Start-up cost of ``subset_rl.optimize``'s worker processes: a new pool per call vs one kept.

``executor="process"`` starts ``workers`` spawn processes (each a Python interpreter importing
torch) in every :func:`~subset_rl.optimize.optimize` call; a
:class:`~subset_rl.optimize.ProcessPool` passed as ``executor`` keeps them across calls. This
script runs the same ``--calls`` optimizations (random search, ``--evals`` evaluations each, of an
objective that sleeps ``--sleep`` seconds, like a simulation waiting on I/O) three ways, side by
side in one process:

* ``serial``: in this process (one call only, then scaled: it has no start-up);
* ``process``: ``executor="process"``, a new pool in every call;
* ``ProcessPool``: one pool for all calls; its start-up is counted in the total.

    python benchmarks/bench_optimize.py --workers 8 --evals 200 --calls 5 --sleep 0.05

Timings live here, never in tests (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from subset_rl.optimize import ProcessPool, optimize


def slow_objective(z: np.ndarray) -> float:
    """Sleeps ``BENCH_SLEEP`` seconds, then scores the subset (module level: picklable)."""
    time.sleep(float(os.environ.get("BENCH_SLEEP", "0.05")))
    return float(np.asarray(z) @ np.arange(len(z), dtype=np.float64))


def one_call(executor, n: int, k: int, evals: int, seed: int, workers: int | None) -> float:
    start = time.perf_counter()
    res = optimize(
        slow_objective,
        n,
        k,
        budget=evals,
        method="random",
        samples=64,
        seed=seed,
        progress=False,
        executor=executor,
        workers=workers,
    )
    assert res.n_evaluations == evals and res.n_failed == 0
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--evals", type=int, default=200, help="evaluations per optimize call")
    p.add_argument("--calls", type=int, default=5, help="optimize calls per setup")
    p.add_argument("--sleep", type=float, default=0.05, help="seconds per evaluation")
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--k", type=int, default=5)
    args = p.parse_args()
    os.environ["BENCH_SLEEP"] = str(args.sleep)  # inherited by the spawned workers
    w, calls = args.workers, args.calls
    print(
        f"# torch {torch.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {calls} calls of "
        f"{args.evals} evaluations, {args.sleep * 1e3:g} ms each, {w} workers"
    )
    serial = one_call(None, args.n, args.k, args.evals, 0, None)
    fresh = [one_call("process", args.n, args.k, args.evals, s, w) for s in range(calls)]
    start = time.perf_counter()
    with ProcessPool(w) as pool:
        kept = [one_call(pool, args.n, args.k, args.evals, s, None) for s in range(calls)]
    kept_total = time.perf_counter() - start  # includes the pool's start-up and shutdown
    rows = [
        ("serial (this process)", serial, serial * calls),
        (f'executor="process" (new pool per call, {w} workers)', np.median(fresh), sum(fresh)),
        (f"ProcessPool({w}) kept across calls", np.median(kept[1:] or kept), kept_total),
    ]
    print()
    print(f"| setup | median time per call | total for {calls} calls | speed-up over serial |")
    print("|---|---|---|---|")
    for name, per_call, total in rows:
        print(f"| {name} | {per_call:.2f} s | {total:.2f} s | {serial * calls / total:.2f}x |")
    print()
    print(f"first ProcessPool call (workers still starting): {kept[0]:.2f} s")
    print(
        f"ProcessPool over a new pool per call: {sum(fresh) / kept_total:.2f}x in total, "
        f"{np.median(fresh) / np.median(kept[1:] or kept):.2f}x per call after the first"
    )


if __name__ == "__main__":
    main()

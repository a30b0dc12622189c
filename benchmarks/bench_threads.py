"""Torch CPU threads for the native agents: the README's agent snippet with 1 vs 2 threads.

::

    .venv/bin/python benchmarks/bench_threads.py                 # about a minute
    .venv/bin/python benchmarks/bench_threads.py --steps 1500    # the README's full size

Each row trains ``SFESS`` on an env with the defaults the CLI and the API share
(:mod:`subset_rl.defaults`) and ``torch_threads`` set as in the column, rows interleaved (1, 2,
1, 2, ...) so that both see the same load, and reports the median wall time of ``learn`` and the
reward of ``evaluate()``. :data:`subset_rl.defaults.TORCH_THREADS` is chosen from this table.

Measured on the 2-core CPU machine (torch 2.13.0+cpu, load average about 7 from other jobs:
two long benchmarks and a test run; ``--repeats 2``, one run)::

    | env | 1 thread | 2 threads | reward |
    |---|---|---|---|
    | subset_rl/SensorPlacement-v0 | 2.5 s | 22.0 s | -0.4187 |
    | subset_rl/KNNVoting-v0 | 2.7 s | 17.8 s | 0.8885 |

On busy cores a second torch thread waits for a core at every parallel region of these small
steps: 1 thread is 7-9x faster here (the issue's 3:29 vs 9.7 s for the README snippet is the same
effect). The reward column is the median over both columns' runs (same seed and settings).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from subset_rl.agents import SFESS

ENVS = ("subset_rl/SensorPlacement-v0", "subset_rl/KNNVoting-v0")


def run(env_id: str, threads: int, steps: int) -> tuple[float, float]:
    """Seconds of ``learn(steps)`` and the evaluated reward, with ``threads`` torch threads."""
    agent = SFESS(env_id, num_samples=16, seed=0, device="cpu", torch_threads=threads)
    start = time.perf_counter()
    agent.learn(steps)
    return time.perf_counter() - start, agent.evaluate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    caller = torch.get_num_threads()
    print(f"torch {torch.__version__}; the caller's setting: {caller} thread(s); "
          f"{args.steps} steps, median of {args.repeats}\n")
    head = " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in args.threads)
    print(f"| env | {head} | reward |")
    print("|---|" + "---|" * (len(args.threads) + 1))
    for env_id in ENVS:
        times: dict[int, list[float]] = {t: [] for t in args.threads}
        rewards = []
        for _ in range(args.repeats):
            for threads in args.threads:
                seconds, reward = run(env_id, threads, args.steps)
                times[threads].append(seconds)
                rewards.append(reward)
                if torch.get_num_threads() != caller:
                    raise SystemExit("learn()/evaluate() did not restore the caller's threads")
        cells = " | ".join(f"{statistics.median(times[t]):.1f} s" for t in args.threads)
        print(f"| {env_id} | {cells} | {statistics.median(rewards):.4f} |", flush=True)


if __name__ == "__main__":
    main()

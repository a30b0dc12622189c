"""The SFESS agent on ``subset_rl/SensorPlacement-v0`` against QR pivoting: which settings win.

Trains :class:`subset_rl.agents.SFESS` with several settings for the same number of gradient
steps (so the same number of objective evaluations), side by side in one process, and reports the
mean held-out reward of the policy's mode (256 contexts, the CLI's evaluation) next to QR
pivoting's, with the wall time of each run. ``make demo`` uses the row marked ``cli``.

    python benchmarks/bench_agent_sensor.py --seeds 6

Timings are reported, never asserted (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from subset_rl.agents import SFESS
from subset_rl.defaults import RECOMMENDED

ENV = "subset_rl/SensorPlacement-v0"


def settings() -> dict[str, dict]:
    """The compared settings; ``cli`` is what ``subset-rl train`` uses."""
    rec = RECOMMENDED[ENV]
    former = {"steps": 1500, "num_samples": 16, "batch_size": 4, "lr": 0.1,
              "max_grad_norm": 1.0, "ent_coef": 0.01}
    out = {"cli (the default now)": dict(rec)}
    out["former default: rewards, 16 x 4"] = {**former, "utility": "reward"}
    out["rank, 16 x 4, no entropy"] = {**former, "utility": "rank", "ent_coef": 0.0}
    out["rank, 64 x 1, lr 0.05"] = {
        "steps": 2500, "num_samples": 64, "batch_size": 1, "lr": 0.05, "max_grad_norm": None,
        "ent_coef": 0.0, "utility": "rank",
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"# torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs,"
          f" 1 torch thread; {ENV}; mean held-out reward of the mode over 256 contexts")
    qr = None
    rows = []
    for name, cfg in settings().items():
        cfg = dict(cfg)
        steps = cfg.pop("steps")
        vals, secs = [], []
        lr = cfg.pop("lr")
        for seed in range(args.seeds):
            start = time.perf_counter()
            agent = SFESS(ENV, seed=seed, device="cpu", learning_rate=lr, **cfg)
            agent.learn(steps)
            vals.append(agent.evaluate())
            secs.append(time.perf_counter() - start)
            if qr is None:
                obj = agent.objective
                gen = torch.Generator().manual_seed(2**31 - 1)
                ctx = obj.sample_context(256, gen)
                z = torch.as_tensor(obj.qr_placement(), dtype=torch.float32).expand(1, 256, -1)
                qr = float(obj(z, ctx, validate=False).mean())
        rows.append((name, steps, np.mean(vals), np.min(vals), np.mean(secs)))
        print(f"{name:28s} steps {steps:5d}: mean {np.mean(vals):.4f} (worst seed "
              f"{np.min(vals):.4f}), {np.mean(secs):.1f} s per run", flush=True)
    print(f"{'QR pivoting':28s}             {qr:.4f}")


if __name__ == "__main__":
    main()

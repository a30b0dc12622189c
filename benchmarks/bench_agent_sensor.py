"""The SFESS agent on ``subset_rl/SensorPlacement-v0`` against QR pivoting: which settings win.

Trains :class:`subset_rl.agents.SFESS` with several settings for the same number of gradient
steps (so the same number of objective evaluations), side by side in one process, and reports the
mean held-out reward of the policy's mode (256 contexts, the CLI's evaluation) next to QR
pivoting's, with the wall time of each run. ``make demo`` uses the row marked ``cli``: its
training, then :meth:`~subset_rl.agents.base.BaseAgent.polish` with the default budget; the
rows ``+ polish B`` polish the same trained policy (reloaded from a checkpoint) with other
budgets, so the polish's gain is measured on the same runs.

    python benchmarks/bench_agent_sensor.py --seeds 6

Timings are reported, never asserted (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
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


POLISH_BUDGETS = (1000, 2000, 8000)
"""Other polish budgets tried on the trained policies of the ``cli`` row."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=6)
    args = p.parse_args()
    tmp = tempfile.TemporaryDirectory()
    torch.set_num_threads(1)
    print(f"# torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs,"
          f" 1 torch thread; {ENV}; mean held-out reward of the mode over 256 contexts")
    qr = None
    for name, cfg in settings().items():
        cfg = dict(cfg)
        steps = cfg.pop("steps")
        vals, secs = [], []
        lr = cfg.pop("lr")
        polish = cfg.pop("polish", 0)
        extra: dict[int, list[tuple[float, float]]] = {0: []} | {b: [] for b in POLISH_BUDGETS}
        for seed in range(args.seeds):
            start = time.perf_counter()
            agent = SFESS(ENV, seed=seed, device="cpu", learning_rate=lr, polish_budget=polish,
                          **cfg)
            agent.learn(steps)
            if polish:
                extra[0].append((agent.evaluate(), 0.0))
                path = os.path.join(tmp.name, f"trained_{seed}.pt")
                agent.save(path)
                aside = time.perf_counter()
                for budget in POLISH_BUDGETS:
                    other = SFESS.load(path, device="cpu")
                    t0 = time.perf_counter()
                    other.polish(budget)
                    extra[budget].append((other.evaluate(), time.perf_counter() - t0))
                start += time.perf_counter() - aside  # the side runs are not this run's time
            if polish:
                agent.polish()
            vals.append(agent.evaluate())
            secs.append(time.perf_counter() - start)
            if qr is None:
                obj = agent.objective
                gen = torch.Generator().manual_seed(2**31 - 1)
                ctx = obj.sample_context(256, gen)
                z = torch.as_tensor(obj.qr_placement(), dtype=torch.float32).expand(1, 256, -1)
                qr = float(obj(z, ctx, validate=False).mean())
        label = f"{name} + polish {polish}" if polish else name
        print(f"{label:40s} steps {steps:5d}: mean {np.mean(vals):.4f} (worst seed "
              f"{np.min(vals):.4f}), {np.mean(secs):.1f} s per run", flush=True)
        for budget, got in extra.items():
            if got:
                v = [x for x, _ in got]
                what = f"  same runs + polish {budget}" if budget else "  same runs before polish"
                print(f"{what:40s}            mean {np.mean(v):.4f} (worst seed {np.min(v):.4f})"
                      f", polish {np.mean([t for _, t in got]):.1f} s", flush=True)
    print(f"{'QR pivoting':40s}             {qr:.4f}")


if __name__ == "__main__":
    main()

"""FeatureAcquisition-v0 under SB3 vector envs: one classifier call per env step vs one per step
of all envs (``SubsetDummyVecEnv``), side by side in one process.

::

    .venv/bin/python benchmarks/bench_feature_acquisition.py            # about a minute
    .venv/bin/python benchmarks/bench_feature_acquisition.py --ppo      # + PPO learn() timings

Rows: ``DummyVecEnv`` (before: each env's ``step`` calls ``predict_proba`` on one row) and
``SubsetDummyVecEnv`` (after: ``FeatureAcquisitionEnv.prefetch_steps`` predicts the rows of all
envs in one call, then each ``step`` finds its prediction). Both step the same seeded envs with
the same random k-hot actions, and the script checks that the rewards are identical.

Measured on the 2-core CPU machine (torch 2.13.0+cpu, 1 thread, load average about 5 from other
jobs; ``--ppo``, one run)::

    | n_envs | DummyVecEnv (env steps/s) | SubsetDummyVecEnv (env steps/s) | speed-up |
    |---|---|---|---|
    | 1 | 222 | 233 | 1.0x |
    | 8 | 230 | 1,162 | 5.1x |
    | 16 | 226 | 1,612 | 7.1x |

    PPO.learn(8192), 8 envs, n_steps=256, batch 256, 4 epochs: DummyVecEnv 41.4 s,
    SubsetDummyVecEnv 11.1 s.

A ``predict_proba`` of the default classifier (500 trees) costs about 2.5 ms for one row and
about as much for eight: the trees are walked once per call.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

ENV_ID = "subset_rl/FeatureAcquisition-v0"


def _vec(cls: type, n_envs: int):  # noqa: ANN202
    from subset_rl.sb3 import make_subset_vec_env

    return make_subset_vec_env(ENV_ID, n_envs=n_envs, seed=0, vec_env_cls=cls)


def step_rate(cls: type, n_envs: int, steps: int) -> tuple[float, np.ndarray]:
    """Env steps per second of ``steps`` vector steps, and the rewards seen."""
    venv = _vec(cls, n_envs)
    space = venv.action_space
    rng = np.random.default_rng(0)
    actions = np.zeros((steps, n_envs, space.n), np.float32)
    for t in range(steps):
        for i in range(n_envs):
            actions[t, i, rng.choice(space.n, space.k, replace=False)] = 1.0
    venv.reset()
    venv.step(actions[0])  # warm-up (the classifier is trained on first use, then cached)
    rewards = []
    start = time.perf_counter()
    for t in range(1, steps):
        rewards.append(venv.step(actions[t])[1])
    elapsed = time.perf_counter() - start
    venv.close()
    return (steps - 1) * n_envs / elapsed, np.concatenate(rewards)


def ppo_seconds(cls: type, n_envs: int, timesteps: int) -> float:
    """Wall time of ``PPO.learn(timesteps)`` with the k-hot policy."""
    from stable_baselines3 import PPO

    from subset_rl.sb3 import KSubsetActorCriticPolicy, ppo_kwargs

    venv = _vec(cls, n_envs)
    model = PPO(KSubsetActorCriticPolicy, venv, seed=0, device="cpu",
                **ppo_kwargs(n_steps=256, batch_size=256, n_epochs=4))
    start = time.perf_counter()
    model.learn(timesteps)
    elapsed = time.perf_counter() - start
    venv.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="vector steps per row")
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--ppo", action="store_true", help="also time PPO.learn")
    parser.add_argument("--ppo-steps", type=int, default=8192)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from stable_baselines3.common.vec_env import DummyVecEnv

    from subset_rl.sb3 import SubsetDummyVecEnv

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.steps} vector "
          "steps per row\n")
    print("| n_envs | DummyVecEnv (env steps/s) | SubsetDummyVecEnv (env steps/s) | speed-up |")
    print("|---|---|---|---|")
    for n_envs in args.envs:
        before, r_before = step_rate(DummyVecEnv, n_envs, args.steps)
        after, r_after = step_rate(SubsetDummyVecEnv, n_envs, args.steps)
        if not np.array_equal(r_before, r_after):
            raise SystemExit(f"rewards differ with n_envs={n_envs}: the batching changed them")
        print(f"| {n_envs} | {before:,.0f} | {after:,.0f} | {after / before:.1f}x |", flush=True)
    if args.ppo:
        print(f"\nPPO.learn({args.ppo_steps}), 8 envs, n_steps=256, batch 256, 4 epochs:\n")
        print("| vector env | seconds |")
        print("|---|---|")
        for cls in (DummyVecEnv, SubsetDummyVecEnv):
            print(f"| {cls.__name__} | {ppo_seconds(cls, 8, args.ppo_steps):.1f} |", flush=True)


if __name__ == "__main__":
    main()

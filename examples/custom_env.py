"""Your own black-box subset problem: register a Gymnasium env, train SFESS and SB3 PPO on it.

The problem: choose ``k = 4`` of ``n = 40`` candidate sites for facilities. Each episode draws
60 demand points (a mixture around three towns, redrawn every episode); the reward is the
fraction of them within ``radius`` of a chosen site. Nothing here is differentiable: a black box.

What makes an env usable by subset_rl's agents:

* a :class:`~subset_rl.envs.KHot` action space (``k``-hot vectors; SB3 sees a ``MultiBinary``);
* ``reset(seed=s)`` fixes the context (here, the demand), so SFESS can score several subsets
  against the same context for its leave-one-out baseline (it resets copies with the same seed).

Run it (about a minute on 2 CPU cores)::

    python examples/custom_env.py

The same env works from the command line once its module is importable::

    cd examples
    subset-rl train custom_env:mypkg/Coverage-v0 --steps 300 --lr 0.1 --batch-size 4 --num-samples 8
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from subset_rl.agents import SFESS
from subset_rl.envs import KHot

ENV_ID = "mypkg/Coverage-v0"


class CoverageEnv(gym.Env):
    """Choose ``k`` of ``n`` sites so that as much random demand as possible lies within reach.

    Args:
        n: Number of candidate sites (fixed positions in the unit square).
        k: Number of sites to open.
        demand: Demand points per episode.
        radius: A demand point is covered when a chosen site is closer than this.
    """

    def __init__(self, n: int = 40, k: int = 4, demand: int = 60, radius: float = 0.15) -> None:
        self.sites = np.random.default_rng(0).random((n, 2))  # fixed layout
        self.towns = np.array([[0.2, 0.3], [0.75, 0.25], [0.5, 0.8]])
        self.demand, self.radius = demand, radius
        self.action_space = KHot(n, k)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)  # no context seen
        self._points: np.ndarray | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)  # the demand comes from self.np_random: same seed, same demand
        town = self.np_random.integers(0, len(self.towns), self.demand)
        spread = self.np_random.normal(0.0, 0.08, (self.demand, 2))
        self._points = self.towns[town] + spread
        return np.zeros(1, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        chosen = self.sites[np.asarray(action) > 0.5]
        if len(chosen) != self.action_space.k:
            raise ValueError(f"expected {self.action_space.k} sites, found {len(chosen)}")
        dist = np.linalg.norm(self._points[:, None, :] - chosen[None, :, :], axis=-1)
        reward = float((dist.min(axis=1) < self.radius).mean())
        return np.zeros(1, np.float32), reward, True, False, {}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=CoverageEnv)


def score(policy: Any, seeds: range) -> float:
    """Mean reward of ``policy(obs) -> action`` on the episodes of ``seeds`` (the same for all)."""
    env = gym.make(ENV_ID)
    total = 0.0
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        total += env.step(policy(obs))[1]
    return total / len(seeds)


def main() -> None:
    torch.set_num_threads(1)  # small steps: one thread is fastest, above all on busy cores
    held_out = range(10_000, 10_300)  # evaluation episodes, never seen in training
    space = KHot(40, 4, seed=0)
    results = {"random sites": score(lambda obs: space.sample(), held_out)}

    start = time.perf_counter()
    agent = SFESS(ENV_ID, num_samples=8, batch_size=4, learning_rate=0.1, seed=0, device="cpu")
    agent.learn(300)
    sfess = score(lambda obs: agent.predict(obs, deterministic=True)[0], held_out)
    results[f"SFESS ({time.perf_counter() - start:.0f} s)"] = sfess

    try:
        from stable_baselines3 import PPO

        from subset_rl.sb3 import KSubsetActorCriticPolicy, make_subset_vec_env, ppo_kwargs
    except ImportError as err:
        print(f"(skipping PPO: {err})")
    else:
        start = time.perf_counter()
        vec_env = make_subset_vec_env(ENV_ID, n_envs=8, seed=0)
        model = PPO(KSubsetActorCriticPolicy, vec_env, seed=0, device="cpu",
                    **ppo_kwargs(n_steps=32, batch_size=128, learning_rate=1e-3))
        model.learn(8_000)
        ppo = score(lambda obs: model.predict(obs, deterministic=True)[0], held_out)
        results[f"PPO, k-hot policy ({time.perf_counter() - start:.0f} s)"] = ppo

    print(f"fraction of demand covered on {len(held_out)} held-out episodes:")
    for name, value in results.items():
        print(f"  {name:<32} {value:.3f}")
    sites = np.flatnonzero(agent.predict(np.zeros(1, np.float32), deterministic=True)[0])
    print(f"SFESS opens sites {sites.tolist()}")


if __name__ == "__main__":
    main()

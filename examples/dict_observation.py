"""An env with a ``Dict`` observation: the native agents, SB3 PPO and the CLI take it as it is.

The problem: a courier at ``position`` (a point of the unit square) may visit ``k = 3`` of
``n = 12`` fixed depots; each depot has a price tier 0..4 and ``budget`` (0..4) says the highest
tier allowed. The reward is minus the mean distance to the chosen depots, minus 0.5 for each
chosen depot above the budget. The observation is

    Dict({"position": Box(0, 1, (2,)), "budget": Discrete(5)})

so a good policy must read both keys: near depots, but only affordable ones.

* The native agents (``SFESS``, ``Pathwise``) flatten any observation space Gymnasium can
  flatten (``gymnasium.spaces.utils.flatten``: the Box as it is, ``Discrete`` one-hot), and
  ``agent.predict`` takes the env's dict observations (one, or a batch from a vector env).
* ``KSubsetActorCriticPolicy`` picks SB3's ``CombinedExtractor`` for a ``Dict`` space (as
  ``MultiInputPolicy`` does), ``FlattenExtractor`` for the others.
* The CLI: ``subset-rl train examples.dict_observation:examples/DictCourier-v0`` from the
  repository root (``--agent ppo`` works too).

Run it (about a minute on 2 CPU cores; ``--quick`` for a smoke run of a few seconds)::

    .venv/bin/python examples/dict_observation.py
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from subset_rl.agents import SFESS
from subset_rl.envs import KHot

ENV_ID = "examples/DictCourier-v0"


class DictCourierEnv(gym.Env):
    """Choose ``k`` of ``n`` depots near a position, within a budget (a ``Dict`` observation).

    Args:
        n: Number of depots (fixed positions and price tiers).
        k: Number of depots to visit.
        penalty: Reward lost per chosen depot above the budget.
    """

    def __init__(self, n: int = 12, k: int = 3, penalty: float = 0.5) -> None:
        layout = np.random.default_rng(0)
        self.depots = layout.random((n, 2))
        self.tier = layout.integers(0, 5, n)
        self.penalty = penalty
        self.action_space = KHot(n, k)
        self.observation_space = spaces.Dict(
            {"position": spaces.Box(0.0, 1.0, (2,), np.float32), "budget": spaces.Discrete(5)}
        )
        self._obs: dict[str, Any] | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)  # same seed, same position and budget
        self._obs = {
            "position": self.np_random.random(2).astype(np.float32),
            "budget": int(self.np_random.integers(0, 5)),
        }
        return self._obs, {}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        if self._obs is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        chosen = np.asarray(action) > 0.5
        if chosen.shape != (self.action_space.n,) or chosen.sum() != self.action_space.k:
            raise ValueError(
                f"expected a {self.action_space.k}-hot action of shape ({self.action_space.n},), "
                f"found {np.asarray(action).tolist()}"
            )
        dist = np.linalg.norm(self.depots[chosen] - self._obs["position"], axis=-1)
        over = int((self.tier[chosen] > self._obs["budget"]).sum())
        obs = {"position": self._obs["position"].copy(), "budget": self._obs["budget"]}
        return obs, float(-dist.mean() - self.penalty * over), True, False, {}


if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point=DictCourierEnv)


def score(policy: Any, seeds: range) -> float:
    """Mean reward of ``policy(obs) -> action`` on the episodes of ``seeds``."""
    env = gym.make(ENV_ID)
    total = 0.0
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        total += float(env.step(policy(obs))[1])
    return total / len(seeds)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Trains SFESS and PPO on the env and prints their rewards next to random subsets.

    Args:
        argv: Command-line arguments (``--quick``: a smoke run).

    Returns:
        Mean held-out reward by method.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer steps")
    args = parser.parse_args(argv)
    steps, ppo_steps = (60, 1_024) if args.quick else (400, 16_384)
    held_out = range(10_000, 10_200)
    space = KHot(12, 3, seed=0)
    results = {"random depots": score(lambda obs: space.sample(), held_out)}

    start = time.perf_counter()
    agent = SFESS(ENV_ID, num_samples=8, batch_size=16, learning_rate=1e-3, ent_coef=0.05,
                  seed=0, device="cpu")
    agent.learn(steps)
    results[f"SFESS ({time.perf_counter() - start:.0f} s)"] = score(
        lambda obs: agent.predict(obs, deterministic=True)[0], held_out
    )

    try:
        from stable_baselines3 import PPO

        from subset_rl.sb3 import KSubsetActorCriticPolicy, make_subset_vec_env, ppo_kwargs
    except ImportError as err:
        print(f"(skipping PPO: {err})")
    else:
        start = time.perf_counter()
        vec_env = make_subset_vec_env(ENV_ID, n_envs=8, seed=0)
        model = PPO(KSubsetActorCriticPolicy, vec_env, seed=0, device="cpu",
                    **ppo_kwargs(n_steps=64, batch_size=128, learning_rate=1e-3))
        extractor = type(model.policy.features_extractor).__name__
        model.learn(ppo_steps)
        results[f"PPO, {extractor} ({time.perf_counter() - start:.0f} s)"] = score(
            lambda obs: model.predict(obs, deterministic=True)[0], held_out
        )

    print(f"reward on {len(held_out)} held-out episodes (higher is better):")
    for name, value in results.items():
        print(f"  {name:<36} {value:.3f}")
    return results


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

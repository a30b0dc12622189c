"""Learning tests on the issue's toy problem: the reward is the overlap with a hidden set.

n = 30 items, k = 5, a hidden set H of 5 items, reward(z) = |z ∩ H| (a black box for SFESS,
no gradient used). Both SFESS and PPO with the k-hot policy must reach the optimum (the
deterministic action equals H) within the stated budgets, for 3 seeds each. SB3's default
Bernoulli head for the same MultiBinary space does not produce 5-hot actions at all; that is
shown in examples/sb3_ppo.py as a documented comparison, not asserted here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subset_rl.agents import SFESS
from subset_rl.envs import BlackBoxObjective, make_blackbox_env

N, K = 30, 5
HIDDEN = np.array([2, 7, 11, 19, 26])


def overlap_batched(z: torch.Tensor) -> torch.Tensor:
    return z[..., HIDDEN].sum(-1)


def overlap(z: np.ndarray) -> float:
    return float(z[HIDDEN].sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sfess_reaches_the_hidden_set(seed, device):
    """Budget: 150 steps of 8 samples (1,200 evaluations)."""
    objective = BlackBoxObjective(overlap_batched, N, K, batched=True, device=device)
    agent = SFESS(objective, num_samples=8, batch_size=1, learning_rate=0.1, seed=seed,
                  device=device).learn(150)
    action, _ = agent.predict(np.zeros(1, np.float32), deterministic=True)
    assert set(np.flatnonzero(action)) == set(HIDDEN.tolist())


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_with_k_hot_policy_reaches_the_hidden_set(seed):
    """Budget: 8,192 environment steps (8 envs x 256 steps x 4 rollouts)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from subset_rl.sb3 import KSubsetActorCriticPolicy, ppo_kwargs

    env = DummyVecEnv([lambda: make_blackbox_env(overlap, N, K)] * 8)
    model = PPO(KSubsetActorCriticPolicy, env, seed=seed,
                **ppo_kwargs(n_steps=256, batch_size=256, learning_rate=3e-3))
    model.learn(8192)
    action, _ = model.predict(np.zeros((1,), np.float32), deterministic=True)
    assert action.sum() == K
    assert set(np.flatnonzero(action)) == set(HIDDEN.tolist())

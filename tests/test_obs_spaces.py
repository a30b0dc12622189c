"""Observation spaces beyond a flat Box: native agents, the k-hot SB3 policy, the CLI, the example.

The env of these tests hides a context ``c`` in {0, 1, 2} in an observation of a given space; the
best subset is items ``2c`` and ``2c + 1``. A policy can only beat the context-free optimum if
the observation reaches it intact, so a learning test checks the flattening end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from subset_rl.agents import SFESS
from subset_rl.agents.gym_objective import (
    GymEnvObjective,
    flat_observation_space,
    flatten_observations,
    unflatten_observations,
)
from subset_rl.envs import KHot

ROOT = Path(__file__).resolve().parents[1]
N, K = 6, 2


def _encode(kind: str, c: int, rng: np.random.Generator) -> Any:
    """Context ``c`` as an observation of the space ``kind``."""
    one_hot = np.eye(3, dtype=np.float32)[c]
    if kind == "box2d":
        return np.stack([one_hot, rng.random(3).astype(np.float32)], axis=1)
    if kind == "dict":
        return {"c": c, "noise": rng.random(2).astype(np.float32)}
    if kind == "tuple":
        return (c, rng.random(1).astype(np.float32))
    if kind == "discrete":
        return c
    if kind == "multidiscrete":
        return np.array([c, rng.integers(0, 2)], dtype=np.int64)
    if kind == "multibinary":
        return one_hot.astype(np.int8)
    raise ValueError(kind)


SPACES: dict[str, gym.Space[Any]] = {
    "box2d": spaces.Box(0.0, 1.0, (3, 2), np.float32),
    "dict": spaces.Dict({"c": spaces.Discrete(3), "noise": spaces.Box(0.0, 1.0, (2,), np.float32)}),
    "tuple": spaces.Tuple((spaces.Discrete(3), spaces.Box(0.0, 1.0, (1,), np.float32))),
    "discrete": spaces.Discrete(3),
    "multidiscrete": spaces.MultiDiscrete([3, 2]),
    "multibinary": spaces.MultiBinary(3),
}


class ContextEnv(gym.Env):
    """One-step env: reward = number of chosen items among ``{2c, 2c + 1}``."""

    def __init__(self, kind: str = "dict") -> None:
        self.kind = kind
        self.observation_space = SPACES[kind]
        self.action_space = KHot(N, K)
        self.c = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.c = int(self.np_random.integers(0, 3))
        return _encode(self.kind, self.c, self.np_random), {}

    def step(self, action: Any) -> Any:
        z = np.asarray(action)
        reward = float(z[2 * self.c] + z[2 * self.c + 1])
        return _encode(self.kind, self.c, self.np_random), reward, True, False, {}


def _score(agent: SFESS, kind: str, episodes: int = 60) -> float:
    env = ContextEnv(kind)
    total = 0.0
    for seed in range(episodes):
        obs, _ = env.reset(seed=10_000 + seed)
        total += env.step(agent.predict(obs, deterministic=True)[0])[1]
    return total / episodes


@pytest.mark.parametrize("kind", sorted(SPACES))
def test_native_agent_learns_through_any_observation_space(kind: str) -> None:
    """SFESS reads the context from every space: it reaches the contextual optimum (2.0).

    A policy that ignored the observation could score at most 2/3 + 2/3 * ... = 0.667 on
    average for the best fixed pair (2 of 3 contexts give 0); random subsets 0.667.
    """
    agent = SFESS(ContextEnv(kind), num_samples=4, batch_size=16, learning_rate=1e-2,
                  seed=0, device="cpu")
    assert agent.obs_dim == flat_observation_space(SPACES[kind]).shape[0]
    agent.learn(120)
    assert _score(agent, kind) > 1.8


@pytest.mark.parametrize("kind", sorted(SPACES))
def test_predict_takes_single_batched_and_flat_observations(kind: str) -> None:
    """One observation, a vector env's batch and flat rows give the same actions."""
    agent = SFESS(ContextEnv(kind), num_samples=4, batch_size=4, seed=0, device="cpu")
    vec = gym.vector.SyncVectorEnv([lambda: ContextEnv(kind) for _ in range(3)])
    batch, _ = vec.reset(seed=3)
    actions, _ = agent.predict(batch, deterministic=True)
    assert actions.shape == (3, N) and (actions.sum(-1) == K).all()
    space = SPACES[kind]
    rows, single = flatten_observations(space, batch)
    assert not single and rows.shape == (3, agent.obs_dim)
    singles = [gym.spaces.utils.flatten(space, o) for o in gym.vector.utils.iterate(
        vec.observation_space, batch)]
    np.testing.assert_allclose(rows, np.stack(singles).astype(np.float32))
    for i, obs in enumerate(gym.vector.utils.iterate(vec.observation_space, batch)):
        one, _ = agent.predict(obs, deterministic=True)
        np.testing.assert_array_equal(one, actions[i])
    flat, _ = agent.predict(rows, deterministic=True)
    np.testing.assert_array_equal(flat, actions)
    back = unflatten_observations(space, rows)
    again, _ = flatten_observations(space, back)
    np.testing.assert_allclose(again, rows)
    vec.close()


def test_predict_refuses_observations_that_fit_nothing() -> None:
    agent = SFESS(ContextEnv("dict"), num_samples=4, batch_size=4, seed=0, device="cpu")
    with pytest.raises(ValueError, match="does not fit|dict with the keys"):
        agent.predict({"wrong": 1})
    with pytest.raises(ValueError, match="does not fit"):
        agent.predict(np.zeros(3, np.float32))


def test_space_without_a_flat_form_is_a_clear_type_error() -> None:
    env = ContextEnv("dict")
    env.observation_space = spaces.Sequence(spaces.Discrete(3))
    with pytest.raises(TypeError, match="no fixed-size flat form"):
        GymEnvObjective(env)
    with pytest.raises(TypeError, match="no fixed-size flat form"):
        SFESS(env, num_samples=4, device="cpu")


def test_sb3_policy_picks_the_feature_extractor() -> None:
    """Dict: CombinedExtractor; other spaces: FlattenExtractor; a given class wins."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor

    from subset_rl.sb3 import KSubsetActorCriticPolicy

    small = {"n_steps": 16, "batch_size": 16, "n_epochs": 1, "seed": 0, "device": "cpu"}
    for kind, expected in [("dict", CombinedExtractor), ("box2d", FlattenExtractor),
                           ("discrete", FlattenExtractor), ("multidiscrete", FlattenExtractor),
                           ("multibinary", FlattenExtractor)]:
        model = PPO(KSubsetActorCriticPolicy, ContextEnv(kind), **small)
        assert type(model.policy.features_extractor) is expected, kind
        model.learn(32)
        obs, _ = ContextEnv(kind).reset(seed=0)
        action, _ = model.predict(obs, deterministic=True)
        assert action.shape == (N,) and action.sum() == K
    model = PPO(KSubsetActorCriticPolicy, ContextEnv("dict"),
                policy_kwargs={"features_extractor_class": FlattenExtractor}, **small)
    assert type(model.policy.features_extractor) is FlattenExtractor


def test_sb3_policy_refuses_tuple_observations_clearly() -> None:
    from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule

    from subset_rl.sb3 import KSubsetActorCriticPolicy

    with pytest.raises(ValueError, match="Tuple observation spaces.*Dict"):
        KSubsetActorCriticPolicy(SPACES["tuple"], KHot(N, K),
                                 FloatSchedule(ConstantSchedule(3e-4)))


@pytest.mark.slow
def test_sb3_dict_policy_learns_the_context() -> None:
    """PPO with the auto-chosen CombinedExtractor reads the Discrete key of a Dict."""
    from stable_baselines3 import PPO

    from subset_rl.sb3 import KSubsetActorCriticPolicy, make_subset_vec_env, ppo_kwargs

    venv = make_subset_vec_env(lambda: ContextEnv("dict"), n_envs=4, seed=0)
    model = PPO(KSubsetActorCriticPolicy, venv, seed=0, device="cpu",
                **ppo_kwargs(n_steps=64, batch_size=64, learning_rate=3e-3))
    model.learn(4096)
    env = ContextEnv("dict")
    total = 0.0
    for seed in range(60):
        obs, _ = env.reset(seed=seed)
        total += env.step(model.predict(obs, deterministic=True)[0])[1]
    assert total / 60 > 1.5


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "subset_rl.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "agent,steps", [("sfess", "60"), pytest.param("ppo", "512", marks=pytest.mark.slow)]
)
def test_cli_trains_on_a_dict_observation_env(agent: str, steps: str, tmp_path: Path) -> None:
    out = _cli("train", "examples.dict_observation:examples/DictCourier-v0", "--agent", agent,
               "--steps", steps, "--quiet", "--no-plot", "--logdir", str(tmp_path / "run"),
               "--eval-contexts", "32")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "(trained)" in out.stdout and "random k-subset" in out.stdout
    ev = _cli("eval", str(tmp_path / "run"), "--no-plot", "--eval-contexts", "32")
    assert ev.returncode == 0, ev.stderr[-2000:]


@pytest.mark.slow
def test_dict_observation_example_runs_and_learns() -> None:
    """The example, in its reduced size: SFESS and PPO both beat random depots."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import dict_observation
    finally:
        sys.path.pop(0)
    results = dict_observation.main(["--quick"])
    random_score = results.pop("random depots")
    assert len(results) == 2
    for name, value in results.items():
        assert value > random_score + 0.3, (name, value, random_score)


def test_cli_tuple_observations_ppo_is_a_one_line_error_and_sfess_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SB3 cannot hold Tuple observations: exit 2 with one line; the native agent trains."""
    from subset_rl import cli

    env_id = "test_obs_spaces/Tuple-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=ContextEnv, kwargs={"kind": "tuple"})
    code = cli.main(["train", env_id, "--agent", "ppo", "--steps", "64", "--quiet", "--no-plot",
                     "--logdir", str(tmp_path / "ppo")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("subset-rl train: error:") and "Tuple" in err[-1]
    assert "Traceback" not in "\n".join(err)
    code = cli.main(["train", env_id, "--steps", "40", "--quiet", "--no-plot", "--lr", "0.01",
                     "--eval-contexts", "64", "--logdir", str(tmp_path / "sfess")])
    out = capsys.readouterr().out
    assert code == 0 and "SFESS (trained)" in out

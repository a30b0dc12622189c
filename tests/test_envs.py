"""Gymnasium-level tests of the k-hot environments: API checkers, determinism, vector envs,
bad actions, pickling, and the KHot space."""

from __future__ import annotations

import functools
import pickle
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import subset_rl.envs as E
from subset_rl.envs import KHot, KHotBatch, ObjectiveError


def weighted_sum(z: np.ndarray) -> float:
    """A module-level (picklable) black box: a weighted count of the chosen items."""
    return float(z @ np.linspace(-1.0, 1.0, z.shape[0]))


def batched_weighted_sum(z: torch.Tensor) -> torch.Tensor:
    """The batched twin of :func:`weighted_sum`."""
    return z @ torch.linspace(-1.0, 1.0, z.shape[-1], dtype=z.dtype, device=z.device)


# A registry of (id, kwargs) cases, small where the defaults are slow; generic tests loop over it.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "sensor": ("subset_rl/SensorPlacement-v0", {}),
    "sensor_noisy_forbidden": (
        "subset_rl/SensorPlacement-v0",
        {"k": 5, "shape": (8, 8), "rank": 5, "noise_std": 0.1, "forbidden": [0, 1, 2, 9],
         "sensor_cost": 0.01, "n_train": 60, "n_test": 20},
    ),
    "features": ("subset_rl/FeatureAcquisition-v0", {}),
    "features_free": (
        "subset_rl/FeatureAcquisition-v0",
        {"k": 4, "free_features": [3, 4, 5], "reward": "log_prob", "feature_cost": 0.01},
    ),
    "knn": ("subset_rl/KNNVoting-v0", {"n": 20, "k": 3}),
    "knn_test_fraction": (
        "subset_rl/KNNVoting-v0", {"n": 10, "k": 4, "split": "test", "reward": "fraction"}
    ),
    "blackbox": ("subset_rl/BlackBoxSubset-v0", {"f": weighted_sum, "n": 8, "k": 3}),
    "blackbox_batched": (
        "subset_rl/BlackBoxSubset-v0",
        {"f": batched_weighted_sum, "n": 8, "k": 3, "batched": True, "forbidden": [7],
         "success_threshold": 0.0},
    ),
}
IDS = sorted(CASES)
ONE_PER_ID = ["sensor", "features", "knn", "blackbox"]


def make(case: str, **extra: Any) -> gym.Env:
    env_id, kwargs = CASES[case]
    return gym.make(env_id, **{**kwargs, **extra})


def raw(case: str, **extra: Any) -> E.SubsetEnv:
    env = make(case, **extra).unwrapped
    assert isinstance(env, E.SubsetEnv)
    return env


def valid_action(env: gym.Env, seed: int = 0) -> np.ndarray:
    space = env.action_space
    space.seed(seed)
    return space.sample()


# ---------------------------------------------------------------------------------------- KHot
def test_khot_sample_and_contains() -> None:
    space = KHot(10, 3, seed=0)
    for _ in range(50):
        z = space.sample()
        assert z.dtype == np.int8 and z.shape == (10,) and z.sum() == 3
        assert space.contains(z)
    assert isinstance(space, gym.spaces.MultiBinary)
    assert not space.contains(np.ones(10, dtype=np.int8))
    assert not space.contains(np.zeros(10, dtype=np.int8))
    assert not space.contains(np.array([1, 1, 1] + [0] * 6))  # wrong length
    assert not space.contains(np.array([0.5, 1, 1, 1] + [0] * 6))
    assert space.contains([1, 1, 1] + [0] * 7)
    assert space.contains(np.array([True, True, True] + [False] * 7))
    assert space.contains(np.array([1.0, 1.0, 1.0] + [0.0] * 7))


def test_khot_sample_is_uniform_over_subsets() -> None:
    # Chi-square over the C(5, 2) = 10 subsets; 4000 draws; the 99.9% quantile of chi2(9) is 27.9.
    space = KHot(5, 2, seed=1)
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(4000):
        key = tuple(np.flatnonzero(space.sample()).tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 10
    observed = np.array(list(counts.values()))
    assert ((observed - 400.0) ** 2 / 400.0).sum() < 27.9


def test_khot_allowed_and_mask() -> None:
    allowed = np.array([True, False, True, True, False, True])
    space = KHot(6, 3, allowed=allowed, seed=0)
    for _ in range(20):
        z = space.sample()
        assert z.sum() == 3 and not (z.astype(bool) & ~allowed).any()
    assert not space.contains(np.array([1, 1, 1, 0, 0, 0]))
    assert space.contains(np.array([1, 0, 1, 1, 0, 0]))
    assert KHot(6, 2, allowed=[0, 2, 3]) == KHot(6, 2, allowed=np.array([1, 0, 1, 1, 0, 0], bool))
    mask = np.array([1, 0, 2, 2, 0, 2], dtype=np.int8)
    for _ in range(10):
        z = space.sample(mask=mask)
        assert z[0] == 1 and z.sum() == 3 and z[1] == 0 and z[4] == 0
    with pytest.raises(ValueError, match="forces in items that are not allowed"):
        space.sample(mask=np.array([0, 1, 2, 2, 0, 2], dtype=np.int8))
    with pytest.raises(ValueError, match="exactly k=3"):
        space.sample(mask=np.array([1, 0, 0, 0, 0, 0], dtype=np.int8))
    with pytest.raises(NotImplementedError):
        space.sample(probability=np.full(6, 0.5))


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((5, 0), {}, ValueError, r"k: expected an int in \[1, 5\], found 0"),
        ((5, 6), {}, ValueError, r"found 6"),
        ((5, 2.0), {}, TypeError, "k: expected an int"),
        ((0, 1), {}, ValueError, "n: expected"),
        ((5, 3), {"allowed": [0, 1]}, ValueError, r"k: expected an int in \[1, 2\]"),
        ((5, 1), {"allowed": np.ones(4, bool)}, ValueError, "5 elements"),
        ((5, 1), {"allowed": [0, 7]}, ValueError, r"indices in \[0, 4\]"),
    ],
)
def test_khot_bad_arguments(args: tuple, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        KHot(*args, **kwargs)


def test_khot_pickle_repr_and_batch_space() -> None:
    space = KHot(7, 2, allowed=[0, 1, 2, 3, 4], seed=3)
    clone = pickle.loads(pickle.dumps(space))
    assert clone == space and repr(space) == "KHot(7, 2, allowed=5 of 7)"
    np.testing.assert_array_equal(clone.sample(), space.sample())  # RNG state travels too
    batched = gym.vector.utils.batch_space(space, 4)
    assert isinstance(batched, KHotBatch) and batched.shape == (4, 7)
    draws = batched.sample()
    assert batched.contains(draws) and (draws.sum(1) == 2).all() and not draws[:, 5:].any()
    assert not batched.contains(np.ones((4, 7), dtype=np.int8))


# ---------------------------------------------------------------------------- registration, API
def test_every_id_is_registered_and_makes() -> None:
    assert set(E.ENV_IDS) == {
        "subset_rl/SensorPlacement-v0",
        "subset_rl/FeatureAcquisition-v0",
        "subset_rl/KNNVoting-v0",
        "subset_rl/BlackBoxSubset-v0",
    }
    for env_id in E.ENV_IDS:
        assert env_id in gym.registry
        kwargs = {"f": weighted_sum, "n": 6, "k": 2} if "BlackBox" in env_id else {}
        env = gym.make(env_id, **kwargs)
        obs, info = env.reset(seed=0)
        assert obs in env.observation_space and info == {}
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert type(reward) is float and terminated is True and truncated is False
        assert info["action_valid"] is True and np.isfinite(info["objective"])
    with pytest.raises(gym.error.MissingArgument, match="missing f, n, k"):
        gym.make("subset_rl/BlackBoxSubset-v0")


def test_docstrings_have_gymnasium_sections() -> None:
    sections = ["Description", "Action Space", "Observation Space", "Rewards", "Starting State",
                "Episode End", "Arguments", "Version History"]
    for cls in (E.SensorPlacementEnv, E.FeatureAcquisitionEnv, E.KNNVotingEnv,
                E.BlackBoxSubsetEnv):
        for section in sections:
            assert f"## {section}" in (cls.__doc__ or ""), (cls.__name__, section)


@pytest.mark.parametrize("case", IDS)
def test_gymnasium_check_env(case: str) -> None:
    env = raw(case)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env, skip_render_check=True)
    messages = [str(w.message) for w in caught]
    assert messages == [], messages


@pytest.mark.parametrize("case", IDS)
def test_sb3_check_env(case: str) -> None:
    env = raw(case)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(env, warn=True)
    messages = [str(w.message) for w in caught]
    assert messages == [], messages


@pytest.mark.parametrize("case", IDS)
def test_same_seed_same_episode(case: str) -> None:
    env_a, env_b = raw(case), raw(case)
    for seed in (0, 1, 123):
        obs_a, _ = env_a.reset(seed=seed)
        obs_b, _ = env_b.reset(seed=seed)
        np.testing.assert_array_equal(obs_a, obs_b)
        action = valid_action(env_a, seed)
        step_a, step_b = env_a.step(action), env_b.step(action.copy())
        np.testing.assert_array_equal(step_a[0], step_b[0])
        assert step_a[1:] == step_b[1:]


@pytest.mark.parametrize("case", ["sensor_noisy_forbidden", "features", "knn"])
def test_different_seeds_draw_different_contexts(case: str) -> None:
    env = raw(case)
    keys = set()
    for seed in range(8):
        env.reset(seed=seed)
        ctx = env._context
        assert ctx is not None
        index = getattr(ctx, "index", None)
        index = getattr(ctx, "query_index", index)
        keys.add(int(index[0]))
    assert len(keys) > 1


@pytest.mark.parametrize("case", ONE_PER_ID)
def test_action_dtypes_give_the_same_reward(case: str) -> None:
    env = raw(case)
    action = valid_action(env)
    rewards = []
    for a in (action, action.astype(np.float32), action.astype(np.int64), action.astype(bool),
              action.tolist(), torch.as_tensor(action, dtype=torch.float64)):
        env.reset(seed=5)
        rewards.append(env.step(a)[1])
    assert len(set(rewards)) == 1


# --------------------------------------------------------------------------------- bad actions
@pytest.mark.parametrize("case", ONE_PER_ID)
def test_bad_actions_raise_expected_vs_found(case: str) -> None:
    env = raw(case)
    n, k = env.n, env.k
    good = valid_action(env).astype(np.float64)
    too_many = good.copy()
    too_many[np.flatnonzero(good == 0)[0]] = 1
    half = good.copy()
    half[np.flatnonzero(good == 1)[0]] = 0.5
    with_nan = good.copy()
    with_nan[0] = np.nan
    cases = [
        (np.zeros(n + 1), ValueError, rf"of shape \({n},\).*found shape \({n + 1},\)"),
        (good.reshape(1, n), ValueError, rf"found shape \(1, {n}\)"),
        (too_many, ValueError, rf"exactly k={k} ones.*found {k + 1} ones"),
        (np.zeros(n), ValueError, rf"exactly k={k} ones.*found 0 ones"),
        (half, ValueError, r"found values outside \{0, 1\}: \[0.5\]"),
        (with_nan, ValueError, r"expected a finite k-hot action.*found NaN/inf at indices \[0\]"),
        (np.array(["a"] * n), TypeError, "expected an action of bool, int or float dtype"),
    ]
    for action, error, match in cases:
        env.reset(seed=0)
        with pytest.raises(error, match=match):
            env.step(action)


def test_forbidden_item_raises() -> None:
    env = raw("sensor_noisy_forbidden")
    env.reset(seed=0)
    action = np.zeros(env.n)
    action[[0, 10, 11, 12, 13]] = 1
    match = r"among the allowed items, found forbidden items selected: \[0\]"
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_project_mode_takes_top_k() -> None:
    env = raw("blackbox", invalid_action="project")
    env.reset(seed=0)
    scores = np.array([0.1, 0.9, 0.3, 0.8, 0.0, 0.7, 0.2, 0.6])
    _, reward, terminated, _, info = env.step(scores)
    expected = np.zeros(8)
    expected[[1, 3, 5]] = 1
    assert reward == pytest.approx(weighted_sum(expected), abs=1e-6)
    assert info["action_valid"] is False and terminated is True
    env.reset(seed=0)
    assert env.step(expected)[4]["action_valid"] is True
    # Projection respects forbidden items and breaks ties towards the lower index.
    env = raw("blackbox_batched", invalid_action="project")
    env.reset(seed=0)
    _, reward, _, _, _ = env.step(np.ones(8))
    expected = np.zeros(8)
    expected[[0, 1, 2]] = 1
    assert reward == pytest.approx(weighted_sum(expected), abs=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        env.reset(seed=0)
        env.step(np.full(8, np.nan))


@pytest.mark.parametrize("case", ONE_PER_ID)
def test_penalize_mode(case: str) -> None:
    env = raw(case, invalid_action="penalize", invalid_penalty=-5.0)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(np.zeros(env.n))
    assert reward == -5.0 and terminated is True and truncated is False
    assert info["action_valid"] is False and np.isnan(info["objective"])
    if env.objective.has_success:
        assert info["is_success"] is False


def test_bad_env_arguments() -> None:
    match = r"invalid_action: expected one of \['raise', 'project', 'penalize'\], found 'clip'"
    with pytest.raises(ValueError, match=match):
        make("blackbox", invalid_action="clip")
    with pytest.raises(ValueError, match="horizon"):
        make("blackbox", horizon=0)
    with pytest.raises(ValueError, match=r"render_mode: expected None or one of \['human', "):
        E.BlackBoxSubsetEnv(weighted_sum, 4, 2, render_mode="ansi")
    with pytest.raises(TypeError, match="f: expected a callable"):
        E.BlackBoxSubsetEnv(3, 4, 2)
    with pytest.raises(ValueError, match=r"k: expected an int in \[1, 4\], found 5"):
        E.BlackBoxSubsetEnv(weighted_sum, 4, 5)
    with pytest.raises(ValueError, match="reward: expected one of"):
        make("knn", reward="best")
    with pytest.raises(ValueError, match="noise_std"):
        make("sensor", noise_std=-1.0)
    with pytest.raises(ValueError, match=r"expected at most 1346 candidates"):
        make("knn", n=5000)


# ------------------------------------------------------------------------- episodes and state
def test_step_before_reset_and_after_end() -> None:
    env = raw("blackbox")
    with pytest.raises(ResetNeeded):
        env.step(valid_action(env))
    env.reset(seed=0)
    env.step(valid_action(env))
    with pytest.raises(ResetNeeded, match="call reset"):
        env.step(valid_action(env))


def test_horizon_draws_fresh_contexts() -> None:
    env = raw("knn", horizon=3)
    obs0, _ = env.reset(seed=0)
    action = valid_action(env)
    flags, observations = [], [obs0]
    for _ in range(3):
        obs, _, terminated, truncated, _ = env.step(action)
        flags.append((terminated, truncated))
        observations.append(obs)
    assert flags == [(False, False), (False, False), (True, False)]
    assert not np.array_equal(observations[0], observations[1])


@pytest.mark.parametrize("case", ONE_PER_ID)
def test_pickled_env_continues_identically(case: str) -> None:
    env = raw(case)
    env.reset(seed=11)
    clone = pickle.loads(pickle.dumps(env))
    action = valid_action(env)
    a, b = env.step(action), clone.step(action)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:]
    # The RNG state travelled too: the next episodes agree.
    np.testing.assert_array_equal(env.reset()[0], clone.reset()[0])
    assert env.step(action)[1] == clone.step(action)[1]


def test_blackbox_errors_name_the_action() -> None:
    def broken(z: np.ndarray) -> float:
        raise KeyError("boom")

    env = E.make_blackbox_env(broken, 5, 2)
    env.reset(seed=0)
    action = np.array([0, 1, 0, 0, 1])
    match = r"raised KeyError: 'boom' on the action with items \[1, 4\]"
    with pytest.raises(ObjectiveError, match=match) as info:
        env.step(action)
    assert isinstance(info.value.__cause__, KeyError)
    env = E.make_blackbox_env(lambda z: float("nan") if z[4] else 1.0, 5, 2)
    env.reset(seed=0)
    with pytest.raises(ObjectiveError, match=r"returned nan on the action with items \[1, 4\]"):
        env.step(action)
    env = E.make_blackbox_env(lambda z: "high", 5, 2)
    env.reset(seed=0)
    with pytest.raises(ObjectiveError, match="returned str 'high'.*expected a real scalar"):
        env.step(action)
    env = E.make_blackbox_env(lambda z: torch.where(z[..., 4] > 0, torch.inf, 0.0), 5, 2,
                              batched=True)
    env.reset(seed=0)
    with pytest.raises(ObjectiveError, match=r"returned inf.*items \[1, 4\]"):
        env.step(action)


# --------------------------------------------------------------------------------- vector envs
@pytest.mark.parametrize("case", ONE_PER_ID)
def test_sync_vector_env_same_step(case: str) -> None:
    env_id, kwargs = CASES[case]
    envs = SyncVectorEnv(
        [functools.partial(gym.make, env_id, **kwargs) for _ in range(3)],
        autoreset_mode=AutoresetMode.SAME_STEP,
    )
    assert isinstance(envs.action_space, KHotBatch)
    envs.action_space.seed(0)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (3, *envs.single_observation_space.shape)
    for _ in range(3):
        actions = envs.action_space.sample()
        obs, rewards, terminated, truncated, infos = envs.step(actions)
        assert rewards.shape == (3,) and np.isfinite(rewards).all()
        assert terminated.all() and not truncated.any()
        final = infos["final_info"]
        assert infos["_final_obs"].all() and final["action_valid"].all()
        np.testing.assert_array_equal(final["objective"], rewards)
        assert obs in envs.observation_space
    envs.close()


@pytest.mark.parametrize("case", ONE_PER_ID)
def test_sb3_dummy_vec_env(case: str) -> None:
    env_id, kwargs = CASES[case]
    venv = DummyVecEnv([functools.partial(gym.make, env_id, **kwargs) for _ in range(2)])
    venv.seed(0)
    obs = venv.reset()
    assert obs.shape == (2, *venv.observation_space.shape)
    space = venv.action_space
    for _ in range(3):
        obs, rewards, dones, infos = venv.step(np.stack([space.sample() for _ in range(2)]))
        assert dones.all() and np.isfinite(rewards).all()
        assert all("terminal_observation" in info for info in infos)
    venv.close()


def test_sb3_subproc_vec_env_registers_in_children() -> None:
    # The "module:id" form makes each child import subset_rl.envs, which registers the ids.
    make_env = functools.partial(gym.make, "subset_rl.envs:subset_rl/KNNVoting-v0", n=10, k=3)
    venv = SubprocVecEnv([make_env, make_env], start_method="spawn")
    try:
        venv.seed(0)
        obs = venv.reset()
        assert obs.shape == (2, 11 * 64)
        rng = np.random.default_rng(0)
        for _ in range(2):
            actions = np.zeros((2, 10), dtype=np.int8)
            for row in actions:
                row[rng.choice(10, 3, replace=False)] = 1
            _, rewards, dones, _ = venv.step(actions)
            assert dones.all() and ((rewards >= 0) & (rewards <= 1)).all()
    finally:
        venv.close()


def test_sb3_make_vec_env_works_with_every_id() -> None:
    """SB3's make_vec_env asks for render_mode='rgb_array' and retries without it on TypeError."""
    import warnings

    from stable_baselines3.common.env_util import make_vec_env

    for env_id in ["subset_rl/SensorPlacement-v0", "subset_rl/KNNVoting-v0"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            venv = make_vec_env(env_id, n_envs=2, seed=0)
        obs = venv.reset()
        actions = np.stack([venv.action_space.sample() for _ in range(2)])
        _, rewards, dones, _ = venv.step(actions)
        assert obs.shape[0] == 2 and rewards.shape == (2,) and dones.all()

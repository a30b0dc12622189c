"""BlackBoxSubset-v0: MissingArgument without its arguments, a JSON-able spec by function name."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AsyncVectorEnv

import subset_rl.envs as E
from subset_rl.envs.blackbox import import_callable

ID = "subset_rl/BlackBoxSubset-v0"


def test_make_without_arguments_raises_missing_argument() -> None:
    with pytest.raises(gym.error.MissingArgument, match=r"missing f, n, k\..*f='my_package"):
        gym.make(ID)
    with pytest.raises(gym.error.MissingArgument, match=r"missing k\."):
        gym.make(ID, f="numpy:sum", n=5)
    with pytest.raises(gym.error.MissingArgument, match="missing f"):
        E.BlackBoxSubsetEnv(n=5, k=2)


def test_spec_with_function_name_round_trips_through_json() -> None:
    env = gym.make(ID, f="numpy:sum", n=6, k=2, forbidden=[0], success_threshold=2.0)
    text = env.spec.to_json()
    assert json.loads(text)["kwargs"]["f"] == "numpy:sum"
    spec = EnvSpec.from_json(text)
    assert spec == env.spec
    remade = gym.make(spec)
    assert remade.unwrapped.objective.f is np.sum
    assert remade.action_space == env.action_space
    remade.reset(seed=0)
    action = np.array([0, 1, 0, 0, 1, 0])
    _, reward, terminated, _, info = remade.step(action)
    assert reward == 2.0 and terminated and info["is_success"] is True


def test_spec_with_a_callable_is_not_json_able() -> None:
    env = gym.make(ID, f=np.sum, n=4, k=2)
    with pytest.raises(TypeError, match="not JSON serializable"):  # hence the string form
        env.spec.to_json()


def test_function_name_works_in_async_vector_env() -> None:
    make = "subset_rl.envs:" + ID
    envs = AsyncVectorEnv([lambda: gym.make(make, f="numpy:sum", n=5, k=2)] * 2)
    try:
        envs.reset(seed=0)
        actions = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 0, 1]], np.int8)
        _, rewards, *_ = envs.step(actions)
        np.testing.assert_array_equal(rewards, [2.0, 2.0])
    finally:
        envs.close()


def test_import_callable() -> None:
    assert import_callable("numpy.linalg:norm") is np.linalg.norm
    assert import_callable("subset_rl.envs:KHot.sample") is E.KHot.sample


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("numpy.sum", ValueError, "expected a callable or a 'module:function' string"),
        (":sum", ValueError, "'module:function'"),
        ("numpy:", ValueError, "'module:function'"),
        ("no_such_module_xyz:f", ValueError, "cannot import module 'no_such_module_xyz'"),
        ("numpy:no_such_function", ValueError, "no attribute 'no_such_function'"),
        ("numpy:pi", TypeError, "names a float, not a callable"),
    ],
)
def test_bad_function_names(name: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        gym.make(ID, f=name, n=4, k=2)

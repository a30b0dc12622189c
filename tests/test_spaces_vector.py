"""KHot in Gymnasium's space and vector utilities.

Modelled on Gymnasium's own tests (``tests/spaces/test_spaces.py``,
``tests/vector/utils/test_space_utils.py``, ``tests/vector/utils/test_shared_memory.py``): the same
assumptions, checked for ``KHot`` alone and nested in ``Tuple``/``Dict``, then in
``SyncVectorEnv`` and ``AsyncVectorEnv`` (each sub-env must receive its own row of the batch).
"""

from __future__ import annotations

import copy
import itertools
import json
import multiprocessing as mp
import pickle
from collections.abc import Iterable
from math import comb
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.spaces import Box, Dict, Discrete, MultiBinary, Space, Tuple
from gymnasium.spaces.utils import flatdim, flatten, flatten_space, unflatten
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv
from gymnasium.vector.utils import (
    batch_differing_spaces,
    batch_space,
    concatenate,
    create_empty_array,
    create_shared_memory,
    iterate,
    read_from_shared_memory,
    write_to_shared_memory,
)
from scipy import stats

from subset_rl.envs import KHot, KHotBatch

# Spaces with at least two elements (the seed tests need different samples to be possible).
FUNDAMENTAL = [
    KHot(10, 3),
    KHot(7, 2, allowed=[0, 1, 2, 3, 4]),
    KHot(5, 4),
    KHot(12, 1, allowed=np.arange(12) % 3 == 0),
]
NESTED = [
    Tuple((KHot(6, 2), Discrete(3))),
    Tuple((Box(-1, 1, (2,), np.float32), KHot(8, 3, allowed=[1, 2, 3, 5, 7]))),
    Dict({"chosen": KHot(6, 3), "value": Box(0, 1, (3,), np.float32)}),
    Tuple((KHot(5, 2), Dict({"inner": KHot(9, 4), "d": Discrete(2)}))),
]
TESTING_SPACES = FUNDAMENTAL + NESTED
IDS = [repr(s) for s in TESTING_SPACES]


def fresh(space: Space[Any], seed: int = 0) -> Space[Any]:
    """A copy of a module-level space, seeded (tests must not share RNG state)."""
    out = copy.deepcopy(space)
    out.seed(seed)
    return out


def rng_equal(a: np.random.Generator, b: np.random.Generator) -> bool:
    return a.bit_generator.state == b.bit_generator.state


# ----------------------------------------------------------------------- Gymnasium space tests
@pytest.mark.parametrize("space", TESTING_SPACES, ids=IDS)
def test_roundtripping_json(space: Space[Any]) -> None:
    space = fresh(space)
    samples = [space.sample(), space.sample()]
    restored = space.from_jsonable(json.loads(json.dumps(space.to_jsonable(samples))))
    for before, after in zip(samples, restored, strict=True):
        assert data_equivalence(before, after)
        assert after in space


def test_space_equality() -> None:
    for s1, s2 in itertools.permutations(FUNDAMENTAL, 2):
        assert s1 == copy.deepcopy(s1) and s1 != s2
    assert KHot(6, 2) != MultiBinary(6) and MultiBinary(6) != KHot(6, 2)
    assert KHot(6, 2, allowed=[0, 1, 2]) != KHot(6, 2, allowed=[0, 1, 3])


@pytest.mark.parametrize("space", FUNDAMENTAL, ids=[repr(s) for s in FUNDAMENTAL])
def test_sample_is_uniform_over_subsets(space: KHot) -> None:
    """Chi-square goodness of fit against the uniform law on allowed k-subsets (alpha = 0.001)."""
    space = fresh(space)
    allowed = np.flatnonzero(space.allowed)
    cells = comb(allowed.size, space.k)
    trials = 40 * cells
    keys = [tuple(np.flatnonzero(space.sample())) for _ in range(trials)]
    assert all(set(key) <= set(allowed.tolist()) and len(key) == space.k for key in keys)
    counts = np.array(list({**dict.fromkeys(itertools.combinations(allowed, space.k), 0),
                            **_count(keys)}.values()))
    assert counts.size == cells
    assert stats.chisquare(counts).pvalue > 1e-3


def _count(keys: list[tuple[int, ...]]) -> dict[tuple[int, ...], int]:
    out: dict[tuple[int, ...], int] = {}
    for key in keys:
        out[tuple(int(i) for i in key)] = out.get(tuple(int(i) for i in key), 0) + 1
    return out


def test_sample_mask_forces_items_in_and_out() -> None:
    space = fresh(KHot(8, 3))
    mask = np.array([1, 0, 2, 2, 2, 0, 0, 2], dtype=np.int8)
    draws = np.array([space.sample(mask) for _ in range(400)])
    assert (draws.sum(1) == 3).all() and (draws[:, 0] == 1).all()
    assert not draws[:, [1, 5, 6]].any()
    freq = draws[:, [2, 3, 4, 7]].mean(0)  # 2 of the 4 free items: 1/2 each
    assert np.allclose(freq, 0.5, atol=0.1)


@pytest.mark.parametrize("space", TESTING_SPACES, ids=IDS)
def test_seed_reproducibility(space: Space[Any]) -> None:
    space_1, space_2 = copy.deepcopy(space), copy.deepcopy(space)
    for seed in range(5):
        assert space_1.seed(seed) == space_2.seed(seed)
        assert all(data_equivalence(space_1.sample(), space_2.sample()) for _ in range(10))
    space_1.seed(123)
    space_2.seed(456)
    assert not all(data_equivalence(space_1.sample(), space_2.sample()) for _ in range(10))


def test_seed_np_random() -> None:
    rng = np.random.default_rng(123)
    assert KHot(5, 2, seed=rng).np_random is rng


@pytest.mark.parametrize("space", TESTING_SPACES, ids=IDS)
def test_sample_contains(space: Space[Any]) -> None:
    space = fresh(space)
    for _ in range(10):
        sample = space.sample()
        assert sample in space and space.contains(sample)
    for other in TESTING_SPACES:
        result = space.contains(fresh(other).sample())
        assert isinstance(result, bool)


def test_contains_rejects_wrong_count_and_forbidden_items() -> None:
    space = KHot(6, 2, allowed=[0, 1, 2, 3])
    assert space.contains(np.array([1, 1, 0, 0, 0, 0], np.int8))
    assert not space.contains(np.array([1, 0, 0, 0, 1, 0], np.int8))  # item 4 not allowed
    assert not space.contains(np.array([1, 1, 1, 0, 0, 0], np.int8))
    assert not space.contains(np.ones(7, np.int8))


@pytest.mark.parametrize("space", TESTING_SPACES, ids=IDS)
def test_pickling(space: Space[Any]) -> None:
    space = fresh(space)
    clone = pickle.loads(pickle.dumps(space))
    assert clone == space
    assert data_equivalence(space.sample(), clone.sample())


@pytest.mark.parametrize("space", FUNDAMENTAL, ids=[repr(s) for s in FUNDAMENTAL])
def test_flatten_unflatten(space: KHot) -> None:
    space = fresh(space)
    sample = space.sample()
    assert flatdim(space) == space.n and flatten_space(space).shape == (space.n,)
    assert data_equivalence(unflatten(space, flatten(space, sample)), sample)


# ----------------------------------------------------------------------- vector utility tests
@pytest.mark.parametrize("space", TESTING_SPACES, ids=IDS)
@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("use_iterator", [False, True], ids=["list", "iterator"])
def test_batch_concatenate_iterate_create_empty_array(
    space: Space[Any], n: int, use_iterator: bool
) -> None:
    space = fresh(space)
    batched = batch_space(space, n)
    batched_sample = batched.sample()
    assert batched_sample in batched
    rows = list(iterate(batched, batched_sample))
    assert len(rows) == n and all(row in space for row in rows)

    array = create_empty_array(space, n)
    assert len(list(iterate(batched, array))) == n

    if use_iterator and not isinstance(space, KHot):
        # Gymnasium 1.4's concatenate for Tuple/Dict reads ``items`` once per subspace, so an
        # iterator fails for any nested space (Tuple(Discrete(3), Discrete(2)) too).
        pytest.skip("Gymnasium's Tuple/Dict concatenate needs a list")
    originals = [space.sample() for _ in range(n)]
    items: Iterable[Any] = iter(originals) if use_iterator else originals
    joined = concatenate(space, items, array)
    assert joined in batched
    for row, original in zip(iterate(batched, joined), originals, strict=True):
        assert data_equivalence(row, original)


def test_batch_space_gives_khot_batches_in_nested_spaces() -> None:
    batched = batch_space(NESTED[3], 3)
    assert isinstance(batched[0], KHotBatch) and isinstance(batched[1]["inner"], KHotBatch)
    assert batched[0].shape == (3, 5) and batched[1]["inner"].shape == (3, 9)
    sample = batched.sample()
    assert (sample[0].sum(1) == 2).all() and (sample[1]["inner"].sum(1) == 4).all()


def test_iterate_splits_a_tuple_batch_row_by_row() -> None:
    """The bug this fixes: a KHotBatch inside a Tuple was not split (each env got the batch)."""
    batched = batch_space(Tuple((KHot(6, 2), Discrete(3))), 4)
    actions = (np.eye(6, dtype=np.int8)[[0, 1, 2, 3]] + np.eye(6, dtype=np.int8)[[5, 5, 5, 4]],
               np.array([0, 1, 2, 1]))
    rows = list(iterate(batched, actions))
    assert len(rows) == 4
    for i, (khot, choice) in enumerate(rows):
        assert khot.shape == (6,) and int(choice) == actions[1][i]
        np.testing.assert_array_equal(khot, actions[0][i])


@pytest.mark.parametrize("space", TESTING_SPACES, ids=IDS)
@pytest.mark.parametrize("n", [1, 2, 5])
def test_batch_space_deterministic(space: Space[Any], n: int) -> None:
    space_a = fresh(space, 123)
    space_b = copy.deepcopy(space_a)
    batched_a, batched_b = batch_space(space_a, n), batch_space(space_b, n)
    assert rng_equal(batched_a.np_random, batched_b.np_random)
    assert batched_a.np_random is not batched_b.np_random
    assert space_a.np_random is not batched_a.np_random
    space_a.sample()  # must not move the batched space's generator
    for a, b in zip(iterate(batched_a, batched_a.sample()), iterate(batched_b, batched_b.sample()),
                    strict=True):
        assert data_equivalence(a, b)


@pytest.mark.parametrize("space", TESTING_SPACES, ids=IDS)
def test_batch_space_rows_differ(space: Space[Any]) -> None:
    space = fresh(space, 456)
    batched = batch_space(space, 5)
    assert rng_equal(space.np_random, batched.np_random)
    rows = list(iterate(batched, batched.sample()))
    assert all(row in space for row in rows)
    assert not all(data_equivalence(row, rows[0]) for row in rows)


@pytest.mark.parametrize("space", TESTING_SPACES, ids=IDS)
@pytest.mark.parametrize("n", [1, 3])
def test_batch_differing_spaces_vs_batch_space(space: Space[Any], n: int) -> None:
    space = fresh(space)
    assert batch_space(space, n) == batch_differing_spaces(
        [copy.deepcopy(space) for _ in range(n)]
    )


def test_batch_differing_spaces_keeps_each_envs_k_and_mask() -> None:
    spaces = [KHot(6, 1), KHot(6, 3, allowed=[0, 1, 2, 3]), KHot(6, 5)]
    batched = batch_differing_spaces(spaces)
    assert isinstance(batched, KHotBatch) and batched.shape == (3, 6)
    assert batched != batch_space(spaces[0], 3)
    batched.seed(0)
    for _ in range(20):
        sample = batched.sample()
        assert sample in batched
        for sub_space, row in zip(spaces, iterate(batched, sample), strict=True):
            assert row in sub_space
    assert not batched.contains(np.stack([KHot(6, 1).sample()] * 3))
    nested = batch_differing_spaces([Tuple((s, Discrete(2))) for s in spaces])
    assert isinstance(nested[0], KHotBatch) and nested[0] == batched


def test_batch_differing_spaces_errors() -> None:
    with pytest.raises(ValueError, match=r"one length n, found n in \[5, 6\]"):
        batch_differing_spaces([KHot(5, 2), KHot(6, 2)])
    with pytest.raises(TypeError, match="same type"):  # Gymnasium's own check
        batch_differing_spaces([KHot(5, 2), MultiBinary(5)])
    with pytest.raises(TypeError, match=r"expected only KHot spaces, found \['MultiBinary'\]"):
        KHotBatch([KHot(5, 2), MultiBinary(5)])
    with pytest.raises(TypeError, match="num"):
        KHotBatch(KHot(5, 2))
    with pytest.raises(ValueError, match="num: expected 2"):
        KHotBatch([KHot(5, 2), KHot(5, 2)], 3)


@pytest.mark.parametrize("space", TESTING_SPACES, ids=IDS)
@pytest.mark.parametrize("num", [1, 4])
@pytest.mark.parametrize("ctx", [None, "fork", "spawn"])
def test_shared_memory_create_read_write(space: Space[Any], num: int, ctx: str | None) -> None:
    context: Any = mp if ctx is None else mp.get_context(ctx)
    space = fresh(space)
    samples = [space.sample() for _ in range(num)]
    memory = create_shared_memory(space, n=num, ctx=context)
    for i, sample in enumerate(samples):
        write_to_shared_memory(space, i, sample, memory)
    read = read_from_shared_memory(space, memory, n=num)
    for row, sample in zip(iterate(batch_space(space, num), read), samples, strict=True):
        assert data_equivalence(row, sample)


# ------------------------------------------------------------------------------ vector envs
ACTION_SPACE = Tuple((KHot(6, 2), Discrete(3)))
OBSERVATION_SPACE = Dict({"chosen": KHot(6, 2), "choice": Discrete(3)})


class EchoEnv(gym.Env[dict[str, Any], tuple[Any, ...]]):
    """Observes the action it was given; refuses any action outside its single space."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self) -> None:
        self.action_space = copy.deepcopy(ACTION_SPACE)
        self.observation_space = copy.deepcopy(OBSERVATION_SPACE)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        return self.observation_space.sample(), {}

    def step(self, action: tuple[Any, ...]) -> tuple[dict[str, Any], float, bool, bool,
                                                     dict[str, Any]]:
        if action not in self.action_space:
            raise ValueError(f"expected an action in {self.action_space}, found {action!r}")
        obs = {"chosen": np.asarray(action[0], np.int8), "choice": np.int64(action[1])}
        return obs, float(action[1]), False, False, {}


def _actions(num: int) -> tuple[np.ndarray, np.ndarray]:
    batched = batch_space(ACTION_SPACE, num)
    batched.seed(0)
    return batched.sample()


@pytest.mark.parametrize(
    "vector",
    [
        pytest.param(lambda fns: SyncVectorEnv(fns), id="sync"),
        pytest.param(lambda fns: AsyncVectorEnv(fns, shared_memory=True), id="async-shared"),
        pytest.param(lambda fns: AsyncVectorEnv(fns, shared_memory=False), id="async"),
    ],
)
def test_vector_envs_give_each_env_its_own_row(vector: Any) -> None:
    envs = vector([EchoEnv for _ in range(3)])
    try:
        assert isinstance(envs.action_space[0], KHotBatch)
        assert isinstance(envs.observation_space["chosen"], KHotBatch)
        obs, _ = envs.reset(seed=0)
        assert obs in envs.observation_space
        for _ in range(2):
            actions = _actions(3)
            obs, rewards, *_ = envs.step(actions)
            np.testing.assert_array_equal(obs["chosen"], actions[0])
            np.testing.assert_array_equal(obs["choice"], actions[1])
            np.testing.assert_array_equal(rewards, actions[1].astype(float))
            assert envs.action_space.sample() in envs.action_space
    finally:
        envs.close()


def test_sync_vector_env_with_differing_khot_observation_spaces() -> None:
    class Differing(EchoEnv):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.observation_space = Dict({"chosen": KHot(6, k), "choice": Discrete(3)})

        def step(self, action: tuple[Any, ...]) -> Any:
            obs = self.observation_space.sample()
            return obs, 0.0, False, False, {}

    fns = [lambda k=k: Differing(k) for k in (1, 2, 4)]
    envs = SyncVectorEnv(fns, observation_mode="different")
    try:
        space = envs.observation_space["chosen"]
        assert isinstance(space, KHotBatch)
        assert [s.k for s in space.env_spaces] == [1, 2, 4]
        obs, _ = envs.step(_actions(3))[:2]
        assert obs["chosen"].sum(1).tolist() == [1, 2, 4]
    finally:
        envs.close()

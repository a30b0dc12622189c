"""Any Gymnasium env with a k-hot action space as a batched objective, through seeded resets.

Leave-one-out needs several actions scored against the *same* context. An env whose
``reset(seed=s)`` fixes the context gives that: a context is a seed, and scoring ``N`` actions
for it means ``N`` resets with seed ``s``, one step each. Slower than a native batched objective
(one Python call per action) but it works for every such env.

Observations of any space Gymnasium can flatten (``Box`` of any shape, ``Discrete``,
``MultiDiscrete``, ``MultiBinary``, ``Dict``, ``Tuple`` and nestings of them) reach the policy as
the flat float32 vector of :func:`gymnasium.spaces.utils.flatten` (discrete parts one-hot);
:func:`flatten_observations` does the same for one observation or a batch of them, which is what
the agents' ``predict`` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from subset_rl.envs import Context, SubsetObjective

__all__ = [
    "GymEnvObjective",
    "SeedContext",
    "flat_observation_space",
    "flatten_observations",
    "unflatten_observations",
]


def flat_observation_space(space: gym.Space[Any]) -> gym.spaces.Box:
    """The flat ``Box`` that :func:`gymnasium.spaces.utils.flatten_space` makes of ``space``.

    Args:
        space: an observation space.

    Returns:
        A ``Box`` of shape ``(d,)``.

    Raises:
        TypeError: for a space with no fixed-size flat form (``Graph``, ``Sequence``, ``Text``,
            a ``OneOf``...), naming it.
    """
    if not isinstance(space, gym.Space):
        raise TypeError(f"observation_space must be a gymnasium.Space, found {space!r}")
    flat: gym.Space[Any] | None
    try:
        flat = gym.spaces.utils.flatten_space(space)
    except (NotImplementedError, TypeError, ValueError):
        flat = None
    if not isinstance(flat, gym.spaces.Box) or len(flat.shape) != 1:
        raise TypeError(
            f"observation space {space} has no fixed-size flat form: the agents need a Box, "
            "Discrete, MultiDiscrete, MultiBinary, or a Dict/Tuple of them (wrap the env to "
            "turn its observation into one)"
        )
    return flat


def _leaf(space: gym.Space[Any], obs: Any) -> tuple[gym.Space[Any], Any]:
    """The first leaf space of ``space`` and the matching part of ``obs``."""
    while isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        if isinstance(space, gym.spaces.Dict):
            key = next(iter(space.spaces))
            if not isinstance(obs, dict) or key not in obs:
                raise ValueError(
                    f"observation must be a dict with the keys {list(space.spaces)}, found "
                    f"{type(obs).__name__}"
                )
            space, obs = space.spaces[key], obs[key]
        else:
            if not isinstance(obs, (tuple, list)) or len(obs) != len(space.spaces):
                raise ValueError(
                    f"observation must be a tuple of {len(space.spaces)} parts, found "
                    f"{type(obs).__name__}"
                )
            space, obs = space.spaces[0], obs[0]
    return space, obs


def flatten_observations(space: gym.Space[Any], obs: Any) -> tuple[np.ndarray, bool]:
    """One observation of ``space``, or a batch of them, as flat float32 rows.

    ``obs`` is read as an observation of ``space`` first (one, or a batch with a leading batch
    dimension on every array; for a ``Dict`` a dict of batched arrays, as vector envs return
    them), else as rows already flattened, of shape ``(d,)`` or ``(batch, d)``.

    Args:
        space: the observation space.
        obs: one observation, a batch, or flat rows.

    Returns:
        ``(rows, single)``: rows of shape ``(batch, d)`` and whether ``obs`` was one
        observation.

    Raises:
        ValueError: if ``obs`` fits neither ``space`` nor its flat form.
    """
    flat_dim = int(flat_observation_space(space).shape[0])
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        rows = np.asarray(obs, dtype=np.float32)
        return (rows[None] if rows.ndim == 1 else rows), rows.ndim == 1
    structured = isinstance(obs, (dict, tuple))
    try:
        leaf_space, leaf = _leaf(space, obs)
        leaf = np.asarray(leaf)
    except ValueError:
        if structured:
            raise
        leaf_space, leaf = space, None
    leaf_shape = tuple(leaf_space.shape or ())
    try:
        if leaf is not None and leaf.shape == leaf_shape:
            return np.asarray(gym.spaces.utils.flatten(space, obs), np.float32)[None], True
        if leaf is not None and leaf.ndim >= 1 and leaf.shape[1:] == leaf_shape:
            batch = int(leaf.shape[0])
            items = gym.vector.utils.iterate(gym.vector.utils.batch_space(space, batch), obs)
            rows = np.stack([gym.spaces.utils.flatten(space, item) for item in items])
            return rows.astype(np.float32).reshape(batch, flat_dim), False
    except (TypeError, ValueError, KeyError, IndexError, AssertionError) as err:
        raise ValueError(f"observation does not fit {space}: {err}") from None
    if not structured:
        rows = np.asarray(obs, dtype=np.float32)
        if rows.ndim in (1, 2) and rows.shape[-1] == flat_dim:
            return (rows[None] if rows.ndim == 1 else rows), rows.ndim == 1
    shape = np.shape(leaf) if leaf is not None else np.shape(obs)
    raise ValueError(
        f"observation does not fit {space}: found shape {shape}, expected {leaf_shape}, "
        f"(batch, *{leaf_shape}) or flat rows (batch, {flat_dim})"
    )


def unflatten_observations(space: gym.Space[Any], rows: np.ndarray) -> Any:
    """Flat rows ``(batch, d)`` back to a batch of observations of ``space``.

    The inverse of :func:`flatten_observations` for a batch: a ``Dict`` space gives a dict of
    batched arrays (what Stable-Baselines3's ``predict`` takes), a ``Box`` an array of shape
    ``(batch, *space.shape)``.
    """
    rows = np.asarray(rows)
    batch = int(rows.shape[0])
    if isinstance(space, gym.spaces.Box):
        return rows.reshape(batch, *space.shape).astype(space.dtype)
    items = [gym.spaces.utils.unflatten(space, row.astype(np.float64)) for row in rows]
    out = gym.vector.utils.create_empty_array(space, batch)
    return gym.vector.utils.concatenate(space, items, out)


@dataclass(frozen=True)
class SeedContext(Context):
    """Contexts that are reset seeds.

    Attributes:
        seeds: ``(batch,)`` int64 seeds passed to ``env.reset(seed=...)``.
    """

    seeds: torch.Tensor


class GymEnvObjective(SubsetObjective):
    """Scores k-hot actions by resetting ``env`` with the context's seed and taking one step.

    Args:
        env: a Gymnasium env whose action space has ``n`` (its length) and ``k`` (the subset
            size; a ``KHot`` space has both). Its observations may be of any space that
            Gymnasium can flatten (see the module docstring); contexts hold them flattened.
        k: subset size, if the action space does not say.
        device: device of the returned tensors.
    """

    def __init__(self, env: gym.Env, k: int | None = None, device: str | torch.device = "cpu"):
        space = env.action_space
        shape = getattr(space, "shape", None)
        if shape is None or len(shape) != 1:
            raise ValueError(
                f"env.action_space must be a flat binary space of shape (n,), found {space}"
            )
        k = getattr(space, "k", k)
        if k is None:
            raise ValueError(f"k is needed: the action space {space} does not define it")
        flat = flat_observation_space(env.observation_space)
        super().__init__(int(shape[0]), int(k), device=device)
        self.env = env
        self.observation_space = env.observation_space
        self.obs_dim = int(flat.shape[0])

    def _sample_context(self, batch_size: int, generator: torch.Generator | None) -> Context:
        dev = self._gen_device(generator)
        seeds = torch.randint(0, 2**31 - 1, (batch_size,), generator=generator, device=dev)
        space = self.observation_space
        obs = [
            gym.spaces.utils.flatten(space, self.env.reset(seed=int(s))[0])
            for s in seeds.tolist()
        ]
        obs_t = torch.as_tensor(
            np.stack(obs).astype(np.float32).reshape(batch_size, self.obs_dim),
            dtype=self.dtype, device=self.device,
        )
        return SeedContext(obs=obs_t, seeds=seeds.cpu())

    def _evaluate(self, z: torch.Tensor, context: Context) -> dict[str, torch.Tensor]:
        if not isinstance(context, SeedContext):
            raise TypeError(f"context: expected a SeedContext, found {type(context).__name__}")
        actions = z.detach().cpu().numpy().astype(np.float32)
        out = np.empty(actions.shape[:2])
        seeds = context.seeds.tolist()
        for j in range(actions.shape[0]):
            for b, seed in enumerate(seeds):
                self.env.reset(seed=int(seed))
                out[j, b] = float(self.env.step(actions[j, b])[1])
        return {"reward": torch.as_tensor(out, dtype=self.dtype, device=self.device)}

"""The Gymnasium layer shared by all environments: a SubsetObjective behind KHot actions."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium.error import ResetNeeded
from gymnasium.spaces import Box
from numpy.typing import NDArray

from ._validation import INVALID_ACTION_MODES, check_choice, check_float, check_int, validate_action
from .objective import Context, SubsetObjective
from .spaces import KHot

__all__ = ["SubsetEnv"]


class SubsetEnv(gym.Env[NDArray[np.float32], NDArray[np.int8]]):
    """A one-step (or ``horizon``-step) episode around a batched :class:`SubsetObjective`.

    ``reset`` draws a context with a ``torch.Generator`` seeded from ``self.np_random`` (so the same
    ``reset(seed=s)`` gives the same context), ``step`` scores one k-hot action against it. After
    ``horizon`` steps the episode terminates; before that each step draws a fresh context.

    The info dict of ``step`` holds ``"objective"`` (the objective's value, equal to the reward
    unless the action was penalized), ``"action_valid"`` (whether the action given was a valid
    k-hot vector), ``"is_success"`` where the objective defines success, and objective-specific
    terms (floats).

    Args:
        objective: The batched objective (any device; the env evaluates one action at a time).
        invalid_action: What to do with a finite action that is not a valid k-hot vector:
            ``"raise"`` a ``ValueError`` (default), ``"project"`` it to its top-``k`` allowed
            entries, or ``"penalize"`` it with reward ``invalid_penalty`` (the objective is not
            evaluated). Wrong shapes, non-numeric dtypes and NaN/inf always raise.
        invalid_penalty: Reward of a penalized action.
        horizon: Number of steps (independent contexts) per episode.
        render_mode: Must be ``None`` (no rendering); anything else raises ``TypeError``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        objective: SubsetObjective,
        *,
        invalid_action: str = "raise",
        invalid_penalty: float = -1.0,
        horizon: int = 1,
        render_mode: str | None = None,
    ) -> None:
        if not isinstance(objective, SubsetObjective):
            raise TypeError(
                f"objective: expected a SubsetObjective, found {type(objective).__name__}"
            )
        if render_mode is not None:
            # TypeError (not ValueError): the env takes no rendering argument, and callers such
            # as SB3's make_vec_env retry without it on TypeError.
            raise TypeError(
                f"render_mode: this env does not render; expected None, found {render_mode!r}"
            )
        self.render_mode = None
        self.objective = objective
        self.invalid_action = check_choice("invalid_action", invalid_action, INVALID_ACTION_MODES)
        self.invalid_penalty = check_float("invalid_penalty", invalid_penalty)
        self.horizon = check_int("horizon", horizon, minimum=1)
        allowed = objective.allowed_np
        self._allowed = None if allowed.all() else allowed
        self.action_space = KHot(objective.n, objective.k, allowed=allowed)
        self.observation_space = Box(
            low=np.float32(objective.obs_low),
            high=np.float32(objective.obs_high),
            shape=(objective.obs_dim,),
            dtype=np.float32,
        )
        self._context: Context | None = None
        self._steps = 0

    @property
    def n(self) -> int:
        """Number of items."""
        return self.objective.n

    @property
    def k(self) -> int:
        """Number of items to choose."""
        return self.objective.k

    def _draw_context(self) -> Context:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(int(self.np_random.integers(0, 2**63 - 1)))
        return self.objective.sample_context(1, generator=generator)

    def _obs(self) -> NDArray[np.float32]:
        if self._context is None:
            raise ResetNeeded("call reset() before step()")
        return self._context.obs[0].detach().cpu().numpy().astype(np.float32, copy=True)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Starts an episode: draws a context from ``self.np_random``.

        Args:
            seed: Seeds ``self.np_random`` (same seed, same context).
            options: Unused.

        Returns:
            ``(observation, {})``.
        """
        super().reset(seed=seed)
        self._context = self._draw_context()
        self._steps = 0
        return self._obs(), {}

    def step(
        self, action: Any
    ) -> tuple[NDArray[np.float32], SupportsFloat, bool, bool, dict[str, Any]]:
        """Scores a k-hot action against the current context.

        Args:
            action: Array of shape ``(n,)`` (bool, int or float) with exactly ``k`` ones.

        Returns:
            ``(observation, reward, terminated, truncated, info)``; ``terminated`` is ``True``
            after ``horizon`` steps, ``truncated`` is always ``False``.

        Raises:
            ValueError: If the action has the wrong shape, holds NaN/inf, or (with
                ``invalid_action="raise"``) is not a valid k-hot vector.
            TypeError: If the action is not numeric.
            gymnasium.error.ResetNeeded: If called before ``reset()`` or after the episode ended.
        """
        if self._context is None:
            raise ResetNeeded(
                "call reset() before step(): no episode is running (each episode ends after "
                f"{self.horizon} step(s))"
            )
        z, problem = validate_action(action, self.n, self.k, self._allowed, self.invalid_action)
        info: dict[str, Any] = {"action_valid": problem is None}
        if z is None:
            reward = self.invalid_penalty
            info["objective"] = float("nan")
            if self.objective.has_success:
                info["is_success"] = False
        else:
            zt = torch.as_tensor(z, device=self.objective.device).view(1, 1, self.n)
            values = self.objective.evaluate(zt, self._context, validate=False)
            reward = float(values["reward"][0, 0])
            info["objective"] = reward
            for key, value in values.items():
                if key == "success":
                    info["is_success"] = bool(value[0, 0] > 0.5)
                elif key != "reward":
                    info[key] = float(value[0, 0])
        obs = self._obs()
        self._steps += 1
        terminated = self._steps >= self.horizon
        if terminated:
            self._context = None
        else:
            self._context = self._draw_context()
            obs = self._obs()
        return obs, reward, terminated, False, info

    def render(self) -> None:
        """No rendering."""
        return None

"""The Gymnasium layer shared by all environments: a SubsetObjective behind KHot actions."""

from __future__ import annotations

import math
import warnings
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium.error import DependencyNotInstalled, ResetNeeded
from gymnasium.spaces import Box
from numpy.typing import ArrayLike, NDArray

from ._validation import INVALID_ACTION_MODES, check_choice, check_float, check_int, validate_action
from .objective import Context, SubsetObjective
from .spaces import KHot

__all__ = ["RENDER_MODES", "SubsetEnv"]

RENDER_MODES: list[str] = ["human", "rgb_array"]
"""Render modes of every env: ``"rgb_array"`` (numpy drawing, no extra dependency) and
``"human"`` (the same picture in a matplotlib window)."""

# Viridis at 9 stops (a perceptually uniform colour map, drawn without matplotlib).
_VIRIDIS = np.array(
    [
        [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
        [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
    ],
    dtype=np.float64,
)
# Black body: black, red, yellow, white (errors).
_HOT = np.array([[0, 0, 0], [190, 30, 20], [250, 200, 40], [255, 255, 255]], dtype=np.float64)
WHITE = np.array([255, 255, 255], np.uint8)
BLACK = np.array([0, 0, 0], np.uint8)
CHOSEN = np.array([253, 231, 37], np.uint8)  # viridis' top
UNCHOSEN = np.array([72, 72, 88], np.uint8)
FORBIDDEN = np.array([24, 24, 24], np.uint8)
MISSING = np.array([40, 60, 110], np.uint8)
GOOD = np.array([60, 180, 75], np.uint8)
BAD = np.array([220, 50, 40], np.uint8)
PANEL = 256  # target panel size in pixels
GAP = 8  # white gap between panels, pixels


def colormap(
    values: ArrayLike,
    low: float,
    high: float,
    stops: NDArray[Any] = _VIRIDIS,
    missing: NDArray[np.uint8] = MISSING,
) -> NDArray[np.uint8]:
    """Maps values to RGB with a piecewise-linear colour map (viridis by default).

    Args:
        values: Any shape; NaN maps to ``missing``.
        low: Value mapped to the first stop.
        high: Value mapped to the last stop (``high <= low`` maps everything to the middle).
        stops: ``(m, 3)`` RGB stops.
        missing: RGB colour of NaN.

    Returns:
        ``uint8`` array of shape ``(*values.shape, 3)``.
    """
    v = np.asarray(values, dtype=np.float64)
    t = np.full(v.shape, 0.5) if high <= low else (v - low) / (high - low)
    t = np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0) * (len(stops) - 1)
    i = np.minimum(t.astype(int), len(stops) - 2)
    frac = (t - i)[..., None]
    out = stops[i] * (1 - frac) + stops[i + 1] * frac
    out[np.isnan(v)] = missing
    return np.rint(out).astype(np.uint8)


def hot_colormap(values: ArrayLike, high: float) -> NDArray[np.uint8]:
    """Black (0) through red and yellow to white (``high``): magnitudes such as errors."""
    return colormap(values, 0.0, high, _HOT)


def grid_shape(n: int) -> tuple[int, int]:
    """A near-square ``(rows, cols)`` layout for ``n`` items in row-major order."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def cell_size(rows: int, cols: int) -> int:
    """Pixels per cell so that the longer side is about :data:`PANEL` pixels (at least 2)."""
    return max(2, PANEL // max(rows, cols))


def upscale(image: NDArray[np.uint8], cell: int) -> NDArray[np.uint8]:
    """Each pixel of an ``(H, W, 3)`` image becomes a ``cell x cell`` block."""
    return np.repeat(np.repeat(image, cell, axis=0), cell, axis=1)


def mark_cells(image: NDArray[np.uint8], cells: ArrayLike, cols: int, cell: int) -> None:
    """Draws a white square with a black border in the middle of each listed cell (in place).

    Args:
        image: The upscaled panel, ``(rows * cell, cols * cell, 3)``.
        cells: Flat (row-major) indices of the cells to mark.
        cols: Number of columns of the grid.
        cell: Pixels per cell.
    """
    size = max(2, cell // 2)
    offset = (cell - size) // 2
    for index in np.asarray(cells, dtype=np.int64).reshape(-1):
        top, left = (index // cols) * cell + offset, (index % cols) * cell + offset
        image[top : top + size, left : left + size] = BLACK
        if size > 2:
            image[top + 1 : top + size - 1, left + 1 : left + size - 1] = WHITE


def grid_panel(colors: NDArray[np.uint8], shape: tuple[int, int] | None = None,
               cell: int | None = None) -> NDArray[np.uint8]:
    """Lays ``n`` item colours ``(n, 3)`` out on a grid (unused trailing cells white), upscaled.

    Args:
        colors: One RGB colour per item, ``(n, 3)`` ``uint8``.
        shape: ``(rows, cols)``; by default :func:`grid_shape`.
        cell: Pixels per cell; by default :func:`cell_size`.

    Returns:
        ``uint8`` image ``(rows * cell, cols * cell, 3)``.
    """
    n = colors.shape[0]
    rows, cols = grid_shape(n) if shape is None else shape
    grid = np.empty((rows * cols, 3), np.uint8)
    grid[:] = WHITE
    grid[:n] = colors
    return upscale(grid.reshape(rows, cols, 3), cell_size(rows, cols) if cell is None else cell)


def bar_panel(heights: ArrayLike, colors: NDArray[np.uint8], height: int) -> NDArray[np.uint8]:
    """Vertical bars with heights in ``[0, 1]`` on a light background (each at least a tick, so
    that its colour shows).

    Args:
        heights: One value per bar, clipped to ``[0, 1]``.
        colors: One RGB colour per bar, ``(bars, 3)``.
        height: Panel height in pixels.

    Returns:
        ``uint8`` image ``(height, 16 * bars, 3)``.
    """
    h = np.clip(np.nan_to_num(np.asarray(heights, np.float64)), 0.0, 1.0)
    width = 16
    out = np.full((height, width * h.size, 3), 235, np.uint8)
    for i, (value, color) in enumerate(zip(h, colors, strict=True)):
        top = min(height - 4, height - int(round(value * (height - 2))))  # a tick at least
        out[top:, i * width + 2 : (i + 1) * width - 2] = color
    out[-1, :] = BLACK
    return out


def hstack_panels(panels: list[NDArray[np.uint8]]) -> NDArray[np.uint8]:
    """Panels side by side, top-aligned, with white gaps and a white margin; the frame's sides
    are padded to multiples of 16 pixels (what video encoders want)."""
    height = max(p.shape[0] for p in panels)
    columns: list[NDArray[np.uint8]] = []
    for i, panel in enumerate(panels):
        if i:
            columns.append(np.full((height, GAP, 3), 255, np.uint8))
        pad = np.full((height - panel.shape[0], panel.shape[1], 3), 255, np.uint8)
        columns.append(np.concatenate([panel, pad], axis=0))
    body = np.concatenate(columns, axis=1)
    h, w = body.shape[:2]
    out_h, out_w = -(-(h + 2 * GAP) // 16) * 16, -(-(w + 2 * GAP) // 16) * 16
    out = np.full((out_h, out_w, 3), 255, np.uint8)
    top, left = (out_h - h) // 2, (out_w - w) // 2
    out[top : top + h, left : left + w] = body
    return out


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
        render_mode: ``None`` (default), ``"rgb_array"`` (:meth:`render` returns an ``uint8``
            ``(H, W, 3)`` picture of the current context and the last action, drawn with numpy)
            or ``"human"`` (the same picture in a matplotlib window, updated by ``reset`` and
            ``step``). Each env draws its own picture; this base class draws the items on a
            grid: chosen (yellow), not chosen (grey), forbidden (black).

    Raises:
        ValueError: If ``render_mode`` is not one of ``metadata["render_modes"]``.
    """

    metadata: dict[str, Any] = {"render_modes": RENDER_MODES, "render_fps": 4}

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
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode: expected None or one of {self.metadata['render_modes']}, found "
                f"{render_mode!r}"
            )
        self.render_mode = render_mode
        self._figure: Any = None
        self._last_context: Context | None = None
        self._last_action: NDArray[np.int8] | None = None
        self._last_info: dict[str, Any] = {}
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
        self._last_context, self._last_action, self._last_info = self._context, None, {}
        if self.render_mode == "human":
            self.render()
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
        self._last_context, self._last_action, self._last_info = self._context, z, info
        self._steps += 1
        terminated = self._steps >= self.horizon
        if terminated:
            self._context = None
        else:
            self._context = self._draw_context()
            obs = self._obs()
        if self.render_mode == "human":
            self.render()
        return obs, reward, terminated, False, info

    def render(self) -> NDArray[np.uint8] | None:
        """Draws the context of the last step (or of ``reset``) and the action taken.

        Returns:
            With ``render_mode="rgb_array"``, an ``uint8`` array of shape ``(H, W, 3)`` (the same
            shape for every call on one env, so frames make a video); otherwise ``None``.

        Raises:
            gymnasium.error.DependencyNotInstalled: With ``render_mode="human"`` when
                matplotlib cannot be imported.
        """
        if self.render_mode is None:
            gym.logger.warn(
                "render() called without a render_mode; make the env with "
                "render_mode='rgb_array' or 'human'"
            )
            return None
        frame = self._draw(self._last_context, self._last_action, self._last_info)
        if self.render_mode == "rgb_array":
            return frame
        self._show(frame)
        return None

    def _draw(
        self, context: Context | None, z: NDArray[np.int8] | None, info: dict[str, Any]
    ) -> NDArray[np.uint8]:
        """The picture of one context and action (``z`` is ``None`` before the first step or
        after a penalized action; ``context`` is ``None`` before the first reset).

        The base class draws the items on a grid; subclasses draw their own picture.
        """
        colors = np.empty((self.n, 3), np.uint8)
        colors[:] = UNCHOSEN
        colors[~self.objective.allowed_np] = FORBIDDEN
        if z is not None:
            colors[np.asarray(z) != 0] = CHOSEN
        return hstack_panels([grid_panel(colors)])

    def _show(self, frame: NDArray[np.uint8]) -> None:
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:  # pragma: no cover - matplotlib is a dependency
            raise DependencyNotInstalled(
                "render_mode='human' needs matplotlib: pip install matplotlib (or use "
                "render_mode='rgb_array')"
            ) from e
        if self._figure is None or not plt.fignum_exists(self._figure[0].number):
            plt.ion()
            fig, ax = plt.subplots(figsize=(frame.shape[1] / 100, frame.shape[0] / 100), dpi=100)
            fig.subplots_adjust(0, 0, 1, 1)
            ax.set_axis_off()
            self._figure = (fig, ax.imshow(frame))
        else:
            self._figure[1].set_data(frame)
        with warnings.catch_warnings():  # non-interactive backends (Agg) warn on show
            warnings.simplefilter("ignore", UserWarning)
            plt.pause(1.0 / self.metadata["render_fps"])

    def __getstate__(self) -> dict[str, Any]:
        """Pickles without the matplotlib window (a copy opens its own)."""
        state = self.__dict__.copy()
        state["_figure"] = None
        return state

    def close(self) -> None:
        """Closes the matplotlib window of ``render_mode="human"``, if any."""
        if self._figure is not None:
            import matplotlib.pyplot as plt

            plt.close(self._figure[0])
            self._figure = None
        super().close()

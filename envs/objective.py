"""The batched objective layer: contexts drawn with a ``torch.Generator``, many k-hot actions scored
per context in one call.

An objective ``f`` scores k-hot actions ``z`` of shape ``(samples, batch, n)`` against a batch of
contexts (held-out snapshots, data instances, query points), returning rewards of shape
``(samples, batch)``. Several samples per context are what a leave-one-out baseline needs::

    g = torch.Generator().manual_seed(0)
    ctx = objective.sample_context(64, generator=g)   # 64 contexts
    rewards = objective(z, ctx)                        # z: (32, 64, n) -> rewards: (32, 64)
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from ._validation import as_index_mask, check_int, check_k_hot_tensor, describe_items

__all__ = ["Context", "ObjectiveError", "SubsetObjective"]


class ObjectiveError(RuntimeError):
    """An objective failed on an action (it raised, or returned NaN/inf); the message names it."""


@dataclass(frozen=True)
class Context:
    """A batch of episode contexts.

    Subclasses add the tensors their objective needs (all with the batch as first dimension).

    Attributes:
        obs: Observations of shape ``(batch, obs_dim)``, what a policy may condition on.
    """

    obs: torch.Tensor

    @property
    def batch_size(self) -> int:
        """Number of contexts in the batch."""
        return int(self.obs.shape[0])

    def select(self, index: int | Sequence[int] | torch.Tensor) -> Context:
        """The contexts at ``index`` along the batch dimension (an int keeps a batch of one)."""
        idx = torch.as_tensor(index, device=self.obs.device).long().reshape(-1)
        if idx.numel() and (idx.min() < -self.batch_size or idx.max() >= self.batch_size):
            raise ValueError(
                f"index: expected values in [0, {self.batch_size - 1}], found "
                f"[{int(idx.min())}, {int(idx.max())}]"
            )
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v[idx.to(v.device)] if isinstance(v, torch.Tensor) else v
        return type(self)(**values)

    def to(self, device: torch.device | str) -> Context:
        """A copy with every tensor moved to ``device``."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v.to(device) if isinstance(v, torch.Tensor) else v
        return type(self)(**values)


class SubsetObjective(abc.ABC):
    """Base class of the batched objectives: choose ``k`` of ``n`` items, get a reward.

    Subclasses implement :meth:`_sample_context` and :meth:`_evaluate`; this class checks the
    inputs, moves them to :attr:`device` and converts dtypes.

    Args:
        n: Number of items.
        k: Number of items to choose.
        allowed: Optional mask (or index list) of the items that may be chosen.
        device: Device of the objective's tensors and outputs.
        dtype: Floating dtype of outputs and internal computations.

    Attributes:
        n: Number of items.
        k: Number of items to choose.
        obs_dim: Length of each observation vector.
        obs_low: Lower bound of the observations (a scalar).
        obs_high: Upper bound of the observations (a scalar).
        has_success: Whether :meth:`evaluate` returns a ``"success"`` entry.
        differentiable: Whether the reward is a differentiable function of the (relaxed) action
            ``z``, so that pathwise estimators get a meaningful gradient. ``False`` for black
            boxes (every built-in env); a user's batched torch objective may declare ``True``.
    """

    obs_dim: int = 1
    obs_low: float = 0.0
    obs_high: float = 1.0
    has_success: bool = False
    differentiable: bool = False

    def __init__(
        self,
        n: int,
        k: int,
        *,
        allowed: ArrayLike | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.n = check_int("n", n, minimum=1)
        mask = np.ones(self.n, bool) if allowed is None else as_index_mask("allowed", allowed, n)
        self.k = check_int("k", k, minimum=1, maximum=int(mask.sum()))
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating torch.dtype, found {dtype!r}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.allowed_np = mask
        self.allowed = torch.as_tensor(mask, device=self.device)

    # ------------------------------------------------------------------ public API
    def sample_context(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Context:
        """Draws a batch of contexts.

        Args:
            batch_size: Number of contexts.
            generator: Source of randomness (on any device; draws happen there and move to
                :attr:`device`). ``None`` uses torch's global generator.

        Returns:
            The contexts, tensors on :attr:`device`.
        """
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator: expected a torch.Generator or None, found {type(generator).__name__}"
            )
        return self._sample_context(batch_size, generator)

    def evaluate(
        self, z: torch.Tensor, context: Context, *, validate: bool = True
    ) -> dict[str, torch.Tensor]:
        """Scores actions and returns the reward with its components.

        Args:
            z: k-hot actions of shape ``(samples, batch, n)`` (bool, int or float).
            context: Contexts from :meth:`sample_context` with ``batch`` entries.
            validate: Check that ``z`` is k-hot (costs a device sync; skip in hot loops once the
                sampler is trusted).

        Returns:
            A dict of ``(samples, batch)`` tensors on :attr:`device`: ``"reward"`` always,
            ``"success"`` (float 0/1) when :attr:`has_success`, and objective-specific terms.
        """
        if not isinstance(context, Context):
            raise TypeError(f"context: expected a Context, found {type(context).__name__}")
        if validate:
            check_k_hot_tensor(z, self.n, self.k, context.batch_size, self.allowed)
        elif not isinstance(z, torch.Tensor) or z.dim() != 3:
            raise ValueError(
                f"z: expected a tensor of shape (samples, batch, {self.n}), found "
                f"{getattr(z, 'shape', type(z).__name__)}"
            )
        z = z.to(device=self.device, dtype=self.dtype)
        return self._evaluate(z, context)

    def __call__(
        self, z: torch.Tensor, context: Context, *, validate: bool = True
    ) -> torch.Tensor:
        """The reward of each action, shape ``(samples, batch)``; see :meth:`evaluate`."""
        return self.evaluate(z, context, validate=validate)["reward"]

    def logit_mask(self) -> torch.Tensor:
        """Additive logit mask of shape ``(n,)``: ``0`` where allowed, ``-inf`` where forbidden."""
        out = torch.zeros(self.n, device=self.device, dtype=self.dtype)
        return out.masked_fill(~self.allowed, float("-inf"))

    def __repr__(self) -> str:
        """Gives a short description."""
        return f"{type(self).__name__}(n={self.n}, k={self.k}, device={self.device})"

    # ------------------------------------------------------------------ for subclasses
    @abc.abstractmethod
    def _sample_context(self, batch_size: int, generator: torch.Generator | None) -> Context:
        """Draws ``batch_size`` contexts (arguments already checked)."""

    @abc.abstractmethod
    def _evaluate(self, z: torch.Tensor, context: Context) -> dict[str, torch.Tensor]:
        """Scores ``z`` (float, on :attr:`device`, already checked) against ``context``."""

    def _gen_device(self, generator: torch.Generator | None) -> torch.device:
        return generator.device if generator is not None else self.device

    def _rand(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """Uniform draws in ``[0, 1)`` on :attr:`device` (float64 on the generator's device)."""
        dev = self._gen_device(generator)
        return torch.rand(shape, generator=generator, device=dev, dtype=torch.float64).to(
            self.device
        )

    def _randn(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal draws on :attr:`device` in :attr:`dtype`."""
        dev = self._gen_device(generator)
        out = torch.randn(shape, generator=generator, device=dev, dtype=torch.float64)
        return out.to(device=self.device, dtype=self.dtype)

    def _randint(
        self, high: int, shape: tuple[int, ...], generator: torch.Generator | None
    ) -> torch.Tensor:
        """Uniform integers in ``[0, high)`` on :attr:`device`."""
        dev = self._gen_device(generator)
        return torch.randint(high, shape, generator=generator, device=dev).to(self.device)

    def _choose_distinct(
        self, population: int, count: int, batch_size: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``count`` distinct uniform indices in ``[0, population)`` per row, in random order."""
        keys = torch.rand(
            (batch_size, population),
            generator=generator,
            device=self._gen_device(generator),
        )
        return keys.topk(count, dim=-1).indices.to(self.device)


def placeholder_obs(batch_size: int, device: torch.device) -> torch.Tensor:
    """The constant observation ``0`` of shape ``(batch, 1)`` for objectives with no context."""
    return torch.zeros(batch_size, 1, device=device)


def finite_or_raise(values: Any, z: torch.Tensor, what: str) -> None:
    """Raises :class:`ObjectiveError` naming the first action whose value is NaN/inf."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        where = tuple(bad.nonzero()[0].tolist())
        raise ObjectiveError(
            f"{what} returned {values[where].item()} (expected a finite value) for the "
            f"{describe_items(z[where].cpu().numpy())} at (sample, batch) index {where}"
        )

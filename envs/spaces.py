"""The k-hot action space: binary vectors of length ``n`` with exactly ``k`` ones."""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from typing import Any

import numpy as np
from gymnasium.spaces import Box, MultiBinary
from gymnasium.vector.utils import batch_space
from numpy.typing import ArrayLike, NDArray

from ._validation import as_index_mask, check_int

__all__ = ["KHot", "KHotBatch"]


class KHot(MultiBinary):
    r"""Binary vectors of length ``n`` with exactly ``k`` ones, optionally among allowed items only.

    A :class:`~gymnasium.spaces.MultiBinary` subclass, so code written for ``MultiBinary(n)``
    (Stable-Baselines3's preprocessing, Gymnasium's vector utilities) keeps working, but
    :meth:`sample` draws a uniformly random k-subset and :meth:`contains` checks the count:

    .. math:: \{z \in \{0, 1\}^n : \textstyle\sum_i z_i = k,\ z_i = 0 \text{ where not allowed}\}

    Example:
        >>> space = KHot(5, 2, seed=0)
        >>> int(space.sample().sum())
        2
        >>> space.contains(np.array([1, 0, 0, 1, 0]))
        True
        >>> space.contains(np.array([1, 1, 1, 0, 0]))
        False

    Args:
        n: Number of items (the vector length), ``n >= 1``.
        k: Number of ones, ``1 <= k <= number of allowed items``.
        allowed: Optional mask of allowed items: a boolean array of length ``n`` (or any shape
            with ``n`` elements, flattened) or a sequence of allowed item indices. ``None`` allows
            all items.
        seed: Seed for :meth:`sample`.

    Raises:
        TypeError: If ``n`` or ``k`` is not an integer.
        ValueError: If ``k`` is out of range or the mask does not fit ``n``.
    """

    def __init__(
        self,
        n: int,
        k: int,
        *,
        allowed: ArrayLike | None = None,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        n = check_int("n", n, minimum=1)
        mask = np.ones(n, dtype=bool) if allowed is None else as_index_mask("allowed", allowed, n)
        available = int(mask.sum())
        self.k: int = check_int("k", k, minimum=1, maximum=available)
        self.allowed: NDArray[np.bool_] = mask
        self.allowed.setflags(write=False)
        self._allowed_index = np.flatnonzero(mask)
        super().__init__(n, seed=seed)

    def sample(
        self,
        mask: NDArray[np.int8] | None = None,
        probability: NDArray[np.float64] | None = None,
    ) -> NDArray[np.int8]:
        """Draws a uniformly random k-hot vector over the allowed items.

        Args:
            mask: Optional ``int8`` array of shape ``(n,)`` as for ``MultiBinary``: ``1`` forces
                an item in, ``0`` forces it out, ``2`` leaves it to chance. The forced-in items
                must be allowed, at most ``k`` of them, and enough free allowed items must remain.
            probability: Not supported (a k-subset distribution is not a product of Bernoullis);
                use ``subset_rl``'s ``KSubsetPolicy`` to sample with weights.

        Returns:
            An ``int8`` array of shape ``(n,)`` with exactly ``k`` ones.

        Raises:
            NotImplementedError: If ``probability`` is given.
            ValueError: If ``mask`` is malformed or cannot give a k-hot vector.
        """
        if probability is not None:
            raise NotImplementedError(
                "KHot.sample(probability=...) is not supported: a k-subset is not a product of "
                "independent Bernoullis; sample from subset_rl.KSubsetPolicy instead"
            )
        return self._draw(self.np_random, mask)

    def _draw(self, rng: np.random.Generator, mask: NDArray[np.int8] | None) -> NDArray[np.int8]:
        out = np.zeros(self.n, dtype=np.int8)
        if mask is None:
            out[rng.choice(self._allowed_index, self.k, replace=False)] = 1
            return out
        mask = np.asarray(mask)
        if mask.shape != (self.n,) or not np.isin(mask, (0, 1, 2)).all():
            raise ValueError(
                f"KHot.sample: expected a mask of shape ({self.n},) with values in {{0, 1, 2}}, "
                f"found shape {mask.shape} with values {np.unique(mask)[:5].tolist()}"
            )
        forced = mask == 1
        if (forced & ~self.allowed).any():
            raise ValueError(
                "KHot.sample: mask forces in items that are not allowed: "
                f"{np.flatnonzero(forced & ~self.allowed).tolist()}"
            )
        free = np.flatnonzero((mask == 2) & self.allowed)
        need = self.k - int(forced.sum())
        if need < 0 or need > free.size:
            raise ValueError(
                f"KHot.sample: expected a mask leaving room for exactly k={self.k} ones, found "
                f"{int(forced.sum())} forced in and {free.size} free allowed items"
            )
        out[forced] = 1
        out[rng.choice(free, need, replace=False)] = 1
        return out

    def contains(self, x: Any) -> bool:
        """Whether ``x`` is a binary array of shape ``(n,)`` with ``k`` ones, all allowed."""
        if isinstance(x, Sequence):
            x = np.array(x)
        if not super().contains(x):
            return False
        chosen = np.asarray(x) != 0
        return bool(chosen.sum() == self.k and not (chosen & ~self.allowed).any())

    def __repr__(self) -> str:
        """Gives a string representation of this space."""
        extra = "" if self.allowed.all() else f", allowed={int(self.allowed.sum())} of {self.n}"
        return f"KHot({self.n}, {self.k}{extra})"

    def __eq__(self, other: object, /) -> bool:
        """Equal when ``n``, ``k`` and the allowed mask agree."""
        return (
            isinstance(other, KHot)
            and self.n == other.n
            and self.k == other.k
            and bool(np.array_equal(self.allowed, other.allowed))
        )

    __hash__ = None  # type: ignore[assignment]


class KHotBatch(Box):
    """A batch of ``num`` k-hot vectors, the batched form of :class:`KHot` in vector envs.

    Gymnasium batches a ``MultiBinary`` action space into a ``Box`` whose ``sample()`` gives
    arbitrary binary rows; this ``Box`` subclass samples and checks k-hot rows instead, so
    ``envs.action_space.sample()`` gives valid actions for a vector of k-hot envs.

    Args:
        space: The single-env space.
        num: Number of envs.
    """

    def __init__(self, space: KHot, num: int) -> None:
        self.single = deepcopy(space)
        super().__init__(
            low=0,
            high=1,
            shape=(check_int("num", num, minimum=1), space.n),
            dtype=np.int8,
            seed=deepcopy(space.np_random),
        )

    def sample(self, mask: Any = None, probability: Any = None) -> NDArray[np.int8]:
        """Draws ``num`` independent uniform k-hot rows.

        Args:
            mask: Optional ``int8`` array of shape ``(num, n)``: a :meth:`KHot.sample` mask per row.
            probability: Not supported.

        Returns:
            An ``int8`` array of shape ``(num, n)``.
        """
        if probability is not None:
            raise NotImplementedError("KHotBatch.sample(probability=...) is not supported")
        if mask is not None and np.shape(mask) != self.shape:
            raise ValueError(
                f"KHotBatch.sample: expected a mask of shape {self.shape}, found {np.shape(mask)}"
            )
        rows = [
            self.single._draw(self.np_random, None if mask is None else np.asarray(mask[i]))
            for i in range(self.shape[0])
        ]
        return np.stack(rows)

    def contains(self, x: Any) -> bool:
        """Whether every row of ``x`` is in the single-env space."""
        x = np.asarray(x)
        return bool(x.shape == self.shape and all(self.single.contains(row) for row in x))

    def __repr__(self) -> str:
        """Gives a string representation of this space."""
        return f"KHotBatch({self.single!r}, num={self.shape[0]})"


@batch_space.register(KHot)
def _batch_space_khot(space: KHot, n: int = 1) -> KHotBatch:
    return KHotBatch(space, n)

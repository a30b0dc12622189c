"""The k-hot action space: binary vectors of length ``n`` with exactly ``k`` ones."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Iterator, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
from gymnasium.spaces import Box, MultiBinary
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
            try:
                x = np.array(x)
            except ValueError:  # ragged, e.g. a Tuple space's sample
                return False
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
    """A batch of k-hot vectors, one row per env: the batched form of :class:`KHot` in vector envs.

    Gymnasium batches a ``MultiBinary`` action space into a ``Box`` whose ``sample()`` gives
    arbitrary binary rows; this ``Box`` subclass samples and checks k-hot rows instead, so
    ``envs.action_space.sample()`` gives valid actions for a vector of k-hot envs. The rows may
    come from different :class:`KHot` spaces (same ``n``, any ``k`` and allowed mask), as
    ``gymnasium.vector.utils.batch_differing_spaces`` builds for envs with differing spaces.

    Example:
        >>> batch = KHotBatch(KHot(5, 2, seed=0), 3)
        >>> batch.sample().sum(axis=1).tolist()
        [2, 2, 2]
        >>> KHotBatch([KHot(5, 1), KHot(5, 4)]).sample().sum(axis=1).tolist()
        [1, 4]

    Args:
        space: The single-env space (repeated ``num`` times), or a sequence of one
            :class:`KHot` space per env.
        num: Number of envs; required with a single space, optional (but then equal to its
            length) with a sequence.
        seed: Seed or generator of :meth:`sample`; by default a copy of the first space's
            generator (as Gymnasium's ``batch_space`` does).

    Raises:
        TypeError: If ``space`` is not a :class:`KHot` or a sequence of them.
        ValueError: If the spaces differ in ``n``, or ``num`` does not fit.
    """

    def __init__(
        self,
        space: KHot | Sequence[KHot],
        num: int | None = None,
        *,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        if isinstance(space, KHot):
            if num is None:
                raise TypeError("num: expected the number of envs with a single KHot space")
            spaces = [space] * check_int("num", num, minimum=1)
        else:
            spaces = _check_khot_sequence("space", space)
            if num is not None and check_int("num", num, minimum=1) != len(spaces):
                raise ValueError(
                    f"num: expected {len(spaces)} (the number of spaces given), found {num}"
                )
        self.env_spaces: tuple[KHot, ...] = tuple(deepcopy(s) for s in spaces)
        self.single: KHot = self.env_spaces[0]
        super().__init__(
            low=0,
            high=1,
            shape=(len(spaces), self.single.n),
            dtype=np.int8,
            seed=deepcopy(spaces[0].np_random) if seed is None else seed,
        )

    def sample(self, mask: Any = None, probability: Any = None) -> NDArray[np.int8]:
        """Draws one uniform k-hot row per env (from that env's space).

        Args:
            mask: Optional ``int8`` array of shape ``(num, n)``: a :meth:`KHot.sample` mask per row.
            probability: Not supported.

        Returns:
            An ``int8`` array of shape ``(num, n)``.

        Raises:
            NotImplementedError: If ``probability`` is given.
            ValueError: If ``mask`` has the wrong shape or cannot give a k-hot row.
        """
        if probability is not None:
            raise NotImplementedError("KHotBatch.sample(probability=...) is not supported")
        if mask is not None and np.shape(mask) != self.shape:
            raise ValueError(
                f"KHotBatch.sample: expected a mask of shape {self.shape}, found {np.shape(mask)}"
            )
        rows = [
            space._draw(self.np_random, None if mask is None else np.asarray(mask[i]))
            for i, space in enumerate(self.env_spaces)
        ]
        return np.stack(rows)

    def contains(self, x: Any) -> bool:
        """Whether ``x`` has shape ``(num, n)`` and each row is in its env's space."""
        x = np.asarray(x)
        return bool(
            x.shape == self.shape
            and all(space.contains(row) for space, row in zip(self.env_spaces, x, strict=True))
        )

    def __repr__(self) -> str:
        """Gives a string representation of this space."""
        if all(space == self.single for space in self.env_spaces):
            return f"KHotBatch({self.single!r}, num={self.shape[0]})"
        return f"KHotBatch([{', '.join(repr(s) for s in self.env_spaces)}])"

    def __eq__(self, other: object, /) -> bool:
        """Equal when the per-env spaces agree."""
        return isinstance(other, KHotBatch) and self.env_spaces == other.env_spaces

    __hash__ = None  # type: ignore[assignment]


def _check_khot_sequence(name: str, spaces: Any) -> list[KHot]:
    """A non-empty list of KHot spaces with one ``n``, or a clear error."""
    if not isinstance(spaces, Iterable) or isinstance(spaces, (str, bytes)):
        raise TypeError(f"{name}: expected a KHot space or a sequence of them, found {spaces!r}")
    out = list(spaces)
    if not out:
        raise ValueError(f"{name}: expected at least one KHot space, found none")
    wrong = [type(s).__name__ for s in out if not isinstance(s, KHot)]
    if wrong:
        raise TypeError(f"{name}: expected only KHot spaces, found {sorted(set(wrong))}")
    sizes = sorted({s.n for s in out})
    if len(sizes) > 1:
        raise ValueError(f"{name}: expected KHot spaces of one length n, found n in {sizes}")
    return out


# --------------------------------------------------------------------------------------------
# Gymnasium's vector utilities (functools.singledispatch), registered for the exact types:
# some callers look the type up in ``registry`` instead of dispatching (``iterate`` on a
# ``Tuple``, ``batch_differing_spaces``), so inheriting MultiBinary's or Box's entry is not
# enough.
# --------------------------------------------------------------------------------------------
@batch_space.register(KHot)
def _batch_space_khot(space: KHot, n: int = 1) -> KHotBatch:
    return KHotBatch(space, n)


@batch_differing_spaces.register(KHot)
def _batch_differing_spaces_khot(spaces: Sequence[KHot]) -> KHotBatch:
    return KHotBatch(_check_khot_sequence("spaces", spaces))


@iterate.register(KHot)
@iterate.register(KHotBatch)
def _iterate_khot(space: KHot | KHotBatch, items: Any) -> Iterator[Any]:
    try:
        return iter(items)
    except TypeError as e:
        raise TypeError(
            f"iterate: expected a batch of {space!r} rows, found {type(items).__name__}"
        ) from e


@concatenate.register(KHot)
def _concatenate_khot(space: KHot, items: Iterable[Any], out: np.ndarray) -> np.ndarray:
    return np.stack(list(items), axis=0, out=out)


@create_empty_array.register(KHot)
def _create_empty_array_khot(space: KHot, n: int = 1, fn: Any = np.zeros) -> np.ndarray:
    return fn((n, *space.shape), dtype=space.dtype)


@create_shared_memory.register(KHot)
def _create_shared_memory_khot(space: KHot, n: int = 1, ctx: Any = multiprocessing) -> Any:
    return create_shared_memory.dispatch(MultiBinary)(space, n, ctx)


@read_from_shared_memory.register(KHot)
def _read_from_shared_memory_khot(space: KHot, shared_memory: Any, n: int = 1) -> np.ndarray:
    return read_from_shared_memory.dispatch(MultiBinary)(space, shared_memory, n)


@write_to_shared_memory.register(KHot)
def _write_to_shared_memory_khot(
    space: KHot, index: int, value: Any, shared_memory: Any
) -> None:
    write_to_shared_memory.dispatch(MultiBinary)(space, index, value, shared_memory)

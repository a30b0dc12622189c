"""Argument and action checks shared by the environments (errors say expected vs found)."""

from __future__ import annotations

import numbers
import operator
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "INVALID_ACTION_MODES",
    "as_float_vector",
    "as_index_mask",
    "check_choice",
    "check_float",
    "check_int",
    "check_k_hot_tensor",
    "describe_items",
    "validate_action",
]

INVALID_ACTION_MODES = ("raise", "project", "penalize")


def check_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Returns ``value`` as an ``int``, or raises naming ``name``, the range and what was found."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an int, found bool {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        found = f"{type(value).__name__} {value!r}"
        raise TypeError(f"{name}: expected an int, found {found}") from None
    if (minimum is not None and out < minimum) or (maximum is not None and out > maximum):
        lo = "-inf" if minimum is None else minimum
        hi = "inf" if maximum is None else maximum
        raise ValueError(f"{name}: expected an int in [{lo}, {hi}], found {out}")
    return out


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
) -> float:
    """Returns ``value`` as a finite ``float``, or raises naming ``name`` and the range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, found {type(value).__name__} {value!r}")
    out = float(value)
    bad = not np.isfinite(out)
    if minimum is not None:
        bad = bad or (out <= minimum if strict_minimum else out < minimum)
    if maximum is not None:
        bad = bad or out > maximum
    if bad:
        lo = "-inf" if minimum is None else minimum
        hi = "inf" if maximum is None else maximum
        bracket = "(" if strict_minimum else "["
        raise ValueError(f"{name}: expected a finite number in {bracket}{lo}, {hi}], found {out}")
    return out


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Returns ``value`` if it is one of ``choices``, or raises listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, found {value!r}")
    return value


def as_index_mask(name: str, value: ArrayLike, n: int) -> NDArray[np.bool_]:
    """Converts a boolean mask (any shape with ``n`` elements) or a list of indices to a mask.

    Args:
        name: Argument name for error messages.
        value: A boolean array with ``n`` elements, or a sequence of integer indices in
            ``[0, n)`` (an empty sequence selects nothing).
        n: Number of items.

    Returns:
        A fresh boolean array of shape ``(n,)``.
    """
    a = np.asarray(value)
    if a.dtype == bool:
        if a.size != n:
            raise ValueError(
                f"{name}: expected a boolean mask with {n} elements, found shape {a.shape}"
            )
        return a.reshape(n).copy()
    if a.size == 0:
        return np.zeros(n, dtype=bool)
    if a.dtype.kind not in "iu" or a.ndim != 1:
        raise TypeError(
            f"{name}: expected a boolean mask of {n} elements or a 1-d sequence of int indices, "
            f"found dtype {a.dtype} with shape {a.shape}"
        )
    if a.min() < 0 or a.max() >= n:
        raise ValueError(
            f"{name}: expected indices in [0, {n - 1}], found [{a.min()}, {a.max()}]"
        )
    mask = np.zeros(n, dtype=bool)
    mask[a] = True
    return mask


def as_float_vector(name: str, value: ArrayLike, n: int, *, minimum: float = 0.0) -> np.ndarray:
    """A scalar or length-``n`` array of finite floats ``>= minimum``, broadcast to ``(n,)``."""
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a number or a numeric array, found dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise ValueError(f"{name}: expected a scalar or shape ({n},), found shape {a.shape}")
    if not np.isfinite(a).all() or (a < minimum).any():
        raise ValueError(
            f"{name}: expected finite values >= {minimum}, found min {np.min(a)}, max {np.max(a)}"
        )
    return a


def describe_items(z: ArrayLike) -> str:
    """A short description of a k-hot vector: the indices of its ones."""
    idx = np.flatnonzero(np.asarray(z) != 0).tolist()
    shown = idx if len(idx) <= 20 else idx[:20] + ["..."]
    return f"action with items {shown}"


def _violation(a: np.ndarray, k: int, allowed: NDArray[np.bool_] | None) -> str | None:
    """What is wrong with a finite vector as a k-hot action, or ``None`` if nothing is."""
    non_binary = np.flatnonzero((a != 0) & (a != 1))
    if non_binary.size:
        pos = non_binary[:5].tolist()
        return f"found values outside {{0, 1}}: {a[non_binary[:5]].tolist()} at indices {pos}"
    count = int((a != 0).sum())
    if count != k:
        return f"found {count} ones"
    if allowed is not None:
        bad = np.flatnonzero((a != 0) & ~allowed)
        if bad.size:
            return f"found forbidden items selected: {bad[:10].tolist()}"
    return None


def validate_action(
    action: Any,
    n: int,
    k: int,
    allowed: NDArray[np.bool_] | None = None,
    mode: str = "raise",
) -> tuple[NDArray[np.bool_] | None, str | None]:
    """Checks an env action and applies the ``invalid_action`` policy.

    Shape, dtype and non-finite values are always errors. A finite action that is not a valid
    k-hot vector (values outside ``{0, 1}``, a count other than ``k``, a forbidden item) raises in
    mode ``"raise"``, is replaced by the top-``k`` allowed entries in mode ``"project"`` (ties go to
    the lower index), and yields ``None`` in mode ``"penalize"``.

    Args:
        action: Array-like of shape ``(n,)``: bool, int or float (a torch tensor is accepted).
        n: Number of items.
        k: Required number of ones.
        allowed: Optional boolean mask of allowed items.
        mode: ``"raise"``, ``"project"`` or ``"penalize"``.

    Returns:
        ``(z, problem)``: ``z`` is the boolean k-hot vector to evaluate (``None`` when penalized),
        ``problem`` is ``None`` for a valid action, else a description of what was wrong.

    Raises:
        TypeError: If the action is not numeric or boolean.
        ValueError: If its shape is not ``(n,)``, it holds NaN/inf, or (mode ``"raise"``) it is
            not a valid k-hot vector.
    """
    if isinstance(action, torch.Tensor):
        action = action.detach().cpu().numpy()
    try:
        a = np.asarray(action)
    except Exception as e:  # noqa: BLE001 - anything numpy cannot convert
        raise TypeError(
            f"expected an action array of shape ({n},), found {type(action).__name__}"
        ) from e
    if a.dtype.kind not in "biuf":
        raise TypeError(
            f"expected an action of bool, int or float dtype with shape ({n},), "
            f"found dtype {a.dtype}"
        )
    if a.shape != (n,):
        raise ValueError(
            f"expected an action of shape ({n},) (a k-hot vector with k={k}), found shape {a.shape}"
        )
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(
            f"expected a finite k-hot action of shape ({n},) with k={k} ones, found NaN/inf at "
            f"indices {np.flatnonzero(~np.isfinite(a))[:10].tolist()}"
        )
    problem = _violation(a, k, allowed)
    if problem is None:
        return a != 0, None
    if mode == "raise":
        allowed_note = "" if allowed is None else " among the allowed items"
        raise ValueError(
            f"invalid action: expected a k-hot vector of shape ({n},) with exactly k={k} ones"
            f"{allowed_note}, {problem}. Pass invalid_action='project' (top-k) or 'penalize' to "
            "accept such actions"
        )
    if mode == "penalize":
        return None, problem
    scores = np.where(allowed, a, -np.inf) if allowed is not None else a
    top = np.argsort(-scores, kind="stable")[:k]
    z = np.zeros(n, dtype=bool)
    z[top] = True
    return z, problem


def check_k_hot_tensor(
    z: Any,
    n: int,
    k: int,
    batch_size: int | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Checks a batch of k-hot actions for a batched objective.

    Args:
        z: Tensor of shape ``(samples, batch, n)``, bool, int or float, with exactly ``k`` ones
            per action and none at disallowed items.
        n: Number of items.
        k: Required number of ones.
        batch_size: Required size of the batch dimension (the number of contexts), if any.
        allowed: Optional boolean mask of shape ``(n,)``.

    Returns:
        ``z`` unchanged.

    Raises:
        TypeError: If ``z`` is not a real or boolean tensor.
        ValueError: On a wrong shape, values outside ``{0, 1}``, wrong counts, or forbidden items.
    """
    if not isinstance(z, torch.Tensor):
        raise TypeError(
            f"z: expected a torch.Tensor of shape (samples, batch, {n}), found {type(z).__name__}"
        )
    if z.is_complex():
        raise TypeError(f"z: expected a bool, int or float tensor, found {z.dtype}")
    expected_b = "batch" if batch_size is None else str(batch_size)
    if z.dim() != 3 or z.shape[-1] != n or (batch_size is not None and z.shape[1] != batch_size):
        raise ValueError(
            f"z: expected shape (samples, {expected_b}, {n}), found {tuple(z.shape)}"
        )
    if z.dtype != torch.bool:
        binary = (z == 0) | (z == 1)
        if not bool(binary.all()):
            where = tuple(int(i) for i in (~binary).nonzero()[0].tolist())
            raise ValueError(
                f"z: expected k-hot values in {{0, 1}}, found {z[where].item()} at index {where}"
            )
    counts = (z != 0).sum(-1)
    if not bool((counts == k).all()):
        bad = (counts != k).nonzero()[0].tolist()
        raise ValueError(
            f"z: expected exactly k={k} ones in every action, found {int(counts[tuple(bad)])} "
            f"at (sample, batch) index {tuple(bad)}"
        )
    if allowed is not None and not bool(allowed.all()):
        forbidden = (z != 0) & ~allowed.to(z.device)
        if bool(forbidden.any()):
            where = forbidden.nonzero()[0].tolist()
            raise ValueError(
                f"z: expected only allowed items, found forbidden item {where[2]} selected at "
                f"(sample, batch) index {tuple(where[:2])}"
            )
    return z

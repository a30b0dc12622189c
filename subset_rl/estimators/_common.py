"""Shared argument checks and small tensor helpers of the estimators (private)."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__: list[str] = []


def check_tensor(value: object, name: str) -> Tensor:
    """Return ``value`` if it is a tensor, else raise ``TypeError`` naming what was found."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, found {type(value).__name__}")
    return value


def check_logits(logits: object, name: str = "logits") -> Tensor:
    """Check a ``(..., n)`` floating-point logits tensor."""
    logits = check_tensor(logits, name)
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, found dtype {logits.dtype}")
    if logits.dim() < 1:
        raise ValueError(
            f"{name} must have shape (..., n) with at least 1 dimension, found shape ()"
        )
    if logits.shape[-1] < 1:
        raise ValueError(
            f"{name} must have at least one item (n >= 1), found shape {tuple(logits.shape)}"
        )
    return logits


def check_k(k: object, n: int, *, allow_zero: bool = False) -> int:
    """Check the subset size: a Python int in ``[1, n]`` (``[0, n]`` with ``allow_zero``)."""
    low = 0 if allow_zero else 1
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(
            f"k must be an int in [{low}, n={n}], found {k!r} of type {type(k).__name__}"
        )
    k = int(k)
    if not low <= k <= n:
        raise ValueError(f"k must be in [{low}, n={n}], found k={k}")
    return k


def check_positive(value: object, name: str) -> float:
    """Check a finite, strictly positive real number (a temperature or a step size)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a positive float, found {value!r} of type {type(value).__name__}"
        )
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be finite and > 0, found {value!r}")
    return value


def check_int(value: object, name: str, minimum: int) -> int:
    """Check a Python int ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an int >= {minimum}, found {value!r} of type {type(value).__name__}"
        )
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, found {value}")
    return value


def topk_khot(scores: Tensor, k: int) -> Tensor:
    """Hard k-hot indicator of the ``k`` largest entries of ``scores`` along the last dim.

    The result has the dtype and device of ``scores`` and no gradient.
    """
    with torch.no_grad():
        out = torch.zeros_like(scores)
        if k == 0:
            return out
        return out.scatter_(-1, scores.topk(k, dim=-1).indices, 1.0)


def gumbel_like(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""Standard Gumbel noise :math:`G = -\log E`, :math:`E \sim \mathrm{Exp}(1)`, as ``logits``."""
    exp = torch.empty_like(logits, memory_format=torch.contiguous_format)
    exp.exponential_(generator=generator)
    return -exp.clamp_min(torch.finfo(logits.dtype).tiny).log()

"""Constraint for k-hot vectors, in the style of :mod:`torch.distributions.constraints`."""

from __future__ import annotations

from torch import Tensor
from torch.distributions import constraints

__all__ = ["KHot", "k_hot"]


class KHot(constraints.Constraint):
    """Vectors in ``{0, 1}^n`` with exactly ``k`` ones along the last dimension.

    ``check(value)`` returns a boolean tensor of shape ``value.shape[:-1]``: one verdict per
    batch element.
    """

    is_discrete = True
    event_dim = 1

    def __init__(self, k: int) -> None:
        self.k = k
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        binary = ((value == 0) | (value == 1)).all(dim=-1)
        return binary & (value.sum(dim=-1) == self.k)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(k={self.k})"


def k_hot(k: int) -> KHot:
    """The :class:`KHot` constraint for subset size ``k``."""
    return KHot(k)

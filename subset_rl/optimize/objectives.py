r"""Standard set-function objectives to benchmark subset optimizers on.

Each objective is a picklable instance usable two ways (same values up to float rounding):

* ``obj(z)``: one indicator vector (numpy, shape ``(n,)``) -> float, for ``batched=False``,
  worker processes and Ray;
* ``obj.batch(z)``: a torch tensor ``(..., n)`` -> ``(...)``, for ``batched=True``.

All three synthetic objectives are defined for subsets of any size, are monotone and submodular,
and are 0 on the empty set, so greedy forward selection is within ``1 - 1/e`` of the optimum:

* :class:`WeightedCoverage`: :math:`f(S) = \sum_u w_u\,[u \in \bigcup_{i\in S} C_i]`;
* :class:`FacilityLocation`: :math:`f(S) = \sum_j \max_{i\in S} s_{ji}` with similarities
  :math:`s \ge 0`;
* :class:`DOptimalDesign`: :math:`f(S) = \log\det(I_d + \sigma^{-2} X_S^\top X_S)` (Bayesian
  D-optimal design, the information gain of measuring the rows :math:`x_i, i\in S`).

:class:`SensorPlacementReward` turns the environments' sensor-placement objective into a
deterministic black box (mean reward over the held-out snapshots), and :func:`brute_force`
enumerates all subsets of small instances.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DOptimalDesign",
    "FacilityLocation",
    "SensorPlacementReward",
    "WeightedCoverage",
    "brute_force",
]


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _indicator(z: ArrayLike, n: int) -> NDArray[np.float64]:
    a = np.asarray(z, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"z: expected an indicator vector of shape ({n},), found {a.shape}")
    return a


def _batch_input(z: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z: expected a torch.Tensor of shape (..., {n}), found {type(z).__name__}")
    if z.dim() < 1 or z.shape[-1] != n:
        raise ValueError(f"z: expected shape (..., {n}), found {tuple(z.shape)}")
    return z.to(_work_dtype(z.device))


class WeightedCoverage:
    r"""Weighted coverage :math:`f(S) = \sum_u w_u \max_{i \in S} a_{iu}` with 0/1 ``a``.

    Args:
        cover: ``(n, U)`` 0/1 array: item ``i`` covers element ``u`` when ``cover[i, u]``.
        weights: ``(U,)`` non-negative element weights.
    """

    def __init__(self, cover: ArrayLike, weights: ArrayLike) -> None:
        a = np.asarray(cover)
        w = np.asarray(weights, dtype=np.float64)
        if a.ndim != 2 or not np.isin(a, (0, 1)).all():
            raise ValueError(f"cover: expected a 0/1 array of shape (n, U), found {a.shape}")
        if w.shape != (a.shape[1],) or (w < 0).any() or not np.isfinite(w).all():
            raise ValueError(
                f"weights: expected {a.shape[1]} finite non-negative values, found shape {w.shape}"
            )
        self.cover = a.astype(np.float64)
        self.weights = w
        self.n = a.shape[0]

    @classmethod
    def random(
        cls, n: int, universe: int = 100, density: float = 0.05, seed: int = 0
    ) -> WeightedCoverage:
        """Each item covers each element with probability ``density``; weights ~ U(0, 1)."""
        rng = np.random.default_rng(seed)
        return cls(rng.random((n, universe)) < density, rng.random(universe))

    def __call__(self, z: ArrayLike) -> float:
        """Value of one subset (indicator vector of shape ``(n,)``)."""
        covered = (_indicator(z, self.n) @ self.cover) > 0
        return float(covered @ self.weights)

    def batch(self, z: torch.Tensor) -> torch.Tensor:
        """Values of ``(..., n)`` indicator vectors, shape ``(...)``."""
        z = _batch_input(z, self.n)
        a = torch.as_tensor(self.cover, dtype=z.dtype, device=z.device)
        w = torch.as_tensor(self.weights, dtype=z.dtype, device=z.device)
        return ((z @ a) > 0).to(z.dtype) @ w

    def __repr__(self) -> str:
        """Short description."""
        return f"WeightedCoverage(n={self.n}, universe={self.cover.shape[1]})"


class FacilityLocation:
    r"""Facility location :math:`f(S) = \sum_j \max_{i \in S} s_{ji}`, 0 for the empty set.

    Args:
        similarity: ``(m, n)`` non-negative similarities between ``m`` customers and the ``n``
            candidate facilities (the items).
    """

    def __init__(self, similarity: ArrayLike) -> None:
        s = np.asarray(similarity, dtype=np.float64)
        if s.ndim != 2 or (s < 0).any() or not np.isfinite(s).all():
            raise ValueError(
                f"similarity: expected finite non-negative values of shape (m, n), found {s.shape}"
            )
        self.similarity = s
        self.n = s.shape[1]

    @classmethod
    def random(
        cls, n: int, customers: int = 200, length_scale: float = 0.2, seed: int = 0
    ) -> FacilityLocation:
        """Customers and facilities uniform in the unit square, Gaussian-kernel similarity."""
        rng = np.random.default_rng(seed)
        cust, fac = rng.random((customers, 2)), rng.random((n, 2))
        d2 = ((cust[:, None, :] - fac[None, :, :]) ** 2).sum(-1)
        return cls(np.exp(-d2 / (2 * length_scale**2)))

    def __call__(self, z: ArrayLike) -> float:
        """Value of one subset."""
        sel = np.flatnonzero(_indicator(z, self.n))
        return float(self.similarity[:, sel].max(1).sum()) if sel.size else 0.0

    def batch(self, z: torch.Tensor) -> torch.Tensor:
        """Values of ``(..., n)`` indicator vectors (``s >= 0``, so ``z * s`` masks)."""
        z = _batch_input(z, self.n)
        s = torch.as_tensor(self.similarity, dtype=z.dtype, device=z.device)
        return (z.unsqueeze(-2) * s).amax(-1).sum(-1)

    def __repr__(self) -> str:
        """Short description."""
        return f"FacilityLocation(n={self.n}, customers={self.similarity.shape[0]})"


class DOptimalDesign:
    r"""Bayesian D-optimal design :math:`f(S) = \log\det(I_d + \sigma^{-2} X_S^\top X_S)`.

    Choosing ``k`` of ``n`` candidate experiments (rows of ``X``) to maximize the log-determinant
    of the posterior information of a linear model with prior :math:`N(0, I)` and noise
    variance :math:`\sigma^2`.

    Args:
        features: ``(n, d)`` candidate design points.
        noise: Noise variance :math:`\sigma^2 > 0`.
    """

    def __init__(self, features: ArrayLike, noise: float = 1.0) -> None:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or not np.isfinite(x).all():
            raise ValueError(f"features: expected finite values of shape (n, d), found {x.shape}")
        if not (isinstance(noise, int | float) and noise > 0):
            raise ValueError(f"noise: expected a positive number, found {noise!r}")
        self.features = x
        self.noise = float(noise)
        self.n, self.d = x.shape

    @classmethod
    def random(cls, n: int, d: int = 6, noise: float = 1.0, seed: int = 0) -> DOptimalDesign:
        """Gaussian design points with unequal scales per coordinate (so choices matter)."""
        rng = np.random.default_rng(seed)
        scales = np.exp(rng.normal(0, 0.5, size=d))
        return cls(rng.normal(size=(n, d)) * scales, noise)

    def __call__(self, z: ArrayLike) -> float:
        """Value of one subset."""
        w = _indicator(z, self.n)
        m = np.eye(self.d) + (self.features.T * w) @ self.features / self.noise
        return float(np.linalg.slogdet(m)[1])

    def batch(self, z: torch.Tensor) -> torch.Tensor:
        """Values of ``(..., n)`` indicator vectors."""
        z = _batch_input(z, self.n)
        x = torch.as_tensor(self.features, dtype=z.dtype, device=z.device)
        m = torch.einsum("...i,ia,ib->...ab", z, x, x) / self.noise
        m = m + torch.eye(self.d, dtype=z.dtype, device=z.device)
        return torch.linalg.slogdet(m)[1]

    def __repr__(self) -> str:
        """Short description."""
        return f"DOptimalDesign(n={self.n}, d={self.d}, noise={self.noise:g})"


class SensorPlacementReward:
    """The sensor-placement objective of :mod:`subset_rl.envs` as a deterministic black box.

    The value of a placement is the mean reward (minus the relative reconstruction error, minus
    sensor costs) of :class:`subset_rl.envs.SensorPlacementObjective` over *all* its held-out
    snapshots. Placements with fewer sensors than ``k`` (as greedy forward selection asks for)
    are scored by an objective built with the same arguments and that many sensors (the
    reconstruction is then least squares with fewer readings: minimum-norm below ``rank``).

    Args:
        k: Number of sensors of a full placement.
        **objective_kwargs: Arguments of :class:`~subset_rl.envs.SensorPlacementObjective`
            (``shape``, ``rank``, ``n_test``, ``noise_std`` must be 0, ...); ``device`` and
            ``dtype`` are chosen per call from the input.
    """

    def __init__(self, k: int, **objective_kwargs: Any) -> None:
        if objective_kwargs.get("noise_std", 0.0) != 0.0:
            raise ValueError(
                "noise_std: expected 0 (a deterministic black box), found "
                f"{objective_kwargs['noise_std']!r}"
            )
        for key in ("device", "dtype"):
            if key in objective_kwargs:
                raise TypeError(f"{key}: not accepted (chosen per call from the input)")
        self.k = k
        self.kwargs = objective_kwargs
        self._objectives: dict[tuple[int, str], Any] = {}
        self.objective = self._objective(k, torch.device("cpu"))
        self.n = self.objective.n

    def __getstate__(self) -> dict[str, Any]:
        """Pickles the arguments only (objectives are rebuilt, their data is cached)."""
        return {"k": self.k, "kwargs": self.kwargs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuilds from the arguments."""
        self.__init__(state["k"], **state["kwargs"])  # type: ignore[misc]

    def _objective(self, size: int, device: torch.device) -> Any:
        key = (size, str(device))
        if key not in self._objectives:
            from ..envs import SensorPlacementObjective

            self._objectives[key] = SensorPlacementObjective(
                size, device=device, dtype=_work_dtype(device), **self.kwargs
            )
        return self._objectives[key]

    def qr_basis(self) -> NDArray[np.float64]:
        """The POD modes that :meth:`SensorPlacementObjective.qr_placement` pivots on.

        ``max(k, rank)`` leading modes of the training snapshots, shape ``(n, modes)``: pass it
        as ``options={"basis": ...}`` to ``method="qr"``.
        """
        from ..envs import pod_basis

        train = self.objective.train_fields.double().cpu().numpy()
        _, basis, singular = pod_basis(train)
        numerical = int((singular > singular[0] * 1e-10).sum())
        return basis[:, : min(max(self.k, self.objective.rank), numerical)]

    def __call__(self, z: ArrayLike) -> float:
        """Value of one placement (indicator vector of shape ``(n,)``)."""
        a = _indicator(z, self.n)
        return float(self.batch(torch.as_tensor(a)[None])[0])

    def batch(self, z: torch.Tensor) -> torch.Tensor:
        """Values of ``(m, n)`` placements (any numbers of sensors >= 1), shape ``(m,)``."""
        from ..envs import SensorContext

        z = _batch_input(z, self.n)
        if z.dim() != 2:
            raise ValueError(f"z: expected shape (m, {self.n}), found {tuple(z.shape)}")
        sizes = z.sum(-1).round().long()
        out = torch.empty(z.shape[0], dtype=z.dtype, device=z.device)
        for size in sizes.unique().tolist():
            rows = sizes == size
            if size < 1:
                raise ValueError("z: expected at least one sensor per placement, found none")
            obj = self._objective(int(size), z.device)
            fields = obj.test_fields
            context = SensorContext(
                obs=torch.zeros(fields.shape[0], 1, dtype=obj.dtype, device=obj.device),
                index=torch.arange(fields.shape[0], device=obj.device),
                fields=fields,
                noise=torch.zeros_like(fields),
            )
            zz = z[rows].unsqueeze(1).expand(-1, fields.shape[0], -1)
            out[rows] = obj(zz, context).mean(-1).to(out.dtype)
        return out

    def __repr__(self) -> str:
        """Short description."""
        return f"SensorPlacementReward(n={self.n}, k={self.k}, {self.kwargs})"


def brute_force(
    f: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    k: int,
    *,
    maximize: bool = True,
    chunk: int = 4096,
) -> tuple[float, tuple[int, ...]]:
    """The exact optimum of a batched objective over all ``C(n, k)`` subsets.

    Args:
        f: Batched objective: ``(m, n)`` float tensor -> ``(m,)`` values (e.g. ``obj.batch``).
        n: Number of items.
        k: Subset size.
        maximize: Find the maximum (or the minimum).
        chunk: Subsets per call.

    Returns:
        The optimal value and its indices (the first in lexicographic order on ties).
    """
    if math.comb(n, k) > 5_000_000:
        raise ValueError(f"brute_force: C({n}, {k}) = {math.comb(n, k)} subsets is too many")
    best_value, best_idx = -math.inf, ()
    sign = 1.0 if maximize else -1.0
    combos = itertools.combinations(range(n), k)
    while True:
        part: Sequence[tuple[int, ...]] = list(itertools.islice(combos, chunk))
        if not part:
            break
        z = torch.zeros(len(part), n)
        z.scatter_(1, torch.tensor(part), 1.0)
        values = sign * torch.as_tensor(f(z), dtype=torch.float64).reshape(-1)
        i = int(values.argmax())
        if float(values[i]) > best_value:
            best_value, best_idx = float(values[i]), part[i]
    return sign * best_value, best_idx

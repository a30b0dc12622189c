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

Families that are not submodular, for benchmarks where greedy carries no guarantee:

* :class:`QuadraticObjective`: :math:`f(S) = \sum_{i\in S} c_i + \sum_{i<j \in S} Q_{ij}` with
  mixed-sign :math:`Q` (a cardinality-constrained QUBO);
* :class:`CoverageWithSynergies`: weighted coverage plus bonuses for chosen pairs;
* :class:`DeceptiveTrap`: blocks that only pay when complete;
* :class:`FeatureSelectionKNN`: 1-NN validation accuracy on the chosen features (digits);
* :class:`NoisyObjective`: any of them observed with Gaussian noise, with the true value kept.

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
    "CoverageWithSynergies",
    "DOptimalDesign",
    "DeceptiveTrap",
    "FacilityLocation",
    "FeatureSelectionKNN",
    "NoisyObjective",
    "QuadraticObjective",
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


class QuadraticObjective:
    r"""A quadratic set function :math:`f(S) = \sum_{i\in S} c_i + \sum_{i<j;\,i,j\in S} Q_{ij}`.

    With mixed-sign ``Q`` it is neither submodular nor supermodular (a QUBO with a cardinality
    constraint): greedy forward selection carries no guarantee. Its value on a 0/1 vector ``z``
    is ``c @ z + z @ Q @ z / 2`` with ``Q`` symmetric and a zero diagonal.

    Args:
        linear: ``(n,)`` item values :math:`c`.
        pairwise: ``(n, n)`` symmetric interactions :math:`Q` (the diagonal is ignored).
    """

    def __init__(self, linear: ArrayLike, pairwise: ArrayLike) -> None:
        c = np.asarray(linear, dtype=np.float64)
        q = np.asarray(pairwise, dtype=np.float64)
        if c.ndim != 1 or q.shape != (c.size, c.size):
            raise ValueError(
                f"linear, pairwise: expected shapes (n,) and (n, n), found {c.shape}, {q.shape}"
            )
        if not (np.isfinite(c).all() and np.isfinite(q).all()):
            raise ValueError("linear, pairwise: expected finite values")
        if not np.allclose(q, q.T):
            raise ValueError("pairwise: expected a symmetric matrix")
        q = q.copy()
        np.fill_diagonal(q, 0.0)
        self.linear, self.pairwise, self.n = c, q, c.size

    @classmethod
    def random(cls, n: int, density: float = 0.1, seed: int = 0) -> QuadraticObjective:
        """Item values ~ N(1, 1); a share ``density`` of pairs interacts with N(0, 2) weights."""
        rng = np.random.default_rng(seed)
        upper = np.triu(rng.normal(0, 2, (n, n)) * (rng.random((n, n)) < density), 1)
        return cls(rng.normal(1, 1, n), upper + upper.T)

    def __call__(self, z: ArrayLike) -> float:
        """Value of one subset."""
        a = _indicator(z, self.n)
        return float(a @ self.linear + 0.5 * a @ self.pairwise @ a)

    def batch(self, z: torch.Tensor) -> torch.Tensor:
        """Values of ``(..., n)`` indicator vectors."""
        z = _batch_input(z, self.n)
        c = torch.as_tensor(self.linear, dtype=z.dtype, device=z.device)
        q = torch.as_tensor(self.pairwise, dtype=z.dtype, device=z.device)
        return z @ c + 0.5 * ((z @ q) * z).sum(-1)

    def __repr__(self) -> str:
        """Short description."""
        return f"QuadraticObjective(n={self.n})"


class CoverageWithSynergies:
    r"""Weighted coverage plus bonuses for pairs chosen together (not submodular).

    :math:`f(S) = \sum_u w_u [u \in \bigcup_{i\in S} C_i] + \sum_{(i,j)} b_{ij} [i, j \in S]`.

    Args:
        coverage: The :class:`WeightedCoverage` part.
        pairs: ``(P, 2)`` item pairs.
        bonus: ``(P,)`` non-negative bonus of each pair.
    """

    def __init__(self, coverage: WeightedCoverage, pairs: ArrayLike, bonus: ArrayLike) -> None:
        p = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        b = np.asarray(bonus, dtype=np.float64).reshape(-1)
        if b.shape[0] != p.shape[0] or (p < 0).any() or (p >= coverage.n).any():
            raise ValueError(
                f"pairs, bonus: expected (P, 2) item indices < {coverage.n} and P bonuses, found "
                f"{p.shape} and {b.shape}"
            )
        self.coverage, self.pairs, self.bonus, self.n = coverage, p, b, coverage.n

    @classmethod
    def random(
        cls, n: int, universe: int | None = None, n_pairs: int = 20, seed: int = 0
    ) -> CoverageWithSynergies:
        """Coverage of ``5 n`` elements at density 0.03 and ``n_pairs`` pair bonuses.

        Each bonus is worth about as much as the best single item covers, so taking a pair can
        beat two items of higher individual value.
        """
        rng = np.random.default_rng(seed + 1)
        cov = WeightedCoverage.random(n, universe=universe or 5 * n, density=0.03, seed=seed)
        single = cov.cover @ cov.weights
        pairs = np.stack([rng.choice(n, 2, replace=False) for _ in range(n_pairs)])
        return cls(cov, pairs, rng.uniform(0.5, 1.5, n_pairs) * single.max())

    def __call__(self, z: ArrayLike) -> float:
        """Value of one subset."""
        a = _indicator(z, self.n)
        return self.coverage(a) + float((a[self.pairs[:, 0]] * a[self.pairs[:, 1]]) @ self.bonus)

    def batch(self, z: torch.Tensor) -> torch.Tensor:
        """Values of ``(..., n)`` indicator vectors."""
        z = _batch_input(z, self.n)
        b = torch.as_tensor(self.bonus, dtype=z.dtype, device=z.device)
        both = z[..., self.pairs[:, 0]] * z[..., self.pairs[:, 1]]
        return self.coverage.batch(z) + both @ b

    def __repr__(self) -> str:
        """Short description."""
        return f"CoverageWithSynergies(n={self.n}, pairs={len(self.pairs)})"


class DeceptiveTrap:
    r"""A deceptive trap: items form blocks; only complete blocks pay.

    The items (randomly permuted) form blocks of ``block`` items. A block with ``c`` chosen
    items is worth :math:`w_b (\text{block} - 1 - c)` for ``c < block`` and
    :math:`w_b \cdot \text{block}` when complete, so every single addition looks bad (each item
    lowers its block's value) until a block is complete: a trap for greedy and for first-order
    models. With ``k`` a multiple of ``block`` the optimum completes the ``k / block`` blocks of
    largest weight.

    Args:
        n: Number of items (a multiple of ``block``).
        block: Block size.
        seed: Seed of the permutation and the block weights ``w_b ~ U(1, 2)``.
    """

    def __init__(self, n: int, block: int = 4, seed: int = 0) -> None:
        if block < 2 or n % block:
            raise ValueError(
                f"n, block: expected block >= 2 dividing n, found n={n}, block={block}"
            )
        rng = np.random.default_rng(seed)
        self.n, self.block = n, block
        self.group = rng.permutation(n) // block  # block of each item
        self.weight = rng.uniform(1, 2, n // block)

    def optimum(self, k: int) -> float:
        """The optimal value for ``k`` items (``k`` a multiple of ``block``)."""
        if k % self.block:
            raise ValueError(f"k: expected a multiple of block={self.block}, found {k}")
        full = np.sort(self.weight)[::-1][: k // self.block]
        return float(full.sum() * self.block + (self.weight.sum() - full.sum()) * (self.block - 1))

    def _value(self, counts: np.ndarray | torch.Tensor, weight: Any) -> Any:
        full = counts == self.block
        per = full * self.block + (~full) * (self.block - 1 - counts)
        return per @ weight

    def __call__(self, z: ArrayLike) -> float:
        """Value of one subset."""
        a = _indicator(z, self.n)
        counts = np.bincount(self.group, weights=a, minlength=self.n // self.block).round()
        return float(self._value(counts, self.weight))

    def batch(self, z: torch.Tensor) -> torch.Tensor:
        """Values of ``(..., n)`` indicator vectors."""
        z = _batch_input(z, self.n)
        onehot = torch.zeros(self.n, self.n // self.block, dtype=z.dtype, device=z.device)
        onehot[torch.arange(self.n), torch.as_tensor(self.group)] = 1
        w = torch.as_tensor(self.weight, dtype=z.dtype, device=z.device)
        return self._value((z @ onehot).round(), w)

    def __repr__(self) -> str:
        """Short description."""
        return f"DeceptiveTrap(n={self.n}, block={self.block})"


class NoisyObjective:
    """A deterministic objective observed with Gaussian noise; ``true`` scores the result.

    Each call returns ``true(z) + noise_std * eps`` with fresh noise (so an optimizer that keeps
    the best *observed* value is biased upwards; benchmarks score what it returns with
    :attr:`true`).

    Args:
        true: The noise-free objective (with ``__call__`` and ``batch``).
        noise_std: Standard deviation of the noise.
        seed: Seed of the noise.
    """

    def __init__(self, true: Any, noise_std: float, seed: int = 0) -> None:
        if not (isinstance(noise_std, int | float) and noise_std >= 0):
            raise ValueError(f"noise_std: expected a number >= 0, found {noise_std!r}")
        self.true, self.noise_std, self.n = true, float(noise_std), true.n
        self.rng = np.random.default_rng(seed)

    def __call__(self, z: ArrayLike) -> float:
        """One noisy observation."""
        return self.true(z) + self.noise_std * float(self.rng.normal())

    def batch(self, z: torch.Tensor) -> torch.Tensor:
        """Noisy observations of ``(..., n)`` indicator vectors."""
        v = self.true.batch(z)
        eps = torch.as_tensor(self.rng.normal(size=tuple(v.shape)), dtype=v.dtype, device=v.device)
        return v + self.noise_std * eps

    def __repr__(self) -> str:
        """Short description."""
        return f"NoisyObjective({self.true!r}, noise_std={self.noise_std:g})"


class FeatureSelectionKNN:
    """Validation accuracy of a 1-nearest-neighbour classifier on the chosen features.

    Not differentiable and not submodular: redundant or noisy features lower the accuracy.
    Features are standardized on the training split.

    Args:
        x_train: ``(N, n)`` training inputs.
        y_train: ``(N,)`` labels.
        x_val: ``(M, n)`` validation inputs.
        y_val: ``(M,)`` labels.
    """

    def __init__(
        self, x_train: ArrayLike, y_train: ArrayLike, x_val: ArrayLike, y_val: ArrayLike
    ) -> None:
        xt = np.asarray(x_train, dtype=np.float64)
        xv = np.asarray(x_val, dtype=np.float64)
        if xt.ndim != 2 or xv.ndim != 2 or xt.shape[1] != xv.shape[1]:
            raise ValueError(
                f"x_train, x_val: expected (N, n) and (M, n), found {xt.shape} and {xv.shape}"
            )
        mu, sd = xt.mean(0), xt.std(0) + 1e-9
        xt, xv = (xt - mu) / sd, (xv - mu) / sd
        self.y_train = np.asarray(y_train).reshape(-1)
        self.y_val = np.asarray(y_val).reshape(-1)
        self.n = xt.shape[1]
        # squared coordinate differences, (M, N, n) float32: distances are one product with z
        self.diff2 = ((xv[:, None, :] - xt[None, :, :]) ** 2).astype(np.float32)

    @classmethod
    def digits(
        cls, n_train: int = 500, n_val: int = 300, noise_features: int = 0, seed: int = 0
    ) -> FeatureSelectionKNN:
        """scikit-learn's 8x8 digits (64 pixels), plus ``noise_features`` random columns."""
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        rng = np.random.default_rng(seed)
        if noise_features:
            x = np.hstack([x, rng.normal(0, x.std(), (x.shape[0], noise_features))])
        idx = rng.permutation(len(y))[: n_train + n_val]
        tr, va = idx[:n_train], idx[n_train:]
        return cls(x[tr], y[tr], x[va], y[va])

    def __call__(self, z: ArrayLike) -> float:
        """Accuracy for one subset."""
        a = _indicator(z, self.n).astype(np.float32)
        nearest = (self.diff2 @ a).argmin(1)
        return float((self.y_train[nearest] == self.y_val).mean())

    def batch(self, z: torch.Tensor) -> torch.Tensor:
        """Accuracies of ``(m, n)`` subsets."""
        z = _batch_input(z, self.n)
        d2 = torch.as_tensor(self.diff2)
        flat = z.reshape(-1, self.n).to(torch.float32).cpu()
        nearest = torch.einsum("vtn,mn->mvt", d2, flat).argmin(-1).numpy()
        acc = (self.y_train[nearest] == self.y_val[None, :]).mean(-1)
        return torch.as_tensor(acc, dtype=z.dtype, device=z.device).reshape(z.shape[:-1])

    def __repr__(self) -> str:
        """Short description."""
        train, val = self.diff2.shape[1], len(self.y_val)
        return f"FeatureSelectionKNN(n={self.n}, train={train}, val={val})"


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

r"""Sensor placement: choose ``k`` grid cells to measure, reconstruct the whole field from them.

The fields ``x`` in ``R^n`` (an ``H x W`` grid, flattened) are reconstructed from readings at the
chosen cells with a rank-``r`` POD basis ``Psi_r`` (leading left singular vectors of the centred
training snapshots) and the training mean ``mu``, by least squares:

.. math:: \hat x = \mu + \Psi_r (C \Psi_r)^+ (y - C \mu), \qquad y = C (x + \varepsilon)

where ``C`` selects the chosen cells and ``eps`` is the sensor noise. The reward is minus the
relative L2 error ``||x_hat - x|| / ||x||`` on a held-out snapshot, minus the sensor costs.

The classical baseline ships alongside: QR column pivoting on ``Psi_r^T`` (Manohar et al., 2018,
"Data-driven sparse sensor placement for reconstruction", IEEE Control Systems 38(3); the method of
PySensors), and uniform random placement.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch
from numpy.typing import ArrayLike, NDArray

from ._validation import as_float_vector, as_index_mask, check_float, check_int
from .base import (
    FORBIDDEN,
    SubsetEnv,
    cell_size,
    colormap,
    hot_colormap,
    hstack_panels,
    mark_cells,
    upscale,
)
from .objective import Context, SubsetObjective, placeholder_obs

__all__ = [
    "SensorContext",
    "SensorPlacementEnv",
    "SensorPlacementObjective",
    "gaussian_process_fields",
    "pod_basis",
    "qr_placement",
    "random_placement",
]


def gaussian_process_fields(
    num: int,
    shape: Sequence[int] = (16, 16),
    length_scale: float = 0.3,
    *,
    seed: int | np.random.Generator | None = 0,
) -> NDArray[np.float64]:
    r"""Samples zero-mean, unit-variance Gaussian-process fields on a periodic grid (spectrally).

    White noise is filtered in the Fourier domain by the square root of the squared-exponential
    spectral density ``S(f) = exp(-2 pi^2 l^2 |f|^2)``, so the field has covariance
    ``exp(-|d|^2 / (2 l^2))`` (wrapped around the periodic domain). The grid spacing is
    ``1 / max(shape)``: the longer side has length 1. A larger length scale gives smoother fields,
    whose energy sits in fewer modes (a lower effective rank).

    Args:
        num: Number of fields.
        shape: Grid shape ``(H, W)``.
        length_scale: Correlation length ``l`` in units of the longer side, ``> 0``.
        seed: Seed or generator.

    Returns:
        Array of shape ``(num, H, W)``.
    """
    num = check_int("num", num, minimum=1)
    shape = _check_shape(shape)
    ell = check_float("length_scale", length_scale, minimum=0.0, strict_minimum=True)
    rng = np.random.default_rng(seed)
    side = max(shape)
    freqs = [np.fft.fftfreq(s, d=1.0 / side) for s in shape]
    f2 = sum(np.meshgrid(*[f**2 for f in freqs], indexing="ij"))
    density = np.exp(-2.0 * np.pi**2 * ell**2 * f2)
    amplitude = np.sqrt(density / density.mean())
    noise = rng.standard_normal((num, *shape))
    axes = tuple(range(1, len(shape) + 1))
    return np.fft.ifftn(np.fft.fftn(noise, axes=axes) * amplitude, axes=axes).real


def pod_basis(
    snapshots: ArrayLike, rank: int | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Proper orthogonal decomposition of training snapshots.

    Args:
        snapshots: Array of shape ``(m, n)``: one flattened field per row.
        rank: Number of modes to keep; ``None`` keeps ``min(m, n)``.

    Returns:
        ``(mean, basis, singular_values)``: the mean field ``(n,)``, orthonormal modes ``(n, rank)``
        (leading left singular vectors of the centred snapshots, fields as columns), and all
        singular values in decreasing order.
    """
    x = np.asarray(snapshots, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"snapshots: expected shape (m >= 2, n), found {x.shape}")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    r = len(s) if rank is None else check_int("rank", rank, minimum=1, maximum=len(s))
    return mean, vt[:r].T.copy(), s


def qr_placement(
    basis: ArrayLike, k: int, *, forbidden: ArrayLike | None = None
) -> NDArray[np.int8]:
    """Sensor placement by QR column pivoting on ``basis.T`` (PySensors' ``QR`` method).

    The first ``r`` pivots greedily maximise the volume spanned by the chosen rows of the basis;
    when ``k > r`` the later pivots are ordered by residual norms that are (numerically) zero and
    carry little meaning, so pass more modes than sensors (``SensorPlacementObjective.qr_placement``
    does).

    Args:
        basis: Modes of shape ``(n, r)``.
        k: Number of sensors, ``1 <= k <=`` number of allowed cells.
        forbidden: Optional mask or indices of cells that may not hold a sensor.

    Returns:
        An ``int8`` k-hot vector of shape ``(n,)``.
    """
    psi = np.asarray(basis, dtype=np.float64)
    if psi.ndim != 2:
        raise ValueError(f"basis: expected shape (n, r), found {psi.shape}")
    n = psi.shape[0]
    allowed = np.ones(n, bool) if forbidden is None else ~as_index_mask("forbidden", forbidden, n)
    cells = np.flatnonzero(allowed)
    k = check_int("k", k, minimum=1, maximum=cells.size)
    _, pivots = scipy.linalg.qr(psi[cells].T, mode="r", pivoting=True)
    z = np.zeros(n, dtype=np.int8)
    z[cells[pivots[:k]]] = 1
    return z


def random_placement(
    n: int,
    k: int,
    *,
    forbidden: ArrayLike | None = None,
    size: int | None = None,
    rng: int | np.random.Generator | None = None,
) -> NDArray[np.int8]:
    """Uniformly random sensor placements.

    Args:
        n: Number of cells.
        k: Number of sensors.
        forbidden: Optional mask or indices of cells that may not hold a sensor.
        size: Number of placements; ``None`` returns one vector.
        rng: Seed or generator.

    Returns:
        ``int8`` k-hot array of shape ``(n,)`` or ``(size, n)``.
    """
    n = check_int("n", n, minimum=1)
    allowed = np.ones(n, bool) if forbidden is None else ~as_index_mask("forbidden", forbidden, n)
    cells = np.flatnonzero(allowed)
    k = check_int("k", k, minimum=1, maximum=cells.size)
    gen = np.random.default_rng(rng)
    count = 1 if size is None else check_int("size", size, minimum=1)
    out = np.zeros((count, n), dtype=np.int8)
    for row in out:
        row[gen.choice(cells, k, replace=False)] = 1
    return out[0] if size is None else out


@functools.lru_cache(maxsize=8)
def _synthetic_data(
    shape: tuple[int, ...], length_scale: float, n_train: int, n_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Synthetic train/test fields and their POD, cached per process (arrays are read-only)."""
    data = gaussian_process_fields(n_train + n_test, shape, length_scale, seed=seed)
    data = data.reshape(n_train + n_test, -1)
    train, test = data[:n_train], data[n_train:]
    pod = pod_basis(train)
    for a in (train, test, *pod):
        a.setflags(write=False)
    return train, test, pod


def _check_shape(shape: Any) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape: expected a tuple of ints like (16, 16), found {shape!r}") from None
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"shape: expected 1 to 3 dimensions, found {dims}")
    return tuple(check_int("shape", d, minimum=1) for d in dims)


@dataclass(frozen=True)
class SensorContext(Context):
    """Held-out snapshots to reconstruct.

    Attributes:
        obs: Constant ``0`` of shape ``(batch, 1)`` (placement does not depend on the snapshot).
        index: Index of each snapshot in the objective's test set, shape ``(batch,)``.
        fields: The true fields, shape ``(batch, n)``.
        noise: Sensor noise at every cell, shape ``(batch, n)`` (zeros without noise); all
            actions scored against the same context see the same noise.
    """

    index: torch.Tensor
    fields: torch.Tensor
    noise: torch.Tensor


class SensorPlacementObjective(SubsetObjective):
    """Batched sensor-placement objective (see the module docstring for the math).

    Args:
        k: Number of sensors.
        shape: Grid shape of the default synthetic fields.
        rank: Number of POD modes ``r`` used for reconstruction.
        length_scale: Correlation length of the synthetic fields (units of the longer side).
        n_train: Number of synthetic training snapshots (for the basis).
        n_test: Number of synthetic held-out snapshots (episodes draw from these).
        fields: Optional real data instead of the synthetic fields: shape ``(m, H, W)`` (or
            ``(m, n)``); split into training and held-out snapshots by ``test_fraction``.
        test_fraction: Held-out fraction of ``fields``.
        noise_std: Standard deviation of the additive Gaussian sensor noise (field units; the
            synthetic fields have unit variance).
        forbidden: Optional mask (grid-shaped or flat) or indices of cells that may not hold a
            sensor.
        sensor_cost: Cost per sensor, a scalar or one value per cell, subtracted from the reward.
        success_threshold: A placement succeeds when the relative error is at most this.
        data_seed: Seed of the synthetic data and of the split.
        device: Torch device.
        dtype: Floating dtype.
    """

    has_success = True

    def __init__(
        self,
        k: int = 10,
        *,
        shape: Sequence[int] = (16, 16),
        rank: int = 10,
        length_scale: float = 0.3,
        n_train: int = 500,
        n_test: int = 100,
        fields: ArrayLike | None = None,
        test_fraction: float = 0.2,
        noise_std: float = 0.0,
        forbidden: ArrayLike | None = None,
        sensor_cost: float | ArrayLike = 0.0,
        success_threshold: float = 0.1,
        data_seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if fields is None:
            self.shape = _check_shape(shape)
            n_train = check_int("n_train", n_train, minimum=2)
            n_test = check_int("n_test", n_test, minimum=1)
            train, test, pod = _synthetic_data(
                self.shape,
                check_float("length_scale", length_scale, minimum=0.0, strict_minimum=True),
                n_train,
                n_test,
                check_int("data_seed", data_seed),
            )
        else:
            data = np.asarray(fields)
            if data.dtype.kind not in "biuf" or data.ndim < 2 or data.shape[0] < 3:
                raise ValueError(
                    "fields: expected a numeric array of shape (snapshots >= 3, H, W) or "
                    f"(snapshots, n), found dtype {data.dtype} with shape {data.shape}"
                )
            data = data.astype(np.float64)
            if not np.isfinite(data).all():
                raise ValueError("fields: expected finite values, found NaN or inf")
            self.shape = tuple(data.shape[1:])
            data = data.reshape(data.shape[0], -1)
            fraction = check_float("test_fraction", test_fraction, minimum=0.0, maximum=1.0)
            order = np.random.default_rng(data_seed).permutation(data.shape[0])
            n_test = min(max(int(round(fraction * data.shape[0])), 1), data.shape[0] - 2)
            test, train = data[order[:n_test]], data[order[n_test:]]
            pod = pod_basis(train)
        n = train.shape[1]
        allowed = None
        if forbidden is not None:
            allowed = ~as_index_mask("forbidden", forbidden, n)
        super().__init__(n, k, allowed=allowed, device=device, dtype=dtype)
        mean, basis_full, singular = pod
        numerical_rank = int((singular > singular[0] * 1e-10).sum()) if singular[0] > 0 else 0
        self.rank = check_int("rank", rank, minimum=1, maximum=max(numerical_rank, 1))
        self.noise_std = check_float("noise_std", noise_std, minimum=0.0)
        self.success_threshold = check_float("success_threshold", success_threshold, minimum=0.0)
        self.singular_values = singular
        self._basis_full = basis_full[:, :numerical_rank]
        self.mean = torch.tensor(mean, device=self.device, dtype=dtype)
        self.basis = torch.tensor(basis_full[:, : self.rank], device=self.device, dtype=dtype)
        self.train_fields = torch.tensor(train, device=self.device, dtype=dtype)
        self.test_fields = torch.tensor(test, device=self.device, dtype=dtype)
        self.sensor_cost = torch.as_tensor(
            as_float_vector("sensor_cost", sensor_cost, n), device=self.device, dtype=dtype
        )

    def reconstruct(
        self, z: torch.Tensor, fields: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Least-squares reconstruction from the readings at the chosen cells.

        Args:
            z: k-hot placements of shape ``(samples, batch, n)`` (already valid).
            fields: True fields of shape ``(batch, n)``.
            noise: Optional noise added to the readings, shape ``(batch, n)``.

        Returns:
            Reconstructions of shape ``(samples, batch, n)``.
        """
        z = z.to(device=self.device, dtype=self.dtype)
        fields = torch.as_tensor(fields, device=self.device, dtype=self.dtype)
        if fields.dim() != 2 or fields.shape[-1] != self.n or z.dim() != 3:
            raise ValueError(
                f"expected z of shape (samples, batch, {self.n}) and fields of shape "
                f"(batch, {self.n}), found {tuple(z.shape)} and {tuple(fields.shape)}"
            )
        measured = fields if noise is None else fields + noise
        cells = z.topk(self.k, dim=-1).indices  # (S, B, k)
        samples = z.shape[0]
        readings = measured.unsqueeze(0).expand(samples, -1, -1).gather(-1, cells)
        rows = self.basis[cells]  # (S, B, k, r)
        rhs = (readings - self.mean[cells]).unsqueeze(-1)  # (S, B, k, 1)
        coef = torch.linalg.pinv(rows) @ rhs  # (S, B, r, 1)
        return self.mean + (self.basis @ coef).squeeze(-1)

    def relative_error(
        self, z: torch.Tensor, fields: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``||x_hat - x|| / ||x||`` for each placement and field, shape ``(samples, batch)``."""
        fields = torch.as_tensor(fields, device=self.device, dtype=self.dtype)
        x_hat = self.reconstruct(z, fields, noise)
        return (x_hat - fields).norm(dim=-1) / fields.norm(dim=-1).clamp_min(
            torch.finfo(self.dtype).tiny
        )

    def qr_placement(self, k: int | None = None) -> NDArray[np.int8]:
        """QR-pivoting placement with ``max(k, rank)`` modes of the POD basis (the baseline).

        Args:
            k: Number of sensors; defaults to :attr:`k`.

        Returns:
            An ``int8`` k-hot vector of shape ``(n,)`` avoiding forbidden cells.
        """
        k = self.k if k is None else k
        modes = min(max(check_int("k", k, minimum=1), self.rank), self._basis_full.shape[1])
        return qr_placement(self._basis_full[:, :modes], k, forbidden=~self.allowed_np)

    def random_placement(
        self, size: int | None = None, rng: int | np.random.Generator | None = None
    ) -> NDArray[np.int8]:
        """Uniformly random placements of :attr:`k` sensors avoiding forbidden cells."""
        return random_placement(self.n, self.k, forbidden=~self.allowed_np, size=size, rng=rng)

    def _sample_context(self, batch_size: int, generator: torch.Generator | None) -> Context:
        index = self._randint(self.test_fields.shape[0], (batch_size,), generator)
        fields = self.test_fields[index]
        if self.noise_std > 0:
            noise = self._randn((batch_size, self.n), generator) * self.noise_std
        else:
            noise = torch.zeros_like(fields)
        return SensorContext(
            obs=placeholder_obs(batch_size, self.device), index=index, fields=fields, noise=noise
        )

    def _evaluate(self, z: torch.Tensor, context: Context) -> dict[str, torch.Tensor]:
        if not isinstance(context, SensorContext):
            raise TypeError(f"context: expected a SensorContext, found {type(context).__name__}")
        error = self.relative_error(z, context.fields, context.noise)
        cost = z @ self.sensor_cost
        return {
            "reward": -error - cost,
            "success": (error <= self.success_threshold).to(self.dtype),
            "relative_error": error,
            "cost": cost,
        }


class SensorPlacementEnv(SubsetEnv):
    """Choose ``k`` cells of a grid for sensors that reconstruct a field.

    ## Description
    Each episode draws a held-out field snapshot (by default a synthetic Gaussian-process field on
    a 16 x 16 grid). The agent places ``k`` sensors; the field is reconstructed from the readings
    at those cells with a rank-``r`` POD basis learned from training snapshots, by least squares
    ``x_hat = mu + Psi_r (C Psi_r)^+ (y - C mu)``. Compare with
    :meth:`SensorPlacementObjective.qr_placement` (QR pivoting) and random placement.

    ## Action Space
    ``KHot(n, k)``: an ``int8`` vector over the ``n = H * W`` cells (row-major) with exactly ``k``
    ones, none at forbidden cells. Float, int and bool arrays are accepted.

    ## Observation Space
    ``Box(0, 1, (1,), float32)``, always ``0``: the placement does not see the field.

    ## Rewards
    ``-||x_hat - x|| / ||x||`` (minus the relative L2 reconstruction error) minus the summed
    ``sensor_cost`` of the chosen cells. A penalized invalid action gets ``invalid_penalty``.

    ## Starting State
    A held-out snapshot drawn uniformly, plus sensor noise if ``noise_std > 0``.

    ## Episode End
    Terminates after ``horizon`` steps (default 1); never truncates. ``info`` holds
    ``objective``, ``relative_error``, ``cost``, ``action_valid`` and ``is_success``
    (relative error at most ``success_threshold``).

    ## Arguments
    ``k`` (10), ``shape`` ((16, 16)), ``rank`` (10), ``length_scale`` (0.3), ``n_train`` (500),
    ``n_test`` (100), ``fields`` (None: synthetic), ``test_fraction`` (0.2), ``noise_std`` (0),
    ``forbidden`` (None), ``sensor_cost`` (0), ``success_threshold`` (0.1), ``data_seed`` (0),
    ``device`` ("cpu"), ``invalid_action`` ("raise"), ``invalid_penalty`` (-1), ``horizon`` (1),
    ``render_mode`` (None); see :class:`SensorPlacementObjective` and :class:`SubsetEnv`.

    ## Rendering
    ``render_mode="rgb_array"`` gives three panels of the last step's snapshot: the true field,
    the reconstruction from the chosen sensors (both in viridis on the true field's range, the
    sensors marked as white squares, forbidden cells black), and the absolute error (black to
    white over the field's range). Before the first step only the field is drawn. 1-d fields are
    one row; 3-d fields ``(A, B, C)`` are drawn as ``A`` rows of ``B * C`` cells.
    ``render_mode="human"`` shows the same picture with matplotlib.

    ## Version History
    * v0: Initial version.
    """

    def __init__(
        self,
        k: int = 10,
        *,
        invalid_action: str = "raise",
        invalid_penalty: float = -1.0,
        horizon: int = 1,
        render_mode: str | None = None,
        **objective_kwargs: Any,
    ) -> None:
        objective = SensorPlacementObjective(k, **objective_kwargs)
        super().__init__(
            objective,
            invalid_action=invalid_action,
            invalid_penalty=invalid_penalty,
            horizon=horizon,
            render_mode=render_mode,
        )

    def _draw(
        self, context: Any, z: NDArray[np.int8] | None, info: dict[str, Any]
    ) -> NDArray[np.uint8]:
        objective: SensorPlacementObjective = self.objective  # type: ignore[assignment]
        shape = objective.shape
        rows, cols = (1, shape[0]) if len(shape) == 1 else (shape[0], int(np.prod(shape[1:])))
        cell = cell_size(rows, cols)
        blank = np.full((rows * cell, cols * cell, 3), 235, np.uint8)
        if not isinstance(context, SensorContext):
            return hstack_panels([blank, blank, blank])
        field = context.fields[0].detach().cpu().double().numpy()
        low, high = float(field.min()), float(field.max())
        forbidden = np.flatnonzero(~objective.allowed_np)

        def panel(values: NDArray[np.float64] | None, hot: bool = False) -> NDArray[np.uint8]:
            if values is None:
                return blank.copy()
            colors = hot_colormap(values, high - low) if hot else colormap(values, low, high)
            colors[forbidden] = FORBIDDEN
            return upscale(colors.reshape(rows, cols, 3), cell)

        truth, reconstruction, error = panel(field), panel(None), panel(None)
        if z is not None:
            zt = torch.as_tensor(np.asarray(z), device=objective.device).view(1, 1, -1)
            with torch.no_grad():
                x_hat = objective.reconstruct(zt, context.fields[:1], context.noise[:1])
            x_hat_np = x_hat[0, 0].detach().cpu().double().numpy()
            reconstruction = panel(x_hat_np)
            error = panel(np.abs(x_hat_np - field), hot=True)
            chosen = np.flatnonzero(np.asarray(z))
            mark_cells(truth, chosen, cols, cell)
            mark_cells(reconstruction, chosen, cols, cell)
        return hstack_panels([truth, reconstruction, error])

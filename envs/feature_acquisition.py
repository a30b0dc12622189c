"""Feature acquisition: choose ``k`` features of an instance to show a fixed, non-differentiable
classifier that was trained to cope with missing features.

The classifier is scikit-learn's ``HistGradientBoostingClassifier`` (missing = NaN, handled natively
by the trees) trained on copies of the training rows with random feature masks: each copy keeps
each feature with a probability drawn uniformly per row, so the classifier sees every amount of
missingness. It is a black box for the agent: no gradient flows through the trees.

The classifier's OpenMP threads are limited to one while it trains and predicts: small
predictions are faster that way, and a multi-threaded OpenMP pool slows down by an order of
magnitude when the cores are shared (other processes, vector-env workers).

Vector envs: a prediction costs about the same for one row as for dozens (the trees are walked
once per call), so :meth:`FeatureAcquisitionEnv.prefetch_steps` predicts the rows of the next
``step`` of many envs in one call; :class:`subset_rl.sb3.SubsetDummyVecEnv` (the default of
:func:`subset_rl.sb3.make_subset_vec_env`) calls it before stepping its envs, and each ``step``
then finds its prediction ready (``benchmarks/bench_feature_acquisition.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from subset_rl.data import Dataset, as_dataset, train_test_split

from ._validation import as_float_vector, as_index_mask, check_choice, check_float, check_int
from .base import (
    BAD,
    GOOD,
    SubsetEnv,
    bar_panel,
    cell_size,
    colormap,
    grid_shape,
    hstack_panels,
    upscale,
)
from .objective import Context, SubsetObjective

_GRAY = np.array([[0, 0, 0], [255, 255, 255]], dtype=np.float64)
_IMAGE_DATASETS = ("digits", "mnist", "fashion")

__all__ = [
    "FeatureAcquisitionEnv",
    "FeatureAcquisitionObjective",
    "FeatureContext",
    "train_masked_classifier",
]

_CLASSIFIER_CACHE: dict[tuple[Any, ...], Any] = {}
_CONTROLLER: Any = None


def _single_thread() -> Any:
    """A context manager limiting OpenMP (scikit-learn's trees) to one thread."""
    global _CONTROLLER
    if _CONTROLLER is None:
        import sklearn.ensemble  # noqa: F401 - loads the OpenMP runtime the controller must see
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="openmp")


def train_masked_classifier(
    X: ArrayLike,
    y: ArrayLike,
    *,
    copies: int = 4,
    max_iter: int = 50,
    always_observed: ArrayLike | None = None,
    seed: int = 0,
    **hgb_kwargs: Any,
) -> Any:
    """Trains a ``HistGradientBoostingClassifier`` on randomly masked copies of the data.

    Args:
        X: Training features, shape ``(samples, features)``.
        y: Training labels, shape ``(samples,)``.
        copies: Number of masked copies of each row.
        max_iter: Boosting iterations (small keeps training to a few seconds).
        always_observed: Optional mask or indices of features never masked (the free features).
        seed: Seed of the masks and of the classifier.
        **hgb_kwargs: Further keyword arguments of ``HistGradientBoostingClassifier``.

    Returns:
        The fitted classifier (``predict_proba`` accepts NaN for missing features).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(
            f"expected X of shape (samples, features) and y of shape (samples,), found "
            f"{X.shape} and {y.shape}"
        )
    copies = check_int("copies", copies, minimum=1)
    rng = np.random.default_rng(seed)
    rows = np.repeat(X, copies, axis=0)
    keep = rng.random(rows.shape) < rng.random((rows.shape[0], 1))
    if always_observed is not None:
        keep |= as_index_mask("always_observed", always_observed, X.shape[1])
    params = {"max_iter": check_int("max_iter", max_iter, minimum=1), "early_stopping": False}
    params.update(hgb_kwargs)
    params.setdefault("random_state", seed)
    clf = HistGradientBoostingClassifier(**params)
    with _single_thread():
        return clf.fit(np.where(keep, rows, np.nan), np.repeat(y, copies))


def _resolve_dataset(dataset: str | Dataset | tuple[ArrayLike, ArrayLike]) -> tuple[Dataset, str]:
    """The data set and a cache key for it."""
    data = as_dataset(dataset)
    if isinstance(dataset, str):
        return data, data.name
    digest = hashlib.sha1(np.ascontiguousarray(data.X).tobytes())
    digest.update(np.ascontiguousarray(data.y).tobytes())
    return data, f"{data.name}:{digest.hexdigest()}"


@dataclass(frozen=True)
class FeatureContext(Context):
    """Instances to classify.

    Attributes:
        obs: The free features, shape ``(batch, free)`` (a constant ``0`` of shape ``(batch, 1)``
            when there are none).
        index: Row of each instance in the objective's episode split, shape ``(batch,)``.
        features: All features of the instances, shape ``(batch, n)``.
        label: True class of each instance, shape ``(batch,)``.
    """

    index: torch.Tensor
    features: torch.Tensor
    label: torch.Tensor


class FeatureAcquisitionObjective(SubsetObjective):
    """Batched feature-acquisition objective around a masked-feature classifier.

    Args:
        dataset: ``"digits"`` (default; 64 features), ``"breast_cancer"`` (30), ``"wine"`` (13),
            another name known to :func:`subset_rl.data.load_dataset`, a ``Dataset``, or
            ``(X, y)``.
        k: Number of features to acquire.
        free_features: Optional mask or indices of features observed for free: they form the
            observation, go to the classifier, and may not be acquired.
        reward: ``"correct"`` (1 if the classifier's most probable class is the true one, else 0)
            or ``"log_prob"`` (log-probability of the true class).
        feature_cost: Cost per acquired feature, a scalar or one value per feature.
        split: Where episodes draw instances: ``"test"`` (held out from the classifier's
            training, default) or ``"train"``.
        test_fraction: Fraction of the data held out (stratified split).
        data_seed: Seed of the split and of the classifier's training.
        classifier: Optional fitted classifier with ``predict_proba`` accepting NaN for missing
            features and ``classes_``; by default one is trained (and cached per process).
        classifier_kwargs: Options of :func:`train_masked_classifier` (``copies``, ``max_iter``,
            ...).
        device: Torch device of the outputs (the classifier runs on the CPU).
        dtype: Floating dtype of the outputs.
    """

    has_success = True

    def __init__(
        self,
        dataset: str | Dataset | tuple[ArrayLike, ArrayLike] = "digits",
        k: int = 10,
        *,
        free_features: ArrayLike | None = None,
        reward: str = "correct",
        feature_cost: float | ArrayLike = 0.0,
        split: str = "test",
        test_fraction: float = 0.25,
        data_seed: int = 0,
        classifier: Any = None,
        classifier_kwargs: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        data, key = _resolve_dataset(dataset)
        n = data.X.shape[1]
        free = (
            np.zeros(n, bool)
            if free_features is None
            else as_index_mask("free_features", free_features, n)
        )
        super().__init__(n, k, allowed=~free, device=device, dtype=dtype)
        self.reward_kind = check_choice("reward", reward, ("correct", "log_prob"))
        self.split = check_choice("split", split, ("test", "train"))
        fraction = check_float("test_fraction", test_fraction, minimum=0.0, maximum=1.0)
        train, test = train_test_split(data, fraction, data_seed)
        self.dataset = data
        self.n_classes = data.n_classes
        self.free = free
        self._free_index = np.flatnonzero(free)
        if classifier is None:
            options = dict(classifier_kwargs or {})
            cache_key = (
                key,
                fraction,
                data_seed,
                tuple(self._free_index.tolist()),
                repr(sorted(options.items())),
            )
            if cache_key not in _CLASSIFIER_CACHE:
                _CLASSIFIER_CACHE[cache_key] = train_masked_classifier(
                    train.X, train.y, always_observed=free, seed=data_seed, **options
                )
            classifier = _CLASSIFIER_CACHE[cache_key]
        elif not hasattr(classifier, "predict_proba") or not hasattr(classifier, "classes_"):
            raise TypeError(
                "classifier: expected a fitted classifier with predict_proba and classes_, "
                f"found {type(classifier).__name__}"
            )
        self.classifier = classifier
        # Raw classifier outputs computed ahead by prefetch_steps, by the bytes of their input
        # row; a step takes its row out, anything else is predicted as usual.
        self._prefetched: dict[bytes, np.ndarray] = {}
        column = {int(c): i for i, c in enumerate(np.asarray(classifier.classes_))}
        self._column = np.array([column.get(c, -1) for c in range(self.n_classes)])
        episodes = test if self.split == "test" else train
        self._X = np.array(episodes.X, dtype=np.float64)
        self._y = np.array(episodes.y, dtype=np.int64)
        self.features = torch.as_tensor(self._X, device=self.device, dtype=dtype)
        self.labels = torch.as_tensor(self._y, device=self.device)
        self.feature_cost = torch.as_tensor(
            as_float_vector("feature_cost", feature_cost, n), device=self.device, dtype=dtype
        )
        if self._free_index.size:
            self.obs_dim = int(self._free_index.size)
            values = data.X[:, self._free_index]
            self.obs_low, self.obs_high = float(values.min()), float(values.max())
            if self.obs_high <= self.obs_low:
                self.obs_high = self.obs_low + 1.0

    def predict_proba(self, z: torch.Tensor | NDArray[Any], features: ArrayLike) -> np.ndarray:
        """Class probabilities from the acquired (and free) features.

        Args:
            z: Acquisition masks of shape ``(..., n)``.
            features: Feature rows broadcastable to ``z``'s shape.

        Returns:
            Probabilities of shape ``(..., n_classes)`` (columns in label order).
        """
        mask = torch.as_tensor(z).detach().cpu().numpy() != 0
        mask = mask | self.free
        x = np.broadcast_to(np.asarray(features, dtype=np.float64), mask.shape)
        flat = np.where(mask, x, np.nan).reshape(-1, self.n)
        proba = self._predict_rows(flat)
        out = np.zeros((flat.shape[0], self.n_classes))
        present = self._column >= 0
        out[:, present] = proba[:, self._column[present]]
        return out.reshape(*mask.shape[:-1], self.n_classes)

    def _predict_rows(self, flat: np.ndarray) -> np.ndarray:
        """The classifier's ``predict_proba`` of the rows, taken from the prefetched ones if
        all of them are there."""
        if self._prefetched and flat.shape[0] <= len(self._prefetched):
            keys = [row.tobytes() for row in flat]
            if all(key in self._prefetched for key in keys):
                return np.stack([self._prefetched.pop(key) for key in keys])
        with _single_thread():
            return self.classifier.predict_proba(flat)

    def classifier_rows(self, z: NDArray[Any], rows: ArrayLike) -> np.ndarray:
        """The classifier inputs for acquisition masks ``z`` ``(batch, n)`` of data rows.

        Args:
            z: Acquisition masks, shape ``(batch, n)``.
            rows: Row of each instance in the episodes' split, shape ``(batch,)``.

        Returns:
            float64 ``(batch, n)``: the features acquired or free, NaN elsewhere.
        """
        mask = (np.asarray(z) != 0) | self.free
        return np.where(mask, self._X[np.asarray(rows)], np.nan)

    def _sample_context(self, batch_size: int, generator: torch.Generator | None) -> Context:
        index = self._randint(self._X.shape[0], (batch_size,), generator)
        features = self.features[index]
        if self._free_index.size:
            obs = features[:, torch.as_tensor(self._free_index, device=self.device)]
        else:
            obs = torch.zeros(batch_size, 1, device=self.device, dtype=self.dtype)
        return FeatureContext(obs=obs, index=index, features=features, label=self.labels[index])

    def _evaluate(self, z: torch.Tensor, context: Context) -> dict[str, torch.Tensor]:
        if not isinstance(context, FeatureContext):
            raise TypeError(f"context: expected a FeatureContext, found {type(context).__name__}")
        rows = context.index.cpu().numpy()
        proba = self.predict_proba(z, self._X[rows][None])  # (S, B, C)
        labels = self._y[rows]
        p_true = np.take_along_axis(proba, labels[None, :, None], axis=-1)[..., 0]
        correct = (proba.argmax(-1) == labels[None]).astype(np.float64)
        log_prob = np.log(np.maximum(p_true, np.finfo(np.float64).tiny))
        value = correct if self.reward_kind == "correct" else log_prob
        as_t = lambda a: torch.as_tensor(a, device=self.device, dtype=self.dtype)  # noqa: E731
        cost = z @ self.feature_cost
        return {
            "reward": as_t(value) - cost,
            "success": as_t(correct),
            "log_prob": as_t(log_prob),
            "cost": cost,
        }


class FeatureAcquisitionEnv(SubsetEnv):
    """Acquire ``k`` features of an instance so that a fixed classifier gets its class right.

    ## Description
    Each episode draws an instance (by default from scikit-learn's digits, held out from the
    classifier's training). The agent picks ``k`` features to acquire; a
    ``HistGradientBoostingClassifier`` trained with random feature masking classifies the instance
    from the acquired (and any free) features, the rest given as missing (NaN). The classifier is
    not differentiable: the objective is a black box.

    ## Action Space
    ``KHot(n, k)`` over the ``n`` features (64 for digits) with exactly ``k`` ones; free features
    may not be chosen. Float, int and bool arrays are accepted.

    ## Observation Space
    ``Box(low, high, (free,), float32)``: the values of the free features (the data's range as
    bounds); with no free features (the default), a constant ``0`` of shape ``(1,)``.

    ## Rewards
    ``1`` if the classifier's most probable class is right, else ``0`` (``reward="correct"``), or
    the log-probability of the true class (``reward="log_prob"``), minus the summed
    ``feature_cost`` of the acquired features. A penalized invalid action gets
    ``invalid_penalty``.

    ## Starting State
    An instance drawn uniformly from the episode split.

    ## Episode End
    Terminates after ``horizon`` steps (default 1); never truncates. ``info`` holds
    ``objective``, ``log_prob``, ``cost``, ``action_valid`` and ``is_success`` (classified
    correctly).

    ## Arguments
    ``dataset`` ("digits"; "breast_cancer", "wine", a Dataset or (X, y)), ``k`` (10),
    ``free_features`` (None), ``reward`` ("correct"), ``feature_cost`` (0), ``split`` ("test"),
    ``test_fraction`` (0.25), ``data_seed`` (0), ``classifier`` (None: trained and cached per
    process), ``classifier_kwargs`` (None), ``device`` ("cpu"), ``invalid_action`` ("raise"),
    ``invalid_penalty`` (-1), ``horizon`` (1), ``render_mode`` (None), ``image_shape`` (None:
    ``(8, 8)`` for digits, ``(28, 28)`` for MNIST, else a near-square grid of the features); see
    :class:`FeatureAcquisitionObjective`.

    ## Rendering
    ``render_mode="rgb_array"`` gives three panels of the last step's instance: all its features,
    the features the classifier saw (acquired and free; the missing ones dark blue on images,
    grey otherwise), and the
    classifier's class probabilities as bars (the true class green, a wrong prediction red).
    Image data (digits, MNIST) is drawn as the image in grey levels; other data as a grid of
    features, each coloured (viridis) on its own range in the data. ``render_mode="human"``
    shows the same picture with matplotlib.

    ## Version History
    * v0: Initial version.
    """

    def __init__(
        self,
        dataset: str | Dataset | tuple[ArrayLike, ArrayLike] = "digits",
        k: int = 10,
        *,
        invalid_action: str = "raise",
        invalid_penalty: float = -1.0,
        horizon: int = 1,
        render_mode: str | None = None,
        image_shape: tuple[int, int] | None = None,
        **objective_kwargs: Any,
    ) -> None:
        objective = FeatureAcquisitionObjective(dataset, k, **objective_kwargs)
        super().__init__(
            objective,
            invalid_action=invalid_action,
            invalid_penalty=invalid_penalty,
            horizon=horizon,
            render_mode=render_mode,
        )
        n = objective.n
        self._image = image_shape is not None
        if image_shape is None:
            side = int(round(np.sqrt(n)))
            name = objective.dataset.name.lower()
            self._image = side * side == n and name.startswith(_IMAGE_DATASETS)
            image_shape = (side, side) if self._image else grid_shape(n)
        else:
            try:
                rows, cols = (check_int("image_shape", d, minimum=1) for d in image_shape)
            except (TypeError, ValueError):
                raise ValueError(
                    f"image_shape: expected (rows, cols) with rows * cols = {n}, found "
                    f"{image_shape!r}"
                ) from None
            if rows * cols != n:
                raise ValueError(
                    f"image_shape: expected (rows, cols) with rows * cols = {n}, found "
                    f"{image_shape!r}"
                )
            image_shape = (rows, cols)
        self.image_shape: tuple[int, int] = image_shape
        X = objective.dataset.X
        if self._image:
            self._low = np.full(n, float(X.min()))
            self._high = np.full(n, float(X.max()))
        else:
            self._low, self._high = X.min(axis=0), X.max(axis=0)

    @staticmethod
    def prefetch_steps(items: Sequence[tuple[FeatureAcquisitionEnv, Any]]) -> int:
        """Predicts what the next ``env.step(action)`` of each pair needs, one call per classifier.

        Every env of the same classifier (the default one is shared by all envs of a process)
        gets its row predicted in a single ``predict_proba`` call; each env's next ``step``
        with that action then takes its prediction instead of calling the classifier for one
        row. Rewards, infos and every check of ``step`` are unchanged: a step whose row was not
        prefetched (no running episode, an action of the wrong shape or one that is projected)
        predicts it as before.

        Args:
            items: ``(env, action)`` pairs (``env`` unwrapped).

        Returns:
            The number of rows predicted ahead.
        """
        groups: dict[int, list[tuple[FeatureAcquisitionObjective, bytes, np.ndarray]]] = {}
        for env, _ in items:  # what an earlier call left (a step that raised)
            if isinstance(env.objective, FeatureAcquisitionObjective):
                env.objective._prefetched = {}
        for env, action in items:
            objective = env.objective
            if not isinstance(objective, FeatureAcquisitionObjective):
                continue
            context = env._context
            z = np.asarray(action)
            if not isinstance(context, FeatureContext) or z.shape != (objective.n,):
                continue
            if not np.issubdtype(z.dtype, np.number) and z.dtype != np.bool_:
                continue
            index = context.index.reshape(-1)[:1].cpu().numpy()
            row = objective.classifier_rows(z[None], index)[0]
            groups.setdefault(id(objective.classifier), []).append(
                (objective, row.tobytes(), row)
            )
        count = 0
        for group in groups.values():
            stacked = np.stack([row for _, _, row in group])
            with _single_thread():
                proba = group[0][0].classifier.predict_proba(stacked)
            for (objective, key, _), p in zip(group, proba, strict=True):
                objective._prefetched[key] = p
            count += len(group)
        return count

    def _draw(
        self, context: Any, z: NDArray[np.int8] | None, info: dict[str, Any]
    ) -> NDArray[np.uint8]:
        objective: FeatureAcquisitionObjective = self.objective  # type: ignore[assignment]
        rows, cols = self.image_shape
        cell = cell_size(rows, cols)
        bars = np.full(objective.n_classes, 0.0)
        colors = np.empty((objective.n_classes, 3), np.uint8)
        colors[:] = (150, 150, 150)
        if not isinstance(context, FeatureContext):
            blank = np.full((rows * cell, cols * cell, 3), 235, np.uint8)
            return hstack_panels([blank, blank, bar_panel(bars, colors, blank.shape[0])])
        x = context.features[0].detach().cpu().double().numpy()
        span = np.where(self._high > self._low, self._high - self._low, 1.0)
        scaled = (x - self._low) / span
        stops = _GRAY if self._image else None

        def panel(values: NDArray[np.float64]) -> NDArray[np.uint8]:
            flat = np.full(rows * cols, np.nan)
            flat[: values.size] = values
            if stops is None:  # viridis; grey for missing features
                rgb = colormap(flat, 0.0, 1.0, missing=np.array([150, 150, 150], np.uint8))
            else:  # grey levels; dark blue for missing pixels
                rgb = colormap(flat, 0.0, 1.0, stops)
            rgb[values.size :] = 255
            return upscale(rgb.reshape(rows, cols, 3), cell)

        seen = objective.free.copy()
        if z is not None:
            seen |= np.asarray(z) != 0
        acquired = panel(np.where(seen, scaled, np.nan))
        full = panel(scaled)
        if z is not None:
            label = int(context.label[0])
            proba = objective.predict_proba(np.asarray(z)[None], x[None])[0]
            bars = proba
            predicted = int(np.argmax(proba))
            if predicted != label:
                colors[predicted] = BAD
            colors[label] = GOOD
        return hstack_panels([full, acquired, bar_panel(bars, colors, full.shape[0])])

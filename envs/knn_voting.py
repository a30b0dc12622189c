"""k-NN voting: choose ``k`` of ``n`` labelled candidates whose majority vote labels a query.

This is the stochastic k-nearest-neighbour task of Xie & Ermon (2019), "Reparameterizable subset
sampling via continuous relaxations", used by the SFESS paper: a policy (typically logits
``-||phi(query) - phi(candidate_i)||^2`` from a learned embedding ``phi``) picks ``k`` neighbours
among ``n`` random candidates; the reward says whether their vote gives the query's label. After
training, :func:`evaluate_knn` runs deterministic k-NN with the embedding over the whole training
set.

Ties in the vote: with ``tie_break="split"`` (default) a vote tied between ``m`` classes that
include the true one earns ``1/m`` (the expected reward of breaking the tie uniformly at random);
with ``tie_break="lowest"`` the smallest tied label wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from subset_rl.data import Dataset, as_dataset, train_test_split
from subset_rl.data import standardize as standardize_features

from ._validation import check_choice, check_float, check_int
from .base import BAD, GOOD, UNCHOSEN, SubsetEnv, bar_panel, grid_panel, hstack_panels
from .objective import Context, SubsetObjective

__all__ = [
    "KNNContext",
    "KNNVotingEnv",
    "KNNVotingObjective",
    "evaluate_knn",
    "vote_reward",
]

TIE_BREAKS = ("split", "lowest")


def vote_reward(
    counts: torch.Tensor, label: torch.Tensor, tie_break: str = "split"
) -> torch.Tensor:
    """Whether a vote picks ``label``, with the stated tie rule.

    Args:
        counts: Votes per class, shape ``(..., classes)``.
        label: True class, shape broadcastable to ``counts.shape[:-1]``, integer.
        tie_break: ``"split"``: ``1/m`` when the true class is among ``m`` tied winners;
            ``"lowest"``: the smallest tied class wins.

    Returns:
        Float tensor of shape ``counts.shape[:-1]`` with values in ``[0, 1]``.
    """
    check_choice("tie_break", tie_break, TIE_BREAKS)
    label = torch.as_tensor(label, device=counts.device).long().expand(counts.shape[:-1])
    dtype = counts.dtype if counts.dtype.is_floating_point else torch.float32
    if tie_break == "lowest":
        return (counts.argmax(-1) == label).to(dtype)
    winners = counts == counts.amax(-1, keepdim=True)
    hit = winners.gather(-1, label.unsqueeze(-1)).squeeze(-1)
    return hit.to(dtype) / winners.sum(-1).to(dtype)


@dataclass(frozen=True)
class KNNContext(Context):
    """Queries and their candidate neighbours.

    Attributes:
        obs: ``[query, candidate_1, ..., candidate_n]`` features flattened, shape
            ``(batch, (n + 1) * d)``.
        query_index: Row of each query in the objective's query split, shape ``(batch,)``.
        candidate_index: Rows of the candidates in the training split, shape ``(batch, n)``.
        query: Query features, shape ``(batch, d)``.
        candidates: Candidate features, shape ``(batch, n, d)``.
        query_label: Shape ``(batch,)``.
        candidate_labels: Shape ``(batch, n)``.
    """

    query_index: torch.Tensor
    candidate_index: torch.Tensor
    query: torch.Tensor
    candidates: torch.Tensor
    query_label: torch.Tensor
    candidate_labels: torch.Tensor


class KNNVotingObjective(SubsetObjective):
    """Batched k-NN voting objective.

    Args:
        dataset: ``"digits"`` (default), another name known to
            :func:`subset_rl.data.load_dataset` (``"mnist"`` needs the IDX files), a ``Dataset``,
            or ``(X, y)``.
        n: Number of candidate neighbours per query.
        k: Number of neighbours to choose.
        reward: ``"majority"`` (1 if the vote gives the query's label, ties by ``tie_break``) or
            ``"fraction"`` (fraction of the chosen neighbours that share the query's label).
        tie_break: ``"split"`` or ``"lowest"`` (see the module docstring).
        split: Where queries come from: ``"train"`` (default; the query is never among its own
            candidates) or ``"test"``. Candidates always come from the training split.
        standardize: Standardize features with the training split's mean and spread.
        test_fraction: Fraction of the data held out as the test split (stratified).
        data_seed: Seed of the split.
        device: Torch device.
        dtype: Floating dtype.
    """

    has_success = True

    def __init__(
        self,
        dataset: str | Dataset | tuple[ArrayLike, ArrayLike] = "digits",
        n: int = 100,
        k: int = 5,
        *,
        reward: str = "majority",
        tie_break: str = "split",
        split: str = "train",
        standardize: bool = True,
        test_fraction: float = 0.25,
        data_seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(n, k, device=device, dtype=dtype)
        self.reward_kind = check_choice("reward", reward, ("majority", "fraction"))
        self.tie_break = check_choice("tie_break", tie_break, TIE_BREAKS)
        self.split = check_choice("split", split, ("train", "test"))
        data = as_dataset(dataset)
        fraction = check_float("test_fraction", test_fraction, minimum=0.0, maximum=1.0)
        train, test = train_test_split(data, fraction, data_seed)
        X_train, X_test = np.asarray(train.X, np.float64), np.asarray(test.X, np.float64)
        if standardize:
            X_train, (X_test,) = standardize_features(X_train, X_test)
        spare = 1 if self.split == "train" else 0
        if self.n + spare > X_train.shape[0]:
            raise ValueError(
                f"n: expected at most {X_train.shape[0] - spare} candidates (training split of "
                f"{data.name} has {X_train.shape[0]} rows), found {self.n}"
            )
        self.n_classes = data.n_classes
        self.n_features = X_train.shape[1]
        self.obs_dim = (self.n + 1) * self.n_features
        self.obs_low = float(min(X_train.min(), X_test.min()))
        self.obs_high = float(max(X_train.max(), X_test.max()))
        if self.obs_high <= self.obs_low:
            self.obs_high = self.obs_low + 1.0
        as_t = lambda a: torch.as_tensor(a, device=self.device, dtype=dtype)  # noqa: E731
        self.train_features = as_t(X_train)
        self.train_labels = torch.tensor(train.y, device=self.device)
        self.test_features = as_t(X_test)
        self.test_labels = torch.tensor(test.y, device=self.device)

    def _sample_context(self, batch_size: int, generator: torch.Generator | None) -> Context:
        n_train = self.train_features.shape[0]
        if self.split == "train":
            drawn = self._choose_distinct(n_train, self.n + 1, batch_size, generator)
            query_index, candidate_index = drawn[:, 0], drawn[:, 1:]
            query = self.train_features[query_index]
            query_label = self.train_labels[query_index]
        else:
            query_index = self._randint(self.test_features.shape[0], (batch_size,), generator)
            candidate_index = self._choose_distinct(n_train, self.n, batch_size, generator)
            query = self.test_features[query_index]
            query_label = self.test_labels[query_index]
        candidates = self.train_features[candidate_index]
        obs = torch.cat([query.unsqueeze(1), candidates], dim=1).reshape(batch_size, -1)
        return KNNContext(
            obs=obs,
            query_index=query_index,
            candidate_index=candidate_index,
            query=query,
            candidates=candidates,
            query_label=query_label,
            candidate_labels=self.train_labels[candidate_index],
        )

    def _evaluate(self, z: torch.Tensor, context: Context) -> dict[str, torch.Tensor]:
        if not isinstance(context, KNNContext):
            raise TypeError(f"context: expected a KNNContext, found {type(context).__name__}")
        onehot = torch.nn.functional.one_hot(context.candidate_labels, self.n_classes)
        counts = torch.einsum("sbn,bnc->sbc", z, onehot.to(z.dtype))
        majority = vote_reward(counts, context.query_label.unsqueeze(0), self.tie_break)
        agree = counts.gather(
            -1, context.query_label.view(1, -1, 1).expand(z.shape[0], -1, 1)
        ).squeeze(-1) / self.k
        reward = majority if self.reward_kind == "majority" else agree
        return {
            "reward": reward,
            "success": (majority > 0.5).to(self.dtype),
            "majority": majority,
            "fraction": agree,
        }

    def evaluate_embedding(
        self,
        embedding: Callable[[torch.Tensor], torch.Tensor] | None = None,
        k: int | None = None,
        *,
        batch_size: int = 512,
    ) -> float:
        """Deterministic k-NN test accuracy with ``embedding`` over the whole training split.

        Args:
            embedding: Maps features ``(m, d)`` to embeddings ``(m, e)``; ``None`` is the identity.
            k: Number of neighbours; defaults to :attr:`k`.
            batch_size: Test points per distance computation.

        Returns:
            Accuracy on the test split, ties broken by :attr:`tie_break`.
        """
        return evaluate_knn(
            embedding,
            self.train_features,
            self.train_labels,
            self.test_features,
            self.test_labels,
            self.k if k is None else k,
            tie_break=self.tie_break,
            batch_size=batch_size,
            device=self.device,
        )


def evaluate_knn(
    embedding: Callable[[torch.Tensor], torch.Tensor] | None,
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    k: int,
    *,
    tie_break: str = "split",
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> float:
    """Deterministic k-NN accuracy with a learned embedding, as in the SFESS paper's evaluation.

    Every test point votes with its ``k`` nearest training points (Euclidean distance between
    embeddings) over the whole training set.

    Args:
        embedding: Maps a float32 tensor of features ``(m, d)`` to embeddings ``(m, e)``; ``None``
            uses the features. A ``torch.nn.Module`` is run in eval mode (its mode is restored)
            without gradients.
        train_features: Shape ``(N, d)``.
        train_labels: Shape ``(N,)``, integers ``0 .. C-1``.
        test_features: Shape ``(M, d)``.
        test_labels: Shape ``(M,)``.
        k: Number of neighbours, ``1 <= k <= N``.
        tie_break: ``"split"`` (a tie among ``m`` classes counts ``1/m`` when it includes the
            true one) or ``"lowest"`` (the smallest tied label wins).
        batch_size: Test points per distance computation.
        device: Where to compute; defaults to the device of ``train_features`` if it is a tensor,
            else the CPU.

    Returns:
        The mean accuracy over the test points.
    """
    check_choice("tie_break", tie_break, TIE_BREAKS)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if device is None:
        device = train_features.device if isinstance(train_features, torch.Tensor) else "cpu"

    def as_tensor(a: ArrayLike) -> torch.Tensor:
        return a.detach() if isinstance(a, torch.Tensor) else torch.tensor(np.asarray(a))

    as_f = lambda a: as_tensor(a).to(device=device, dtype=torch.float32)  # noqa: E731
    as_l = lambda a: as_tensor(a).to(device).long()  # noqa: E731
    x_train, y_train, x_test, y_test = (
        as_f(train_features), as_l(train_labels), as_f(test_features), as_l(test_labels)
    )
    if x_train.dim() != 2 or x_test.dim() != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            "expected train and test features of shapes (N, d) and (M, d), found "
            f"{tuple(x_train.shape)} and {tuple(x_test.shape)}"
        )
    if y_train.shape != (x_train.shape[0],) or y_test.shape != (x_test.shape[0],):
        raise ValueError(
            f"expected labels of shapes ({x_train.shape[0]},) and ({x_test.shape[0]},), found "
            f"{tuple(y_train.shape)} and {tuple(y_test.shape)}"
        )
    k = check_int("k", k, minimum=1, maximum=x_train.shape[0])
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    module = embedding if isinstance(embedding, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            embed = (lambda x: x) if embedding is None else embedding
            e_train = embed(x_train)
            hits = []
            for start in range(0, x_test.shape[0], batch_size):
                e_test = embed(x_test[start : start + batch_size])
                nearest = torch.cdist(e_test, e_train).topk(k, dim=-1, largest=False).indices
                onehot = torch.nn.functional.one_hot(y_train[nearest], n_classes)
                counts = onehot.sum(1)
                hits.append(vote_reward(counts, y_test[start : start + batch_size], tie_break))
    finally:
        if module is not None:
            module.train(was_training)
    return float(torch.cat(hits).double().mean())


class KNNVotingEnv(SubsetEnv):
    """Choose ``k`` of ``n`` labelled candidates so that their vote gives the query's label.

    ## Description
    Each episode draws a query point and ``n`` candidate neighbours with labels from a data set
    (default: scikit-learn's digits, standardized). The agent chooses ``k`` candidates; their
    majority vote (ties broken by ``tie_break``) should give the query's label. For the final
    deterministic evaluation with a learned embedding use
    :meth:`KNNVotingObjective.evaluate_embedding` or :func:`evaluate_knn`.

    ## Action Space
    ``KHot(n, k)`` over the candidates with exactly ``k`` ones. Float, int and bool arrays are
    accepted.

    ## Observation Space
    ``Box(low, high, ((n + 1) * d,), float32)``: the query's ``d`` features followed by the ``n``
    candidates' features, flattened (bounds: the data's range). Candidate labels are not observed.

    ## Rewards
    ``reward="majority"``: ``1`` if the vote gives the query's label, ``0`` otherwise, ``1/m``
    for a tie among ``m`` classes including it (``tie_break="split"``; with ``"lowest"`` the
    smallest tied label wins). ``reward="fraction"``: the fraction of the chosen neighbours that
    share the query's label. A penalized invalid action gets ``invalid_penalty``.

    ## Starting State
    A uniform query (from the training split by default, never among its own candidates) and
    ``n`` distinct uniform candidates from the training split.

    ## Episode End
    Terminates after ``horizon`` steps (default 1); never truncates. ``info`` holds
    ``objective``, ``majority``, ``fraction``, ``action_valid`` and ``is_success`` (majority
    reward above 1/2).

    ## Arguments
    ``dataset`` ("digits"), ``n`` (100), ``k`` (5), ``reward`` ("majority"), ``tie_break``
    ("split"), ``split`` ("train"), ``standardize`` (True), ``test_fraction`` (0.25),
    ``data_seed`` (0), ``device`` ("cpu"), ``invalid_action`` ("raise"), ``invalid_penalty``
    (-1), ``horizon`` (1), ``render_mode`` (None); see :class:`KNNVotingObjective`.

    ## Rendering
    ``render_mode="rgb_array"`` gives the ``n`` candidates on a grid, green where their label is
    the query's and grey where not, the chosen ones bright (green) or red, and the vote: one bar
    per class, the share of the ``k`` votes it got (the query's class green).
    ``render_mode="human"`` shows the same picture with matplotlib.

    ## Version History
    * v0: Initial version.
    """

    def __init__(
        self,
        dataset: str | Dataset | tuple[ArrayLike, ArrayLike] = "digits",
        n: int = 100,
        k: int = 5,
        *,
        invalid_action: str = "raise",
        invalid_penalty: float = -1.0,
        horizon: int = 1,
        render_mode: str | None = None,
        **objective_kwargs: Any,
    ) -> None:
        objective = KNNVotingObjective(dataset, n, k, **objective_kwargs)
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
        objective: KNNVotingObjective = self.objective  # type: ignore[assignment]
        colors = np.empty((self.n, 3), np.uint8)
        colors[:] = UNCHOSEN
        votes = np.zeros(objective.n_classes)
        bar_colors = np.empty((objective.n_classes, 3), np.uint8)
        bar_colors[:] = (150, 150, 150)
        if isinstance(context, KNNContext):
            labels = context.candidate_labels[0].cpu().numpy()
            query = int(context.query_label[0])
            same = labels == query
            colors[same] = (150, 210, 150)
            bar_colors[query] = GOOD
            if z is not None:
                chosen = np.asarray(z) != 0
                colors[chosen & same] = GOOD
                colors[chosen & ~same] = BAD
                votes = np.bincount(labels[chosen], minlength=objective.n_classes) / self.k
        grid = grid_panel(colors)
        return hstack_panels([grid, bar_panel(votes, bar_colors, grid.shape[0])])

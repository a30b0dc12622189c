r"""Stochastic k-nearest neighbours (SFESS paper, Sec. 4; after Grover et al. 2019).

An encoder (``784 -> 512 -> 256 -> d``, ReLU, ``d = 2``) embeds images. Every step draws a
minibatch of queries and, independently, ``C = 128`` candidate images from the training split;
each query's logits over the candidates are minus the Euclidean distances of the embeddings,

.. math:: l_{qc} = -\lVert e(x_q) - e(x_c) \rVert_2,

a k-subset :math:`z_q` of the candidates is drawn (``k = 10``) and the loss is minus the
fraction of the chosen neighbours that share the query's label,
:math:`L(z_q) = -\frac1k \sum_c z_{qc}\,[y_c = y_q]`. The test metric is the accuracy of the
deterministic k-NN classifier (majority of the ``k`` nearest training embeddings, smallest label
on ties) with the learned embedding, via :func:`subset_rl.envs.evaluate_knn`; validation uses
the held-out images as queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..envs import evaluate_knn
from .common import (
    ESTIMATORS,
    RunResult,
    Splits,
    SubsetLayer,
    TrainConfig,
    batch_stream,
    make_mlp,
    seed_everything,
    train_loop,
)

__all__ = ["KNNConfig", "neighbour_logits", "train_knn"]


@dataclass
class KNNConfig:
    """Stochastic k-NN experiment (defaults: the SFESS paper's).

    Attributes:
        d: Embedding dimension.
        k: Neighbours drawn per query in training.
        candidates: Candidate neighbours per step.
        test_k: Neighbours of the deterministic k-NN evaluation.
        hidden: Hidden sizes of the encoder.
        train: Optimisation settings.
    """

    d: int = 2
    k: int = 10
    candidates: int = 128
    test_k: int = 10
    hidden: tuple[int, ...] = (512, 256)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def setting(self) -> str:
        """Label of the cell in the paper's table."""
        return f"d={self.d},k={self.k}"


def neighbour_logits(queries: Tensor, candidates: Tensor, eps: float = 1e-12) -> Tensor:
    """Minus the Euclidean distances ``(B, C)``, with a gradient that stays finite at zero."""
    sq = (queries.unsqueeze(1) - candidates.unsqueeze(0)).pow(2).sum(-1)
    return -(sq + eps).sqrt()


def train_knn(
    data: Splits,
    estimator: str,
    config: KNNConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
) -> RunResult:
    """Trains the embedding with one estimator; returns the deterministic k-NN test accuracy.

    Args:
        data: The splits (on ``device``).
        estimator: A key of :data:`~subset_rl.experiments.common.ESTIMATORS`.
        config: Experiment settings.
        seed: Seed of initialisation, minibatches and draws.
        device: Torch device.
        show_progress: Show a progress bar.

    Returns:
        The run (metric: test accuracy, neighbours from the training split).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: expected one of {list(ESTIMATORS)}, found {estimator!r}")
    n_train = data.x_train.shape[0]
    if not 1 <= config.candidates <= n_train:
        raise ValueError(
            f"candidates: expected 1 <= candidates <= {n_train} (training examples of "
            f"{data.name}), found {config.candidates}"
        )
    if not 1 <= config.k <= config.candidates:
        raise ValueError(
            f"k: expected 1 <= k <= n={config.candidates} (candidates per query), found "
            f"k={config.k}"
        )
    if not 1 <= config.test_k <= n_train:
        raise ValueError(f"test_k: expected 1 <= test_k <= {n_train}, found {config.test_k}")
    device = torch.device(device)
    tc = config.train
    gen = seed_everything(seed, device)
    encoder = make_mlp([data.num_features, *config.hidden, config.d]).to(device)
    layer = SubsetLayer(estimator, config.k, tc.estimator).to(device)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=tc.lr)
    cpu_gen = torch.Generator().manual_seed(seed)
    queries = batch_stream(n_train, tc.batch_size, cpu_gen)
    neighbours = batch_stream(n_train, config.candidates, cpu_gen)

    def step(_: int) -> float:
        q = next(queries).to(device)
        c = next(neighbours).to(device)
        logits = neighbour_logits(encoder(data.x_train[q]), encoder(data.x_train[c]))
        same = (data.y_train[q].unsqueeze(1) == data.y_train[c].unsqueeze(0)).to(logits.dtype)
        draw = layer(logits, generator=gen)
        losses = -(draw.z * same).sum(-1) / config.k  # (S, B)
        loss = layer.objective(draw, losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def accuracy(x: Tensor, y: Tensor) -> float:
        return evaluate_knn(
            encoder,
            data.x_train,
            data.y_train,
            x,
            y,
            config.test_k,
            tie_break="lowest",
            batch_size=1024,
            device=device,
        )

    def evaluate() -> dict[str, float]:
        return {"val": accuracy(data.x_val, data.y_val)}

    steps, curves, sec = train_loop(
        step,
        evaluate,
        steps=tc.steps,
        eval_every=tc.eval_every,
        device=device,
        show_progress=show_progress,
        desc=f"knn {data.name} {config.setting} {estimator} seed={seed}",
    )
    return RunResult(
        experiment="knn",
        dataset=data.name,
        setting=config.setting,
        estimator=estimator,
        seed=seed,
        steps=tc.steps,
        metric="test k-NN accuracy",
        value=accuracy(data.x_test, data.y_test),
        seconds_per_step=sec,
        val_steps=steps,
        val_values=curves["val"],
        protocol=tc.estimator.protocol,
    )

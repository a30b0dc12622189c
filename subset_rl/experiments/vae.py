r"""Variational autoencoder with k-subset latents (SFESS paper, Sec. 4).

The encoder (``784 -> 512 -> 256 -> d*n``, ReLU) gives, for every image, ``d`` logit vectors of
length ``n``; the posterior is a product of ``d`` k-subset distributions
:math:`q(z \mid x) = \prod_j p_{l_j(x)}(z_j)`. The decoder (``d*n -> 256 -> 512 -> 784``, sigmoid)
reconstructs the image from the ``d`` k-hot vectors. The loss (the negative ELBO with a uniform
prior over k-subsets) is

.. math::

    \mathcal{L}(x) = E_{z \sim q}\Bigl[\sum_{i} \mathrm{BCE}(\mathrm{dec}(z)_i, x_i)\Bigr]
    + \sum_{j=1}^{d} \mathrm{KL}\bigl(p_{l_j(x)} \,\|\, \mathrm{Unif}\bigr),
    \qquad \mathrm{KL}(p \,\|\, \mathrm{Unif}) = \log\tbinom{n}{k} - H(p),

with the exact entropy :math:`H` of :class:`~subset_rl.KSubsetPolicy` (differentiable, no
estimator needed). Only the reconstruction term goes through the estimator. The test metric is
:math:`\mathcal{L}` with the mode latent (top-k of each logit vector), as in the paper's code,
in nats per image (pixels in ``[0, 1]``, not binarized).

With ``protocol="paper"`` (the estimator config's) the KL term is the paper code's approximation
:func:`~subset_rl.experiments.protocol.approx_kl_to_uniform` averaged over the ``d`` latents
(and part of the score-function reward, as there), in training and in the metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..distribution import KSubsetPolicy
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
from .protocol import approx_kl_to_uniform, check_protocol

__all__ = ["VAEConfig", "kl_to_uniform", "train_vae"]


@dataclass
class VAEConfig:
    """k-subset VAE experiment (defaults: the SFESS paper's ``d = n = 20, k = 10``).

    Attributes:
        d: Number of latent k-subset variables.
        n: Items per latent variable (the paper uses ``n = d``).
        k: Subset size of every latent variable.
        encoder_hidden: Hidden sizes of the encoder.
        decoder_hidden: Hidden sizes of the decoder.
        train: Optimisation settings.
    """

    d: int = 20
    n: int = 20
    k: int = 10
    encoder_hidden: tuple[int, ...] = (512, 256)
    decoder_hidden: tuple[int, ...] = (256, 512)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def setting(self) -> str:
        """Label of the cell in the paper's table."""
        if self.d == self.n:
            return f"d=n={self.d},k={self.k}"
        return f"d={self.d},n={self.n},k={self.k}"


def kl_to_uniform(dist: KSubsetPolicy) -> Tensor:
    """:math:`\\mathrm{KL}(p \\| \\mathrm{Unif}) = \\log\\binom{n}{k} - H(p)`, ``batch_shape``."""
    n = dist.event_shape[0]
    return math.log(math.comb(n, dist.k)) - dist.entropy()


class _SubsetVAE(nn.Module):
    def __init__(self, num_features: int, config: VAEConfig) -> None:
        super().__init__()
        self.d, self.n = config.d, config.n
        self.encoder = make_mlp([num_features, *config.encoder_hidden, config.d * config.n])
        self.decoder = make_mlp([config.d * config.n, *config.decoder_hidden, num_features])

    def logits(self, x: Tensor) -> Tensor:
        return self.encoder(x).view(x.shape[0], self.d, self.n)

    def reconstruction(self, z: Tensor, x: Tensor) -> Tensor:
        """``(S, B)`` summed BCE of decoding ``z`` of shape ``(S, B, d, n)``."""
        out = self.decoder(z.flatten(-2))
        target = x.unsqueeze(0).expand_as(out)
        return F.binary_cross_entropy_with_logits(out, target, reduction="none").sum(-1)


def _kl_term(logits: Tensor, dist: KSubsetPolicy, protocol: str) -> Tensor:
    """Per image ``(B,)``: exact KL summed over ``d`` or the paper's approximation averaged."""
    if protocol == "paper":
        return approx_kl_to_uniform(logits).mean(-1)
    return kl_to_uniform(dist).sum(-1)


@torch.no_grad()
def _evaluate(
    model: _SubsetVAE, k: int, x: Tensor, protocol: str = "exact", chunk: int = 2048
) -> float:
    model.eval()
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        xb = x[start : start + chunk]
        logits = model.logits(xb)
        dist = KSubsetPolicy(logits, k, validate_args=False)
        kl = _kl_term(logits, dist, protocol)
        loss = model.reconstruction(dist.mode.unsqueeze(0), xb)[0] + kl
        total += float(loss.sum())
    model.train()
    return total / x.shape[0]


def train_vae(
    data: Splits,
    estimator: str,
    config: VAEConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
) -> RunResult:
    """Trains the k-subset VAE with one estimator; returns the test loss (BCE + KL, nats).

    Args:
        data: The splits (on ``device``).
        estimator: A key of :data:`~subset_rl.experiments.common.ESTIMATORS`.
        config: Experiment settings.
        seed: Seed of initialisation, minibatches and draws.
        device: Torch device.
        show_progress: Show a progress bar.

    Returns:
        The run (metric: test BCE + KL per image with the mode latent).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: expected one of {list(ESTIMATORS)}, found {estimator!r}")
    if not 1 <= config.k <= config.n:
        raise ValueError(
            f"k: expected 1 <= k <= n={config.n} (items per latent variable), found k={config.k}"
        )
    if config.d < 1:
        raise ValueError(f"d: expected at least one latent variable, found d={config.d}")
    device = torch.device(device)
    tc = config.train
    protocol = check_protocol(tc.estimator.protocol)
    gen = seed_everything(seed, device)
    model = _SubsetVAE(data.num_features, config).to(device)
    layer = SubsetLayer(estimator, config.k, tc.estimator).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    batches = batch_stream(
        data.x_train.shape[0], tc.batch_size, torch.Generator().manual_seed(seed)
    )

    def step(_: int) -> float:
        x = data.x_train[next(batches).to(device)]
        logits = model.logits(x)
        draw = layer(logits, generator=gen)
        dist = (
            draw.dist
            if draw.dist is not None
            else KSubsetPolicy(logits, config.k, validate_args=False)
        )
        rec = model.reconstruction(draw.z, x)  # (S, B)
        if protocol == "paper":  # the paper's code: one scalar KL, inside the reward too
            loss = layer.objective(draw, rec + approx_kl_to_uniform(logits).mean())
        else:
            loss = layer.objective(draw, rec) + kl_to_uniform(dist).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def evaluate() -> dict[str, float]:
        return {"val": _evaluate(model, config.k, data.x_val, protocol)}

    steps, curves, sec = train_loop(
        step,
        evaluate,
        steps=tc.steps,
        eval_every=tc.eval_every,
        device=device,
        show_progress=show_progress,
        desc=f"vae {data.name} {config.setting} {estimator} seed={seed}",
    )
    return RunResult(
        experiment="vae",
        dataset=data.name,
        setting=config.setting,
        estimator=estimator,
        seed=seed,
        steps=tc.steps,
        metric="test BCE + KL (nats)",
        value=_evaluate(model, config.k, data.x_test, protocol),
        seconds_per_step=sec,
        val_steps=steps,
        val_values=curves["val"],
        protocol=protocol,
    )

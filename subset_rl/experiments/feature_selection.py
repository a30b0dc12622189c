r"""Feature selection for reconstruction (SFESS paper, Sec. 4) and the IP-CAE selectors.

**Subset selection.** One global k-subset :math:`z \in \{0,1\}^n` of the ``n`` pixels is learned
with free logits :math:`l \in \mathbb{R}^n` (initialised :math:`N(0, 1)`). A decoder MLP
(``n -> 200 -> n``, ReLU, sigmoid output) predicts every pixel from the masked image
:math:`x \odot z`; the loss is the per-pixel binary cross-entropy

.. math:: L(z, x) = \frac1n \sum_i \mathrm{BCE}\bigl(\mathrm{dec}(x \odot z)_i,\ x_i\bigr).

Each training step draws ``S`` masks (``S = 32`` for SFESS+VR, 1 otherwise), each applied to
the whole minibatch, and minimises :math:`E_z[\mathrm{mean}_x L(z, x)]` with the chosen
estimator; the decoder is trained jointly. Evaluation uses the mode (top-k of the logits).
The ``"random"`` reference row freezes the initial logits: the decoder learns to reconstruct from
a fixed random subset.

**Concrete autoencoders (IP-CAE extras).** :class:`~subset_rl.estimators.ConcreteSelector` with
``k`` Gumbel-softmax selectors (temperature annealed exponentially from 10 to 0.01), either with
direct logits (CAE, Abid et al. 2019) or indirectly parameterized (IP-CAE, Nilsson et al.
2024), feeding the ``k`` selected values to a ``k -> 200 -> n`` decoder. At evaluation each
selector takes its arg-max, so duplicates waste slots: the unique percentage
(:func:`~subset_rl.estimators.unique_percentage`) is tracked along training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..distribution import KSubsetPolicy
from ..estimators import ConcreteSelector
from .common import (
    BASELINES,
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
from .protocol import check_protocol

__all__ = [
    "ConcreteConfig",
    "FeatureSelectionConfig",
    "reconstruction_loss",
    "train_concrete",
    "train_feature_selection",
]


@dataclass
class FeatureSelectionConfig:
    """Feature-selection experiment (defaults: the SFESS paper's, as given in the issue).

    Attributes:
        k: Number of selected pixels.
        hidden: Hidden layer sizes of the decoder (the issue: one layer of 200; the paper's
            released code uses two, ``(200, 200)``).
        train: Optimisation settings.
    """

    k: int = 50
    hidden: tuple[int, ...] = (200,)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def setting(self) -> str:
        """Label of the cell in the paper's table."""
        return f"k={self.k}"


def _selected_first_layer(decoder: nn.Module, x: Tensor, mask: Tensor) -> Tensor | None:
    r"""``decoder(x * mask)`` computed from the ``k`` selected pixels only, or ``None``.

    For a global k-hot mask that needs no gradient (score-function estimators, the mode in
    evaluation, the fixed random subset), the first linear layer's output is
    :math:`W_{:,S}\,x_S + b` with :math:`S` the ``k`` selected pixels: ``k`` instead of ``n``
    inputs per image, the same value up to float rounding, and the same gradient for ``W`` (its
    unselected columns get exactly zero either way). Anything else returns ``None``.
    """
    first = decoder[0] if isinstance(decoder, nn.Sequential) and len(decoder) else None
    if (
        not isinstance(first, nn.Linear)
        or first.bias is None
        or mask.dim() != 2
        or mask.requires_grad
        or mask.shape[-1] != x.shape[-1]
    ):
        return None
    counts = mask.sum(-1)
    k = int(counts[0])
    if k < 1 or not bool(((mask == 0) | (mask == 1)).all()) or not bool((counts == k).all()):
        return None
    idx = mask.topk(k, dim=-1).indices  # (S, k)
    x_sel = x[:, idx].permute(1, 0, 2)  # (S, B, k)
    w_sel = first.weight.t()[idx]  # (S, k, H)
    hidden = torch.baddbmm(first.bias.expand(idx.shape[0], 1, -1), x_sel, w_sel)
    return decoder[1:](hidden)


def reconstruction_loss(decoder: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """Per-pixel BCE of reconstructing ``x`` from ``x * mask``.

    A global k-hot mask without gradient takes the cheaper route through the ``k`` selected
    inputs of the first layer (same result up to float rounding; see ``_selected_first_layer``).

    Args:
        decoder: Maps ``(..., n)`` masked images to ``(..., n)`` logits.
        x: ``(B, n)`` images in ``[0, 1]``.
        mask: ``(S, n)`` (or ``(S, B, n)``) masks, k-hot or relaxed.

    Returns:
        ``(S, B)`` mean BCE over pixels.
    """
    logits = _selected_first_layer(decoder, x, mask) if SPARSE_FIRST_LAYER else None
    if logits is None:
        masked = (mask.unsqueeze(1) if mask.dim() == 2 else mask) * x.unsqueeze(0)
        logits = decoder(masked)
    target = x.unsqueeze(0).expand_as(logits)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)


SPARSE_FIRST_LAYER = True
"""Use the ``k``-input first layer where it applies (set ``False`` to time the dense one)."""


@torch.no_grad()
def _evaluate_mask(decoder: nn.Module, mask: Tensor, x: Tensor, chunk: int = 2048) -> float:
    decoder.eval()
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        xb = x[start : start + chunk]
        total += float(reconstruction_loss(decoder, xb, mask).sum())
    decoder.train()
    return total / x.shape[0]


def train_feature_selection(
    data: Splits,
    estimator: str,
    config: FeatureSelectionConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
) -> RunResult:
    """Trains the global selector and the decoder with one estimator; returns the test BCE.

    Args:
        data: The splits (on ``device``).
        estimator: A key of :data:`~subset_rl.experiments.common.ESTIMATORS`, or ``"random"``.
        config: Experiment settings.
        seed: Seed of initialisation, minibatches and draws.
        device: Torch device.
        show_progress: Show a progress bar.

    Returns:
        The :class:`~subset_rl.experiments.common.RunResult` (metric: test BCE per pixel of the
        mode mask after the last step).
    """
    device = torch.device(device)
    n, k = data.num_features, config.k
    if estimator not in ESTIMATORS and estimator not in BASELINES:
        raise ValueError(
            f"estimator: expected one of {list(ESTIMATORS) + list(BASELINES)}, found {estimator!r}"
        )
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 <= k <= n={n} (pixels of {data.name}), found k={k}")
    tc = config.train
    check_protocol(tc.estimator.protocol)
    gen = seed_everything(seed, device)
    logits = nn.Parameter(torch.randn(n, device=device))
    decoder = make_mlp([n, *config.hidden, n]).to(device)
    fixed = estimator == "random"
    layer = None if fixed else SubsetLayer(estimator, k, tc.estimator).to(device)
    if fixed:
        logits.requires_grad_(False)
    params = list(decoder.parameters()) + ([] if fixed else [logits])
    optimizer = torch.optim.Adam(params, lr=tc.lr)
    batches = batch_stream(
        data.x_train.shape[0], tc.batch_size, torch.Generator().manual_seed(seed)
    )

    def mode_mask() -> Tensor:
        return KSubsetPolicy(logits.detach(), k, validate_args=False).mode.unsqueeze(0)

    def step(_: int) -> float:
        x = data.x_train[next(batches).to(device)]
        if layer is None:
            loss = reconstruction_loss(decoder, x, mode_mask()).mean()
        else:
            draw = layer(logits, generator=gen)
            losses = reconstruction_loss(decoder, x, draw.z).mean(-1)  # (S,): one per mask
            loss = layer.objective(draw, losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def evaluate() -> dict[str, float]:
        return {"val": _evaluate_mask(decoder, mode_mask(), data.x_val)}

    steps, curves, sec = train_loop(
        step,
        evaluate,
        steps=tc.steps,
        eval_every=tc.eval_every,
        device=device,
        show_progress=show_progress,
        desc=f"feature_selection {data.name} {config.setting} {estimator} seed={seed}",
    )
    return RunResult(
        experiment="feature_selection",
        dataset=data.name,
        setting=config.setting,
        estimator=estimator,
        seed=seed,
        steps=tc.steps,
        metric="test BCE per pixel",
        value=_evaluate_mask(decoder, mode_mask(), data.x_test),
        seconds_per_step=sec,
        val_steps=steps,
        val_values=curves["val"],
        protocol=tc.estimator.protocol,
    )


# --------------------------------------------------------------------------- IP-CAE extras
@dataclass
class ConcreteConfig:
    """Concrete-autoencoder experiment (CAE and IP-CAE selectors).

    Attributes:
        k: Number of selectors.
        hidden: Hidden sizes of the ``k -> ... -> n`` decoder.
        start_temperature: Gumbel-softmax temperature at step 0.
        end_temperature: Temperature at the last step (exponential annealing, as in CAE).
        embedding_dim: Size of the IP-CAE embedding; ``None`` uses ``n``.
        train: Optimisation settings (the estimator settings are unused).
    """

    k: int = 50
    hidden: tuple[int, ...] = (200,)
    start_temperature: float = 10.0
    end_temperature: float = 0.01
    embedding_dim: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def setting(self) -> str:
        """Label of the cell (same as feature selection)."""
        return f"k={self.k}"


CONCRETE_VARIANTS: Sequence[str] = ("cae", "ipcae")
"""``"cae"``: direct logits; ``"ipcae"``: indirect parameterization."""


@torch.no_grad()
def _evaluate_selector(
    selector: ConcreteSelector, decoder: nn.Module, x: Tensor, chunk: int = 2048
) -> float:
    selector.eval()
    decoder.eval()
    total = 0.0
    for start in range(0, x.shape[0], chunk):
        xb = x[start : start + chunk]
        out = decoder(selector(xb))
        total += float(F.binary_cross_entropy_with_logits(out, xb, reduction="none").mean(-1).sum())
    selector.train()
    decoder.train()
    return total / x.shape[0]


def train_concrete(
    data: Splits,
    variant: str,
    config: ConcreteConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
) -> RunResult:
    """Trains a concrete autoencoder (``"cae"``) or an IP-CAE (``"ipcae"``) for reconstruction.

    Args:
        data: The splits (on ``device``).
        variant: ``"cae"`` or ``"ipcae"``.
        config: Experiment settings.
        seed: Seed of initialisation, minibatches and Gumbel noise.
        device: Torch device.
        show_progress: Show a progress bar.

    Returns:
        The run; ``extra_curves["unique_percentage"]`` follows the validation steps and
        ``extra["unique_percentage"]`` is the final one.
    """
    if variant not in CONCRETE_VARIANTS:
        raise ValueError(f"variant: expected one of {list(CONCRETE_VARIANTS)}, found {variant!r}")
    device = torch.device(device)
    n, k = data.num_features, config.k
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 <= k <= n={n} (pixels of {data.name}), found k={k}")
    tc = config.train
    check_protocol(tc.estimator.protocol)
    gen = seed_everything(seed, device)
    embedding = None if variant == "cae" else (config.embedding_dim or n)
    selector = ConcreteSelector(
        n, k, temperature=config.start_temperature, embedding_dim=embedding
    ).to(device)
    decoder = make_mlp([k, *config.hidden, n]).to(device)
    optimizer = torch.optim.Adam([*selector.parameters(), *decoder.parameters()], lr=tc.lr)
    batches = batch_stream(
        data.x_train.shape[0], tc.batch_size, torch.Generator().manual_seed(seed)
    )
    ratio = config.end_temperature / config.start_temperature

    def step(i: int) -> float:
        selector.temperature = config.start_temperature * ratio ** (i / max(tc.steps, 1))
        x = data.x_train[next(batches).to(device)]
        out = decoder(selector(x, generator=gen))
        loss = F.binary_cross_entropy_with_logits(out, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def evaluate() -> dict[str, float]:
        return {
            "val": _evaluate_selector(selector, decoder, data.x_val),
            "unique_percentage": selector.unique_percentage(),
        }

    steps, curves, sec = train_loop(
        step,
        evaluate,
        steps=tc.steps,
        eval_every=tc.eval_every,
        device=device,
        show_progress=show_progress,
        desc=f"ipcae {data.name} {config.setting} {variant} seed={seed}",
    )
    return RunResult(
        experiment="ipcae",
        dataset=data.name,
        setting=config.setting,
        estimator=variant,
        seed=seed,
        steps=tc.steps,
        metric="test BCE per pixel",
        value=_evaluate_selector(selector, decoder, data.x_test),
        seconds_per_step=sec,
        val_steps=steps,
        val_values=curves["val"],
        extra_curves={"unique_percentage": curves["unique_percentage"]},
        extra={"unique_percentage": selector.unique_percentage()},
        protocol=tc.estimator.protocol,
    )

"""Pictures of what a k-subset policy selects, for the ``subset-rl`` command line.

One entry point, :func:`plot_selection`, picks the picture that fits the objective:

* sensor placement on a 2-D grid: the policy's inclusion probabilities with its chosen cells and
  the QR-pivoting cells, a held-out field with both placements, and its reconstruction;
* feature acquisition with square images (the 8 x 8 digits): the acquired pixels on the mean
  image and how often each pixel is acquired;
* k-NN voting: the votes of the chosen neighbours per class for a few queries, next to the
  votes of the k nearest candidates;
* anything else: a bar chart of how often each item is chosen and its inclusion probability.

matplotlib is an optional (dev) dependency: it is imported here, lazily, and when it is missing
:func:`plot_selection` returns ``None`` instead of failing. Figures are drawn on the Agg canvas
directly, so no global backend is changed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["matplotlib_available", "plot_selection"]

_POLICY_STYLE: dict[str, Any] = {
    "marker": "o", "s": 90, "facecolors": "none", "edgecolors": "white", "linewidths": 1.8
}
_BASELINE_STYLE: dict[str, Any] = {"marker": "x", "s": 60, "color": "red", "linewidths": 1.8}


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(ncols: int, nrows: int = 1, size: tuple[float, float] = (4.2, 3.8)) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _first_deterministic(baselines: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray] | None:
    for name, z in baselines.items():
        return name, np.asarray(z)
    return None


def plot_selection(
    objective: Any,
    context: Any,
    actions: np.ndarray,
    path: str | Path,
    *,
    marginals: np.ndarray | None = None,
    baselines: Mapping[str, np.ndarray] | None = None,
    policy_name: str = "policy",
    title: str = "",
) -> Path | None:
    """Draws what the policy selected and saves it as a PNG.

    Args:
        objective: The batched objective (a :class:`~subset_rl.envs.SubsetObjective`).
        context: The evaluation contexts the actions were chosen for (batch ``B``).
        actions: The policy's deterministic k-hot actions, shape ``(B, n)``.
        path: Where to write the PNG (folders are created).
        marginals: Optional inclusion probabilities of the policy, shape ``(B, n)``.
        baselines: Deterministic baseline actions to draw next to the policy's, each of shape
            ``(B, n)`` (for instance ``{"QR pivoting": ...}``); random baselines are left out.
        policy_name: Label of the policy in legends.
        title: Figure title.

    Returns:
        The path written, or ``None`` if matplotlib is not installed.
    """
    if not matplotlib_available():
        return None
    from subset_rl.envs import (
        FeatureAcquisitionObjective,
        KNNVotingObjective,
        SensorPlacementObjective,
    )

    actions = _np(actions).astype(np.float64)
    if actions.ndim != 2 or actions.shape[1] != objective.n:
        raise ValueError(
            f"actions: expected shape (batch, {objective.n}), found {actions.shape}"
        )
    marg = None if marginals is None else _np(marginals).astype(np.float64)
    base = {name: _np(z).astype(np.float64) for name, z in (baselines or {}).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = objective.n
    side = math.isqrt(n)
    if isinstance(objective, SensorPlacementObjective) and len(objective.shape) == 2:
        fig = _sensor_figure(objective, context, actions, marg, base, policy_name)
    elif isinstance(objective, FeatureAcquisitionObjective) and side * side == n:
        fig = _features_figure(objective, actions, marg, base, policy_name, side)
    elif isinstance(objective, KNNVotingObjective):
        fig = _votes_figure(objective, context, actions, base, policy_name)
    else:
        fig = _items_figure(actions, marg, base, policy_name)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def _cells(z: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.flatnonzero(z > 0.5)
    return idx % width, idx // width


def _sensor_figure(
    objective: Any,
    context: Any,
    actions: np.ndarray,
    marg: np.ndarray | None,
    base: Mapping[str, np.ndarray],
    policy_name: str,
) -> Any:
    import torch

    height, width = objective.shape
    fig = _figure(3)
    axes = fig.subplots(1, 3)
    prob = (marg if marg is not None else actions).mean(0).reshape(height, width)
    chosen = actions[0]
    qr = _first_deterministic(base)

    def marks(ax: Any) -> None:
        ax.scatter(*_cells(chosen, width), label=policy_name, **_POLICY_STYLE)
        if qr is not None:
            ax.scatter(*_cells(qr[1][0], width), label=qr[0], **_BASELINE_STYLE)
        ax.set_xticks([])
        ax.set_yticks([])

    im = axes[0].imshow(prob, cmap="viridis", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    marks(axes[0])
    which = "inclusion probability" if marg is not None else "selection frequency"
    axes[0].set_title(f"{policy_name}: {which}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels),
               facecolor="0.75")

    field = _np(context.fields[0]).reshape(height, width)
    lim = float(np.abs(field).max()) or 1.0
    axes[1].imshow(field, cmap="RdBu_r", vmin=-lim, vmax=lim)
    marks(axes[1])
    axes[1].set_title("a held-out field and the sensors")

    z = torch.as_tensor(chosen, dtype=objective.dtype, device=objective.device).view(1, 1, -1)
    fields, noise = context.fields[:1], context.noise[:1]
    recon = _np(objective.reconstruct(z, fields, noise)[0, 0]).reshape(height, width)
    error = float(objective.relative_error(z, fields, noise)[0, 0])
    axes[2].imshow(recon, cmap="RdBu_r", vmin=-lim, vmax=lim)
    marks(axes[2])
    label = f"reconstruction, {policy_name}: rel. error {error:.3f}"
    if qr is not None:
        zq = torch.as_tensor(qr[1][0], dtype=objective.dtype, device=objective.device)
        qr_error = float(objective.relative_error(zq.view(1, 1, -1), fields, noise)[0, 0])
        label += f"\n({qr[0]}: {qr_error:.3f})"
    axes[2].set_title(label, fontsize="medium")
    return fig


def _features_figure(
    objective: Any,
    actions: np.ndarray,
    marg: np.ndarray | None,
    base: Mapping[str, np.ndarray],
    policy_name: str,
    side: int,
) -> Any:
    fig = _figure(2)
    axes = fig.subplots(1, 2)
    mean_image = _np(objective.features).mean(0).reshape(side, side)
    freq = actions.mean(0)
    axes[0].imshow(mean_image, cmap="gray_r")
    x, y = _cells(freq, side)
    axes[0].scatter(x, y, marker="s", s=160, facecolors="none", edgecolors="tab:red",
                    linewidths=2.0, label=f"{policy_name} (chosen in > half the instances)")
    other = _first_deterministic(base)
    if other is not None:
        axes[0].scatter(*_cells(other[1].mean(0), side), label=other[0], marker="x", s=50,
                        color="tab:blue", linewidths=1.5)
    axes[0].set_title("acquired features on the mean image")
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize="small")
    shown = marg.mean(0) if marg is not None else freq
    im = axes[1].imshow(shown.reshape(side, side), cmap="viridis", vmin=0.0,
                        vmax=float(shown.max()) or 1.0)
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    which = "inclusion probability" if marg is not None else "how often each feature is acquired"
    axes[1].set_title(f"{policy_name}: {which}")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _votes_figure(
    objective: Any,
    context: Any,
    actions: np.ndarray,
    base: Mapping[str, np.ndarray],
    policy_name: str,
) -> Any:
    shown = min(8, actions.shape[0])
    cols = min(4, shown)
    rows = math.ceil(shown / cols)
    fig = _figure(cols, rows, size=(3.4, 2.8))
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    classes = int(objective.n_classes)
    labels = _np(context.candidate_labels)
    truth = _np(context.query_label)
    other = _first_deterministic(base)
    width = 0.4 if other is not None else 0.8
    grid = np.arange(classes)
    for i, ax in enumerate(axes):
        if i >= shown:
            ax.set_axis_off()
            continue
        votes = np.bincount(labels[i][actions[i] > 0.5], minlength=classes)
        ax.axvspan(truth[i] - 0.5, truth[i] + 0.5, color="tab:green", alpha=0.2, lw=0)
        ax.bar(grid - (width / 2 if other else 0), votes, width, color="tab:blue",
               label=policy_name)
        if other is not None:
            nearest = np.bincount(labels[i][other[1][i] > 0.5], minlength=classes)
            ax.bar(grid + width / 2, nearest, width, color="0.6", label=other[0])
        winners = np.flatnonzero(votes == votes.max())
        verdict = ("wrong" if truth[i] not in winners
                   else "right" if len(winners) == 1 else f"{len(winners)}-way tie")
        ax.set_title(f"query class {truth[i]}: {policy_name} vote {verdict}", fontsize="medium")
        ax.set_xticks(grid)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize="small")
        if i == 0:
            ax.legend(fontsize="x-small")
    fig.supxlabel("class (shaded: the query's)")
    fig.supylabel("votes of the chosen neighbours")
    return fig


def _items_figure(
    actions: np.ndarray,
    marg: np.ndarray | None,
    base: Mapping[str, np.ndarray],
    policy_name: str,
) -> Any:
    fig = _figure(1, size=(min(14.0, 4.0 + 0.08 * actions.shape[1]), 3.6))
    ax = fig.subplots()
    items = np.arange(actions.shape[1])
    ax.bar(items, actions.mean(0), color="tab:blue", label=f"{policy_name}: selection frequency")
    if marg is not None:
        ax.step(items, marg.mean(0), where="mid", color="tab:orange",
                label=f"{policy_name}: inclusion probability")
    other = _first_deterministic(base)
    if other is not None:
        ax.plot(items, other[1].mean(0), "x", color="tab:red", label=other[0])
    ax.set_xlabel("item")
    ax.set_ylabel("frequency / probability")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize="small")
    return fig

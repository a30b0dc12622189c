"""Command-line runner: every estimator on the paper's experiments, one results table.

Usage (``python -m subset_rl.experiments --help`` lists every option)::

    # a few minutes on 2 CPU cores: scikit-learn digits, 300 steps, every experiment
    python -m subset_rl.experiments all --quick

    # one cell of the paper on CPU with reduced steps
    python -m subset_rl.experiments feature_selection --dataset mnist --k 50 --steps 300 \\
        --eval-every 100 --seeds 0 --out examples/results/paper/cpu

    # every cell of the paper: 50,000 steps, 5 seeds, both data sets (a GPU job);
    # --dry-run lists the 440 runs first
    python -m subset_rl.experiments paper --device cuda --out examples/results/paper/full

    # the paper's code as published (Gumbel top-k SFESS samples, ...), or both protocols
    python -m subset_rl.experiments paper --protocol paper --device cuda --out runs/paper_code
    python -m subset_rl.experiments fs --protocol exact paper --steps 300 --out runs/both

    # the reduced reproduction for a 2-core CPU (both protocols, 3 seeds, about 3 h)
    python -m subset_rl.experiments reduced --threads 2 --out examples/results/paper/reduced

    # split over GPUs (any selection of experiments / data sets / seeds), then merge
    python -m subset_rl.experiments merge OUT_DIR_1 OUT_DIR_2 ... --out examples/results/paper/full

Each invocation writes, under ``--out`` (default ``runs/paper/latest``, or ``runs/paper/quick``
with ``--quick``; the tables committed under ``examples/results/paper`` change only when their
folder is passed as ``--out``):

* ``per_seed.csv``: one row per run (appended as runs finish);
* ``results.csv`` and ``results.md``: per cell and estimator, mean and standard deviation over
  seeds of the test metric, next to the paper's number, with the wall-clock per training step;
* ``curves_<experiment>_<dataset>_<setting>.png``: validation curves (mean and spread over seeds);
* ``timing_<experiment>_<dataset>_<setting>.png``: seconds per training step, per cell;
* ``timing_all.png``: every cell's ms per step with the ratio to STGS (the paper's Fig. 3b);
* plots of ``--protocol paper`` cells end in ``_paper``;
* ``unique_ipcae_<dataset>_<setting>.png``: the IP-CAE unique-percentage curves;
* ``config.json``: the command and every setting of every cell.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import json
import math
import platform
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import (
    DATASETS,
    ESTIMATORS,
    METRICS,
    EstimatorConfig,
    RunResult,
    Splits,
    TrainConfig,
    canonical_dataset,
    estimator_label,
    load_splits,
    paper_value,
    parse_estimators,
)
from .feature_selection import (
    CONCRETE_VARIANTS,
    ConcreteConfig,
    FeatureSelectionConfig,
    train_concrete,
    train_feature_selection,
)
from .knn import KNNConfig, train_knn
from .protocol import DEFAULT_HIDDEN, PROTOCOLS, check_protocol
from .vae import VAEConfig, train_vae

__all__ = [
    "Cell",
    "build_parser",
    "main",
    "plot_timing",
    "read_per_seed",
    "run_cells",
    "summarize",
    "timing_ratios",
    "write_outputs",
]

EXPERIMENTS = ("feature_selection", "vae", "knn", "ipcae")
"""Experiments of the runner, in table order."""

DEFAULT_OUT = Path("runs/paper")
"""Parent of the default ``--out`` folders (git-ignored, so no run rewrites tracked results)."""

_EXPERIMENT_ALIASES = {"fs": "feature_selection", "feature-selection": "feature_selection"}

QUICK = {
    "dataset": "digits",
    "steps": 300,
    "eval_every": 50,
    "val_size": 300,
    "lr": 1e-2,
    "fs_k": 5,
    "vae_d": 10,
    "vae_k": 5,
}
"""Settings of ``--quick`` (any explicit option overrides them)."""


@dataclass
class Cell:
    """One cell of the paper's tables: an experiment on a data set with its settings.

    Attributes:
        experiment: One of :data:`EXPERIMENTS`.
        dataset: Canonical data set name.
        config: The experiment's config dataclass.
        estimators: Estimator keys (IP-CAE variants for ``"ipcae"``).
    """

    experiment: str
    dataset: str
    config: Any
    estimators: list[str] = field(default_factory=list)

    @property
    def setting(self) -> str:
        """The cell's label (``"k=50"``, ...)."""
        return str(self.config.setting)

    @property
    def protocol(self) -> str:
        """``"exact"`` or ``"paper"`` (see :mod:`subset_rl.experiments.protocol`)."""
        return str(self.config.train.estimator.protocol)


# --------------------------------------------------------------------------- building cells
def _hidden(args: argparse.Namespace, train: TrainConfig) -> tuple[int, ...]:
    """``--hidden`` if given, else the decoder of the protocol (one or two layers of 200)."""
    if args.hidden:
        return tuple(args.hidden)
    return DEFAULT_HIDDEN[train.estimator.protocol]


def _experiment_config(
    experiment: str, train: TrainConfig, *, k: int | None, args: argparse.Namespace
) -> Any:
    if experiment == "feature_selection":
        return FeatureSelectionConfig(k=k or 50, hidden=_hidden(args, train), train=train)
    if experiment == "ipcae":
        return ConcreteConfig(k=k or 50, hidden=_hidden(args, train), train=train)
    if experiment == "vae":
        d = args.vae_d
        return VAEConfig(d=d, n=d, k=k or max(d // 2, 1), train=train)
    return KNNConfig(
        d=args.knn_d, k=k or 10, candidates=args.candidates, test_k=args.test_k, train=train
    )


def _estimators_for(experiment: str, estimators: list[str], with_random: bool) -> list[str]:
    if experiment == "ipcae":
        return list(CONCRETE_VARIANTS)
    names = [e for e in estimators if e in ESTIMATORS]
    if experiment == "feature_selection" and (with_random or "random" in estimators):
        names.append("random")
    elif "random" in estimators and not names:
        raise ValueError(
            f"estimator 'random' applies to feature_selection only, not to {experiment}"
        )
    return names


def _paper_cells(train: TrainConfig, estimators: list[str], args: argparse.Namespace) -> list[Cell]:
    cells = []
    base = dataclasses.replace
    for dataset in ("mnist", "fashion_mnist"):
        for k in (50, 30):
            cfg = FeatureSelectionConfig(k=k, hidden=_hidden(args, train), train=base(train))
            cells.append(
                Cell(
                    "feature_selection",
                    dataset,
                    cfg,
                    _estimators_for("feature_selection", estimators, True),
                )
            )
    for dataset, d, k in (
        ("mnist", 20, 10),
        ("fashion_mnist", 20, 10),
        ("mnist", 10, 5),
        ("fashion_mnist", 10, 5),
    ):
        cells.append(
            Cell(
                "vae",
                dataset,
                VAEConfig(d=d, n=d, k=k, train=base(train)),
                _estimators_for("vae", estimators, False),
            )
        )
    for dataset in ("mnist", "fashion_mnist"):
        cells.append(
            Cell(
                "knn",
                dataset,
                KNNConfig(train=base(train)),
                _estimators_for("knn", estimators, False),
            )
        )
    for dataset in ("mnist", "fashion_mnist"):
        cells.append(
            Cell(
                "ipcae",
                dataset,
                ConcreteConfig(k=50, hidden=_hidden(args, train), train=base(train)),
                list(CONCRETE_VARIANTS),
            )
        )
    return cells


REDUCED_PAPER_KNN = ("sfess", "sfess_vr", "simple", "imle")
"""Estimators of the k-NN cell whose runs differ between the protocols (the reduced preset runs
only these under ``paper``: GS, STGS, AIMLE and IL are the same code, seeds and data in both)."""


def _reduced_cells(
    train: TrainConfig, estimators: list[str], args: argparse.Namespace
) -> list[Cell]:
    base = dataclasses.replace
    cells = [Cell("knn", "mnist", KNNConfig(train=base(train)), [])]
    paper = train.estimator.protocol == "paper"
    knn = _estimators_for("knn", estimators, False)
    cells[0].estimators = [e for e in knn if e in REDUCED_PAPER_KNN] if paper else knn
    for k in (50, 30):
        cfg = FeatureSelectionConfig(k=k, hidden=_hidden(args, train), train=base(train))
        names = _estimators_for("feature_selection", estimators, not args.no_random)
        cells.append(Cell("feature_selection", "mnist", cfg, names))
    cells.append(
        Cell(
            "vae",
            "mnist",
            VAEConfig(d=10, n=10, k=5, train=base(train)),
            _estimators_for("vae", estimators, False),
        )
    )
    return [c for c in cells if c.estimators]


def build_cells(args: argparse.Namespace) -> list[Cell]:
    """Turns parsed arguments into the list of cells to run.

    Raises:
        ValueError: For unknown experiments, estimators or data sets, or impossible sizes.
    """
    experiments: list[str] = []
    for raw in args.experiments:
        key = _EXPERIMENT_ALIASES.get(raw.lower(), raw.lower())
        if key == "all":
            experiments += [e for e in EXPERIMENTS if e not in experiments]
        elif key in PRESETS:
            experiments.append(key)
        elif key in EXPERIMENTS:
            if key not in experiments:
                experiments.append(key)
        else:
            raise ValueError(
                f"experiment: expected one of {list(EXPERIMENTS) + ['all', *PRESETS]}, "
                f"found {raw!r}"
            )
    estimators = parse_estimators(args.estimators)
    protocols = list(dict.fromkeys(check_protocol(p) for p in args.protocol))
    cells: list[Cell] = []
    for protocol in protocols:
        cells += _build_cells_for(args, experiments, estimators, protocol)
    if not cells:
        raise ValueError("nothing to run: no estimator applies to the requested experiments")
    return cells


def _build_cells_for(
    args: argparse.Namespace, experiments: list[str], estimators: list[str], protocol: str
) -> list[Cell]:
    train = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=args.eval_every,
        estimator=EstimatorConfig(
            vr_samples=args.vr_samples,
            sfess_samples=args.sfess_samples,
            tau=args.tau,
            imle_lambda=args.imle_lambda,
            imle_temperature=args.imle_temperature,
            intermediate_lambda=args.intermediate_lambda,
            protocol=protocol,
        ),
    )
    for name, value, low in (
        ("steps", train.steps, 1),
        ("eval_every", train.eval_every, 1),
        ("batch_size", train.batch_size, 1),
        ("vr_samples", train.estimator.vr_samples, 2),
        ("sfess_samples", train.estimator.sfess_samples, 1),
    ):
        if value < low:
            raise ValueError(f"{name}: expected an int >= {low}, found {value}")
    for preset in PRESETS:
        if preset in experiments:
            if len(experiments) > 1:
                raise ValueError(f"experiment: {preset!r} runs its cells already; give it alone")
            return PRESETS[preset](train, estimators, args)
    datasets = [canonical_dataset(d) for d in args.dataset]
    cells = []
    for experiment in experiments:
        for dataset in datasets:
            k = args.k
            if args.quick and k is None:
                k = {
                    "feature_selection": QUICK["fs_k"],
                    "ipcae": QUICK["fs_k"],
                    "vae": QUICK["vae_k"],
                }.get(experiment)
            cfg = _experiment_config(experiment, dataclasses.replace(train), k=k, args=args)
            names = _estimators_for(experiment, estimators, not args.no_random)
            if names:
                cells.append(Cell(experiment, dataset, cfg, names))
    return cells


PRESETS = {"paper": _paper_cells, "reduced": _reduced_cells}
"""Named sets of cells: every cell of the paper's Tables 2-4 (and IP-CAE), or the reduced
reproduction sized for a 2-core CPU."""

REDUCED = {"steps": 1000, "eval_every": 100, "val_size": 2000, "seeds": [0, 1, 2]}
"""Defaults of the ``reduced`` preset (any explicit option overrides them)."""

_N_FEATURES = {"mnist": 784, "fashion_mnist": 784, "digits": 64}


def check_cells(cells: Sequence[Cell]) -> None:
    """Checks subset sizes against the data before any training starts.

    Raises:
        ValueError: If ``k`` exceeds the number of items of a cell.
    """
    for cell in cells:
        cfg = cell.config
        if cell.experiment in ("feature_selection", "ipcae"):
            n = _N_FEATURES[cell.dataset]
            if not 1 <= cfg.k <= n:
                raise ValueError(
                    f"k: expected 1 <= k <= n={n} (pixels of {cell.dataset}) for "
                    f"{cell.experiment}, found k={cfg.k}"
                )
        elif cell.experiment == "vae":
            if not 1 <= cfg.k <= cfg.n:
                raise ValueError(
                    f"k: expected 1 <= k <= n={cfg.n} (items per latent variable, --vae-d) for "
                    f"vae, found k={cfg.k}"
                )
        elif not 1 <= cfg.k <= cfg.candidates:
            raise ValueError(
                f"k: expected 1 <= k <= n={cfg.candidates} (candidates per query, --candidates) "
                f"for knn, found k={cfg.k}"
            )


# --------------------------------------------------------------------------- running
_TRAIN = {
    "feature_selection": train_feature_selection,
    "vae": train_vae,
    "knn": train_knn,
    "ipcae": train_concrete,
}

_PER_SEED_FIELDS = [
    "experiment",
    "dataset",
    "setting",
    "estimator",
    "seed",
    "steps",
    "metric",
    "value",
    "seconds_per_step",
    "unique_percentage",
    "val_steps",
    "val_values",
    "unique_curve",
    "protocol",
]


def run_cells(
    cells: Sequence[Cell],
    seeds: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    out: Path | None = None,
    val_size: int = 10_000,
    data_dir: str | None = None,
    show_progress: bool = True,
) -> list[RunResult]:
    """Runs every estimator of every cell for every seed.

    Args:
        cells: What to run.
        seeds: Seeds (one run each).
        device: Torch device.
        out: If given, ``per_seed.csv`` is appended there after each run.
        val_size: Training examples held out for validation.
        data_dir: Directory with the IDX files.
        show_progress: Show progress bars.

    Returns:
        All runs, in order.
    """
    device = torch.device(device)
    data_cache: dict[str, Splits] = {}
    results: list[RunResult] = []
    per_seed = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        per_seed = out / "per_seed.csv"
        with per_seed.open("w", newline="") as fh:
            csv.writer(fh).writerow(_PER_SEED_FIELDS)
    for cell in cells:
        if cell.dataset not in data_cache:
            data_cache[cell.dataset] = load_splits(
                cell.dataset, val_size=val_size, data_dir=data_dir, device=device
            )
        data = data_cache[cell.dataset]
        for estimator in cell.estimators:
            for seed in seeds:
                result = _TRAIN[cell.experiment](
                    data,
                    estimator,
                    cell.config,
                    seed=seed,
                    device=device,
                    show_progress=show_progress,
                )
                results.append(result)
                if show_progress:
                    print(
                        f"{cell.experiment:17s} {cell.dataset:13s} {cell.setting:12s} "
                        f"{cell.protocol:5s} "
                        f"{estimator_label(estimator):14s} seed={seed}: {result.metric} = "
                        f"{result.value:.4f}  ({result.seconds_per_step * 1e3:.1f} ms/step)",
                        file=sys.stderr,
                    )
                if per_seed is not None:
                    _append_per_seed([result], per_seed)
    return results


def _append_per_seed(results: Sequence[RunResult], path: Path) -> None:
    with path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        for r in results:
            writer.writerow(
                [
                    r.experiment,
                    r.dataset,
                    r.setting,
                    r.estimator,
                    r.seed,
                    r.steps,
                    r.metric,
                    f"{r.value:.6g}",
                    f"{r.seconds_per_step:.6g}",
                    r.extra.get("unique_percentage", ""),
                    " ".join(map(str, r.val_steps)),
                    " ".join(f"{v:.6g}" for v in r.val_values),
                    " ".join(f"{v:.6g}" for v in r.extra_curves.get("unique_percentage", [])),
                    r.protocol,
                ]
            )


def read_per_seed(path: Path) -> list[RunResult]:
    """Reads the runs back from a ``per_seed.csv`` written by :func:`run_cells`.

    Args:
        path: The CSV file, or a directory holding ``per_seed.csv``.

    Returns:
        The runs, with their validation curves.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If a required column is missing.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "per_seed.csv"
    results = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(_PER_SEED_FIELDS[:9]) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: expected columns {sorted(missing)}, found none of them")
        for row in reader:
            floats = lambda text: [float(v) for v in (text or "").split()]  # noqa: E731
            unique = floats(row.get("unique_curve"))
            results.append(
                RunResult(
                    experiment=row["experiment"],
                    dataset=row["dataset"],
                    setting=row["setting"],
                    estimator=row["estimator"],
                    seed=int(row["seed"]),
                    steps=int(row["steps"]),
                    metric=row["metric"],
                    value=float(row["value"]),
                    seconds_per_step=float(row["seconds_per_step"]),
                    val_steps=[int(v) for v in (row.get("val_steps") or "").split()],
                    val_values=floats(row.get("val_values")),
                    extra_curves={"unique_percentage": unique} if unique else {},
                    extra=(
                        {"unique_percentage": float(row["unique_percentage"])}
                        if row.get("unique_percentage")
                        else {}
                    ),
                    protocol=row.get("protocol") or "exact",
                )
            )
    return results


# --------------------------------------------------------------------------- summarising
SUMMARY_FIELDS = [
    "experiment",
    "dataset",
    "setting",
    "protocol",
    "estimator",
    "label",
    "metric",
    "higher_is_better",
    "steps",
    "seeds",
    "mean",
    "std",
    "paper",
    "seconds_per_step",
    "unique_percentage",
]


def summarize(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Mean and standard deviation (``ddof=1``; ``nan`` for one seed) over seeds per cell row."""
    groups: dict[tuple[str, str, str, str, str], list[RunResult]] = {}
    for r in results:
        key = (r.experiment, r.dataset, r.setting, r.protocol, r.estimator)
        groups.setdefault(key, []).append(r)
    rows = []
    for (experiment, dataset, setting, protocol, estimator), runs in groups.items():
        values = np.array([r.value for r in runs], dtype=float)
        unique = [r.extra["unique_percentage"] for r in runs if "unique_percentage" in r.extra]
        rows.append(
            {
                "experiment": experiment,
                "dataset": dataset,
                "setting": setting,
                "protocol": protocol,
                "estimator": estimator,
                "label": estimator_label(estimator),
                "metric": runs[0].metric,
                "higher_is_better": METRICS[experiment][1],
                "steps": runs[0].steps,
                "seeds": len(runs),
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                "paper": paper_value(experiment, dataset, setting, estimator),
                "seconds_per_step": float(np.mean([r.seconds_per_step for r in runs])),
                "unique_percentage": float(np.mean(unique)) if unique else math.nan,
            }
        )
    return rows


def _fmt(value: float, digits: int) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


def _digits(experiment: str) -> int:
    return 2 if experiment == "vae" else 4


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown tables, one per cell, from :func:`summarize` rows."""
    lines: list[str] = []
    cells: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["experiment"], row["dataset"], row["setting"], row.get("protocol", "exact"))
        cells.setdefault(key, []).append(row)
    for (experiment, dataset, setting, protocol), group in cells.items():
        metric, higher = METRICS[experiment]
        better = "higher" if higher else "lower"
        steps = group[0]["steps"]
        lines.append(
            f"### {experiment} · {dataset} · {setting} · protocol {protocol}: {metric} "
            f"({better} is better), {steps} steps"
        )
        lines.append("")
        is_ipcae = experiment == "ipcae"
        header = "| Estimator | mean ± std | seeds | paper (50k steps, 5 seeds) | ms/step |"
        sep = "|---|---|---|---|---|"
        if is_ipcae:
            header += " unique % |"
            sep += "---|"
        lines += [header, sep]
        digits = _digits(experiment)
        for row in group:
            std = "" if math.isnan(row["std"]) else f" ± {row['std']:.{digits}f}"
            line = (
                f"| {row['label']} | {row['mean']:.{digits}f}{std} | {row['seeds']} | "
                f"{_fmt(row['paper'], 3 if digits == 4 else 2)} | "
                f"{row['seconds_per_step'] * 1e3:.1f} |"
            )
            if is_ipcae:
                line += f" {_fmt(row['unique_percentage'], 1)} |"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.replace("=", "")).strip("_")


_LINESTYLES = ("-", "--")
_MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*", "P", "h")


def _plot_outputs(results: Sequence[RunResult], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    written: list[Path] = []
    cells: dict[tuple[str, str, str, str], list[RunResult]] = {}
    for r in results:
        cells.setdefault((r.experiment, r.dataset, r.setting, r.protocol), []).append(r)
    for (experiment, dataset, setting, protocol), runs in cells.items():
        by_est: dict[str, list[RunResult]] = {}
        for r in runs:
            by_est.setdefault(r.estimator, []).append(r)
        suffix = "" if protocol == "exact" else f"_{protocol}"
        name = _slug(f"{experiment}_{dataset}_{setting}{suffix}")
        metric = METRICS[experiment][0]
        curve_keys = ["val"] + (["unique_percentage"] if experiment == "ipcae" else [])
        for key in curve_keys:
            # runs recorded without this curve (e.g. a per_seed.csv written before the IP-CAE
            # unique-percentage curve was recorded) are left out of its plot, not an error
            plotted = {
                est: [r for r in group if key == "val" or key in r.extra_curves]
                for est, group in by_est.items()
            }
            plotted = {est: group for est, group in plotted.items() if group}
            if not plotted:
                continue
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            for index, (est, group) in enumerate(plotted.items()):
                steps = np.array(group[0].val_steps)
                series = [r.val_values if key == "val" else r.extra_curves[key] for r in group]
                values = np.array([s[: len(steps)] for s in series], dtype=float)
                mean = values.mean(0)
                ax.plot(
                    steps,
                    mean,
                    label=estimator_label(est),
                    linestyle=_LINESTYLES[index % len(_LINESTYLES)],
                    marker=_MARKERS[index % len(_MARKERS)],
                    markersize=3,
                )
                if len(group) > 1:
                    ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
            ax.set_xlabel("training step")
            ax.set_ylabel(metric.replace("test", "validation") if key == "val" else "unique %")
            ax.set_title(f"{experiment} · {dataset} · {setting} · {protocol}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            prefix = "curves" if key == "val" else "unique"
            path = out / f"{prefix}_{name}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        labels = [estimator_label(e) for e in by_est]
        ms = [1e3 * float(np.mean([r.seconds_per_step for r in g])) for g in by_est.values()]
        bars = ax.bar(labels, ms, color="tab:blue")
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_ylabel("ms per training step")
        ax.set_yscale("log")
        ax.set_title(f"ms per step · {experiment} · {dataset} · {setting} · {protocol}")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        path = out / f"timing_{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def timing_ratios(results: Sequence[RunResult], reference: str = "stgs") -> list[dict[str, Any]]:
    """Mean seconds per training step per cell, protocol and estimator, relative to ``reference``.

    The records are the runs' own (``seconds_per_step`` of each run, mean over seeds); the ratio
    ``SFESS+VR / STGS`` is the number the paper's Fig. 3b discusses.

    Args:
        results: The runs.
        reference: Estimator the ratios are taken to (``nan`` in cells without it).

    Returns:
        One dict per (experiment, dataset, setting, protocol, estimator) with ``"ms_per_step"``
        and ``"ratio"``, in the order of the records.

    Raises:
        ValueError: If ``results`` is empty or a time is not a positive finite number.
    """
    if not results:
        raise ValueError("results: expected at least one run, found none")
    groups: dict[tuple[str, str, str, str], dict[str, list[float]]] = {}
    for r in results:
        sec = float(r.seconds_per_step)
        if not (math.isfinite(sec) and sec > 0):
            raise ValueError(
                f"seconds_per_step: expected a positive finite number, found {sec} for "
                f"{r.experiment} {r.dataset} {r.setting} {r.estimator} seed={r.seed}"
            )
        cell = (r.experiment, r.dataset, r.setting, r.protocol)
        groups.setdefault(cell, {}).setdefault(r.estimator, []).append(sec)
    rows = []
    for (experiment, dataset, setting, protocol), by_est in groups.items():
        ref = by_est.get(reference)
        ref_ms = 1e3 * float(np.mean(ref)) if ref else math.nan
        for estimator, secs in by_est.items():
            ms = 1e3 * float(np.mean(secs))
            rows.append(
                {
                    "experiment": experiment,
                    "dataset": dataset,
                    "setting": setting,
                    "protocol": protocol,
                    "estimator": estimator,
                    "ms_per_step": ms,
                    "ratio": ms / ref_ms if ref else math.nan,
                }
            )
    return rows


def plot_timing(results: Sequence[RunResult], path: Path, reference: str = "stgs") -> Path:
    """The paper's Fig. 3b from the runs' records: ms per training step, every cell in one figure.

    One group of bars per estimator, one bar per cell and protocol (log scale), each labelled
    with its ratio to ``reference`` (``x1.0`` for the reference itself).

    Args:
        results: The runs (their ``seconds_per_step``).
        path: The PNG file to write (its folder is created).
        reference: Estimator the ratios are taken to.

    Returns:
        ``path``.

    Raises:
        ValueError: As :func:`timing_ratios`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = timing_ratios(results, reference)
    estimators = list(dict.fromkeys(r["estimator"] for r in rows))
    cells = list(
        dict.fromkeys((r["experiment"], r["dataset"], r["setting"], r["protocol"]) for r in rows)
    )
    width = 0.8 / len(cells)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(estimators) + 2), 4.2))
    for j, cell in enumerate(cells):
        lookup = {
            r["estimator"]: r
            for r in rows
            if (r["experiment"], r["dataset"], r["setting"], r["protocol"]) == cell
        }
        xs = [i + (j - (len(cells) - 1) / 2) * width for i, e in enumerate(estimators)
              if e in lookup]  # fmt: skip
        present = [e for e in estimators if e in lookup]
        bars = ax.bar(
            xs,
            [lookup[e]["ms_per_step"] for e in present],
            width,
            label=" · ".join(cell),
        )
        labels = [
            "" if math.isnan(lookup[e]["ratio"]) else f"x{lookup[e]['ratio']:.1f}" for e in present
        ]
        ax.bar_label(bars, labels=labels, fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(estimators)), [estimator_label(e) for e in estimators])
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per training step")
    ax.set_title(f"wall-clock per training step (labels: ratio to {estimator_label(reference)})")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(
    results: Sequence[RunResult],
    out: Path,
    *,
    command: str = "",
    notes: str = "",
    device: str = "cpu",
) -> dict[str, Path]:
    """Writes ``results.csv``, ``results.md`` and the PNG plots for ``results`` under ``out``.

    Args:
        results: The runs.
        out: Output directory (created).
        command: The command line, recorded in the Markdown header.
        notes: One more line for the header.
        device: Description of the device the runs used.

    Returns:
        The paths written, by kind (``"csv"``, ``"md"``, and ``"png:<file name>"``).
    """
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(results)
    csv_path = out / "results.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
    seeds = sorted({r.seed for r in results})
    header = [
        "# SFESS paper experiments: results",
        "",
        f"- command: `{command}`" if command else "",
        f"- date: {_dt.datetime.now().isoformat(timespec='seconds')}",
        f"- device: {device}; torch {torch.__version__}; python {platform.python_version()}",
        f"- seeds: {', '.join(map(str, seeds))}; std is over seeds (ddof=1, '–' for one seed)",
        "- paper: the SFESS paper's mean over 5 seeds after 50,000 steps ('–': not reported)",
        f"- {notes}" if notes else "",
        "",
    ]
    md_path = out / "results.md"
    md_path.write_text(
        "\n".join(line for line in header if line is not None) + "\n" + markdown_table(rows)
    )
    paths = {"csv": csv_path, "md": md_path}
    for path in _plot_outputs(results, out):
        paths[f"png:{path.name}"] = path
    if results:
        path = plot_timing(results, out / "timing_all.png")
        paths[f"png:{path.name}"] = path
    return paths


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m subset_rl.experiments``."""
    est_help = ", ".join(f"{k} ({v.label})" for k, v in ESTIMATORS.items())
    p = argparse.ArgumentParser(
        prog="python -m subset_rl.experiments",
        description=(
            "Reproduce the SFESS paper's experiments (feature selection, k-subset VAE, "
            "stochastic k-NN, and the IP-CAE selectors) with every gradient estimator. "
            "Defaults are the paper's settings (50,000 steps, batch 128, Adam 1e-4, 32 VR "
            "samples, tau 0.5, I-MLE temperature 1)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "experiments",
        nargs="+",
        metavar="EXPERIMENT",
        help="feature_selection (fs), vae, knn, ipcae, all (the four), paper (every cell "
        "of the paper's tables: both data sets, 5 seeds unless --seeds is given), or reduced "
        "(MNIST k-NN, feature selection k=50 and k=30, VAE d=n=10: both protocols, seeds 0 1 2, "
        "1000 steps, 2000 validation images; sized for about 3 h on 2 CPU cores)",
    )
    p.add_argument(
        "--estimators",
        nargs="+",
        default=["all"],
        help=f"estimators: all, or some of {est_help}; 'random' adds the fixed "
        "random subset reference (feature selection)",
    )
    p.add_argument(
        "--no-random",
        action="store_true",
        help="skip the fixed random subset reference row of feature selection",
    )
    p.add_argument(
        "--dataset",
        nargs="+",
        default=None,
        help=f"data sets among {list(DATASETS)} (default mnist; digits with --quick)",
    )
    p.add_argument(
        "--k",
        type=int,
        default=None,
        help="subset size (default: 50 for feature selection and ipcae, d/2 for "
        "vae, 10 for knn; with --quick 5 for feature selection, ipcae and vae)",
    )
    p.add_argument(
        "--vae-d",
        type=int,
        default=None,
        help="VAE latent variables d (= items n per variable) (default 20; 10 with --quick)",
    )
    p.add_argument("--knn-d", type=int, default=2, help="k-NN embedding dimension")
    p.add_argument("--candidates", type=int, default=128, help="k-NN candidates per step")
    p.add_argument("--test-k", type=int, default=10, help="neighbours of the k-NN evaluation")
    p.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=None,
        help="hidden sizes of the feature-selection / IP-CAE decoder (default: 200 with "
        "--protocol exact, the paper's text; 200 200 with --protocol paper, its code)",
    )
    p.add_argument(
        "--protocol",
        nargs="+",
        choices=PROTOCOLS,
        default=None,
        help="exact: exact k-subset samples for SFESS(+VR), sum-of-gamma I-MLE noise, the "
        "SIMPLE paper's estimator, the exact VAE KL summed over d, one hidden layer of 200; "
        "paper: the SFESS paper's code (Gumbel top-k samples, Gumbel I-MLE noise, SIMPLE as in "
        "its code, approximate KL averaged over d, two hidden layers of 200); both: give both "
        "(default exact; exact paper for 'reduced')",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="seeds (default 0; 0 1 2 3 4 for 'paper')",
    )
    p.add_argument(
        "--steps", type=int, default=None, help="training steps (default 50000; 300 with --quick)"
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="steps between validations (default 1000; 50 with --quick)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adam learning rate (default 1e-4; 1e-2 with --quick)",
    )
    p.add_argument("--vr-samples", type=int, default=32, help="samples of SFESS+VR")
    p.add_argument("--sfess-samples", type=int, default=1, help="samples of plain SFESS")
    p.add_argument("--tau", type=float, default=0.5, help="GS / STGS temperature")
    p.add_argument("--imle-lambda", type=float, default=1.0, help="I-MLE target step size")
    p.add_argument(
        "--imle-temperature", type=float, default=1.0, help="I-MLE / AIMLE noise temperature"
    )
    p.add_argument(
        "--intermediate-lambda", type=float, default=1.0, help="intermediate-loss target step size"
    )
    p.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="training examples held out for validation (default 10000; 300 with --quick)",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--data-dir", default=None, help="directory with the MNIST-like IDX files")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output directory (default {DEFAULT_OUT}/latest, {DEFAULT_OUT}/quick with "
        "--quick; the committed tables under examples/results/paper are only written when "
        "named here)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="scikit-learn digits, 300 steps, lr 1e-2, k=5 (VAE d=n=10, k=5), 300 "
        "validation images: a few minutes on 2 CPU cores (use --threads 1 on a shared machine)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-run lines")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--dry-run", action="store_true", help="print the runs that would be made and exit"
    )
    return p


def _resolve_defaults(args: argparse.Namespace) -> None:
    quick = args.quick
    paper = any(e.lower() == "paper" for e in args.experiments)
    reduced = any(e.lower() == "reduced" for e in args.experiments)
    if args.protocol is None:
        args.protocol = list(PROTOCOLS) if reduced else ["exact"]
    if reduced:
        for name in ("steps", "eval_every", "val_size", "seeds"):
            if getattr(args, name) is None:
                setattr(args, name, REDUCED[name])
    if args.dataset is None:
        args.dataset = [QUICK["dataset"] if quick else "mnist"]
    if args.steps is None:
        args.steps = QUICK["steps"] if quick else 50_000
    if args.eval_every is None:
        args.eval_every = QUICK["eval_every"] if quick else 1000
    if args.val_size is None:
        args.val_size = QUICK["val_size"] if quick else 10_000
    if args.lr is None:
        args.lr = QUICK["lr"] if quick else 1e-4
    if args.vae_d is None:
        args.vae_d = QUICK["vae_d"] if quick else 20
    if args.seeds is None:
        args.seeds = [0, 1, 2, 3, 4] if paper else [0]
    if args.out is None:
        args.out = DEFAULT_OUT / ("quick" if quick else "reduced" if reduced else "latest")


def _merge(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m subset_rl.experiments merge",
        description="Combine the per_seed.csv of several runs (e.g. one per GPU) into one table.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="output directories or CSV files")
    parser.add_argument("--out", type=Path, required=True, help="where the merged table goes")
    args = parser.parse_args(list(argv))
    results: list[RunResult] = []
    try:
        for path in args.inputs:
            results += read_per_seed(path)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "per_seed.csv").open("w", newline="") as fh:
        csv.writer(fh).writerow(_PER_SEED_FIELDS)
    command = "python -m subset_rl.experiments merge " + " ".join(map(str, argv))
    write_outputs(results, args.out, command=command, device="see the merged runs")
    _append_per_seed(results, args.out / "per_seed.csv")
    print(markdown_table(summarize(results)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m subset_rl.experiments``.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (0). Bad arguments exit with status 2 and a message naming them.
    """
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] == ["merge"]:
        return _merge(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    _resolve_defaults(args)
    try:
        cells = build_cells(args)
        check_cells(cells)
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available() and not args.dry_run:
            raise ValueError(f"device: {args.device} requested but CUDA is not available")
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))
    if args.dry_run:  # lists the runs: needs neither the device nor the data
        total = 0
        for cell in cells:
            runs = len(cell.estimators) * len(args.seeds)
            total += runs
            print(
                f"{cell.experiment} {cell.dataset} {cell.setting}: protocol {cell.protocol}: "
                f"{', '.join(cell.estimators)} x seeds {args.seeds} = {runs} runs of "
                f"{cell.config.train.steps} steps"
            )
        print(f"{total} runs in all on {device}; output under {args.out}")
        if device.type == "cuda" and not torch.cuda.is_available():
            print(f"note: {device} is not available on this machine", file=sys.stderr)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m subset_rl.experiments " + " ".join(argv)
    (out / "config.json").write_text(
        json.dumps(
            {
                "command": command,
                "cells": [
                    {
                        "experiment": c.experiment,
                        "dataset": c.dataset,
                        "setting": c.setting,
                        "protocol": c.protocol,
                        "estimators": c.estimators,
                        "config": dataclasses.asdict(c.config),
                    }
                    for c in cells
                ],
                "seeds": args.seeds,
                "device": str(device),
                "val_size": args.val_size,
            },
            indent=2,
        )
    )
    results = run_cells(
        cells,
        args.seeds,
        device=device,
        out=out,
        val_size=args.val_size,
        data_dir=args.data_dir,
        show_progress=not args.no_progress,
    )
    notes = "--quick: scikit-learn digits (64 pixels), not the paper's data" if args.quick else ""
    paths = write_outputs(results, out, command=command, notes=notes, device=device_name)
    if not args.no_progress:
        print(markdown_table(summarize(results)))
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0

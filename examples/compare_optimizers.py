r"""Compare black-box subset optimizers: best value found vs number of evaluations.

Every method of :func:`subset_rl.optimize.optimize` (the default hybrid search, SFESS,
cross-entropy method, simulated annealing, random search, greedy forward selection, and QR
pivoting where a basis exists) runs
under the same budget of distinct evaluations on four problems:

* ``sensor``: sensor placement from :mod:`subset_rl.envs` (value: minus the mean relative
  reconstruction error over held-out snapshots; QR pivoting on the POD modes is the classical
  baseline), through :class:`~subset_rl.optimize.SensorPlacementReward`;
* ``coverage``: weighted coverage, :class:`~subset_rl.optimize.WeightedCoverage`;
* ``facility``: facility location, :class:`~subset_rl.optimize.FacilityLocation`;
* ``logdet``: Bayesian D-optimal design, :class:`~subset_rl.optimize.DOptimalDesign`.

The synthetic three are monotone submodular, greedy's home ground (within ``1 - 1/e`` of the
optimum, usually far closer); greedy needs ``n k - k (k - 1) / 2`` evaluations and has no full
subset before its last step, so its curve is a single point. QR uses one evaluation.

Usage::

    python examples/compare_optimizers.py            # full: 3 seeds, n = 100/144, k = 8-10
    python examples/compare_optimizers.py --quick    # smoke run, well under a minute
    python examples/compare_optimizers.py --executor process --workers 2   # parallel objective

Outputs (``--out``, default ``runs/optimize/``, or ``runs/optimize/quick/`` with ``--quick``;
the committed tables are rewritten only when their folder is named:
``--out examples/results/optimize``, ``--quick --out examples/results/optimize/quick``):
``summary.csv`` (mean/std over seeds of the best value at a few budgets, the
evaluations used and the wall time), ``curves.csv`` (best-so-far of every run on a grid of
evaluation counts) and ``compare_optimizers.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from subset_rl.optimize import (
    DOptimalDesign,
    FacilityLocation,
    SensorPlacementReward,
    WeightedCoverage,
    greedy_evaluations,
    optimize,
)

METHODS = ("hybrid", "sfess", "cem", "annealing", "random", "greedy", "qr")
DETERMINISTIC = ("greedy", "qr")
CHECKPOINTS = (0.1, 0.25, 0.5, 1.0)  # fractions of the budget reported in the table
DEFAULT_OUT = Path("runs/optimize")  # git-ignored: a run never rewrites the committed results


@dataclass
class Problem:
    """One benchmark problem."""

    name: str
    f: Callable[[Any], Any]
    n: int
    k: int
    budget: int
    note: str
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


def problems(quick: bool) -> list[Problem]:
    """The four problems, small with ``quick``."""
    if quick:
        n, k, budget, grid = 40, 5, 300, (8, 8)
    else:
        n, k, budget, grid = 100, 10, 1500, (12, 12)
    sensor = SensorPlacementReward(
        k - 2, shape=grid, rank=k - 2, n_train=200, n_test=20, length_scale=0.3
    )
    out = [
        Problem(
            "sensor", sensor.batch, sensor.n, k - 2, budget,
            f"sensor placement {grid[0]}x{grid[1]}, rank {k - 2}",
            {"qr": {"basis": sensor.qr_basis()}},
        ),
        Problem(
            "coverage", WeightedCoverage.random(n, universe=5 * n, density=0.03, seed=0).batch,
            n, k, budget, f"weighted coverage, universe {5 * n}",
        ),
        Problem(
            "facility", FacilityLocation.random(n, customers=4 * n, length_scale=0.1, seed=0).batch,
            n, k, budget, f"facility location, {4 * n} customers",
        ),
        Problem(
            "logdet", DOptimalDesign.random(n, d=k, seed=0).batch, n, k, budget,
            f"D-optimal design, d={k}",
        ),
    ]
    for p in out:
        if greedy_evaluations(p.n, p.k) > p.budget:
            raise ValueError(f"{p.name}: budget {p.budget} is below greedy's needs")
    return out


def run_all(
    probs: list[Problem], seeds: int, executor: str | None, workers: int | None
) -> list[dict[str, Any]]:
    """Runs every method on every problem; one record per run."""
    records = []
    for p in probs:
        for method in METHODS:
            if method == "qr" and "qr" not in p.options:
                continue
            for seed in range(1 if method in DETERMINISTIC else seeds):
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    res = optimize(
                        p.f, p.n, p.k, budget=p.budget, method=method, batched=True,
                        seed=seed, progress=False, executor=executor, workers=workers,
                        options=p.options.get(method),
                    )
                records.append(
                    dict(problem=p.name, method=method, seed=seed, result=res,
                         seconds=time.perf_counter() - start)
                )
                print(f"  {p.name:9s} {method:9s} seed {seed}: best {res.best_value:.5g} "
                      f"after {res.n_evaluations} evaluations ({res.message})", flush=True)
    return records


def best_at(res: Any, evaluations: int) -> float:
    """Best value after ``evaluations`` evaluations (runs that stopped early keep their best)."""
    return res.history.best_at(evaluations)


def summarize(probs: list[Problem], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds of the best value at each checkpoint."""
    rows = []
    for p in probs:
        marks = [max(1, int(round(c * p.budget))) for c in CHECKPOINTS]
        for method in METHODS:
            runs = [r for r in records if r["problem"] == p.name and r["method"] == method]
            if not runs:
                continue
            row: dict[str, Any] = dict(problem=p.name, method=method, runs=len(runs))
            for c, m in zip(CHECKPOINTS, marks, strict=True):
                vals = np.array([best_at(r["result"], m) for r in runs])
                row[f"best@{m}"] = float(np.mean(vals)) if not np.isnan(vals).any() else math.nan
                row[f"std@{m}"] = float(np.std(vals)) if not np.isnan(vals).any() else math.nan
                row.setdefault("_marks", []).append((c, m))
            row["evaluations"] = float(np.mean([r["result"].n_evaluations for r in runs]))
            row["seconds"] = float(np.mean([r["seconds"] for r in runs]))
            rows.append(row)
    return rows


def print_table(probs: list[Problem], rows: list[dict[str, Any]]) -> None:
    """Prints best value (mean over seeds) at each checkpoint, per problem."""
    for p in probs:
        marks = [max(1, int(round(c * p.budget))) for c in CHECKPOINTS]
        print(f"\n{p.name}: {p.note}, n={p.n}, k={p.k}, budget={p.budget} "
              "(best value, mean over seeds; '-' = no size-k subset yet)")
        head = f"{'method':10s}" + "".join(f"{'@' + str(m):>11s}" for m in marks)
        print(head + f"{'evals':>8s}{'sec':>8s}")
        for row in (r for r in rows if r["problem"] == p.name):
            cells = "".join(
                f"{'-':>11s}" if math.isnan(row[f'best@{m}']) else f"{row[f'best@{m}']:11.5g}"
                for m in marks
            )
            print(f"{row['method']:10s}{cells}{row['evaluations']:8.0f}{row['seconds']:8.2f}")


def write_outputs(
    out: Path, probs: list[Problem], records: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> None:
    """summary.csv, curves.csv and the plot."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["problem", "method", "runs", "evaluations_checkpoint", "best_mean",
                    "best_std", "evaluations_used", "seconds"])
        for row in rows:
            for _, m in row["_marks"]:
                w.writerow([row["problem"], row["method"], row["runs"], m,
                            f"{row[f'best@{m}']:.8g}", f"{row[f'std@{m}']:.4g}",
                            f"{row['evaluations']:.1f}", f"{row['seconds']:.3f}"])
    with open(out / "curves.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["problem", "method", "seed", "evaluations", "best_so_far"])
        for r in records:
            p = next(p for p in probs if p.name == r["problem"])
            for e in np.unique(np.linspace(1, p.budget, 60).round().astype(int)):
                if e <= r["result"].n_evaluations:
                    w.writerow([r["problem"], r["method"], r["seed"], int(e),
                                f"{best_at(r['result'], int(e)):.8g}"])
    plot(out / "compare_optimizers.png", probs, records)


def plot(path: Path, probs: list[Problem], records: list[dict[str, Any]]) -> None:
    """Best-so-far (mean over seeds) vs evaluations, one panel per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(probs), figsize=(4.2 * len(probs), 4.0))
    colors = dict(zip(METHODS, plt.get_cmap("tab10").colors, strict=False))
    for ax, p in zip(np.atleast_1d(axes), probs, strict=True):
        for method in METHODS:
            runs = [r["result"] for r in records if r["problem"] == p.name
                    and r["method"] == method]
            if not runs:
                continue
            if method in DETERMINISTIC:
                res = runs[0]
                ax.scatter([res.n_evaluations], [res.best_value], color=colors[method],
                           marker="*" if method == "qr" else "D", s=70, zorder=3, label=method)
                continue
            xs = np.arange(1, p.budget + 1)
            curves = np.array([[best_at(r, x) for x in xs] for r in runs])
            mean = np.nanmean(curves, axis=0) if not np.isnan(curves).all() else curves[0]
            ax.plot(xs, mean, color=colors[method], label=method, lw=1.6)
        lo = min(best_at(r["result"], p.budget) for r in records if r["problem"] == p.name)
        hi = max(best_at(r["result"], p.budget) for r in records if r["problem"] == p.name)
        pad = 0.6 * (hi - lo) if hi > lo else 1.0
        ax.set_ylim(lo - pad, hi + 0.1 * pad)
        ax.set_title(f"{p.name} (n={p.n}, k={p.k})", fontsize=10)
        ax.set_xlabel("distinct evaluations")
        ax.grid(alpha=0.3)
    first = np.atleast_1d(axes)[0]
    first.set_ylabel("best value so far")
    handles, labels = first.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9,
               frameon=False)
    fig.suptitle("best value vs distinct evaluations (mean over seeds; runs that converged "
                 "early keep their best)", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small problems, one seed")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 3, quick 1)")
    parser.add_argument("--executor", default=None, help="serial (default), process or ray")
    parser.add_argument("--workers", type=int, default=None, help="parallel workers")
    parser.add_argument(
        "--out", type=Path, default=None,
        help=f"output folder (default {DEFAULT_OUT}, or {DEFAULT_OUT / 'quick'} with --quick)",
    )
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    out = args.out
    if out is None:
        out = DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT
    start = time.perf_counter()
    if args.executor == "ray":  # one local instance for all runs (optimize would start one each)
        import ray

        ray.init(include_dashboard=False, log_to_driver=False)
    probs = problems(args.quick)
    records = run_all(probs, seeds, args.executor, args.workers)
    rows = summarize(probs, records)
    print_table(probs, rows)
    write_outputs(out, probs, records, rows)
    print(f"\nwrote {out}/summary.csv, curves.csv, compare_optimizers.png "
          f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()

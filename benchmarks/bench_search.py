"""Black-box k-subset search: every method of ``subset_rl.optimize`` on 8 problem families.

Each cell is one problem instance (family, size, instance seed), one evaluation budget and one
method; each method runs once per seed (the instance changes with the seed, so 5 seeds are 5
instances). Scores are the best value found; for the noisy family it is the **true** (noise-free)
value of the subset the method returns. Ratios are taken to the best method of the cell and, where
``C(n, k) <= 5e6``, to the brute-force optimum.

Families (see :mod:`subset_rl.optimize.objectives`):

* ``qubo``: quadratic set function with mixed-sign interactions (not submodular);
* ``coverage+pairs``: weighted coverage plus pair bonuses (synergies);
* ``facility``: facility location (monotone submodular);
* ``d-optimal``: Bayesian D-optimal design, log-det (monotone submodular);
* ``sensor``: sensor placement, mean held-out reward (the environments' objective);
* ``features``: 1-NN validation accuracy on the chosen pixels of the 8x8 digits (plus random
  noise columns at the larger size): a non-differentiable classifier;
* ``noisy``: a quadratic observed with N(0, 2^2) noise, scored on its true value;
* ``trap``: a deceptive trap (only complete blocks pay).

Every run is journaled (one JSON line per finished run in ``<out>/runs.jsonl``): a killed
benchmark started again skips what it finished. Outputs: ``summary.md`` (tables),
``summary.csv``, ``convergence.png`` (best value against evaluations, mean of seeds, normalized
per instance by the best value any method reached).

    python benchmarks/bench_search.py --out examples/results/search --jobs 2
    python benchmarks/bench_search.py --quick --out runs/search-quick     # a few minutes

Timings never go in tests; this file measures quality at equal evaluation budgets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BUDGETS = (500, 2000, 10000)
METHODS = ("hybrid", "sfess", "greedy", "annealing", "cem", "random", "qr")
VARIANTS = ("hybrid[adam]", "hybrid[natural]")  # phase-1 updates of the default method
BASELINES = ("greedy", "annealing", "cem")  # what the default method must match or beat
BRUTE_FORCE_MAX = 5_000_000
CURVE_POINTS = 40


@dataclass(frozen=True)
class Instance:
    """One problem: its family, size label and how to build it for a seed."""

    family: str
    size: str
    n: int
    k: int


def instances(quick: bool) -> list[Instance]:
    """The benchmark's problems (``quick``: one small size per family)."""
    small = [
        Instance("qubo", "n20", 20, 5),
        Instance("qubo", "n150", 150, 15),
        Instance("coverage+pairs", "n200", 200, 12),
        Instance("facility", "n24", 24, 4),
        Instance("facility", "n100", 100, 10),
        Instance("d-optimal", "n100", 100, 10),
        Instance("sensor", "n144", 144, 8),
        Instance("features", "n64", 64, 8),
        Instance("noisy", "n120", 120, 10),
        Instance("trap", "n20", 20, 8),
        Instance("trap", "n120", 120, 12),
    ]
    if quick:
        return [i for i in small if i.n <= 150][:11]
    large = [
        Instance("qubo", "n1000", 1000, 50),
        Instance("coverage+pairs", "n1000", 1000, 30),
        Instance("facility", "n500", 500, 20),
        Instance("d-optimal", "n1000", 1000, 20),
        Instance("sensor", "n400", 400, 12),
        Instance("features", "n128", 128, 12),
        Instance("noisy", "n500", 500, 20),
        Instance("trap", "n400", 400, 20),
    ]
    return small + large


def build(
    inst: Instance, seed: int
) -> tuple[Callable[..., Any], Callable[[np.ndarray], float], dict]:
    """``(batched f, scorer of the returned subset, method options)`` for one seed."""
    from subset_rl.optimize import objectives as o

    n, k, fam = inst.n, inst.k, inst.family
    options: dict[str, dict[str, Any]] = {}
    if fam == "qubo":
        f = o.QuadraticObjective.random(n, density=min(0.1, 15 / n), seed=seed)
    elif fam == "coverage+pairs":
        f = o.CoverageWithSynergies.random(n, n_pairs=n // 10, seed=seed)
    elif fam == "facility":
        f = o.FacilityLocation.random(n, customers=4 * n, length_scale=1 / math.sqrt(n), seed=seed)
    elif fam == "d-optimal":
        f = o.DOptimalDesign.random(n, d=k, seed=seed)
    elif fam == "sensor":
        side = int(round(math.sqrt(n)))
        f = o.SensorPlacementReward(
            k, shape=(side, side), rank=k, n_train=200, n_test=20, length_scale=0.3, data_seed=seed
        )
        options["qr"] = {"basis": f.qr_basis()}
    elif fam == "features":
        f = o.FeatureSelectionKNN.digits(noise_features=n - 64, seed=seed)
    elif fam == "noisy":
        f = o.NoisyObjective(o.QuadraticObjective.random(n, density=min(0.1, 12 / n), seed=seed),
                             2.0, seed=seed)
    elif fam == "trap":
        f = o.DeceptiveTrap(n, block=4, seed=seed)
    else:
        raise ValueError(f"unknown family {fam!r}")
    truth = getattr(f, "true", f)
    return f.batch, (lambda z: float(truth(z))), options


def run_one(inst: Instance, budget: int, method: str, seed: int) -> dict[str, Any]:
    """One optimize run; a JSON-able record."""
    import torch

    from subset_rl.optimize import optimize

    torch.set_num_threads(1)
    f, score, options = build(inst, seed)
    name, opts = method, options.get(method)
    if "[" in method:  # a variant of the default method, e.g. "hybrid[adam]" (phase-1 step)
        name, step = method.rstrip("]").split("[")
        opts = {"step": step}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = optimize(f, inst.n, inst.k, budget=budget, method=name, batched=True, seed=seed,
                       progress=False, options=opts)
    seconds = time.perf_counter() - start
    value = None if res.best_subset is None else score(res.best_subset)
    m = len(res.history)
    marks = np.unique(np.geomspace(1, budget, CURVE_POINTS).round().astype(int))
    curve = [res.history.best_at(int(e)) if e <= m else res.history.best_at(m) for e in marks]
    return dict(
        family=inst.family, size=inst.size, n=inst.n, k=inst.k, budget=budget, method=method,
        seed=seed, value=value, evaluations=res.n_evaluations, seconds=seconds,
        curve_at=marks.tolist(), curve=[None if math.isnan(c) else c for c in curve],
        message=res.message,
    )


def optimum(inst: Instance, seed: int) -> dict[str, Any]:
    """Brute-force optimum of one instance (the true objective for the noisy family)."""
    import torch

    from subset_rl.optimize import brute_force

    torch.set_num_threads(1)
    f, _, _ = build(inst, seed)
    truth = getattr(getattr(f, "__self__", None), "true", None)
    batched = truth.batch if truth is not None else f
    value, idx = brute_force(batched, inst.n, inst.k)
    return dict(family=inst.family, size=inst.size, seed=seed, optimum=value, indices=list(idx))


def key(rec: dict[str, Any]) -> tuple:
    """Identity of a record in the journal."""
    if "optimum" in rec:
        return ("optimum", rec["family"], rec["size"], rec["seed"])
    return (rec["family"], rec["size"], rec["budget"], rec["method"], rec["seed"])


def load(path: Path) -> list[dict[str, Any]]:
    """Records of the journal (a torn last line from a kill is ignored)."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def summarize(records: list[dict[str, Any]], out: Path) -> None:
    """Tables (markdown, CSV) and the convergence figure from the journal's records."""
    runs = [r for r in records if "optimum" not in r]
    opt = {(r["family"], r["size"], r["seed"]): r["optimum"] for r in records if "optimum" in r}
    cells: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        cells[(r["family"], r["size"], r["budget"])][r["method"]].append(r)
    lines = [
        "| family | size | budget | " + " | ".join(METHODS) + " | hybrid / best baseline "
        "| hybrid / optimum |",
        "|---" * (len(METHODS) + 5) + "|",
    ]
    csv = ["family,size,budget,method,seeds,mean_value,mean_ratio_to_best,mean_ratio_to_optimum,"
           "mean_evaluations,mean_seconds"]
    verdicts: list[float] = []
    below: list[tuple[str, float]] = []
    for (fam, size, budget), by in sorted(cells.items(), key=lambda t: (t[0][0], t[0][1], t[0][2])):
        # compare on the seeds (instances) every method of the table ran in this cell
        common = set.intersection(*({r["seed"] for r in rs} for m, rs in by.items()
                                    if m in METHODS))
        by = {m: [r for r in rs if r["seed"] in common] for m, rs in by.items() if m in METHODS}
        seeds = sorted(common)
        # best value of the cell per seed, over every method that returned a k-subset
        best = {s: max((r["value"] for rs in by.values() for r in rs
                        if r["seed"] == s and r["value"] is not None), default=None)
                for s in seeds}
        mean: dict[str, float | None] = {}
        for meth in METHODS:
            rs = by.get(meth, [])
            vals = [r["value"] for r in rs]
            if not rs or any(v is None for v in vals):
                mean[meth] = None
            else:
                mean[meth] = float(np.mean(vals))
            if rs:
                ratios = [r["value"] / best[r["seed"]] if r["value"] is not None and best[r["seed"]]
                          else math.nan for r in rs]
                ropt = [r["value"] / opt[(fam, size, r["seed"])]
                        if (fam, size, r["seed"]) in opt and r["value"] is not None else math.nan
                        for r in rs]
                csv.append(f"{fam},{size},{budget},{meth},{len(rs)},{mean[meth]},"
                           f"{np.mean(ratios):.5f},{np.mean(ropt):.5f},"
                           f"{np.mean([r['evaluations'] for r in rs]):.0f},"
                           f"{np.mean([r['seconds'] for r in rs]):.2f}")
        base = [mean[b] for b in BASELINES if mean.get(b) is not None]
        h = mean.get("hybrid")
        vs = (h / max(base) if base and h is not None and max(base) > 0 else
              (1 + (h - max(base)) / abs(max(base)) if base and h is not None and max(base) != 0
               else math.nan))
        hopt = [r["value"] / opt[(fam, size, r["seed"])] for r in by.get("hybrid", [])
                if (fam, size, r["seed"]) in opt]
        top = max((v for v in mean.values() if v is not None), default=None)
        cells_txt = []
        for meth in METHODS:
            v = mean.get(meth)
            txt = "—" if v is None else f"{v:.4g}"
            cells_txt.append(f"**{txt}**" if v is not None and v == top else txt)
        lines.append(f"| {fam} | {size} | {budget} | " + " | ".join(cells_txt) +
                     f" | {vs:.3f} | " + (f"{np.mean(hopt):.3f}" if hopt else "—") + " |")
        verdicts.append(vs)
        if not math.isnan(vs) and vs < 0.99:
            below.append((f"{fam} {size} budget {budget}", vs))
    ok = [v for v in verdicts if not math.isnan(v)]
    head = [
        f"# k-subset search benchmark ({len(runs)} runs)",
        "",
        f"Made with `python benchmarks/bench_search.py --out {out}` and the options recorded "
        f"in benchmarks/README.md (torch threads 1; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs). Sizes above n = 150 ran seeds 0-2 for the baselines, so "
        "each cell compares the seeds every method ran.",
        "Mean over seeds (instances) of the best value (noisy: true value of the returned "
        "subset). '—': the method returned no k-subset (greedy needs n + (n-1) + ... + (n-k+1) "
        "evaluations). Bold: the best mean. 'hybrid / best baseline': the default method's mean "
        "over the best mean of greedy, annealing and CEM (for negative objectives 1 + "
        "difference / |best|).",
        "",
        f"Default method >= 0.99 x best baseline in {sum(v >= 0.99 for v in ok)} of {len(ok)} "
        f"cells; below: " + (", ".join(f"{c} ({v:.4f})" for c, v in below) or "none") + "."
        if ok else "",
        "",
    ]
    variant_lines = []
    cols = ("hybrid", *VARIANTS)
    for (fam, size, budget), by in sorted(cells.items(), key=lambda t: (t[0][0], t[0][1], t[0][2])):
        if not any(v in by for v in VARIANTS):
            continue
        common = set.intersection(*({r["seed"] for r in by[m]} for m in cols if m in by))
        by = {m: [r for r in rs if r["seed"] in common] for m, rs in by.items()}
        means = []
        for meth in cols:
            vals = [r["value"] for r in by.get(meth, [])]
            ok = vals and all(v is not None for v in vals)
            means.append(f"{np.mean(vals):.4g} ({len(vals)})" if ok else "—")
        variant_lines.append(f"| {fam} | {size} | {budget} | " + " | ".join(means) + " |")
    if variant_lines:
        variant_lines = [
            "",
            "## Phase-1 updates of the default method (mean over the seeds all three ran, "
            "their number in brackets)",
            "",
            "| family | size | budget | " + " | ".join(cols) + " |",
            "|---" * (len(cols) + 3) + "|",
            *variant_lines,
        ]
    (out / "summary.md").write_text("\n".join(head + lines + variant_lines) + "\n")
    (out / "summary.csv").write_text("\n".join(csv) + "\n")
    print("\n".join(head + lines + variant_lines))
    plot(runs, out)


def plot(runs: list[dict[str, Any]], out: Path) -> None:
    """Convergence: best value / best final value of the instance, mean over seeds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no convergence.png")
        return
    groups = sorted({(r["family"], r["size"]) for r in runs})
    budget = max(r["budget"] for r in runs)
    cols = 4
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (fam, size) in zip(axes.flat, groups, strict=False):
        sel = [r for r in runs
               if r["family"] == fam and r["size"] == size and r["budget"] == budget]
        tops: dict[int, float] = {}
        for r in sel:
            vals = [c for c in r["curve"] if c is not None]
            if vals:
                tops[r["seed"]] = max(tops.get(r["seed"], -math.inf), max(vals))
        for meth in METHODS:
            rs = [r for r in sel if r["method"] == meth]
            if not rs:
                continue
            xs = rs[0]["curve_at"]
            ys = []
            for r in rs:
                t = tops.get(r["seed"])
                ys.append([np.nan if c is None or not t else
                           (c / t if t > 0 else 1 + (c - t) / abs(t)) for c in r["curve"]])
            with warnings.catch_warnings():  # points before a method's first k-subset
                warnings.simplefilter("ignore", RuntimeWarning)
                ax.plot(xs, np.nanmean(np.array(ys, dtype=float), 0), label=meth)
        ax.set_xscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, 0.0), high)  # negative objectives: early values fall far below
        ax.set_title(f"{fam} {size}", fontsize=9)
        ax.set_xlabel("evaluations", fontsize=8)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    axes.flat[0].set_ylabel("best / best of instance")
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=80)
    print(f"wrote {out / 'convergence.png'}")


def main(argv: list[str] | None = None) -> None:
    """Runs what the journal lacks, then writes the tables and the figure."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_search"))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--large-seeds", type=int, default=None,
                   help="seeds for the sizes above n=150 (default: --seeds)")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--families", nargs="+", default=None)
    p.add_argument("--sizes", nargs="+", default=None, help="size labels, e.g. n150 n1000")
    p.add_argument("--quick", action="store_true", help="small sizes only")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    journal = args.out / "runs.jsonl"
    done = {key(r) for r in load(journal)}
    todo: list[tuple[Callable[..., dict], tuple]] = []
    for inst in instances(args.quick):
        if args.families and inst.family not in args.families:
            continue
        if args.sizes and inst.size not in args.sizes:
            continue
        seeds = args.seeds if args.large_seeds is None or inst.n <= 150 else args.large_seeds
        for seed in range(seeds):
            if math.comb(inst.n, inst.k) <= BRUTE_FORCE_MAX and \
                    ("optimum", inst.family, inst.size, seed) not in done:
                todo.append((optimum, (inst, seed)))
            for budget in args.budgets:
                for meth in args.methods:
                    if meth == "qr" and inst.family != "sensor":
                        continue
                    if (inst.family, inst.size, budget, meth, seed) not in done:
                        todo.append((run_one, (inst, budget, meth, seed)))
    if not args.summary_only and todo:
        print(f"{len(todo)} runs to do ({len(done)} journaled in {journal})", flush=True)
        with open(journal, "a") as fh, ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(fn, *a) for fn, a in todo]
            for i, fut in enumerate(as_completed(futures), 1):
                rec = fut.result()
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                if "optimum" not in rec:
                    print(f"[{i}/{len(todo)}] {rec['family']} {rec['size']} b={rec['budget']} "
                          f"{rec['method']} s={rec['seed']}: {rec['value']} "
                          f"({rec['evaluations']} ev, {rec['seconds']:.1f}s)", flush=True)
    summarize(load(journal), args.out)


if __name__ == "__main__":
    sys.exit(main())

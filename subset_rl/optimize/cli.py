"""``subset-rl optimize MODULE:FUNCTION --n N --k K --budget B``: the optimizer from the shell.

Wire it into a top-level parser with :func:`add_optimize_subcommand`; the parser it adds stores
its handler as ``func`` (``args.func(args)`` returns the exit code). :func:`main` runs it
standalone (``python -m subset_rl.optimize.cli optimize ...``).

Exit codes: 0 success, 1 the objective failed (``--on-error raise``), 2 bad arguments (an
``--output`` that cannot be written is one, found before the run starts), 130 interrupted
(Ctrl-C: the evaluations completed until then are summarised and written to ``--output``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .api import optimize
from .methods import METHODS
from .result import EvaluationError

__all__ = ["add_optimize_subcommand", "check_output", "load_objective", "main", "run_optimize"]

_EPILOG = """\
examples:
  subset-rl optimize mypkg.objectives:score --n 50 --k 5 --budget 2000
  subset-rl optimize mypkg.objectives:score --n 50 --k 5 --budget 2000 --method cem \\
      --executor process --workers 8 --output result.json
  subset-rl optimize mymod:batched_score --batched --n 50 --k 5 --budget 500 --device cuda
  subset-rl optimize mypkg.sim:score --n 50 --k 5 --budget 2000 --executor process \\
      --timeout 600 --on-error skip --journal run.jsonl   # rerun after a crash: resumes
  subset-rl optimize mymod:error --minimize --n 256 --k 10 --budget 1 --method qr \\
      --option basis=@modes.npy

MODULE is imported with the current directory on sys.path; FUNCTION may be a dotted path
(mymod:instance.method). Without --batched the function gets one float64 numpy vector of
n 0/1 entries and returns a number; with --batched a float32 torch tensor (m, n) -> (m,).
"""


def load_objective(spec: str) -> Callable[[Any], Any]:
    """Imports ``MODULE:FUNCTION`` (``FUNCTION`` may be a dotted attribute path).

    Raises:
        ValueError: if ``spec`` is not of that form, the module or attribute does not exist,
            or the attribute is not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"objective: expected MODULE:FUNCTION, found {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"objective: cannot import module {module_name!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"objective: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"objective: {spec!r} is a {type(obj).__name__}, expected a callable")
    return obj


def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--option: expected KEY=VALUE, found {text!r}")
    if raw.startswith("@"):
        return key, np.load(Path(raw[1:]))
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def add_optimize_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``optimize`` subcommand to ``subparsers`` (from ``add_subparsers()``).

    Returns:
        The subcommand's parser; its ``func`` default is :func:`run_optimize`.
    """
    p = subparsers.add_parser(
        "optimize",
        help="choose k of n items to maximize a black-box Python function",
        description="Search for the best k-subset of n items of a black-box objective under a "
        "budget of distinct evaluations, with the default hybrid search (a learned k-subset "
        "distribution, then swap polishing), SFESS or a classical baseline.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("objective", metavar="MODULE:FUNCTION", help="the objective to optimize")
    p.add_argument("--n", type=int, required=True, help="number of items")
    p.add_argument("--k", type=int, required=True, help="number of items to choose")
    p.add_argument("--budget", type=int, required=True, help="maximum distinct evaluations")
    p.add_argument(
        "--method",
        default="hybrid",
        choices=sorted(METHODS),
        help="search method (default: hybrid)",
    )
    p.add_argument("--samples", type=int, default=None, help="subsets per request")
    p.add_argument("--batch", type=int, default=None, help="subsets per call/task")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--minimize", action="store_true", help="minimize instead of maximize")
    p.add_argument("--batched", action="store_true", help="the function scores (m, n) tensors")
    p.add_argument(
        "--executor",
        default=None,
        help="where the function runs: serial (default), process, ray, or a Ray address",
    )
    p.add_argument("--workers", type=int, default=None, help="parallel workers")
    p.add_argument(
        "--on-error",
        default="raise",
        choices=("raise", "skip"),
        help="stop at a failing subset (default) or skip it",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option (JSON value, or @file.npy for an array); repeatable",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds one call of the function may run (process and Ray executors)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="tries again a subset whose worker process died, this many times (default: 2)",
    )
    p.add_argument(
        "--journal",
        type=Path,
        default=None,
        help="append each evaluation to this JSON-lines file; an existing one is resumed "
        "without calling the function again on its subsets",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--output", type=Path, default=None, help="write the result as JSON here")
    p.set_defaults(func=run_optimize)
    return p


def check_output(path: Path) -> None:
    """Raises ``OSError`` with a one-line message if ``path`` cannot be written.

    Creates the missing parent folders and checks by creating (then removing) a file next to
    ``path``, so that an unwritable ``--output`` is found before the run, not after it.
    """
    if path.is_dir():
        raise OSError(f"--output: {path} is a directory, expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.{os.getpid()}.probe"
        probe.write_bytes(b"")
        probe.unlink()
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as e:
        raise OSError(f"--output: cannot write {path}: {e.strerror or e}") from None


def _write(result: Any, path: Path | None) -> None:
    if path is not None and result is not None:
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(result.to_dict(), indent=1))
        os.replace(tmp, path)


def run_optimize(args: argparse.Namespace) -> int:
    """Handler of ``subset-rl optimize``: runs :func:`~subset_rl.optimize.optimize`, prints a
    summary, writes ``--output``.

    Returns:
        The exit code (0 success, 1 the objective failed, 2 bad arguments, 130 interrupted).
    """
    try:
        if args.output is not None:
            check_output(args.output)
        f = load_objective(args.objective)
        options = dict(_parse_option(o) for o in args.option) or None
        executor = None if args.executor in (None, "serial") else args.executor
        result = optimize(
            f,
            args.n,
            args.k,
            budget=args.budget,
            method=args.method,
            batched=args.batched,
            batch=args.batch,
            samples=args.samples,
            device=args.device,
            seed=args.seed,
            progress=not args.no_progress,
            maximize=not args.minimize,
            executor=executor,
            workers=args.workers,
            on_error=args.on_error,
            options=options,
            timeout=args.timeout,
            retries=args.retries,
            journal=args.journal,
        )
    except EvaluationError as e:
        print(f"subset-rl optimize: error: {e}", file=sys.stderr)
        _write(e.result, args.output)
        return 1
    except (ValueError, TypeError, ImportError, OSError) as e:
        print(f"subset-rl optimize: error: {e}", file=sys.stderr)
        return 2
    best = "none" if result.best_indices is None else " ".join(map(str, result.best_indices))
    print(f"method       {result.method}")
    print(f"best value   {result.best_value:.10g}")
    print(f"best subset  {best}")
    print(f"evaluations  {result.n_evaluations} of {result.budget} ({result.n_failed} failed)")
    print(f"wall time    {result.wall_time:.3f} s")
    print(f"stopped      {result.message}")
    _write(result, args.output)
    if args.output is not None:
        print(f"result       {args.output}")
    return 130 if result.interrupted else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m subset_rl.optimize.cli optimize ...``."""
    parser = argparse.ArgumentParser(prog="subset-rl")
    sub = parser.add_subparsers(dest="command", required=True)
    add_optimize_subcommand(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

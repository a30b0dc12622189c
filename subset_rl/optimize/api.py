r""":func:`optimize`: choose ``k`` of ``n`` items to maximize (or minimize) a black-box function."""

from __future__ import annotations

import math
import numbers
import os
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

import numpy as np
import torch

from .evaluation import Callback, Evaluator, Journal
from .executors import ProcessPool, describe_executor, make_backend, validate_executor
from .methods import METHODS, Run
from .result import EvaluationError, OptimizeResult

__all__ = ["optimize"]


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, found {type(value).__name__} {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}: expected an int {bound}, found {value}")
    return value


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name}: expected a bool, found {type(value).__name__} {value!r}")
    return bool(value)


def _objective_name(f: Callable[..., Any]) -> str:
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None)
    return f"objective {name}" if name else f"objective {type(f).__name__}"


def optimize(
    f: Callable[[Any], Any],
    n: int,
    k: int,
    *,
    budget: int,
    method: str = "hybrid",
    batched: bool = False,
    batch: int | None = None,
    samples: int | None = None,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    callback: Callback | None = None,
    progress: bool = True,
    maximize: bool = True,
    executor: str | Executor | ProcessPool | None = None,
    workers: int | None = None,
    on_error: str = "raise",
    options: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    retries: int = 2,
    journal: str | os.PathLike[str] | None = None,
) -> OptimizeResult:
    r"""Searches for the ``k``-subset of ``n`` items with the best value of a black-box ``f``.

    Budget accounting: ``budget`` bounds the number of **distinct subsets on which** ``f`` **is
    actually called**. Every subset a method asks for again (successfully evaluated or failed)
    is answered from a cache at no cost; a failed call counts like a successful one. A request
    holding more new subsets than the budget has left is cut (first come, first evaluated), so
    ``result.n_evaluations <= budget`` always holds; ``result.n_queries`` counts the requests'
    subsets including cache hits. A run also ends early when every ``C(n, k)`` subset has been
    evaluated, after 25 consecutive requests without a new subset (a converged distribution),
    when greedy or QR finish, or when the callback asks to stop.

    Args:
        f: The objective. With ``batched=False``: called with one ``float64`` numpy vector of
            shape ``(n,)`` holding ``k`` ones (greedy also passes vectors with fewer ones), returns
            a real scalar. With ``batched=True``: called with a ``float32`` torch tensor of shape
            ``(m, n)`` on ``device``, returns ``m`` values (tensor or array). Values must be
            finite; an exception, NaN or inf is a failure (see ``on_error``).
        n: Number of items, ``>= 1``.
        k: Subset size, ``1 <= k <= n``.
        budget: Maximum number of distinct evaluations, ``>= 1``.
        method: ``"hybrid"`` (default: a k-subset distribution learned by CEM, then swap
            polishing), ``"sfess"``, ``"random"``, ``"greedy"``, ``"annealing"``, ``"cem"`` or
            ``"qr"`` (needs ``options={"basis": ...}``); see :mod:`subset_rl.optimize.methods`.
        batched: Whether ``f`` scores whole batches of subsets.
        batch: Largest number of subsets per call of a batched ``f`` or per parallel task
            (default: a whole request, split evenly over the workers).
        samples: Subsets per request: hybrid swaps per request (8; its phase-1 population is
            ``options["population"]``), SFESS samples per gradient step (8), CEM population
            (64), random-search request size (64), number of annealing chains (8). Ignored by
            greedy (one request per step) and QR.
        device: Torch device of the SFESS/CEM distributions and of batched inputs.
        seed: Seed of every random choice; the same seed gives the same run (whatever the
            executor). ``None`` draws one (reported as ``result.seed``).
        callback: Called after each request with an
            :class:`~subset_rl.optimize.OptimizeState`; returning ``True`` stops the run.
        progress: Show a tqdm progress bar of the evaluations.
        maximize: Maximize ``f`` (default) or minimize it.
        executor: Where ``f`` runs: ``None`` (this process); ``"process"`` (local worker
            processes, started for this call; ``f`` must be picklable); a
            :class:`~subset_rl.optimize.ProcessPool` (the same, kept alive across calls, so
            their start-up is paid once); ``"ray"`` (Ray tasks; uses a running Ray instance or
            starts a local one, shut down at the end); the address of a running Ray cluster
            (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``); or any
            :class:`concurrent.futures.Executor` (which can neither stop a call nor replace a
            dead worker).
        workers: Number of worker processes / parallel tasks (default: the CPU count).
        on_error: What a failing subset does. ``"raise"`` (default): the run stops with an
            :class:`~subset_rl.optimize.EvaluationError` naming the subset once the request
            holding it has finished; ``error.result`` holds every completed evaluation.
            ``"skip"``: the failure is recorded (``result.history.errors``, ``n_failed``), never
            retried, treated as the worst value by the method, and a warning is issued at the
            end. Besides an exception or a non-finite value, a failure is a value that is not
            a real number (a bool, a string, an array of size other than 1), a worker process
            that died while evaluating the subset (after ``retries``), or a ``timeout``.
        options: Method options, e.g. ``{"lr": 0.05}`` for SFESS (see the methods module).
        timeout: Seconds one call of ``f`` (one subset, or one batch when batched) may run
            with ``executor="process"``, a :class:`~subset_rl.optimize.ProcessPool` or Ray; a
            call running longer is stopped (its worker process killed, then replaced) and its
            subsets fail with ``"timed out"``. On Ray the clock starts at the task's
            submission. Not available in this process (``executor=None``) nor with a
            :class:`concurrent.futures.Executor`: a call there cannot be stopped from the
            outside, so a ``timeout`` raises ``ValueError``. ``None``: no limit.
        retries: How often a subset whose evaluation killed its worker process (``os._exit``,
            a segfault, the OOM killer; Ray's ``WorkerCrashedError``) is tried again, each time
            in a fresh worker, before it counts as a failure (default 2).
        journal: A file (JSON lines, see :class:`~subset_rl.optimize.evaluation.Journal`) where
            each evaluation is appended and flushed to disk as it completes. If it exists, its
            evaluations are replayed instead of calling ``f``: a run killed at any moment and
            started again with the same arguments resumes where it stopped, and never calls
            ``f`` again on a journaled subset (with the same seed the replayed run takes the
            same path, so the result equals an uninterrupted run's). Failures are journaled
            and replayed too. The file is locked while the run holds it.

    Returns:
        An :class:`~subset_rl.optimize.OptimizeResult`: best subset and value (a real
        evaluation), history, marginals (SFESS, CEM), wall time and why the run stopped.
        ``KeyboardInterrupt`` (Ctrl-C, or raised inside ``f``) does not propagate: the run
        stops and the result of the evaluations completed until then is returned, with
        ``result.interrupted`` set, a ``message`` saying so and a warning.

    Raises:
        TypeError: An argument of the wrong type (``f`` not callable, ``n`` not an int, unknown
            option, an objective that cannot be pickled for ``executor="process"``).
        ValueError: An argument out of range (``k > n``, ``budget < 1``, unknown method, a
            ``timeout`` in this process, a damaged journal or one written for another ``n``).
        EvaluationError: ``f`` failed on a subset and ``on_error="raise"``.
        ImportError: ``executor="ray"`` without ray installed.

    Example:
        >>> import numpy as np
        >>> w = np.arange(10.0)
        >>> res = optimize(lambda z: float(z @ w), 10, 3, budget=60, method="cem", seed=0,
        ...                progress=False)
        >>> res.best_indices
        (7, 8, 9)
    """
    start = time.perf_counter()
    if not callable(f):
        raise TypeError(f"f: expected a callable objective, found {type(f).__name__}")
    n = _check_int("n", n, 1)
    k = _check_int("k", k, 1, n)
    budget = _check_int("budget", budget, 1)
    if not isinstance(method, str):
        raise TypeError(f"method: expected a str, found {type(method).__name__}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, found {method!r}")
    spec = METHODS[method]
    batched = _check_bool("batched", batched)
    progress = _check_bool("progress", progress)
    maximize = _check_bool("maximize", maximize)
    batch = None if batch is None else _check_int("batch", batch, 1)
    workers = None if workers is None else _check_int("workers", workers, 1)
    if samples is not None:
        samples = _check_int("samples", samples, 1)
    samples = samples if samples is not None else (spec.samples or 1)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error: expected 'raise' or 'skip', found {on_error!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable or None, found {type(callback).__name__}")
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options: expected a dict or None, found {type(options).__name__}")
    opts = spec.resolve(method, dict(options) if options is not None else None)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device: expected a torch device like 'cpu' or 'cuda', found {device!r}"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: found {device!r} but CUDA is not available")
    validate_executor(executor)
    retries = _check_int("retries", retries, 0)
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
            raise TypeError(f"timeout: expected a number of seconds or None, found {timeout!r}")
        timeout = float(timeout)
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout: expected a finite number of seconds > 0, found {timeout}")
        if executor in (None, "serial") or isinstance(executor, Executor):
            raise ValueError(
                "timeout: a call of f in this process or on a concurrent.futures executor "
                "cannot be stopped; use executor='process', a ProcessPool or Ray, found "
                f"executor={describe_executor(executor)!r}"
            )
    if journal is not None and not isinstance(journal, str | os.PathLike):
        raise TypeError(f"journal: expected a path or None, found {type(journal).__name__}")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))
    else:
        seed = _check_int("seed", seed, 0)

    generator = torch.Generator(device=dev)
    generator.manual_seed(seed)
    log = Journal(journal, n, k) if journal is not None else None
    try:
        backend = make_backend(
            executor,
            f,
            batched=batched,
            device=str(dev),
            workers=workers,
            chunk=batch,
            timeout=timeout,
            retries=retries,
        )
    except BaseException:
        if log is not None:
            log.close()
        raise
    ev = Evaluator(
        backend,
        n,
        k,
        budget,
        maximize=maximize,
        on_error=on_error,
        callback=callback,
        progress=progress,
        method=method,
        objective_name=_objective_name(f),
        journal=log,
    )
    run = Run(
        ev=ev,
        n=n,
        k=k,
        samples=samples,
        device=dev,
        rng=np.random.default_rng(seed),
        generator=generator,
        options=opts,
    )
    where = describe_executor(executor)

    def result(marginals: np.ndarray | None) -> OptimizeResult:
        parts = [ev.stop_reason or "stopped"]
        parts += [note for note in run.notes if note != ev.stop_reason]
        if ev.n_replayed:
            parts.append(f"{ev.n_replayed} evaluations replayed from the journal {journal}")
        return ev.result(
            method=method,
            message="; ".join(parts),
            marginals=marginals,
            wall_time=time.perf_counter() - start,
            seed=seed,
            executor=where,
        )

    try:
        marginals = spec.run(run)
    except EvaluationError as err:
        err.result = result(None)
        raise
    except KeyboardInterrupt:
        ev.interrupted = True
        ev.stop(f"interrupted (KeyboardInterrupt) after {ev.n_evaluations} evaluations")
        marginals = None
    finally:
        ev.close()
    out = result(marginals)
    if out.interrupted:
        warnings.warn(
            f"optimize was interrupted (KeyboardInterrupt); returning the {out.n_evaluations} "
            "evaluations completed until then (result.interrupted is True)",
            UserWarning,
            stacklevel=2,
        )
    if out.n_failed:
        first = min(out.history.errors)
        warnings.warn(
            f"{out.n_failed} of {out.n_evaluations} evaluations failed and were skipped; the "
            f"first, on subset {list(out.history.subsets[first])}: "
            f"{out.history.errors[first]}",
            UserWarning,
            stacklevel=2,
        )
    return out

"""The evaluator every method talks to: cache, budget, history, failures, progress, callback.

Methods never call the objective themselves. They hand the :class:`Evaluator` a request, an
``(m, n)`` array of 0/1 rows, and get back one value per row *in maximization form* (the
objective's value, negated when minimizing), so every method simply maximizes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from .executors import Backend, Outcome
from .result import EvaluationError, History, OptimizeResult, OptimizeState, k_hot

__all__ = [
    "Evaluator",
    "Journal",
    "Request",
    "STALL_ROUNDS",
]

#: A run stops (converged) after this many consecutive requests without a new subset.
STALL_ROUNDS = 25

Callback = Callable[[OptimizeState], Any]


class Request:
    """Values of one request, in maximization form.

    Attributes:
        values: ``(m,)`` values (NaN where the evaluation failed or was not made).
        evaluated: ``(m,)`` whether a value (or failure) is known: ``False`` only for rows
            dropped because the budget ran out.
        failed: ``(m,)`` whether the objective failed on the row.
    """

    def __init__(
        self, values: NDArray[np.float64], evaluated: NDArray[np.bool_], failed: NDArray[np.bool_]
    ) -> None:
        self.values, self.evaluated, self.failed = values, evaluated, failed

    @property
    def complete(self) -> bool:
        """Whether every row was evaluated (none dropped for lack of budget)."""
        return bool(self.evaluated.all())


_HEADER = "subset_rl.optimize journal"


def _lock(fd: int, path: Path) -> None:
    """Takes an exclusive lock on the journal (released when ``fd`` is closed)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ValueError(
            f"journal: {path} is in use by another run (it is locked); two runs cannot append "
            "to one journal"
        ) from None


class Journal:
    """An append-only record of evaluations, one JSON object per line, to resume a killed run.

    The first line is a header, ``{"subset_rl.optimize journal": 1, "n": n, "k": k}``; each
    further line is one evaluation, ``{"subset": [2, 5, 7], "value": 0.25, "error": null}``
    (``value`` in the objective's own sign, ``null`` for a failure, whose ``error`` says what
    went wrong). Lines are appended as evaluations complete and flushed to disk (``fsync``)
    before the run goes on, so a run killed at any moment loses at most the evaluations in
    flight. Opening an existing journal reads its evaluations back; a last line cut short by
    the kill (no newline, or not valid JSON) is dropped and cut off the file. Failures are
    journaled too, so a resumed run does not retry them (delete their lines to retry them). The
    file is locked (``flock``) while open: a second run on the same journal is refused.

    Args:
        path: The journal file (created with its parent folders if missing).
        n: Number of items; must match the journal's header.
        k: Subset size (recorded in the header, not checked).

    Raises:
        ValueError: the file is not a journal, was written for another ``n``, a line other
            than the last is not a valid entry, or another run holds it.
    """

    def __init__(self, path: str | os.PathLike[str], n: int, k: int) -> None:
        self.path = Path(path)
        self.entries: dict[tuple[int, ...], tuple[float, str | None]] = {}
        if self.path.is_dir():
            raise ValueError(f"journal: {self.path} is a directory, expected a file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(self._fd, self.path)
            data = self.path.read_bytes()
            self._load(data, n, k)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise

    def _load(self, data: bytes, n: int, k: int) -> None:
        lines = data.split(b"\n")
        keep = len(data) - len(lines[-1])  # bytes up to the last newline
        lines = lines[:-1]
        parsed: list[Any] = []
        for i, line in enumerate(lines):
            try:
                parsed.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if i == len(lines) - 1:  # a cut-off last line (the kill hit mid-write)
                    keep -= len(line) + 1
                    break
                raise ValueError(
                    f"journal: {self.path} line {i + 1} is not valid JSON ({e}); only the last "
                    "line of a journal may be damaged"
                ) from e
        if parsed:
            head = parsed[0]
            if not isinstance(head, dict) or head.get(_HEADER) != 1:
                raise ValueError(
                    f"journal: {self.path} is not a subset_rl.optimize journal (its first line "
                    f"is not the header {{{_HEADER!r}: 1, ...}})"
                )
            if head.get("n") != n:
                raise ValueError(
                    f"journal: {self.path} was written for n={head.get('n')}, found n={n}"
                )
            for i, entry in enumerate(parsed[1:], start=2):
                try:
                    key = tuple(int(j) for j in entry["subset"])
                    value = math.nan if entry["value"] is None else float(entry["value"])
                    error = entry.get("error")
                except (KeyError, TypeError, ValueError) as e:
                    raise ValueError(
                        f"journal: {self.path} line {i} is not an evaluation "
                        f"({type(e).__name__}: {e})"
                    ) from e
                self.entries[key] = (value, None if error is None else str(error))
        os.ftruncate(self._fd, keep)
        os.lseek(self._fd, 0, os.SEEK_END)
        if not parsed:
            self._write([{_HEADER: 1, "n": n, "k": k}])

    def _write(self, objects: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(o) + "\n" for o in objects).encode()
        while data:
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)

    def append(self, items: list[tuple[tuple[int, ...], float, str | None]]) -> None:
        """Appends evaluations ``(subset, value, error)`` and flushes them to disk."""
        self._write(
            [
                {"subset": list(key), "value": None if error else value, "error": error}
                for key, value, error in items
            ]
        )
        for key, value, error in items:
            self.entries[key] = (math.nan if error else value, error)

    def close(self) -> None:
        """Closes the file (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _rows_to_keys(rows: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(np.flatnonzero(r).tolist()) for r in rows]


class Evaluator:
    """Evaluates requests against a budget of distinct real evaluations.

    The budget counts *distinct subsets the objective is actually called on*: a subset seen
    before (successfully or not) is answered from the cache for free, and a failed evaluation
    counts like any other call. When a request holds more new subsets than the budget has left,
    the first ones (in request order) are evaluated and the rest are dropped (reported as not
    evaluated), so the budget is never exceeded.

    Args:
        backend: Where the objective runs.
        n: Number of items.
        k: Feasible subset size (only size-``k`` subsets can become the best).
        budget: Maximum number of distinct evaluations.
        maximize: Whether larger objective values are better.
        on_error: ``"raise"`` or ``"skip"``.
        callback: Called with an :class:`OptimizeState` after each request; returning ``True``
            stops the run.
        progress: Show a tqdm progress bar.
        method: Method name (for the bar).
        objective_name: Name of the objective (for error messages).
        journal: Evaluations to replay instead of calling the objective, and where new ones are
            appended as they complete.
    """

    def __init__(
        self,
        backend: Backend,
        n: int,
        k: int,
        budget: int,
        *,
        maximize: bool = True,
        on_error: str = "raise",
        callback: Callback | None = None,
        progress: bool = True,
        method: str = "",
        objective_name: str = "objective",
        journal: Journal | None = None,
    ) -> None:
        self.backend, self.n, self.k, self.budget = backend, n, k, budget
        self.sign = 1.0 if maximize else -1.0
        self.maximize = maximize
        self.on_error = on_error
        self.callback = callback
        self.objective_name = objective_name
        self.cache: dict[tuple[int, ...], float] = {}  # maximization form, NaN = failed
        self.n_queries = 0
        self.n_failed = 0
        self.rounds = 0
        self._n_feasible = 0
        self._space = math.comb(n, k)
        self._subsets: list[tuple[int, ...]] = []
        self._values: list[float] = []
        self._best_so_far: list[float] = []
        self._round: list[int] = []
        self._errors: dict[int, str] = {}
        self.best_key: tuple[int, ...] | None = None
        self.best = -math.inf  # maximization form
        self._stall = 0
        self.stop_reason: str | None = None
        self.budget_exhausted = False
        self.journal = journal
        self.n_replayed = 0
        self.interrupted = False
        self._bar: Any = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=budget, desc=f"optimize[{method}]", unit="eval", leave=False)

    # ------------------------------------------------------------------ state
    @property
    def n_evaluations(self) -> int:
        """Distinct real evaluations so far."""
        return len(self._subsets)

    @property
    def remaining(self) -> int:
        """Evaluations left in the budget."""
        return self.budget - self.n_evaluations

    @property
    def fraction_used(self) -> float:
        """Share of the budget spent, in ``[0, 1]``."""
        return self.n_evaluations / self.budget

    @property
    def done(self) -> bool:
        """Whether the method should stop (budget spent, converged, stopped by the callback)."""
        return self.stop_reason is not None

    def stop(self, reason: str) -> None:
        """Ends the run with ``reason`` (the first reason given wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, rows: ArrayLike | torch.Tensor) -> Request:
        """Values of the subsets in ``rows`` (an ``(m, n)`` 0/1 array or tensor).

        Raises:
            EvaluationError: with ``on_error="raise"``, after recording the whole request, if
                the objective failed on one of its new subsets.
        """
        if isinstance(rows, torch.Tensor):
            rows = rows.detach().cpu().numpy()
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.n:
            raise ValueError(f"request: expected shape (m, {self.n}), found {rows.shape}")
        keys = _rows_to_keys(rows)
        self.n_queries += len(keys)
        new: list[tuple[int, ...]] = []
        seen: set[tuple[int, ...]] = set()
        for key in keys:
            if key not in self.cache and key not in seen:
                seen.add(key)
                new.append(key)
        if len(new) >= self.remaining:
            new = new[: self.remaining]
            self.budget_exhausted = True
        failures: list[tuple[tuple[int, ...], str, Any]] = []
        if new:
            self._stall = 0
            outcomes = self._outcomes(new)
            for key, outcome in zip(new, outcomes, strict=True):
                self._record(key, outcome.value, outcome.error)
                if outcome.error is not None:
                    failures.append((key, outcome.error, outcome))
        else:
            self._stall += 1
        values = np.array([self.cache.get(key, math.nan) for key in keys], dtype=np.float64)
        evaluated = np.array([key in self.cache for key in keys], dtype=bool)
        failed = evaluated & np.isnan(values)
        state = OptimizeState(
            self.rounds,
            self.n_evaluations,
            self.budget,
            self.best_value,
            self.best_key,
            values * self.sign,
        )
        self.rounds += 1
        if self._bar is not None:
            self._bar.update(len(new))
            if self.best_key is not None:
                self._bar.set_postfix(best=f"{self.best_value:.6g}", refresh=False)
        if failures and self.on_error == "raise":
            key, reason, outcome = failures[0]
            err = EvaluationError(
                key,
                self.n,
                reason,
                objective=self.objective_name,
                remote_traceback=outcome.traceback if outcome.exception is None else None,
                failures=[(fk, fr) for fk, fr, _ in failures],
            )
            self.stop(f"stopped: the objective failed on subset {list(key)}")
            raise err from outcome.exception
        self._check_stop()
        if self.callback is not None and not self.done and self.callback(state) is True:
            self.stop("stopped by the callback")
        return Request(values, evaluated, failed)

    def _outcomes(self, new: list[tuple[int, ...]]) -> list[Outcome]:
        """Outcomes of the new subsets ``new``: from the journal, else from the backend.

        On ``KeyboardInterrupt`` the evaluations completed so far are recorded (in request
        order), the run is marked interrupted, and the interrupt propagates.
        """
        got: dict[int, Outcome] = {}
        todo: list[int] = []
        entries = self.journal.entries if self.journal is not None else {}
        for i, key in enumerate(new):
            if key in entries:
                value, error = entries[key]
                got[i] = Outcome(value, error)
                self.n_replayed += 1
            else:
                todo.append(i)
        if todo:

            def report(items: list[tuple[int, Outcome]]) -> None:
                for j, outcome in items:
                    got[todo[j]] = outcome
                if self.journal is not None:
                    self.journal.append([(new[todo[j]], o.value, o.error) for j, o in items])

            try:
                rows = np.stack([k_hot(new[i], self.n) for i in todo])
                outcomes = self.backend.evaluate(rows, report)
            except KeyboardInterrupt:
                for i in sorted(got):
                    self._record(new[i], got[i].value, got[i].error)
                self.interrupted = True
                self.stop(f"interrupted (KeyboardInterrupt) after {self.n_evaluations} evaluations")
                raise
            for j, outcome in zip(todo, outcomes, strict=True):
                got[j] = outcome
        return [got[i] for i in range(len(new))]

    def _record(self, key: tuple[int, ...], value: float, error: str | None) -> None:
        index = len(self._subsets)
        self._subsets.append(key)
        self._values.append(value)
        self._round.append(self.rounds)
        if error is not None:
            self._errors[index] = error
            self.n_failed += 1
            self.cache[key] = math.nan
        else:
            self.cache[key] = self.sign * value
        if len(key) == self.k:
            self._n_feasible += 1
            if error is None and self.sign * value > self.best:
                self.best, self.best_key = self.sign * value, key
        self._best_so_far.append(self.best_value)

    def _check_stop(self) -> None:
        if self.budget_exhausted or self.remaining <= 0:
            self.stop(f"budget of {self.budget} evaluations used")
        elif self._n_feasible >= self._space:
            self.stop(f"every one of the C({self.n}, {self.k}) = {self._space} subsets evaluated")
        elif self._stall >= STALL_ROUNDS:
            self.stop(f"converged: {STALL_ROUNDS} consecutive requests held no new subset")

    @property
    def best_value(self) -> float:
        """Best feasible value so far, in the objective's sign (NaN if none)."""
        return math.nan if self.best_key is None else self.sign * self.best

    # ------------------------------------------------------------------ results
    def result(
        self,
        *,
        method: str,
        message: str,
        marginals: np.ndarray | None,
        wall_time: float,
        seed: int,
        executor: str,
    ) -> OptimizeResult:
        """The :class:`OptimizeResult` of everything evaluated so far."""
        history = History(
            n=self.n,
            k=self.k,
            subsets=list(self._subsets),
            values=np.array(self._values, dtype=np.float64),
            best_so_far=np.array(self._best_so_far, dtype=np.float64),
            round=np.array(self._round, dtype=np.int64),
            errors=dict(self._errors),
        )
        key = self.best_key
        return OptimizeResult(
            best_subset=None if key is None else k_hot(key, self.n),
            best_indices=key,
            best_value=self.best_value,
            n_evaluations=self.n_evaluations,
            n_queries=self.n_queries,
            n_failed=self.n_failed,
            history=history,
            marginals=marginals,
            wall_time=wall_time,
            method=method,
            message=message,
            n=self.n,
            k=self.k,
            budget=self.budget,
            maximize=self.maximize,
            seed=seed,
            executor=executor,
            interrupted=self.interrupted,
            n_replayed=self.n_replayed,
        )

    def close(self) -> None:
        """Closes the progress bar, the journal and the backend."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.journal is not None:
            self.journal.close()
        self.backend.close()

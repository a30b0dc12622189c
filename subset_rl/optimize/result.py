"""What :func:`~subset_rl.optimize.optimize` returns, reports to callbacks, and raises."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

__all__ = ["EvaluationError", "History", "OptimizeResult", "OptimizeState"]


def k_hot(indices: tuple[int, ...], n: int) -> NDArray[np.int8]:
    """The ``int8`` indicator vector of shape ``(n,)`` with ones at ``indices``."""
    z = np.zeros(n, dtype=np.int8)
    z[list(indices)] = 1
    return z


@dataclass
class History:
    """Every distinct subset the objective was really called on, in evaluation order.

    Cache hits are not in the history (they cost nothing); failed evaluations are, with a NaN
    value. Values are in the objective's own sign (not negated when minimizing).

    Attributes:
        n: Number of items.
        k: Subset size of a feasible answer.
        subsets: Chosen indices of each evaluated subset (sorted tuples). Greedy forward
            selection also evaluates smaller subsets on its way to ``k`` items.
        values: ``(E,)`` values, NaN where the evaluation failed.
        best_so_far: ``(E,)`` best value over the feasible (size ``k``) subsets evaluated so far,
            NaN until the first one succeeds.
        round: ``(E,)`` index of the request (iteration of the method) that evaluated it.
        errors: Evaluation index -> description of the failure.
    """

    n: int
    k: int
    subsets: list[tuple[int, ...]] = field(default_factory=list)
    values: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    best_so_far: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    round: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    errors: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        """Number of evaluations."""
        return len(self.subsets)

    @property
    def evaluations(self) -> NDArray[np.int64]:
        """``1, 2, ..., E``: the evaluation count after each entry (the x axis of a plot)."""
        return np.arange(1, len(self) + 1)

    def k_hot(self) -> NDArray[np.int8]:
        """The evaluated subsets as an ``(E, n)`` ``int8`` indicator matrix."""
        out = np.zeros((len(self), self.n), dtype=np.int8)
        for row, idx in zip(out, self.subsets, strict=True):
            row[list(idx)] = 1
        return out

    def best_at(self, evaluations: int) -> float:
        """Best feasible value after the first ``evaluations`` evaluations (NaN if none yet)."""
        if evaluations <= 0 or len(self) == 0:
            return math.nan
        return float(self.best_so_far[min(evaluations, len(self)) - 1])


class OptimizeState(NamedTuple):
    """What a callback sees after each request of the method.

    Attributes:
        round: Index of the request just evaluated.
        n_evaluations: Distinct real evaluations so far (what the budget counts).
        budget: The budget.
        best_value: Best feasible value so far (objective's sign; NaN if none).
        best_indices: Its subset, or ``None``.
        values: Values of the request's subsets (objective's sign; NaN: failed or not evaluated).
    """

    round: int
    n_evaluations: int
    budget: int
    best_value: float
    best_indices: tuple[int, ...] | None
    values: NDArray[np.float64]


@dataclass
class OptimizeResult:
    """The outcome of :func:`~subset_rl.optimize.optimize`.

    Attributes:
        best_subset: ``int8`` k-hot vector of shape ``(n,)`` of the best evaluated subset, or
            ``None`` if no subset of size ``k`` was evaluated successfully.
        best_indices: Its chosen indices (sorted), or ``None``.
        best_value: Its value as returned by the objective (NaN if none). It is a real
            evaluation, never an estimate.
        n_evaluations: Distinct subsets the objective was called on (failures included):
            what the budget counts; ``<= budget``.
        n_queries: Subsets the method asked for, cache hits included.
        n_failed: Evaluations that raised or returned NaN/inf (only nonzero with
            ``on_error="skip"``, or in the partial result attached to an
            :class:`EvaluationError`).
        history: Every evaluation in order (see :class:`History`).
        marginals: Final inclusion probabilities ``(n,)`` of the method's distribution
            (``sfess``, ``cem``), else ``None``.
        wall_time: Seconds spent in :func:`optimize`.
        method: Method name.
        message: Why the run stopped.
        n: Number of items.
        k: Subset size.
        budget: The evaluation budget.
        maximize: Whether larger values were better.
        seed: The seed used (drawn from the OS when ``None`` was given).
        executor: Where the objective ran (``"serial"``, ``"process"``, ``"ray(...)"``, ...).
        interrupted: Whether the run was cut short by ``KeyboardInterrupt`` (then the result
            holds every evaluation completed until then, and ``message`` says so).
        n_replayed: Evaluations answered from the ``journal`` of an earlier run instead of
            calling the objective (included in ``n_evaluations`` and the history).
    """

    best_subset: NDArray[np.int8] | None
    best_indices: tuple[int, ...] | None
    best_value: float
    n_evaluations: int
    n_queries: int
    n_failed: int
    history: History
    marginals: NDArray[np.float64] | None
    wall_time: float
    method: str
    message: str
    n: int
    k: int
    budget: int
    maximize: bool
    seed: int
    executor: str = "serial"
    interrupted: bool = False
    n_replayed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary with the full history."""
        h = self.history

        def num(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "method": self.method,
            "n": self.n,
            "k": self.k,
            "budget": self.budget,
            "maximize": self.maximize,
            "seed": self.seed,
            "executor": self.executor,
            "best_indices": None if self.best_indices is None else list(self.best_indices),
            "best_value": num(self.best_value),
            "n_evaluations": self.n_evaluations,
            "n_queries": self.n_queries,
            "n_failed": self.n_failed,
            "wall_time": self.wall_time,
            "message": self.message,
            "interrupted": self.interrupted,
            "n_replayed": self.n_replayed,
            "marginals": None if self.marginals is None else self.marginals.tolist(),
            "history": {
                "subsets": [list(s) for s in h.subsets],
                "values": [num(v) for v in h.values.tolist()],
                "best_so_far": [num(v) for v in h.best_so_far.tolist()],
                "round": h.round.tolist(),
                "errors": {str(i): m for i, m in h.errors.items()},
            },
        }

    def __repr__(self) -> str:
        """A short summary."""
        best = "none" if self.best_indices is None else list(self.best_indices)
        if isinstance(best, list) and len(best) > 12:
            best = f"{best[:12]}..."
        return (
            f"OptimizeResult(method={self.method!r}, best_value={self.best_value:.6g}, "
            f"best_indices={best}, n_evaluations={self.n_evaluations}/{self.budget}, "
            f"n_failed={self.n_failed}, wall_time={self.wall_time:.3g}s, "
            f"message={self.message!r})"
        )


class EvaluationError(RuntimeError):
    """The objective raised, or returned NaN/inf or a non-scalar, on a subset.

    Raised by :func:`~subset_rl.optimize.optimize` with ``on_error="raise"`` once the request
    holding the failure has finished; every evaluation completed until then (in that request
    too) is in :attr:`result`.

    Attributes:
        subset: Indices of the failing subset (sorted).
        z: Its ``int8`` indicator vector of shape ``(n,)``.
        reason: What went wrong (e.g. ``"raised ValueError: ..."`` or ``"returned nan; ..."``).
        remote_traceback: Traceback text when the objective raised in a worker process.
        failures: Every failure of that request, as ``(subset, reason)`` pairs.
        result: The partial :class:`OptimizeResult` (set by :func:`optimize`).
    """

    def __init__(
        self,
        subset: tuple[int, ...],
        n: int,
        reason: str,
        *,
        objective: str = "objective",
        remote_traceback: str | None = None,
        failures: list[tuple[tuple[int, ...], str]] | None = None,
    ) -> None:
        shown = list(subset) if len(subset) <= 30 else f"{list(subset[:30])}..."
        more = ""
        if failures and len(failures) > 1:
            more = f" ({len(failures) - 1} more failure(s) in the same request)"
        super().__init__(
            f"{objective} failed on the subset with items {shown}: {reason}{more}. Completed "
            "evaluations are kept on this exception's .result; pass on_error='skip' to skip "
            "failing subsets instead."
        )
        self.subset = subset
        self.z = k_hot(subset, n)
        self.reason = reason
        self.remote_traceback = remote_traceback
        self.failures = failures or [(subset, reason)]
        self.result: OptimizeResult | None = None

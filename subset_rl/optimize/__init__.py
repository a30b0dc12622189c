r"""Black-box subset optimization: choose ``k`` of ``n`` items to maximize any ``f(subset)``.

:func:`optimize` runs one of several methods under one budget of distinct evaluations: the
default ``"hybrid"`` (a :class:`~subset_rl.KSubsetPolicy` learned by the cross-entropy method on
exact samples, then swap polishing), SFESS (score-function gradient ascent on its logits),
random search, greedy forward selection, simulated annealing, the cross-entropy method and QR
pivoting (sensor placement). The objective runs in this process, in local worker processes, or
on Ray.

Example:
    >>> import numpy as np
    >>> from subset_rl.optimize import WeightedCoverage, optimize
    >>> f = WeightedCoverage.random(30, seed=0)
    >>> res = optimize(f, 30, 5, budget=300, seed=0, progress=False)
    >>> res.n_evaluations <= 300 and int(res.best_subset.sum()) == 5
    True
"""

from .api import optimize
from .executors import ProcessPool
from .methods import METHODS, fit_logits, greedy_evaluations
from .objectives import (
    CoverageWithSynergies,
    DeceptiveTrap,
    DOptimalDesign,
    FacilityLocation,
    FeatureSelectionKNN,
    NoisyObjective,
    QuadraticObjective,
    SensorPlacementReward,
    WeightedCoverage,
    brute_force,
)
from .result import EvaluationError, History, OptimizeResult, OptimizeState

__all__ = [
    "CoverageWithSynergies",
    "DOptimalDesign",
    "DeceptiveTrap",
    "EvaluationError",
    "FacilityLocation",
    "FeatureSelectionKNN",
    "History",
    "METHODS",
    "NoisyObjective",
    "OptimizeResult",
    "OptimizeState",
    "ProcessPool",
    "QuadraticObjective",
    "SensorPlacementReward",
    "WeightedCoverage",
    "brute_force",
    "fit_logits",
    "greedy_evaluations",
    "optimize",
]

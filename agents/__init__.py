"""Training loops for k-subset policies (installed as ``subset_rl.agents``).

* :class:`SFESS`: score-function training with a leave-one-out baseline, for black boxes.
* :class:`Pathwise`: the same loop with a relaxed/pathwise estimator, for differentiable rewards.
"""

from .base import BaseAgent, resolve_device, resolve_objective
from .gym_objective import GymEnvObjective, SeedContext
from .pathwise import ESTIMATORS, Pathwise
from .policies import FreeLogits, IPLogits, MLPLogits, PairwiseLogits, build_policy
from .sfess import SFESS

__all__ = [
    "ESTIMATORS",
    "SFESS",
    "BaseAgent",
    "FreeLogits",
    "GymEnvObjective",
    "IPLogits",
    "MLPLogits",
    "PairwiseLogits",
    "Pathwise",
    "SeedContext",
    "build_policy",
    "resolve_device",
    "resolve_objective",
]

"""subset_rl: learning to choose k of n items for black-box objectives.

The core is :class:`KSubsetPolicy`, an exact distribution over k-hot vectors (conditional
Poisson), with its normalizer and marginals also available as functions; :func:`optimize`
searches for the best k-subset of a black-box objective.
"""

from . import kl as kl  # registers kl_divergence(KSubsetPolicy, KSubsetPolicy)
from .constraints import KHot
from .distribution import KSubsetPolicy
from .poisson_binomial import log_normalizer, marginals, sample_conditional_poisson

# ``subset_rl.optimize(f, n, k, budget=...)`` is the black-box optimizer; its package stays
# importable as ``from subset_rl.optimize import ...``. Imported last: it uses the above.
from .optimize import OptimizeResult, optimize  # noqa: E402  (isort: skip)

__all__ = [
    "KHot",
    "KSubsetPolicy",
    "OptimizeResult",
    "log_normalizer",
    "marginals",
    "optimize",
    "sample_conditional_poisson",
]
__version__ = "0.1.0"

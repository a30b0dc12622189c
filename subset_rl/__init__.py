"""subset_rl: learning to choose k of n items for black-box objectives.

The core is :class:`KSubsetPolicy`, an exact distribution over k-hot vectors (conditional
Poisson), with its normalizer and marginals also available as functions.
"""

from .constraints import KHot
from .distribution import KSubsetPolicy
from .poisson_binomial import log_normalizer, marginals, sample_conditional_poisson

__all__ = ["KHot", "KSubsetPolicy", "log_normalizer", "marginals", "sample_conditional_poisson"]
__version__ = "0.1.0"

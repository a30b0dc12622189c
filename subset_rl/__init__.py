"""subset_rl: learning to choose k of n items for black-box objectives."""

__version__ = "0.1.0"

"""The SFESS paper's experiments with every gradient estimator, side by side.

Three experiments of Wijk, Vinuesa & Azizpour (SFESS, ICLR 2025), each runnable with every
estimator of :mod:`subset_rl.estimators` (SFESS, SFESS+VR, GS, STGS, SIMPLE, I-MLE, AIMLE,
intermediate loss):

* :func:`train_feature_selection`: a global k-subset of pixels and a decoder reconstructing the
  image from them (plus :func:`train_concrete`, the CAE / IP-CAE selectors of Nilsson et al.);
* :func:`train_vae`: a VAE with ``d`` k-subset latent variables;
* :func:`train_knn`: stochastic k-nearest neighbours learning an embedding.

The command line (``python -m subset_rl.experiments --help``, implemented in :func:`main`) runs
any of them over estimators, data sets and seeds, and writes one results table (CSV + Markdown,
next to the paper's numbers), validation curves and per-step timings (PNG).
"""

from .common import (
    DATASETS,
    ESTIMATORS,
    PAPER_RESULTS,
    EstimatorConfig,
    RunResult,
    Splits,
    SubsetLayer,
    TrainConfig,
    load_splits,
    parse_estimators,
)
from .feature_selection import (
    ConcreteConfig,
    FeatureSelectionConfig,
    train_concrete,
    train_feature_selection,
)
from .knn import KNNConfig, train_knn
from .runner import Cell, main, run_cells, summarize, write_outputs
from .vae import VAEConfig, train_vae

__all__ = [
    "DATASETS",
    "ESTIMATORS",
    "PAPER_RESULTS",
    "Cell",
    "ConcreteConfig",
    "EstimatorConfig",
    "FeatureSelectionConfig",
    "KNNConfig",
    "RunResult",
    "Splits",
    "SubsetLayer",
    "TrainConfig",
    "VAEConfig",
    "load_splits",
    "main",
    "parse_estimators",
    "run_cells",
    "summarize",
    "train_concrete",
    "train_feature_selection",
    "train_knn",
    "train_vae",
    "write_outputs",
]

"""Gymnasium environments with k-hot actions (installed as ``subset_rl.envs``).

Importing this package registers the environments with Gymnasium:

================================  ==========================================================
``subset_rl/SensorPlacement-v0``     :class:`SensorPlacementEnv` (field reconstruction)
``subset_rl/FeatureAcquisition-v0``  :class:`FeatureAcquisitionEnv` (masked-feature classifier)
``subset_rl/KNNVoting-v0``           :class:`KNNVotingEnv` (k-NN vote on a query)
``subset_rl/BlackBoxSubset-v0``      :class:`BlackBoxSubsetEnv` (any callable; needs ``f, n, k``)
================================  ==========================================================

Each env is a thin Gymnasium layer over a batched torch objective (``env.unwrapped.objective``)
that scores ``(samples, batch, n)`` k-hot actions against contexts drawn with a
``torch.Generator``. In subprocesses (``SubprocVecEnv``, ``AsyncVectorEnv``) use the id with its
module prefix, ``"subset_rl.envs:subset_rl/KNNVoting-v0"``, so the child imports this package and
finds the registration.

Forked children (``AsyncVectorEnv``'s and ``multiprocessing``'s default ``fork`` context) run
torch with one intra-op thread: torch's CPU wheels use GNU OpenMP, whose thread pool does not
survive ``fork``, so the first parallel torch op in a child of a parent that already ran one
waits forever. PyTorch's own ``DataLoader`` workers do the same.
"""

from __future__ import annotations

import os

import gymnasium as gym
import torch

from .base import SubsetEnv
from .blackbox import BlackBoxObjective, BlackBoxSubsetEnv, make_blackbox_env
from .feature_acquisition import (
    FeatureAcquisitionEnv,
    FeatureAcquisitionObjective,
    FeatureContext,
    train_masked_classifier,
)
from .knn_voting import KNNContext, KNNVotingEnv, KNNVotingObjective, evaluate_knn, vote_reward
from .objective import Context, ObjectiveError, SubsetObjective
from .sensor_placement import (
    SensorContext,
    SensorPlacementEnv,
    SensorPlacementObjective,
    gaussian_process_fields,
    pod_basis,
    qr_placement,
    random_placement,
)
from .spaces import KHot, KHotBatch

__all__ = [
    "ENV_IDS",
    "BlackBoxObjective",
    "BlackBoxSubsetEnv",
    "Context",
    "FeatureAcquisitionEnv",
    "FeatureAcquisitionObjective",
    "FeatureContext",
    "KHot",
    "KHotBatch",
    "KNNContext",
    "KNNVotingEnv",
    "KNNVotingObjective",
    "ObjectiveError",
    "SensorContext",
    "SensorPlacementEnv",
    "SensorPlacementObjective",
    "SubsetEnv",
    "SubsetObjective",
    "evaluate_knn",
    "gaussian_process_fields",
    "make_blackbox_env",
    "pod_basis",
    "qr_placement",
    "random_placement",
    "train_masked_classifier",
    "vote_reward",
]

ENV_IDS: dict[str, str] = {
    "subset_rl/SensorPlacement-v0": "subset_rl.envs.sensor_placement:SensorPlacementEnv",
    "subset_rl/FeatureAcquisition-v0": "subset_rl.envs.feature_acquisition:FeatureAcquisitionEnv",
    "subset_rl/KNNVoting-v0": "subset_rl.envs.knn_voting:KNNVotingEnv",
    "subset_rl/BlackBoxSubset-v0": "subset_rl.envs.blackbox:BlackBoxSubsetEnv",
}
"""Registered ids and their entry points."""

for _env_id, _entry_point in ENV_IDS.items():
    if _env_id not in gym.registry:
        gym.register(id=_env_id, entry_point=_entry_point, nondeterministic=False)


def _one_torch_thread_in_forked_child() -> None:
    """Runs in every child forked after this import: one torch thread (see the module doc)."""
    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # POSIX only; spawn-started children need nothing
    os.register_at_fork(after_in_child=_one_torch_thread_in_forked_child)

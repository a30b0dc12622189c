"""Gymnasium environments with k-hot actions (installed as ``subset_rl.envs``)."""

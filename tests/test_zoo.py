"""RL Zoo hyperparameters (hyperparams/{ppo,a2c,trpo}.yml): every registered env, the k-hot policy,
and the documented ``python -m rl_zoo3.train`` command (slow; skipped without rl_zoo3)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import subset_rl.envs as E

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
ALGOS = ["ppo", "a2c", "trpo"]


def import_name(name: str) -> object:
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


@pytest.mark.parametrize("algo", ALGOS)
def test_every_registered_env_uses_the_k_hot_policy(algo: str) -> None:
    from subset_rl.sb3 import KHotGuard, KSubsetActorCriticPolicy, SubsetMetricsCallback

    config = yaml.load((ROOT / "hyperparams" / f"{algo}.yml").read_text(), Loader=yaml.Loader)
    assert set(config) == set(E.ENV_IDS)
    for env_id, params in config.items():
        assert import_name(params["policy"]) is KSubsetActorCriticPolicy, env_id
        callbacks = [import_name(name) for name in params["callback"]]
        assert KHotGuard in callbacks and SubsetMetricsCallback in callbacks
        assert params["n_timesteps"] > 0 and params["n_envs"] >= 1


def run_zoo(algo: str, env_id: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "rl_zoo3.train", "--algo", algo, "--env", env_id,
               "--gym-packages", "subset_rl.envs", "--conf-file", f"hyperparams/{algo}.yml",
               "-n", "512", "--seed", "0", "--eval-freq", "-1", "--log-interval", "1",
               "-f", str(tmp_path / "logs"),
               "--tensorboard-log", str(tmp_path / "tb"), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGOS)
def test_documented_zoo_command_trains_and_saves(algo: str, tmp_path: Path) -> None:
    pytest.importorskip("rl_zoo3")
    if algo == "trpo":
        pytest.importorskip("sb3_contrib")
    result = run_zoo(algo, "subset_rl/KNNVoting-v0", tmp_path, "--env-kwargs", "n:10", "k:3")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = list((tmp_path / "logs" / algo).glob("subset_rl-KNNVoting-v0_1/*.zip"))
    assert saved, result.stdout[-2000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "subset/reward_mean" in acc.Tags()["scalars"]


@pytest.mark.slow
def test_zoo_black_box_with_a_function_name(tmp_path: Path) -> None:
    pytest.importorskip("rl_zoo3")
    result = run_zoo("ppo", "subset_rl/BlackBoxSubset-v0", tmp_path,
                     "--env-kwargs", "f:'numpy:sum'", "n:10", "k:3")
    assert result.returncode == 0, result.stderr[-3000:]

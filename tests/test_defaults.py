"""One set of defaults for the API and the CLI; torch threads set only inside learn/evaluate."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from subset_rl import cli, defaults
from subset_rl.agents import SFESS, Pathwise
from subset_rl.envs import BlackBoxObjective

SENSORS = "subset_rl/SensorPlacement-v0"
KNN = "subset_rl/KNNVoting-v0"


def _cli_settings(*argv: str) -> dict[str, Any]:
    args = cli.build_parser().parse_args(["train", *argv])
    return cli._settings(args, args.env_id)


@pytest.mark.parametrize("env_id", [SENSORS, KNN, "subset_rl/FeatureAcquisition-v0"])
def test_cli_and_api_read_the_same_defaults(env_id: str) -> None:
    settings = _cli_settings(env_id)
    assert settings == defaults.native_settings(env_id, "sfess")
    agent = SFESS(env_id, device="cpu")
    assert agent.batch_size == settings["batch_size"]
    assert agent.learning_rate == settings["lr"]
    expected_clip = settings["max_grad_norm"]
    assert agent.max_grad_norm == (math.inf if expected_clip is None else expected_clip)


def test_sensor_placement_defaults_are_the_tuned_ones() -> None:
    """The measured setting (benchmarks/bench_agent_sensor.py), the same in the API and CLI."""
    agent = SFESS(SENSORS, device="cpu")
    assert (agent.batch_size, agent.learning_rate, agent.max_grad_norm) == (2, 0.05, math.inf)
    assert (agent.num_samples, agent.ent_coef, agent.utility) == (64, 0.0, "rank")
    assert agent.polish_budget == 4000
    other = SFESS(BlackBoxObjective(lambda z: float(z[0]), n=5, k=2), device="cpu")
    assert (other.num_samples, other.ent_coef, other.utility) == (16, 0.0, "reward")
    assert other.polish_budget == 0
    assert cli.RECOMMENDED is defaults.RECOMMENDED  # the old import path still works


def test_explicit_arguments_and_objects() -> None:
    agent = SFESS(SENSORS, batch_size=7, learning_rate=0.5, max_grad_norm=None, device="cpu")
    assert (agent.batch_size, agent.learning_rate, agent.max_grad_norm) == (7, 0.5, math.inf)
    objective = BlackBoxObjective(lambda z: float(z[0]), n=5, k=2)
    plain = SFESS(objective, device="cpu")
    base = defaults.NATIVE_DEFAULTS
    assert (plain.batch_size, plain.learning_rate) == (base["batch_size"], base["lr"])
    assert plain.max_grad_norm == math.inf
    with pytest.raises(ValueError, match="max_grad_norm"):
        SFESS(objective, max_grad_norm="big", device="cpu")


def test_pathwise_agents_use_the_plain_defaults() -> None:
    objective = BlackBoxObjective(lambda z: z.sum(-1), n=6, k=2, batched=True,
                                  differentiable=True)
    agent = Pathwise(objective, device="cpu")
    assert agent.learning_rate == defaults.native_settings(None, "stgs")["lr"]
    assert _cli_settings(SENSORS, "--agent", "stgs") == defaults.native_settings(SENSORS, "stgs")


def test_sb3_defaults_are_shared() -> None:
    from subset_rl.sb3 import ppo_kwargs

    assert _cli_settings(KNN, "--agent", "ppo") == defaults.sb3_settings(KNN, "ppo")
    assert ppo_kwargs() == defaults.PPO_DEFAULTS
    assert ppo_kwargs() is not defaults.PPO_DEFAULTS


def test_every_api_policy_is_a_cli_choice() -> None:
    from subset_rl.agents.policies import POLICIES

    parser = cli.build_parser()
    for name in POLICIES:
        args = parser.parse_args(["train", KNN, "--policy", name])
        assert args.policy == name
    assert "pairwise" in POLICIES


def test_cli_pairwise_policy_trains_and_refuses_a_layout_without_items(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["train", KNN, "--policy", "pairwise", "--steps", "2", "--quiet",
                     "--no-plot", "--eval-contexts", "16", "--logdir", str(tmp_path / "a")])
    assert code == 0
    code = cli.main(["train", SENSORS, "--policy", "pairwise", "--steps", "2", "--quiet",
                     "--no-plot", "--logdir", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("subset-rl train: error:") and "pairwise" in err[-1]


# ------------------------------------------------------------------------------ threads
def _objective() -> BlackBoxObjective:
    return BlackBoxObjective(lambda z: z[..., :2].sum(-1), n=8, k=2, batched=True)


@pytest.fixture
def two_threads() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_threads_are_set_inside_learn_and_evaluate_only(two_threads: None) -> None:
    inside: list[int] = []
    agent = SFESS(_objective(), num_samples=4, device="cpu")
    assert agent.torch_threads == defaults.TORCH_THREADS == 1
    agent.learn(3, callback=lambda a: inside.append(torch.get_num_threads()))
    assert inside == [1, 1, 1]
    assert torch.get_num_threads() == 2  # the caller's setting is back

    original = agent.objective.evaluate
    seen: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    agent.objective.evaluate = spy  # type: ignore[method-assign]
    agent.evaluate(8)
    assert seen == [1] and torch.get_num_threads() == 2


def test_threads_restored_when_learn_raises(two_threads: None) -> None:
    agent = SFESS(_objective(), num_samples=4, device="cpu")

    def boom(_: Any) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        agent.learn(2, callback=boom)
    assert torch.get_num_threads() == 2


def test_torch_threads_none_leaves_torch_alone(two_threads: None) -> None:
    inside: list[int] = []
    agent = SFESS(_objective(), num_samples=4, device="cpu", torch_threads=None)
    agent.learn(2, callback=lambda a: inside.append(torch.get_num_threads()))
    assert inside == [2, 2]
    with pytest.raises(ValueError, match="torch_threads"):
        SFESS(_objective(), num_samples=4, device="cpu", torch_threads=0)
    with pytest.raises(TypeError, match="torch_threads"):
        SFESS(_objective(), num_samples=4, device="cpu", torch_threads=1.5)


# ------------------------------------------------------------------------------ warning
def _result(policy: list[float], random: list[float]) -> cli.EvalResult:
    rows = [cli.Row("SFESS (trained)", torch.tensor([policy])),
            cli.Row("random k-subset (mean of 32)", torch.tensor([random]))]
    return cli.EvalResult(rows=rows, context=None, actions=None)  # type: ignore[arg-type]


def test_no_better_than_random_warning() -> None:
    noisy = [0.0, 1.0] * 50
    assert cli.no_better_than_random(_result(noisy, noisy)) is not None
    worse = [x - 0.2 for x in noisy]
    assert "no better than random" in cli.no_better_than_random(_result(worse, noisy))
    better = [x + 0.5 for x in noisy]
    assert cli.no_better_than_random(_result(better, noisy)) is None


def test_cli_prints_the_warning_for_an_untrained_policy(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["train", KNN, "--steps", "1", "--quiet", "--no-plot", "--lr", "1e-6",
                     "--logdir", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 0
    assert "no better than random" in captured.err
    assert "--steps" in captured.err

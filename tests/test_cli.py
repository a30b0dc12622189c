"""The ``subset-rl`` command line, called in-process through ``main(argv)``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from subset_rl.cli import main
from subset_rl.envs import make_blackbox_env

HIDDEN = np.array([1, 4, 7])


def overlap(z: np.ndarray) -> float:
    """Black box: how many of the hidden items are chosen."""
    return float(z[HIDDEN].sum())


def weighted_sum(z: torch.Tensor) -> torch.Tensor:
    """Batched and differentiable in ``z``: a linear reward."""
    return (z * torch.linspace(-1.0, 1.0, z.shape[-1], dtype=z.dtype)).sum(-1)


if "clitest/Overlap-v0" not in gym.registry:
    gym.register(
        id="clitest/Overlap-v0",
        entry_point=lambda **kw: make_blackbox_env(overlap, 12, 3, **kw),
    )
    gym.register(
        id="clitest/Linear-v0",
        entry_point=lambda **kw: make_blackbox_env(
            weighted_sum, 10, 2, batched=True, differentiable=True, **kw
        ),
    )


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def policy_row(out: str) -> tuple[str, float]:
    """The trained policy's line of the table: its name and mean reward."""
    match = re.search(r"^  ((?:SFESS|PPO|A2C|[A-Z]+) \(trained\))\s+(-?\d+\.\d+) ±", out, re.M)
    assert match, out
    return match.group(1), float(match.group(2))


def rows(out: str) -> list[str]:
    return re.findall(r"^  (.+?)\s{2,}-?\d+\.\d+ ±", out, re.M)


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_envs_lists_the_registered_ids(capsys):
    code, out, _ = run(capsys, "envs")
    assert code == 0
    for env_id, n, k in [
        ("subset_rl/SensorPlacement-v0", "256", "10"),
        ("subset_rl/FeatureAcquisition-v0", "64", "10"),
        ("subset_rl/KNNVoting-v0", "100", "5"),
    ]:
        line = next(line for line in out.splitlines() if line.startswith(env_id))
        assert line.split()[1:3] == [n, k]
    assert "subset_rl/BlackBoxSubset-v0" in out
    assert "clitest/" not in out


def test_train_sensor_placement_then_eval(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pytest.importorskip("matplotlib")
    logdir = tmp_path / "run"
    code, out, err = run(capsys, "train", "subset_rl/SensorPlacement-v0", "--steps", "20",
                         "--logdir", str(logdir), "--eval-contexts", "32", "--quiet",
                         "--polish", "0")
    assert code == 0, err
    assert rows(out) == ["SFESS (trained)", "QR pivoting", "random k-subset (mean of 32)"]
    name, reward = policy_row(out)
    assert "(n=256, k=10)" in out and "20 steps" in out and "wall time: training" in out
    assert (logdir / "model.pt").is_file()
    assert (logdir / "checkpoints" / "step_20.pt").is_file()
    assert_png(logdir / "selection.png")
    assert str(logdir / "selection.png") in out
    events = list(logdir.glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    assert "subset/reward_mean" in acc.Tags()["scalars"]

    code, out2, err = run(capsys, "eval", str(logdir / "model.pt"), "--eval-contexts", "32",
                          "--quiet")
    assert code == 0, err
    assert policy_row(out2) == (name, reward)
    assert rows(out2) == rows(out)
    assert_png(logdir / "model_selection.png")


def test_train_with_swap_polish_shows_the_mode_before_and_after(tmp_path, capsys):
    logdir = tmp_path / "run"
    code, out, err = run(capsys, "train", "subset_rl/SensorPlacement-v0", "--steps", "60",
                         "--num-samples", "16", "--polish", "300", "--logdir", str(logdir),
                         "--eval-contexts", "32", "--quiet", "--no-plot")
    assert code == 0, err
    assert rows(out) == ["SFESS (trained + swap polish)", "SFESS (trained, before polish)",
                         "QR pivoting", "random k-subset (mean of 32)"]
    assert "then a 300-evaluation swap polish" in out
    values = [float(v) for v in re.findall(r"^  SFESS \(trained.+?\s{2,}(-?\d+\.\d+) ±", out,
                                            re.M)]
    assert len(values) == 2 and values[0] > values[1]  # better on held-out contexts too
    run_json = json.loads((logdir / "run.json").read_text())
    assert run_json["settings"]["polish"] == 300
    code, out2, err = run(capsys, "eval", str(logdir / "model.pt"), "--eval-contexts", "32",
                          "--quiet", "--no-plot")
    assert code == 0, err
    assert policy_row(out2)[1] == values[0]  # the saved model is the polished one


def test_train_knn_with_progress_bar_and_eval_of_the_run_folder(tmp_path, capsys):
    logdir = tmp_path / "knn"
    code, out, err = run(capsys, "train", "subset_rl/KNNVoting-v0", "--k", "3", "--env-kwargs",
                         '{"n": 20}', "--steps", "4", "--batch-size", "4", "--num-samples",
                         "4", "--logdir", str(logdir), "--eval-contexts", "16", "--no-plot")
    assert code == 0, err
    assert "SFESS: 100%" in err  # tqdm writes to stderr
    assert "(n=20, k=3)" in out
    assert rows(out)[1:] == ["3 nearest candidates", "random k-subset (mean of 32)"]
    assert list(logdir.glob("events.out.tfevents.*"))
    assert not (logdir / "selection.png").exists()
    code, out2, err = run(capsys, "eval", str(logdir), "--eval-contexts", "16", "--no-plot")
    assert code == 0, err
    assert policy_row(out2) == policy_row(out)


def test_train_user_registered_black_box(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code, out, err = run(capsys, "train", "clitest/Overlap-v0", "--steps", "60", "--lr", "0.1",
                         "--batch-size", "1", "--num-samples", "8", "--logdir",
                         str(tmp_path), "--eval-contexts", "8", "--quiet")
    assert code == 0, err
    assert policy_row(out)[1] == 3.0  # the hidden set, found
    assert rows(out)[1:] == ["random k-subset (mean of 32)"]
    assert_png(tmp_path / "selection.png")


def test_pathwise_agent_trains_on_a_differentiable_env(tmp_path, capsys):
    code, out, err = run(capsys, "train", "clitest/Linear-v0", "--agent", "simple", "--steps",
                         "5", "--logdir", str(tmp_path), "--eval-contexts", "4", "--quiet",
                         "--no-plot")
    assert code == 0, err
    assert policy_row(out)[0] == "SIMPLE (trained)"


def test_ppo_trains_and_reloads(tmp_path, capsys):
    pytest.importorskip("subset_rl.sb3")
    code, out, err = run(capsys, "train", "clitest/Overlap-v0", "--agent", "ppo", "--steps",
                         "256", "--n-envs", "2", "--batch-size", "64", "--logdir",
                         str(tmp_path), "--eval-contexts", "4", "--quiet", "--no-plot")
    assert code == 0, err
    assert (tmp_path / "model.zip").is_file()
    assert list(tmp_path.glob("PPO_*/events.out.tfevents.*"))
    code, out2, err = run(capsys, "eval", str(tmp_path / "model.zip"), "--eval-contexts", "4",
                          "--no-plot")
    assert code == 0, err
    assert policy_row(out2) == policy_row(out)


BAD = {
    "unknown env": (["train", "subset_rl/Nope-v0"], "unknown env id 'subset_rl/Nope-v0'"),
    "unknown module": (["train", "no_such_module_xyz:ns/Env-v0"], "cannot import the module"),
    "pathwise on a black box": (
        ["train", "subset_rl/SensorPlacement-v0", "--agent", "stgs"],
        "needs a reward that is differentiable",
    ),
    "pathwise on knn": (
        ["train", "subset_rl/KNNVoting-v0", "--agent", "gs"], "differentiable in the action"
    ),
    "bad device": (["train", "subset_rl/SensorPlacement-v0", "--device", "gpu7"], "--device"),
    "k > n": (
        ["train", "subset_rl/SensorPlacement-v0", "--k", "300"], "k: expected an int in [1, 256]"
    ),
    "black box without f": (["train", "subset_rl/BlackBoxSubset-v0"], "custom_env.py"),
    "loo with one sample": (
        ["train", "clitest/Overlap-v0", "--num-samples", "1"], "num_samples >= 2"
    ),
    "option of another agent": (
        ["train", "clitest/Overlap-v0", "--agent", "ppo", "--num-samples", "4"],
        "--num-samples applies to the native agents",
    ),
    "missing checkpoint": (["eval", "/no/such/model.pt"], "no such checkpoint"),
    "unknown agent": (["train", "clitest/Overlap-v0", "--agent", "dqn"], "invalid choice"),
    "bad env kwargs": (["train", "clitest/Overlap-v0", "--env-kwargs", "[1]"], "JSON object"),
    "nan entropy coefficient": (
        ["train", "clitest/Overlap-v0", "--ent-coef", "nan"], "expected a finite number >= 0"
    ),
    "negative polish budget": (
        ["train", "clitest/Overlap-v0", "--polish", "-1"], "expected an integer >= 0"
    ),
    "polish with an mlp policy": (
        ["train", "subset_rl/SensorPlacement-v0", "--polish", "10", "--policy", "mlp"],
        "--polish needs the free-logit policy",
    ),
    "polish on a contextual env": (
        ["train", "subset_rl/KNNVoting-v0", "--polish", "10"], "is contextual",
    ),
    "polish with ppo": (
        ["train", "clitest/Overlap-v0", "--agent", "ppo", "--polish", "4"],
        "--polish applies to the native agents",
    ),
    "negative entropy coefficient": (
        ["train", "clitest/Overlap-v0", "--ent-coef", "-1"], "expected a finite number >= 0"
    ),
}
if not torch.cuda.is_available():
    BAD["cuda missing"] = (
        ["train", "subset_rl/SensorPlacement-v0", "--device", "cuda"], "CUDA is not available"
    )


@pytest.mark.parametrize("case", sorted(BAD))
def test_usage_errors_exit_2_with_one_line(case, tmp_path, capsys):
    argv, message = BAD[case]
    code, out, err = run(capsys, *argv, *(["--logdir", str(tmp_path)] if argv[0] == "train"
                                          else []))
    assert code == 2
    assert message in err
    assert "Traceback" not in err and "Traceback" not in out
    assert err.strip().splitlines()[-1].startswith("subset-rl")
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


@pytest.mark.parametrize("inside", [False, True])
def test_logdir_that_is_a_file_is_a_one_line_error(inside, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    logdir = blocker / "run" if inside else blocker
    code, out, err = run(capsys, "train", "clitest/Overlap-v0", "--logdir", str(logdir))
    assert code == 2 and "--logdir" in err and "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1 and blocker.read_text() == "not a folder"


def test_eval_refuses_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    torch.save({"hello": 1}, junk)
    code, _, err = run(capsys, "eval", str(junk))
    assert code == 2 and "not a subset_rl agent checkpoint" in err


def test_optimize_subcommand_is_wired_in(capsys):
    pytest.importorskip("subset_rl.optimize.cli")
    code, out, err = run(capsys, "optimize", "test_cli:overlap", "--n", "12", "--k", "3",
                         "--budget", "60", "--method", "random", "--seed", "0", "--no-progress")
    assert code == 0, err
    assert "best value" in out


def test_train_into_a_folder_with_a_run_makes_a_numbered_one(tmp_path, capsys):
    """A second run never adds a TensorBoard log to the first run's folder (curves would
    zig-zag): it goes to ``<logdir>_2``, then ``_3``, and says so even with ``--quiet``."""
    logdir = tmp_path / "run"
    argv = ["train", "clitest/Overlap-v0", "--steps", "3", "--batch-size", "1", "--num-samples",
            "2", "--eval-contexts", "2", "--quiet", "--no-plot", "--logdir", str(logdir)]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "earlier run" not in err
    first = sorted(logdir.glob("events.out.tfevents.*"))
    model_bytes = (logdir / "model.pt").read_bytes()
    for number in (2, 3):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        numbered = tmp_path / f"run_{number}"
        previous = logdir if number == 2 else tmp_path / "run_2"
        assert f"{previous} holds an earlier run; this run writes to {numbered}" in err or (
            f"{logdir} holds an earlier run; this run writes to {numbered}" in err
        )
        assert str(numbered / "model.pt") in out  # the printed paths are the new folder's
        assert len(list(numbered.glob("events.out.tfevents.*"))) == 1
        assert (numbered / "model.pt").is_file() and (numbered / "run.json").is_file()
    assert sorted(logdir.glob("events.out.tfevents.*")) == first  # the first run untouched
    assert (logdir / "model.pt").read_bytes() == model_bytes


def test_train_uses_an_existing_folder_that_holds_no_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, out, err = run(capsys, "train", "clitest/Overlap-v0", "--steps", "2", "--batch-size",
                         "1", "--num-samples", "2", "--eval-contexts", "2", "--quiet",
                         "--no-plot", "--logdir", str(tmp_path))
    assert code == 0, err
    assert "earlier run" not in err and (tmp_path / "model.pt").is_file()
    assert not (tmp_path.parent / f"{tmp_path.name}_2").exists()


@pytest.mark.parametrize(
    "layout, expected",
    [
        ({}, "run"),                                             # does not exist yet
        ({"run/notes.txt": "x"}, "run"),                         # exists, holds no run
        ({"run/events.out.tfevents.1.host": ""}, "run_2"),       # a native agent's log
        ({"run/PPO_1/events.out.tfevents.1.host": ""}, "run_2"),  # SB3's log, one level down
        ({"run/model.zip": ""}, "run_2"),
        ({"run/checkpoints/step_2.pt": ""}, "run_2"),
        ({"run/checkpoints/.step_2.pt.99.ab.subset_rl-tmp": ""}, "run"),  # a killed write only
        ({"run/run.json": "{}", "run_2": "a file"}, "run_3"),   # a file is skipped
        ({"run/model.pt": "", "run_2/model.pt": "", "run_3/x": ""}, "run_3"),
    ],
)
def test_fresh_run_dir(tmp_path, layout, expected):
    from subset_rl.cli import _fresh_run_dir

    for name, text in layout.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert _fresh_run_dir(tmp_path / "run") == tmp_path / expected

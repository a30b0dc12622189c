"""``subset-rl optimize``: the subcommand's parser and handler, run in-process."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from subset_rl.optimize.cli import add_optimize_subcommand, load_objective, main

WEIGHTS = np.arange(10.0)


def score(z):
    """Objective of the CLI tests, imported as ``test_optimize_cli:score``."""
    return float(np.asarray(z) @ WEIGHTS)


def broken(z):
    """Raises on every subset holding item 9."""
    if z[9]:
        raise ValueError("item 9 is broken")
    return score(z)


def parse(argv):
    parser = argparse.ArgumentParser(prog="subset-rl")
    sub = parser.add_subparsers(dest="command", required=True)
    add_optimize_subcommand(sub)
    return parser.parse_args(argv)


def test_handler_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "res.json"
    args = parse(
        [
            "optimize",
            "test_optimize_cli:score",
            "--n",
            "10",
            "--k",
            "3",
            "--budget",
            "120",
            "--method",
            "cem",
            "--seed",
            "0",
            "--no-progress",
            "--output",
            str(out),
        ]
    )
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "best subset  7 8 9" in text and "best value   24" in text
    data = json.loads(out.read_text())
    assert data["best_indices"] == [7, 8, 9] and data["n_evaluations"] <= 120
    assert len(data["history"]["values"]) == data["n_evaluations"]


def test_minimize_options_and_main(capsys):
    code = main(
        [
            "optimize",
            "test_optimize_cli:score",
            "--n",
            "10",
            "--k",
            "2",
            "--budget",
            "45",
            "--method",
            "annealing",
            "--minimize",
            "--option",
            "t0=0.5",
            "--no-progress",
            "--seed",
            "1",
        ]
    )
    assert code == 0 and "best subset  0 1" in capsys.readouterr().out


def test_objective_failure_exits_1_and_keeps_the_partial_result(tmp_path, capsys):
    out = tmp_path / "partial.json"
    args = parse(
        [
            "optimize",
            "test_optimize_cli:broken",
            "--n",
            "10",
            "--k",
            "3",
            "--budget",
            "50",
            "--method",
            "random",
            "--no-progress",
            "--output",
            str(out),
        ]
    )
    assert args.func(args) == 1
    assert "item 9 is broken" in capsys.readouterr().err
    assert json.loads(out.read_text())["n_evaluations"] > 0


@pytest.mark.parametrize(
    ("objective", "extra", "message"),
    [
        ("no_colon", [], "expected MODULE:FUNCTION, found 'no_colon'"),
        ("no_such_module_xyz:f", [], "cannot import module 'no_such_module_xyz'"),
        ("test_optimize_cli:missing", [], "has no attribute 'missing'"),
        ("test_optimize_cli:WEIGHTS", [], "is a ndarray, expected a callable"),
        ("test_optimize_cli:score", ["--option", "lr"], "expected KEY=VALUE"),
        ("test_optimize_cli:score", ["--option", "momentum=1"], "accepts"),
        ("test_optimize_cli:score", ["--executor", "gpu-farm"], "executor: expected"),
    ],
)
def test_bad_input_exits_2_with_a_message(objective, extra, message, capsys):
    args = parse(
        ["optimize", objective, "--n", "10", "--k", "3", "--budget", "5", "--no-progress", *extra]
    )
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("subset-rl optimize: error:") and message in err


def test_load_objective_follows_dotted_paths():
    assert load_objective("test_optimize_cli:score") is score
    f = load_objective("subset_rl.optimize.objectives:WeightedCoverage.random")
    assert callable(f)


CALLED = []


def recording(z):
    """Records that it ran (the unwritable-output test checks it never does)."""
    CALLED.append(1)
    return score(z)


@pytest.mark.parametrize("where", ["under_a_file", "a_directory"])
def test_unwritable_output_exits_2_before_the_run(tmp_path, capsys, where):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = blocker / "res.json" if where == "under_a_file" else tmp_path
    CALLED.clear()
    args = parse(
        [
            "optimize",
            "test_optimize_cli:recording",
            "--n",
            "10",
            "--k",
            "3",
            "--budget",
            "20",
            "--no-progress",
            "--output",
            str(out),
        ]
    )
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("subset-rl optimize: error: --output:") and str(out) in err
    assert err.count("\n") == 1 and not CALLED
    assert list(tmp_path.iterdir()) == [blocker]  # no probe file left behind


def test_journal_timeout_and_retries_flags(tmp_path, capsys):
    journal = tmp_path / "j.jsonl"
    argv = [
        "optimize",
        "test_optimize_cli:score",
        "--n",
        "10",
        "--k",
        "3",
        "--budget",
        "30",
        "--method",
        "random",
        "--seed",
        "0",
        "--no-progress",
        "--journal",
        str(journal),
    ]
    assert main(argv) == 0 and "0 failed" in capsys.readouterr().out
    assert len(journal.read_text().splitlines()) == 31
    assert main(argv) == 0 and "30 evaluations replayed" in capsys.readouterr().out
    assert main([*argv, "--timeout", "5"]) == 2
    assert "timeout: a call of f in this process" in capsys.readouterr().err


def exits_on_nine(z):
    """Kills its worker process on every subset holding item 9."""
    if z[9]:
        import os

        os._exit(3)
    return score(z)


def interrupts_on_sixth_call(z):
    """Raises KeyboardInterrupt (as Ctrl-C would) in its sixth call."""
    CALLED.append(1)
    if len(CALLED) == 6:
        raise KeyboardInterrupt
    return score(z)


def test_worker_calling_os_exit_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "partial.json"
    code = main(
        [
            "optimize",
            "test_optimize_cli:exits_on_nine",
            "--n",
            "10",
            "--k",
            "3",
            "--budget",
            "30",
            "--method",
            "random",
            "--executor",
            "process",
            "--workers",
            "2",
            "--retries",
            "0",
            "--no-progress",
            "--output",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "worker process died (exit code 3)" in err and "subset with items [" in err
    assert json.loads(out.read_text())["n_failed"] >= 1


def test_keyboard_interrupt_exits_130_with_the_partial_result(tmp_path, capsys):
    out = tmp_path / "partial.json"
    CALLED.clear()
    with pytest.warns(UserWarning, match="interrupted"):
        code = main(
            [
                "optimize",
                "test_optimize_cli:interrupts_on_sixth_call",
                "--n",
                "10",
                "--k",
                "3",
                "--budget",
                "30",
                "--method",
                "random",
                "--no-progress",
                "--output",
                str(out),
            ]
        )
    assert code == 130 and "interrupted (KeyboardInterrupt)" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["interrupted"] is True and data["n_evaluations"] == 5

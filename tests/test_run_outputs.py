"""Runs never overwrite tracked files: the examples and the paper's experiments write to the folder
given with ``--out``, by default under the git-ignored ``runs/``; the committed results under
``examples/results`` change only when their folder is named. ``experiments ... --dry-run`` runs
on any machine (no CUDA needed to list the runs)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from subset_rl.experiments import main as experiments_main

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str) -> ModuleType:
    """Imports ``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_runs_folder_is_git_ignored() -> None:
    lines = (ROOT / ".gitignore").read_text().split()
    assert "runs/" in lines or "/runs/" in lines


# --- experiments ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, out",
    [
        (["paper", "--dry-run"], "runs/paper/latest"),
        (["all", "--quick", "--dry-run"], "runs/paper/quick"),
        (["fs", "--quick", "--dry-run", "--out", "examples/results/paper/quick"],
         "examples/results/paper/quick"),
    ],
)
def test_experiments_default_output_is_outside_tracked_files(argv, out, tmp_path, monkeypatch,
                                                             capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert experiments_main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(f"output under {out}")
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_experiments_paper_dry_run_needs_no_cuda(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine
    assert experiments_main(["paper", "--device", "cuda", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "440 runs in all on cuda" in out
    assert "cuda is not available on this machine" in err


def test_experiments_real_run_still_refuses_missing_cuda(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as info:
        experiments_main(["fs", "--quick", "--device", "cuda"])
    assert info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


# --- examples -------------------------------------------------------------------------------
def _record(calls: dict[str, Any], key: str, value: Any = None) -> Any:
    def fake(*args: Any, **kwargs: Any) -> Any:
        calls.setdefault(key, []).append(args)
        return value

    return fake


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "runs/toy_gradients"),
        (["--quick"], "runs/toy_gradients/quick"),
        (["--quick", "--out", "mine"], "mine"),
    ],
)
def test_toy_gradients_output_folder(argv, expected, tmp_path, monkeypatch) -> None:
    module = load_example("toy_gradients")
    calls: dict[str, Any] = {}
    for name in ("run_study", "summarise", "print_table"):
        monkeypatch.setattr(module, name, _record(calls, name, [{"x": 1}]))
    monkeypatch.setattr(module, "plot", _record(calls, "plot"))
    monkeypatch.chdir(tmp_path)
    module.main(argv)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.csv"))
    assert written == [f"{expected}/per_seed.csv", f"{expected}/summary.csv"]
    assert calls["plot"][0][1] == Path(expected) / "toy_gradients.png"


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "runs/optimize"),
        (["--quick"], "runs/optimize/quick"),
        (["--quick", "--out", "mine"], "mine"),  # the folder named, not a quick/ inside it
    ],
)
def test_compare_optimizers_output_folder(argv, expected, tmp_path, monkeypatch) -> None:
    module = load_example("compare_optimizers")
    calls: dict[str, Any] = {}
    for name in ("problems", "run_all", "summarize", "print_table", "write_outputs"):
        monkeypatch.setattr(module, name, _record(calls, name, []))
    monkeypatch.chdir(tmp_path)
    module.main(argv)
    assert calls["write_outputs"][0][0] == Path(expected)


@pytest.mark.slow
def test_toy_gradients_quick_run_writes_only_under_runs(tmp_path) -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "toy_gradients.py"), "--quick"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [f"runs/toy_gradients/quick/{name}"
                     for name in ("per_seed.csv", "summary.csv", "toy_gradients.png")]

"""The install path and the docs a new user types from.

* Every shell command of README.md and docs/*.md that needs the project's environment
  (``subset-rl``, ``python``, ``pip``, ``pytest``, ``tensorboard``) either runs through
  ``.venv/bin/`` or comes after ``source .venv/bin/activate`` in the same code block, so it works
  as typed.
* No doc suggests ``pip install 'subset-rl[...]'``: the package is not published, only the clone's
  path (``pip install -e '.[contrib]'``) works.
* The README says what ``make install`` installs and how to get the CPU or the CUDA build of torch.
* The metadata is free of setuptools' deprecated forms (``project.license`` as a table).
* The Makefile's ``PY=`` takes effect: run against fake interpreters (shell scripts that log what
  they are asked), an existing ``.venv`` of another Python version is recreated, one of the same
  version is kept, and an interpreter that does not exist is a clear error.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "RESULTS.md"]
NEEDS_VENV = re.compile(r"^(subset-rl|python3?|pip3?|pytest|tensorboard)(\s|$)")
ACTIVATE = "source .venv/bin/activate"
FENCE = re.compile(r"^```(\w*)\s*$")


def shell_blocks(text: str) -> list[tuple[int, list[str]]]:
    """The fenced shell code blocks (no language, ``sh``, ``bash``, ``shell`` or ``console``).

    Args:
        text: Markdown.

    Returns:
        ``(line number of the opening fence, lines)`` per block.
    """
    blocks: list[tuple[int, list[str]]] = []
    language: str | None = None  # None: outside a block
    start, lines = 0, []
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line.strip())
        if language is None and match:
            language, start, lines = match.group(1), number, []
        elif language is not None and line.strip() == "```":
            if language in ("", "sh", "bash", "shell", "console"):
                blocks.append((start, lines))
            language = None
        elif language is not None:
            lines.append(line)
    return blocks


def commands_needing_the_venv(text: str) -> list[str]:
    """Lines of shell blocks that need the venv but neither use ``.venv/bin/`` nor follow an
    activation in their block."""
    bad = []
    for number, lines in shell_blocks(text):
        active = False
        for line in lines:
            command = line.strip().removeprefix("$ ")
            if command.startswith(ACTIVATE):
                active = True
            makes_venv = command.startswith("python3 -m venv")
            if not active and not makes_venv and NEEDS_VENV.match(command):
                bad.append(f"block at line {number}: {command}")
    return bad


def test_shell_block_parser_finds_bare_commands() -> None:
    """The check itself can fail: a bare command is found, an activated or prefixed one is not."""
    text = (
        "```\nsubset-rl envs\n```\n"
        "```python\nimport subset_rl\n```\n"
        "```sh\nsource .venv/bin/activate\nsubset-rl envs\n```\n"
        "```\n.venv/bin/python examples/demo.py\ntensorboard --logdir runs\n```\n"
    )
    assert commands_needing_the_venv(text) == [
        "block at line 1: subset-rl envs",
        "block at line 11: tensorboard --logdir runs",
    ]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_commands_run_in_the_venv(doc: Path) -> None:
    text = doc.read_text()
    assert commands_needing_the_venv(text) == []
    # Commands in the prose: `python ...` and `tensorboard ...` spans name the venv's.
    spans = re.findall(r"`((?:python3? (?:-m |\S+\.py)|tensorboard --)[^`]*)`", text)
    assert spans == [], spans


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_install_of_the_unpublished_package(doc: Path) -> None:
    assert not re.search(r"pip3? install [\"']?subset-rl", doc.read_text())


def test_readme_says_what_make_installs_and_how_to_pick_the_torch_build() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    install = "pip install --progress-bar on -c constraints.txt $(TORCH) -e '.[dev,ray,zoo]'"
    assert install in makefile
    assert "-c constraints.txt torch==2.13.0 -e '.[dev,ray,zoo]'" in readme
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in readme
    assert "pip install -e '.[contrib]'" in readme
    assert ACTIVATE in readme
    assert "CPU build of PyTorch)" not in readme  # the old claim, true only where a CPU wheel lay


def test_pyproject_license_is_an_spdx_string() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(data["project"]["license"], str)
    requires = " ".join(data["build-system"]["requires"])
    match = re.search(r"setuptools>=(\d+)", requires)
    assert match and int(match.group(1)) >= 77  # the first setuptools that reads the string


# --- the Makefile's PY= ----------------------------------------------------------------------
FAKE_PYTHON = """#!/bin/sh
# A fake interpreter of version {version}: answers the version query, makes a "venv" holding a
# copy of itself, and logs everything else (pip installs) instead of running it.
if [ "$1" = "-c" ]; then echo "{version}"; exit 0; fi
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi
echo "{version} $*" >> "{log}"
"""


def fake_python(folder: Path, version: str, log: Path) -> Path:
    """Writes a fake interpreter reporting ``version`` (see :data:`FAKE_PYTHON`)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"python{version}"
    path.write_text(FAKE_PYTHON.format(version=version, log=log))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def make(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PY", "VENV", "MAKEFLAGS")}
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("make") is None or os.name != "posix", reason="needs make, sh")
def test_make_py_recreates_a_venv_of_another_version(tmp_path: Path) -> None:
    log = tmp_path / "pip.log"
    venv = tmp_path / "venv"
    old = fake_python(tmp_path / "bin", "3.98", log)
    new = fake_python(tmp_path / "bin", "3.99", log)

    first = make("install", f"PY={old}", f"VENV={venv}")
    assert first.returncode == 0, first.stderr
    assert (venv / ".installed-python3.98").exists()
    assert "installing torch==2.13.0" in first.stdout  # the progress line of the first install
    install = "-m pip install --progress-bar on -c constraints.txt torch==2.13.0 -e .[dev,ray,zoo]"
    assert "3.98 " + install in log.read_text()

    again = make("install", f"PY={old}", f"VENV={venv}")  # same version: nothing to do
    assert again.returncode == 0 and "recreating" not in again.stdout
    assert "installing" not in again.stdout

    log.unlink()
    switched = make("install", f"PY={new}", f"VENV={venv}")
    assert switched.returncode == 0, switched.stderr
    assert f"{venv} has Python 3.98, PY={new} is 3.99: recreating {venv}" in switched.stdout
    assert (venv / ".installed-python3.99").exists()
    assert not (venv / ".installed-python3.98").exists()
    assert log.read_text().splitlines()[-1].startswith("3.99 -m pip install")

    # PY not given: the existing venv's version is kept, whatever the default interpreter is.
    kept = make("install", f"VENV={venv}")
    assert kept.returncode == 0 and "recreating" not in kept.stdout + kept.stderr


@pytest.mark.skipif(shutil.which("make") is None or os.name != "posix", reason="needs make, sh")
def test_make_torch_index_installs_torch_from_that_index_first(tmp_path: Path) -> None:
    log = tmp_path / "pip.log"
    py = fake_python(tmp_path / "bin", "3.97", log)
    url = "https://download.pytorch.org/whl/cpu"
    result = make("install", f"PY={py}", f"VENV={tmp_path / 'venv'}", f"TORCH_INDEX={url}")
    assert result.returncode == 0, result.stderr
    calls = [line for line in log.read_text().splitlines() if "--progress-bar" in line]
    assert calls == [
        f"3.97 -m pip install --progress-bar on torch==2.13.0 --index-url {url}",
        "3.97 -m pip install --progress-bar on -c constraints.txt torch==2.13.0 -e .[dev,ray,zoo]",
    ]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_with_a_missing_interpreter_says_so(tmp_path: Path) -> None:
    result = make("install", "PY=python-does-not-exist-3.0", f"VENV={tmp_path / 'venv'}")
    assert result.returncode != 0
    assert "PY=python-does-not-exist-3.0 is not a Python interpreter here" in result.stderr
    assert not (tmp_path / "venv").exists()

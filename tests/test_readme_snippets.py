"""Every ``python`` code block of README.md and docs/*.md runs.

The default run compiles every block and executes all their imports in one subprocess (a
renamed function or module fails it in seconds). The slow run (``make test-slow``) executes each
block as written, in a subprocess of its own with a timeout, in a temporary folder; the long
ones with smaller sizes by the text substitutions of :data:`REDUCED` (each must apply, so a
snippet edited out of their reach fails instead of running full size), and the few that use a
name the reader supplies (``f``, the objective of the optimize section) with :data:`PRELUDES`.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 240.0

#: Smaller sizes for the long snippets: (a text the block contains, [(old, new), ...]).
REDUCED: list[tuple[str, list[tuple[str, str]]]] = [
    ('SFESS("mypkg/Coverage-v0"', [(".learn(300)", ".learn(30)")]),
    ('SFESS("subset_rl/SensorPlacement-v0"', [("agent.learn(2500", "agent.learn(30"),
                                              ("agent.polish()", "agent.polish(50)")]),
    ("subset_rl/FeatureAcquisition-v0\", n_envs=8",
     [("model.learn(20_000", "model.learn(2_048")]),
    ("from sb3_contrib import TRPO", [("model.learn(2048", "model.learn(256"),
                                      ("print(np.flatnonzero(action))", "")]),
    ("subset_rl.optimize(f,", [("budget=2000", "budget=100")]),
    ("ProcessPool(8)", [("ProcessPool(8)", "ProcessPool(2)"), ("budget=2000", "budget=40")]),
]

#: Names a block uses but leaves to the reader: (a text the block contains, code run first).
PRELUDES: list[tuple[str, str]] = [
    # the optimize section's f(k-hot) -> float; numpy.sum pickles by reference (process pools)
    ("optimize(f,", "import numpy\nf = numpy.sum\n"),
]


@dataclass(frozen=True)
class Snippet:
    """One fenced ``python`` block."""

    path: Path
    line: int
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def snippets() -> list[Snippet]:
    """Every fenced python block of the docs, with the line it starts on."""
    out = []
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
            line = text.count("\n", 0, match.start()) + 2
            out.append(Snippet(path, line, match.group(1)))
    return out


SNIPPETS = snippets()


def runnable(snippet: Snippet) -> str:
    """The code the slow test runs: preludes first, reduced sizes substituted."""
    code = snippet.code
    for marker, changes in REDUCED:
        if marker in code:
            for old, new in changes:
                if old not in code:
                    raise AssertionError(f"{snippet.name}: reduced size {old!r} no longer applies")
                code = code.replace(old, new)
    prelude = "".join(text for marker, text in PRELUDES if marker in code)
    return prelude + code


def test_docs_have_snippets() -> None:
    assert len(SNIPPETS) >= 10
    assert {s.path.name for s in SNIPPETS} >= {"README.md", "envs.md"}


def test_every_reduction_and_prelude_matches_a_snippet() -> None:
    """A substitution whose snippet is gone (or renamed) would silently stop reducing it."""
    for marker, _ in [*REDUCED, *PRELUDES]:
        assert any(marker in s.code for s in SNIPPETS), marker


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda s: s.name)
def test_snippet_compiles(snippet: Snippet) -> None:
    compile(runnable(snippet), snippet.name, "exec")


def test_snippet_imports_run() -> None:
    """All the imports of all blocks, executed in one fresh interpreter."""
    lines = []
    for snippet in SNIPPETS:
        for node in ast.parse(snippet.code).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                lines.append(ast.unparse(node))
    assert lines
    result = subprocess.run([sys.executable, "-c", "\n".join(dict.fromkeys(lines))],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda s: s.name)
def test_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    """The block runs as written (long ones with smaller sizes), passed with ``-c`` so that
    spawned worker processes do not re-run it (a pasted script would need a ``__main__``
    guard)."""
    env = dict(os.environ, MPLBACKEND="Agg")
    try:
        result = subprocess.run([sys.executable, "-c", runnable(snippet)], text=True,
                                capture_output=True, timeout=TIMEOUT, cwd=tmp_path, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{snippet.name} ran past {TIMEOUT:.0f} s")
    assert result.returncode == 0, f"{snippet.name} failed:\n{result.stderr[-3000:]}"

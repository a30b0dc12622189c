"""The built wheel installs subset_rl, subset_rl.envs and subset_rl.agents, and nothing else.

Builds a wheel from this checkout (no network: ``--no-build-isolation``), installs it with
``--no-deps`` into a fresh virtual environment whose only link to the test environment is a
``.pth`` line appended after its own site-packages (so torch & co. resolve, but ``subset_rl``
must come from the wheel), and imports the subpackages from a neutral working directory.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(ROOT))
    (path,) = out.glob("subset_rl-*.whl")
    return path


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    assert tops == {"subset_rl", dist_info}
    assert "subset_rl/envs/__init__.py" in names
    assert "subset_rl/agents/__init__.py" in names
    assert "subset_rl/py.typed" in names
    assert not any(n.startswith(("envs/", "agents/", "tests/")) for n in names)


def test_wheel_installs_and_imports_in_fresh_venv(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run(str(python), "-c", purelib).strip())
    # Dependencies come from the test environment, appended after the fresh site-packages.
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
         "--target", str(site), str(wheel))
    code = (
        "import pathlib, subset_rl, subset_rl.envs, subset_rl.agents\n"
        f"site = pathlib.Path({str(site)!r})\n"
        "for mod in (subset_rl, subset_rl.envs, subset_rl.agents):\n"
        "    assert pathlib.Path(mod.__file__).is_relative_to(site), mod.__file__\n"
        "assert not (site / 'envs').exists() and not (site / 'agents').exists()\n"
        "import torch\n"
        "d = subset_rl.KSubsetPolicy(torch.zeros(5), 2)\n"
        "print(int(d.sample().sum()))\n"
    )
    assert _run(str(python), "-c", code, cwd=tmp_path).strip() == "2"

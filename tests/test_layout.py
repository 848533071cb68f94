"""The floor plan holds: one installed namespace, imports only downward, commands that answer at once."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The distribution as ``pip install .`` would install it, built into a wheel."""
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source") / "relevo"
    # built from a copy: a build writes build/ and *.egg-info/ beside the sources it builds
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", ".relevo", "build", "*.egg-info",
                                                              "__pycache__", "bench", "tests", "deploy"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                   check=True, capture_output=True)
    return next(out.glob("relevo-*.whl"))


def test_the_distribution_installs_one_top_level_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["relevo"]
    assert {n.split("/")[0] for n in names} == {"relevo", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "relevo/features/apply.lua" in names and "relevo/core/prelude.lua" in names


def test_imports_run_only_downward(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # From another directory: the checkout's own relevo/ folder holds only the namespace root.
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), str(ROOT / "pyproject.toml")],
                            cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and " 0 broken" in result.stdout


def test_help_and_settings_import_nothing_heavy() -> None:
    # `relevo --help` and `relevo settings` must answer at once: no torch, Faust, pandas or web stack.
    code = ("import sys; from relevo.runtime.cli import build_parser, cmd_settings; build_parser(); "
            "heavy = {'torch', 'faust', 'pandas', 'transformers', 'fastapi', 'aiokafka', 'redis'}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"

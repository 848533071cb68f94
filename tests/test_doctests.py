"""Every module's docstring examples run, as doctests of the installed ``relevo.*`` names."""

from __future__ import annotations

import doctest
import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def installed_modules() -> list[str]:
    """Every module the distribution installs, named as installed (from pyproject's package-dir)."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    names = set()
    for package, folder in package_dir.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            names.add(".".join([package, *parts]).removesuffix(".__init__"))
    return sorted(names)


@pytest.mark.parametrize("name", installed_modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert failures == 0, f"{name}: {failures} doctest example(s) failed (see the output above)"

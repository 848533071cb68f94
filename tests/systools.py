"""Programs the tests need from Debian's packages, installed when missing (the CI machine is root with apt)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def debian_package(binary: Path | str, package: str) -> str | None:
    """``binary``'s path, installing Debian's ``package`` when it is missing; None when it cannot be
    installed here (no apt, no network, not root)."""
    found = shutil.which(str(binary))
    if found:
        return found
    if shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> bool:
        return subprocess.run(["apt-get", *args], env=env, capture_output=True, timeout=900).returncode == 0

    if not apt("install", "-y", "-q", package):
        apt("update", "-q")  # an old or missing package list
        apt("install", "-y", "-q", package)
    return shutil.which(str(binary))

"""Redis scripts: each one is its own file, with the shared prelude (``prelude.lua``) in front."""

from __future__ import annotations

from importlib.resources import files

PRELUDE = files(__package__).joinpath("prelude.lua").read_text()


def script(package: str, name: str) -> str:
    """The Lua source of ``name`` in ``package``, prelude first (forward decay, dedupe buckets)."""
    return PRELUDE + "\n" + files(package).joinpath(name).read_text()

"""Replay adapters: public datasets and our NDJSON format as validated events in event-time order.

``open_dataset(name)`` finds a dataset's file under the shared data directory
(``../shared/data`` beside the project) unless a path is given.

>>> sorted(DATASETS)
['diginetica', 'ndjson', 'trivago']
>>> resolve_path("trivago", data_dir=Path("/data"))
PosixPath('/data/trivago/trivago_val_100k.parquet')
>>> resolve_path("ndjson", data_dir=Path("/data"))
Traceback (most recent call last):
...
relevo.streams.datasets.DatasetNotFound: dataset 'ndjson' has no default file: give its path (--path)
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from relevo.core.settings import SHARED_DATA
from relevo.streams.events import Event


class DatasetNotFound(FileNotFoundError):
    """A dataset name we do not know, or a file that is not there."""


@dataclass(frozen=True)
class Dataset:
    """Which adapter module reads a dataset (its ``events(path)``; imported when used: the
    adapters pull in pandas), and where its file lives under the shared data directory."""

    adapter: str
    default_path: str | None

    def read(self, path: Path) -> Iterator[Event]:
        return importlib.import_module(f"{__name__}.{self.adapter}").events(path)


DATASETS: dict[str, Dataset] = {
    "trivago": Dataset("trivago", "trivago/trivago_val_100k.parquet"),
    "diginetica": Dataset("diginetica", "diginetica"),
    "ndjson": Dataset("ndjson", None),
}


def resolve_path(name: str, path: Path | None = None, data_dir: Path = SHARED_DATA) -> Path:
    """The file (or directory) to read for dataset ``name``: ``path``, else its default location."""
    if name not in DATASETS:
        raise DatasetNotFound(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    if path is None:
        default = DATASETS[name].default_path
        if default is None:
            raise DatasetNotFound(f"dataset {name!r} has no default file: give its path (--path)")
        path = data_dir / default
    return path


def open_dataset(name: str, path: Path | None = None, data_dir: Path = SHARED_DATA) -> Iterator[Event]:
    """The events of dataset ``name``; fails clearly when its file is missing."""
    where = resolve_path(name, path, data_dir)
    if not where.exists():
        raise DatasetNotFound(f"dataset {name!r} not found at {where}; give its location with --path")
    return DATASETS[name].read(where)

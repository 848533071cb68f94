"""The model registry: versioned ranker weights in a directory, written atomically.

Each version is two files, ``v000007.pt`` (weights) and ``v000007.json``
(version, sha256, parent, data window, evaluation figures). Both are written to
a temporary file, fsynced and renamed into place, weights first: a version
exists only once its metadata is there, and ``load`` re-checks the checksum,
so a half-written or corrupted file is never served. ``pointer.json`` says
which version serves and which served before it (for rollback).

>>> import tempfile
>>> from relevo.models.ranker import FEATURE_SET, Ranker, RankerConfig
>>> registry = Registry(tempfile.mkdtemp())
>>> model = Ranker(RankerConfig(item_buckets=16, user_buckets=4, region_buckets=4))
>>> v1 = registry.publish(model, parent=None, window=(0, 10), figures={"mrr": 0.5})
>>> v2 = registry.publish(model, parent=1, window=(10, 20), figures={"mrr": 0.6})
>>> registry.current(), registry.previous()
(2, 1)
>>> registry.rollback(2), registry.current()
(1, 1)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from relevo.models.ranker import FEATURE_SET, Ranker, RankerConfig

log = logging.getLogger(__name__)

_META = re.compile(r"^v(\d{6,})\.json$")


class CorruptModel(RuntimeError):
    """Weights whose bytes do not match the published checksum."""


class IncompatibleModel(RuntimeError):
    """Weights trained on another feature set than this code computes."""


@dataclass(frozen=True)
class ModelVersion:
    """What the registry knows about one published version."""

    version: int
    sha256: str
    parent: int | None
    window: tuple[int, int]  # event time (epoch ms) of the oldest and newest training example
    figures: dict[str, float] = field(default_factory=dict)
    config: dict[str, int] = field(default_factory=dict)
    created: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either absent, the old file, or complete."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def encode_weights(model: Ranker) -> bytes:
    """The published form of a ranker: its config and its state dict."""
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {"config": model.config.to_dict(), "state": state}
    torch.save(payload, buffer)
    return buffer.getvalue()


def decode_weights(data: bytes, device: str = "cpu") -> Ranker:
    payload = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    trained_on = payload["config"].get("feature_set")
    if trained_on != FEATURE_SET:
        raise IncompatibleModel(f"weights trained on feature set {trained_on}, this code computes {FEATURE_SET}")
    model = Ranker(RankerConfig(**payload["config"]))
    model.load_state_dict(payload["state"])
    return model.to(device)


class Registry:
    """Published ranker versions under ``root`` (one writer: the trainer; many readers)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _weights(self, version: int) -> Path:
        return self.root / f"v{version:06d}.pt"

    def _meta(self, version: int) -> Path:
        return self.root / f"v{version:06d}.json"

    def versions(self) -> list[ModelVersion]:
        """Every published version, oldest first."""
        found = sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _META.match(p.name)))
        return [self.get(v) for v in found]

    def get(self, version: int) -> ModelVersion:
        path = self._meta(version)
        if not path.exists():
            raise KeyError(f"no model version {version}")
        raw = json.loads(path.read_text())
        return ModelVersion(**{**raw, "window": tuple(raw["window"])})

    def latest(self) -> int | None:
        found = [int(m.group(1)) for p in self.root.iterdir() if (m := _META.match(p.name))]
        return max(found, default=None)

    def publish(self, model: Ranker, *, parent: int | None, window: tuple[int, int],
                figures: dict[str, float], promote: bool = True) -> ModelVersion:
        """Write a new version (weights, then metadata) and, by default, make it serve."""
        data = encode_weights(model)
        version = (self.latest() or 0) + 1
        meta = ModelVersion(version, hashlib.sha256(data).hexdigest(), parent, window,
                            figures, model.config.to_dict(), time.time())
        _write_atomic(self._weights(version), data)
        _write_atomic(self._meta(version), json.dumps(meta.to_dict()).encode())
        log.info("published model v%d (parent %s, %s)", version, parent, figures)
        if promote:
            self.promote(version)
        return meta

    def read(self, version: int) -> bytes:
        """The weights of ``version``, verified against its checksum."""
        meta = self.get(version)
        data = self._weights(version).read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.sha256:
            raise CorruptModel(f"model v{version}: checksum mismatch, refusing to load")
        return data

    def load(self, version: int, device: str = "cpu") -> Ranker:
        try:
            return decode_weights(self.read(version), device)
        except IncompatibleModel as exc:
            raise IncompatibleModel(f"model v{version}: {exc}") from None

    def _pointer(self) -> dict[str, int | None]:
        path = self.root / "pointer.json"
        return json.loads(path.read_text()) if path.exists() else {"current": None, "previous": None}

    def current(self) -> int | None:
        """The version that should serve."""
        return self._pointer()["current"]

    def previous(self) -> int | None:
        return self._pointer()["previous"]

    def promote(self, version: int) -> None:
        """Make ``version`` serve; the one serving now becomes the rollback target."""
        self.get(version)  # raises KeyError for an unknown version
        now = self.current()
        if now != version:
            pointer = {"current": version, "previous": now}
            _write_atomic(self.root / "pointer.json", json.dumps(pointer).encode())

    def rollback(self, version: int) -> int:
        """Withdraw serving ``version``: the previous version (else its parent) serves again."""
        if self.current() != version:
            raise ValueError(f"model v{version} is not serving (v{self.current()} is)")
        target = self.previous() or self.get(version).parent
        if target is None:
            raise ValueError(f"model v{version} has nothing to roll back to")
        pointer = {"current": target, "previous": None}
        _write_atomic(self.root / "pointer.json", json.dumps(pointer).encode())
        log.warning("rolled back model v%d to v%d", version, target)
        return target

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

``keep`` bounds the registry: after each publish only the newest ``keep`` versions stay,
plus the serving one and its rollback target. A metadata file that cannot be read is
skipped (and logged) by ``versions()``, so one bad file never hides the others.

>>> small = Registry(tempfile.mkdtemp(), keep=2)
>>> for _ in range(5): _ = small.publish(model, parent=None, window=(0, 1), figures={})
>>> [v.version for v in small.versions()], small.current()
([4, 5], 5)
>>> _ = (small.root / "v000004.json").write_text("{not json")
>>> [v.version for v in small.versions()]
[5]
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

    def __init__(self, root: str | Path, keep: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep  # None: keep every version

    def _weights(self, version: int) -> Path:
        return self.root / f"v{version:06d}.pt"

    def _meta(self, version: int) -> Path:
        return self.root / f"v{version:06d}.json"

    def _numbers(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _META.match(p.name)))

    def versions(self) -> list[ModelVersion]:
        """Every published version whose metadata can be read, oldest first."""
        found = []
        for number in self._numbers():
            try:
                found.append(self.get(number))
            except KeyError:
                continue  # pruned meanwhile
            except CorruptModel as exc:
                log.warning("skipping %s", exc)
        return found

    def get(self, version: int) -> ModelVersion:
        path = self._meta(version)
        try:
            raw = json.loads(path.read_text())
            return ModelVersion(**{**raw, "window": tuple(raw["window"])})
        except FileNotFoundError:
            raise KeyError(f"no model version {version}") from None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise CorruptModel(f"model v{version}: unreadable metadata {path.name} ({exc})") from None

    def latest(self) -> int | None:
        return max(self._numbers(), default=None)

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
        if self.keep is not None:
            self.prune(self.keep)
        return meta

    def prune(self, keep: int) -> list[int]:
        """Delete all but the newest ``keep`` versions, never the serving one or its rollback target
        (the previous version, else the serving one's parent); returns the versions deleted."""
        pointer = self._pointer()
        protected = {pointer["current"], pointer["previous"]}
        if pointer["current"] is not None and pointer["previous"] is None:
            try:
                protected.add(self.get(pointer["current"]).parent)
            except (KeyError, CorruptModel):
                pass
        numbers = self._numbers()
        doomed = [v for v in numbers[:max(0, len(numbers) - keep)] if v not in protected]
        for version in doomed:  # metadata first: a version without metadata does not exist
            self._meta(version).unlink(missing_ok=True)
            self._weights(version).unlink(missing_ok=True)
        if doomed:
            log.info("pruned model versions %s (keeping %d and the serving one's rollback target)", doomed, keep)
        return doomed

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

"""Live MRR from the registry: what the published versions' prequential figures add up to.

The trainer scores each batch with the serving version before learning from it
and records, on the same lists, the session rule's MRR ("items the session
touched first, most recent first"). Summed over the versions of a run, in
windows of about equal clickouts, they show the live MRR as the model learns.
The demo prints these windows and ``bench.ranking_e2e`` records them.

>>> from relevo.models.registry import ModelVersion
>>> def version(n, lists, mrr, rule):
...     figures = {"prequential_lists": lists, "prequential_mrr": mrr, "prequential_session_rule_mrr": rule}
...     return ModelVersion(n, "", None, (0, 0), figures)
>>> [(w.first, w.last, w.clickouts, round(w.lift, 3)) for w in windows(
...     [version(1, 100, 0.60, 0.60), version(2, 100, 0.62, 0.60), version(3, 200, 0.65, 0.60)], count=2)]
[(1, 2, 200, 0.01), (3, 3, 200, 0.05)]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from relevo.models.registry import ModelVersion, Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """Consecutive versions and the clickouts they ranked before learning from them."""

    first: int
    last: int
    clickouts: int
    model_mrr: float
    rule_mrr: float

    @property
    def lift(self) -> float:
        return self.model_mrr - self.rule_mrr


def windows(versions: Sequence[ModelVersion], count: int = 8) -> list[Window]:
    """``versions`` (oldest first) grouped into about ``count`` windows of about equal clickouts."""
    per_window = sum(v.figures.get("prequential_lists", 0) for v in versions) / count
    out: list[Window] = []
    group: list[ModelVersion] = []
    for n, version in enumerate(versions):
        group.append(version)
        lists = sum(v.figures.get("prequential_lists", 0) for v in group)
        if lists and (lists >= per_window or n == len(versions) - 1):
            model, rule = (sum(v.figures.get("prequential_lists", 0) * v.figures.get(key, 0.0) for v in group)
                           / lists for key in ("prequential_mrr", "prequential_session_rule_mrr"))
            out.append(Window(group[0].version, group[-1].version, int(lists), model, rule))
            group = []
    return out


def wait_until_quiet(registry: Registry, quiet_s: float = 10.0, timeout_s: float = 120.0) -> list[ModelVersion]:
    """Every version, once none has been published for ``quiet_s``: the trainer has caught up."""
    deadline, seen, changed = time.monotonic() + timeout_s, -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(registry.versions())
        if count != seen:
            seen, changed = count, time.monotonic()
        elif time.monotonic() - changed >= quiet_s:
            break
        else:
            log.info("the trainer is still publishing (%d versions); waiting for it to catch up", count)
        time.sleep(1)
    return registry.versions()

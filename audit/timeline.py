"""Where a run's wall time went: its phases, and every job's worker, start and end.

The per-family ``attack_seconds`` say what each attack cost; they do not say how long the run
waited for them, because jobs run side by side over worker processes and a worker may sit idle
while the other finishes. :class:`RunTimeline` records the run's phases (setup, store, the
attack passes, the defense comparison, figures) and each job as it ran, so ``results.json``
shows both the critical path and each worker's idle seconds inside the pooled phases.
Times are wall-clock seconds since the run started (``time.time``, comparable across the
processes of one machine).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunTimeline:
    """Phases and jobs of one run, in seconds since ``origin`` (a ``time.time()`` stamp)."""

    origin: float = field(default_factory=time.time)
    workers: int = 1
    phases: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    _workers: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _current: str | None = field(default=None, init=False, repr=False)

    def _at(self, stamp: float) -> float:
        return round(stamp - self.origin, 3)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the block's start and end as phase ``name``; jobs recorded inside it belong to it."""
        start, outer, self._current = time.time(), self._current, name
        try:
            yield
        finally:
            self._current = outer
            self.add_phase(name, start)

    def add_phase(self, name: str, start: float) -> None:
        """Record phase ``name`` from ``start`` (a ``time.time()`` stamp) to now."""
        self.phases.append({"name": name, "start": self._at(start), "end": self._at(time.time())})

    def job(self, label: str, pid: int | None, start: float, end: float, *,
            resumed: bool = False) -> None:
        """Record one job: ``pid`` of the worker that ran it (None: this process), stamps from ``time.time()``.

        Workers are numbered 0, 1, ... in the order they first report; a job read back from an
        interrupted run's cache (``resumed``) took no time here.
        """
        worker: int | str = "main" if pid is None else self._workers.setdefault(str(pid), len(self._workers))
        self.jobs.append({"phase": self._current, "job": label, "worker": worker, "start": self._at(start),
                          "end": self._at(end), "seconds": round(end - start, 3), "resumed": resumed})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready phases, jobs, and for each phase that ran jobs over the workers their busy and idle seconds."""
        pooled = []
        for ph in self.phases:
            mine = [j for j in self.jobs if j["phase"] == ph["name"] and j["worker"] != "main" and not j["resumed"]]
            n = max(self.workers, len(self._workers))
            if not mine or n < 2:
                continue
            span = ph["end"] - ph["start"]
            busy = [round(sum(j["seconds"] for j in mine if j["worker"] == w), 3) for w in range(n)]
            pooled.append({"phase": ph["name"], "wall_seconds": round(span, 3), "workers": n,
                           "busy_seconds": busy, "idle_seconds": [round(max(0.0, span - b), 3) for b in busy],
                           "utilisation": round(sum(busy) / (span * n), 4) if span > 0 else None})
        return {"phases": [{**ph, "seconds": round(ph["end"] - ph["start"], 3)} for ph in self.phases],
                "jobs": list(self.jobs), "pooled_phases": pooled}


__all__ = ["RunTimeline"]

"""Jobs (one family's attack on one layer, a part of a defense comparison), run here or over worker processes.

The costly attacks of an audit (frame-level attackers, inversion decoders) train small torch
networks that do not get faster with more threads on a few cores; two of them side by side, one
thread each, use a 2-core machine fully. :func:`run_jobs` runs a list of jobs in order in this
process (``workers = 1``) or over a :class:`WorkerPool` of ``workers`` processes (spawned, one
torch and one BLAS thread each); :func:`attack_one` runs a :class:`LayerJob`. A job carries
everything it needs (settings, splits), and a worker opens the store itself, so it shares
nothing with the parent but the files. One pool serves every :func:`run_jobs` call of a run
(the second pass's layer jobs and the defense comparison's, queued together): its workers
start once, and each keeps one run context for all the jobs it runs, as this process keeps
``run`` for in-process jobs. Each job seeds its attack from the run's seed as in-process, so
its numbers are the same, up to float rounding where one thread sums in a different order
than two.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from audit.corpus import Corpus
from audit.embeddings import layer_set
from audit.family import AttackFamily, RunContext
from audit.job_cache import JobCache
from audit.splits import Split
from audit.store import EmbeddingStore
from audit.timeline import RunTimeline


@dataclass(frozen=True)
class LayerJob:
    """Attack ``layer`` with ``family`` (its frame attackers included)."""

    family: str
    layer: int


def attack_one(families: dict[str, AttackFamily], store: EmbeddingStore, corpus: Corpus, run: RunContext,
               job: LayerJob, settings: Any, split: Split) -> tuple[dict, float]:
    """The job's attack result and its wall seconds (a :func:`run_jobs` function)."""
    view = layer_set(store, corpus, job.layer)
    ctx = run.layer(job.layer, store.frame_rates[job.layer])
    t0 = time.perf_counter()
    result = families[job.family].attack(view.subset(split.train), view.subset(split.test), settings, ctx)
    return result, time.perf_counter() - t0


#: The worker process's own state (its families, store and run context), filled once by the pool's
#: initializer in each worker; the parent process never writes it.
_WORKER: dict[str, Any] = {}


def _start_worker(store_root: str, corpus: Corpus, run_settings: dict) -> None:
    """A worker's start: one torch thread, the families loaded, the store opened, one run context for all its jobs."""
    import torch

    from attacks import load_families

    torch.set_num_threads(1)
    try:
        _WORKER.update(families=load_families(), store=EmbeddingStore(store_root, check_hashes=False), corpus=corpus,
                       run=RunContext(**run_settings))
    except Exception as err:  # raised again by each job, so the parent meets the cause, not a broken pool
        _WORKER["error"] = err


def _ready() -> bool:
    """A no-op job: submitted once per worker so that every worker starts (and imports torch) at once."""
    return True


def _in_worker(function: Callable[..., Any], args: tuple) -> tuple[Any, int, float, float]:
    """One job in a worker process, on one BLAS thread, with the worker's families, store and run context.

    Returns the job's value, this worker's pid, and the job's start and end (``time.time()``).
    """
    from threadpoolctl import threadpool_limits

    if "error" in _WORKER:
        raise _WORKER["error"]
    start = time.time()
    with threadpool_limits(limits=1):
        value = function(_WORKER["families"], _WORKER["store"], _WORKER["corpus"], _WORKER["run"], *args)
    return value, os.getpid(), start, time.time()


class WorkerPool:
    """``workers`` spawned processes for a run's jobs, started once and shared by its :func:`run_jobs` calls.

    Each worker starts with one torch thread, opens the store from its folder and builds one run
    context from ``run``'s settings (progress bars off); what that context's memo loads or
    computes (judges, per-run analyses, fitted attackers and defenses) stays for the worker's
    next job. With a ``timeline``, :func:`run_jobs` records there where and when each job ran.
    A worker that cannot start (say, its store folder lost its index) raises the cause
    from each job it is given, so this process meets it rather than a broken pool. Entering the
    pool starts every worker at once, so that they import torch while this process does other
    work (the first pass); with ``workers <= 1`` it starts nothing and :func:`run_jobs` runs the
    jobs in this process.
    """

    def __init__(self, workers: int, store: EmbeddingStore, corpus: Corpus, run: RunContext,
                 timeline: RunTimeline | None = None) -> None:
        self.workers = workers
        self.store = store
        self.corpus = corpus
        self.run = run
        self.timeline = timeline
        self._executor: ProcessPoolExecutor | None = None

    def start(self) -> "WorkerPool":
        """Spawn the workers (once); a no-op with ``workers <= 1``."""
        if self.workers > 1 and self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(str(Path(self.store.root)), self.corpus, {**self.run.settings(), "progress": False}))
            for _ in range(self.workers):
                self._executor.submit(_ready)
        return self

    def submit(self, function: Callable[..., Any], args: tuple) -> Future:
        """Run ``function(families, store, corpus, run, *args)`` in a worker (a pool of more than one).

        The future's result is ``(value, worker pid, start, end)``, the stamps from ``time.time()``.
        """
        executor = self.start()._executor
        if executor is None:
            raise ValueError(f"WorkerPool({self.workers}) starts no workers: run its jobs in this process (run_jobs)")
        return executor.submit(_in_worker, function, args)

    def close(self) -> None:
        """Stop the workers; jobs not yet started are cancelled."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "WorkerPool":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_jobs(jobs: list[tuple[Callable[..., Any], tuple]], *, families: dict[str, AttackFamily],
             store: EmbeddingStore, corpus: Corpus, run: RunContext, workers: int = 1, progress: bool = False,
             desc: str = "jobs", cache: JobCache | None = None, pool: WorkerPool | None = None,
             labels: list[str] | None = None) -> list[Any]:
    """Each ``function(families, store, corpus, run, *args)`` of ``jobs``, in order; over worker processes.

    ``function`` must be a module-level function and ``args`` picklable. The jobs run over
    ``pool`` (the run's :class:`WorkerPool`, for this ``store``, ``corpus`` and ``run``) when one
    is given, else over a pool of ``workers`` processes started for this call when ``workers >
    1``, else here. Here the jobs share ``run`` (and what its memo keeps); in a worker they
    share that worker's run context, built with the same settings. Submitted in list order: put
    the longest first. With a ``cache``, a job a previous, interrupted run finished is read back
    instead of run, and each job's result is kept there as soon as it finishes. When ``pool``
    has a timeline, each job is recorded there under its entry in ``labels`` (default: its
    function's name).
    """
    if labels is not None and len(labels) != len(jobs):
        raise ValueError(f"run_jobs: {len(labels)} labels for {len(jobs)} jobs")
    timeline = pool.timeline if pool is not None else None
    if pool is not None:
        if Path(pool.store.root) != Path(store.root):
            raise ValueError(f"run_jobs: the pool's workers read the store {pool.store.root}, not {store.root}")
        workers = pool.workers
    out: list[Any] = [None] * len(jobs)
    keys = [cache.key(function, args) if cache is not None else "" for function, args in jobs]
    todo = []
    for k, key in enumerate(keys):
        hit, value = cache.load(key) if cache is not None else (False, None)
        if hit:
            out[k] = value
            if timeline is not None:
                now = time.time()
                timeline.job(_label(jobs, labels, k), None, now, now, resumed=True)
        else:
            todo.append(k)

    def finished(k: int, value: Any, pid: int | None, start: float, end: float) -> None:
        out[k] = value
        if cache is not None:
            cache.save(keys[k], value)
        if timeline is not None:
            timeline.job(_label(jobs, labels, k), pid, start, end)

    if workers <= 1 or len(jobs) <= 1:  # as an uninterrupted run would: resumed jobs run where they ran
        for k in tqdm(todo, desc=desc, disable=not progress):
            function, args = jobs[k]
            start = time.time()
            value = function(families, store, corpus, run, *args)
            finished(k, value, None, start, time.time())
        return out
    if not todo:
        return out
    scope = WorkerPool(min(workers, len(todo)), store, corpus, run) if pool is None else contextlib.nullcontext(pool)
    with scope as used:
        futures = {used.submit(*jobs[k]): k for k in todo}
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"{desc} ({workers} workers)",
                           disable=not progress):
            finished(futures[future], *future.result())
    return out


def _label(jobs: list[tuple[Callable[..., Any], tuple]], labels: list[str] | None, k: int) -> str:
    return labels[k] if labels is not None else jobs[k][0].__name__


__all__ = ["LayerJob", "WorkerPool", "attack_one", "run_jobs"]

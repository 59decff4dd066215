"""Jobs (one family's attack on one layer, a part of a defense comparison), run here or over worker processes.

The costly attacks of an audit (frame-level attackers, inversion decoders) train small torch
networks that do not get faster with more threads on a few cores; two of them side by side, one
thread each, use a 2-core machine fully. :func:`run_jobs` runs a list of jobs in order in this
process (``workers = 1``) or over a pool of ``workers`` processes (spawned, one torch and one
BLAS thread each); :func:`run_layer_jobs` does so for :class:`LayerJob`. A job carries
everything it needs (settings, splits, the store folder, the corpus), so a worker opens the
store itself and shares nothing with the parent but the files. Each job seeds its attack from the
run's seed as in-process, so its numbers are the same, up to float rounding where one thread
sums in a different order than two.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
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


def _in_worker(function: Callable[..., Any], args: tuple, store_root: str, corpus: Corpus,
               run_settings: dict) -> Any:
    """One job in a worker process: one torch and one BLAS thread, the store opened from its folder."""
    import torch
    from threadpoolctl import threadpool_limits

    from attacks import load_families

    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        store = EmbeddingStore(store_root, check_hashes=False)
        return function(load_families(), store, corpus, RunContext(**run_settings), *args)


def run_jobs(jobs: list[tuple[Callable[..., Any], tuple]], *, families: dict[str, AttackFamily],
             store: EmbeddingStore, corpus: Corpus, run: RunContext, workers: int = 1, progress: bool = False,
             desc: str = "jobs", cache: JobCache | None = None) -> list[Any]:
    """Each ``function(families, store, corpus, run, *args)`` of ``jobs``, in order; over ``workers`` processes if > 1.

    ``function`` must be a module-level function and ``args`` picklable. In this process the
    jobs share ``run`` (and what its memo keeps); in a worker each job gets a fresh run context
    with the same settings, so it recomputes what it needs. Submitted in list order: put the
    longest first. With a ``cache``, a job a previous, interrupted run finished is read back
    instead of run, and each job's result is kept there as soon as it finishes.
    """
    out: list[Any] = [None] * len(jobs)
    keys = [cache.key(function, args) if cache is not None else "" for function, args in jobs]
    todo = []
    for k, key in enumerate(keys):
        hit, value = cache.load(key) if cache is not None else (False, None)
        if hit:
            out[k] = value
        else:
            todo.append(k)

    def finished(k: int, value: Any) -> None:
        out[k] = value
        if cache is not None:
            cache.save(keys[k], value)

    if workers <= 1 or len(jobs) <= 1:  # as an uninterrupted run would: resumed jobs run where they ran
        for k in tqdm(todo, desc=desc, disable=not progress):
            function, args = jobs[k]
            finished(k, function(families, store, corpus, run, *args))
        return out
    if not todo:
        return out
    run_settings = {**run.settings(), "progress": False}
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_in_worker, *jobs[k], str(Path(store.root)), corpus, run_settings): k for k in todo}
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"{desc} ({workers} workers)",
                           disable=not progress):
            finished(futures[future], future.result())
    return out


def run_layer_jobs(jobs: list[LayerJob], *, families: dict[str, AttackFamily], settings: Callable[[str], Any],
                   splits: dict[str, Split], store: EmbeddingStore, corpus: Corpus, run: RunContext,
                   workers: int = 1, progress: bool = False,
                   cache: JobCache | None = None) -> list[tuple[dict, float]]:
    """Each job's ``(result, seconds)``, in the order of ``jobs``; over ``workers`` processes when > 1."""
    return run_jobs([(attack_one, (job, settings(job.family), splits[job.family])) for job in jobs],
                    families=families, store=store, corpus=corpus, run=run, workers=workers, progress=progress,
                    desc="layer jobs", cache=cache)


__all__ = ["LayerJob", "attack_one", "run_jobs", "run_layer_jobs"]

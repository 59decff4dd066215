"""Layer jobs: one family's attack on one layer, run in this process or spread over worker processes.

The costly attacks of an audit (frame-level attackers, inversion decoders) train small torch
networks that do not get faster with more threads on a few cores; two of them side by side, one
thread each, use a 2-core machine fully. :func:`run_layer_jobs` runs a list of
:class:`LayerJob` in order in this process (``workers = 1``) or over a pool of ``workers``
processes (spawned, one torch and one BLAS thread each). A job carries everything it needs
(the config, the family's split, the store folder, the corpus), so a worker opens the store
itself and shares nothing with the parent but the files. Each job seeds its attack from the
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
from audit.splits import Split
from audit.store import EmbeddingStore


@dataclass(frozen=True)
class LayerJob:
    """Attack ``layer`` with ``family`` (its frame attackers included)."""

    family: str
    layer: int


def attack_one(job: LayerJob, families: dict[str, AttackFamily], settings: Any, split: Split,
               store: EmbeddingStore, corpus: Corpus, run: RunContext) -> tuple[dict, float]:
    """The job's attack result and its wall seconds."""
    view = layer_set(store, corpus, job.layer)
    ctx = run.layer(job.layer, store.frame_rates[job.layer])
    t0 = time.perf_counter()
    result = families[job.family].attack(view.subset(split.train), view.subset(split.test), settings, ctx)
    return result, time.perf_counter() - t0


def _worker_job(job: LayerJob, settings: Any, split: Split, store_root: str, corpus: Corpus,
                run_settings: dict) -> tuple[dict, float]:
    """One job in a worker process: one torch and one BLAS thread, the store opened from its folder."""
    import torch
    from threadpoolctl import threadpool_limits

    from attacks import load_families

    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        store = EmbeddingStore(store_root, check_hashes=False)
        return attack_one(job, load_families(), settings, split, store, corpus, RunContext(**run_settings))


def run_layer_jobs(jobs: list[LayerJob], *, families: dict[str, AttackFamily], settings: Callable[[str], Any],
                   splits: dict[str, Split], store: EmbeddingStore, corpus: Corpus, run: RunContext,
                   workers: int = 1, progress: bool = False) -> list[tuple[dict, float]]:
    """Each job's ``(result, seconds)``, in the order of ``jobs``; over ``workers`` processes when > 1."""
    if workers <= 1 or len(jobs) <= 1:
        return [attack_one(job, families, settings(job.family), splits[job.family], store, corpus, run)
                for job in tqdm(jobs, desc="layer jobs", disable=not progress)]
    run_settings = {"seed": run.seed, "out_dir": run.out_dir, "progress": False, "n_layers": run.n_layers,
                    "device": run.device, "trust_remote_code": run.trust_remote_code}
    out: list[tuple[dict, float] | None] = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_worker_job, job, settings(job.family), splits[job.family], str(Path(store.root)),
                               corpus, run_settings): k for k, job in enumerate(jobs)}
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"layer jobs ({workers} workers)",
                           disable=not progress):
            out[futures[future]] = future.result()
    return out  # type: ignore[return-value]


__all__ = ["LayerJob", "attack_one", "run_layer_jobs"]

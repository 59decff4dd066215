"""The run's worker pool: started once for every run_jobs call, each worker keeping one run context for its jobs."""

from __future__ import annotations

import os
import shutil

import pytest

from audit.corpus import load_manifest
from audit.extractor import build_extractor
from audit.family import RunContext
from audit.jobs import WorkerPool, run_jobs
from audit.store import EmbeddingStore
from tests.conftest import write_tone_corpus


def remembered(families, store, corpus, run, k):
    """A job (module level, as run_jobs needs): its worker's pid, and the first value its run memo kept for 'first'."""
    return os.getpid(), run.once("first", lambda: k), len(store), len(corpus), run.seed


@pytest.fixture
def small_store(tone_corpus, tmp_path):
    corpus = load_manifest(tone_corpus)
    store = EmbeddingStore.build(build_extractor("tiny-random-wav2vec2"), corpus, cache_dir=tmp_path / "s",
                                 progress=False)
    return store, corpus


@pytest.fixture(scope="module")
def pool_calls(tmp_path_factory):
    """Two run_jobs calls over one 2-worker pool with a timeline (one spawn for the tests that read them)."""
    from audit.timeline import RunTimeline

    root = tmp_path_factory.mktemp("pool")
    corpus = load_manifest(write_tone_corpus(root / "c", n_speakers=2, n_utts=2))
    store = EmbeddingStore.build(build_extractor("tiny-random-wav2vec2"), corpus, cache_dir=root / "s", progress=False)
    run, timeline = RunContext(seed=7), RunTimeline(workers=2)
    jobs = [(remembered, (k,)) for k in range(6)]
    with WorkerPool(2, store, corpus, run, timeline) as pool:
        with pytest.raises(ValueError, match="5 labels for 6 jobs"):
            run_jobs(jobs, families={}, store=store, corpus=corpus, run=run, pool=pool, labels=list("abcde"))
        with timeline.phase("layer jobs"):
            first = run_jobs(jobs, families={}, store=store, corpus=corpus, run=run, pool=pool,
                             labels=[f"job {k}" for k in range(6)])
        second = run_jobs(jobs, families={}, store=store, corpus=corpus, run=run, pool=pool)
    return store, corpus, run, timeline, first, second


def test_one_pool_serves_every_call_and_each_worker_keeps_its_run_context(pool_calls):
    store, corpus, run, _, first, second = pool_calls
    pids = {pid for pid, *_ in first}
    assert {pid for pid, *_ in second} <= pids and os.getpid() not in pids and len(pids) <= 2
    kept = {}
    for pid, value, n_store, n_corpus, seed in first + second:
        assert kept.setdefault(pid, value) == value  # a worker's later jobs see what its first job kept
        assert (n_store, n_corpus, seed) == (len(store), len(corpus), 7)
    assert not run.has("first")  # the parent's own context is untouched


def test_without_a_pool_the_jobs_share_this_process_run_context(small_store):
    store, corpus = small_store
    run = RunContext(seed=7)
    out = run_jobs([(remembered, (k,)) for k in range(3)], families={}, store=store, corpus=corpus, run=run)
    assert [(pid, value) for pid, value, *_ in out] == [(os.getpid(), 0)] * 3
    with WorkerPool(1, store, corpus, run) as pool:  # one worker: nothing spawned, the jobs run here
        assert run_jobs([(remembered, (5,))] * 2, families={}, store=store, corpus=corpus, run=run,
                        pool=pool)[0][:2] == (os.getpid(), 0)
        with pytest.raises(ValueError, match=r"WorkerPool\(1\) starts no workers"):
            pool.submit(remembered, (0,))


def test_a_pool_for_another_store_is_refused(small_store, tmp_path):
    store, corpus = small_store
    other = EmbeddingStore(shutil.copytree(store.root, tmp_path / "other"), check_hashes=False)
    run = RunContext()
    with pytest.raises(ValueError, match="the pool's workers read the store"):
        run_jobs([(remembered, (0,))] * 2, families={}, store=store, corpus=corpus, run=run,
                 pool=WorkerPool(2, other, corpus, run))


@pytest.mark.slow  # spawns a pool of its own (9 s); the pipeline always hands run_jobs its one pool
def test_a_call_without_a_pool_runs_its_jobs_over_workers_of_its_own(small_store):
    store, corpus = small_store
    run = RunContext(seed=7)
    out = run_jobs([(remembered, (k,)) for k in range(4)], families={}, store=store, corpus=corpus, run=run,
                   workers=2)
    assert os.getpid() not in {pid for pid, *_ in out} and [row[2] for row in out] == [len(store)] * 4


def test_a_worker_that_cannot_open_the_store_raises_its_cause_in_this_process(small_store, tmp_path):
    from audit.errors import StoreError

    store, corpus = small_store
    broken = EmbeddingStore(shutil.copytree(store.root, tmp_path / "copy"), check_hashes=False)
    (broken.root / "index.json").unlink()  # the folder loses its index after this process opened it
    run = RunContext()
    with pytest.raises(StoreError, match=r"copy: not a complete embedding store \(no index.json\)"):
        run_jobs([(remembered, (0,))] * 2, families={}, store=broken, corpus=corpus, run=run, workers=2)


def test_a_pool_with_a_timeline_records_where_and_when_each_job_ran(pool_calls):
    *_, timeline, first, _ = pool_calls
    recorded = timeline.to_dict()["jobs"]
    labelled = [j for j in recorded if j["phase"] == "layer jobs"]
    assert sorted(j["job"] for j in labelled) == [f"job {k}" for k in range(6)]
    assert {j["worker"] for j in recorded} <= {0, 1}
    assert len({j["worker"] for j in labelled}) == len({pid for pid, *_ in first})  # one number per worker process
    assert all(0 <= j["start"] <= j["end"] and j["seconds"] >= 0 for j in recorded)

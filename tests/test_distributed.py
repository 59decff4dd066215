"""Extraction under torch.distributed: torchrun with 2 gloo processes on the CPU.

The store a 2-process run builds is the 1-process store, byte for byte; a rank killed mid-way
leaves its finished shards, and a rerun computes only the missing ones (a rank left with
nothing to do still joins the barriers).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from audit.corpus import load_corpus
from audit.distributed import all_gather, barrier, broadcast_from_main, init_from_env, is_main, shards_for_rank, world
from audit.extractor import build_extractor
from audit.store import EmbeddingStore
from tests.conftest import write_tone_corpus

SHARD_UTTS = 4  # 4 speakers x 4 clips -> 4 shards: ranks 0 and 1 own 2 each

# Builds the store under torchrun (or alone) and writes this rank's ExtractionStats as JSON.
# KILL_AFTER_FIRST_SHARD=R: rank R writes its first shard, waits until rank 0 has written all of
# its own (so what is missing afterwards is known), then dies without cleaning up.
SCRIPT = textwrap.dedent("""
    import dataclasses, json, os, sys, time
    from pathlib import Path

    import torch
    torch.set_num_threads(1)

    import audit.store as store_mod
    from audit.corpus import load_corpus
    from audit.distributed import shards_for_rank
    from audit.extractor import build_extractor

    corpus_dir, cache_dir, out_dir = sys.argv[1:4]
    corpus = load_corpus(corpus_dir, progress=False)
    kill = os.environ.get("KILL_AFTER_FIRST_SHARD")
    if kill is not None and os.environ.get("RANK") == kill:
        n = len(store_mod.shard_bounds([u.duration for u in corpus], max_utts={utts}))
        rank0 = [f"{{k:05d}}.npz" for k in shards_for_rank(n, 0, int(os.environ["WORLD_SIZE"]))]
        extract = store_mod._extract_shard

        def extract_then_die(extractor, utts, path, batch_size):
            extract(extractor, utts, path, batch_size)
            deadline = time.monotonic() + 120
            while not all((path.parent / name).is_file() for name in rank0) and time.monotonic() < deadline:
                time.sleep(0.1)
            os._exit(3)

        store_mod._extract_shard = extract_then_die
    store = store_mod.EmbeddingStore.build(build_extractor("tiny-random-wav2vec2"), corpus, cache_dir=cache_dir,
                                           progress=False, max_shard_utts={utts})
    stats = dict(dataclasses.asdict(store.stats), cache_hit=store.stats.cache_hit)
    Path(out_dir, f"stats_{{store.stats.rank}}.json").write_text(json.dumps(stats))
""").format(utts=SHARD_UTTS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path: Path, corpus: Path, cache: Path, name: str, nproc: int = 2,
              env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run SCRIPT under ``torch.distributed.run`` with ``nproc`` processes; its output and per-rank stats."""
    script, out = tmp_path / "build_store.py", tmp_path / name
    script.write_text(SCRIPT)
    out.mkdir()
    run_env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    run_env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **(env or {}))  # SPEECH_AUDIT_CACHE stays
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script), str(corpus), str(cache),
           str(out)]
    proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=300)
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("stats_*.json"))]
    return proc, stats


def _store_files(cache: Path) -> dict[str, bytes]:
    """Every file under the cache folder, ``index.json`` without its timestamp."""
    files = {}
    for p in sorted(cache.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "index.json":
                index = json.loads(data)
                index.pop("created")
                data = json.dumps(index, sort_keys=True).encode()
            files[str(p.relative_to(cache))] = data
    return files


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A small corpus (4 shards) and the files of its 1-process store."""
    root = tmp_path_factory.mktemp("dist")
    corpus = write_tone_corpus(root / "corpus", n_speakers=4, n_utts=4, seconds=0.6)
    store = EmbeddingStore.build(build_extractor("tiny-random-wav2vec2"), load_corpus(str(corpus), progress=False),
                                 cache_dir=root / "one", progress=False, max_shard_utts=SHARD_UTTS)
    assert store.stats.shards_total == 4 and store.stats.shards_computed == 4
    assert store.stats.world_size == 1 and store.stats.shards_per_rank == [4]
    return corpus, _store_files(root / "one")


def test_single_process_helpers_are_a_world_of_one(monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert world() == (0, 1) and is_main() and not init_from_env()
    barrier()
    assert broadcast_from_main([3]) == [3] and all_gather(5) == [5]
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1
    assert world() == (0, 1) and not init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert world() == (2, 3) and not is_main()  # torchrun's env, before any process group exists


def test_shards_for_rank_is_a_disjoint_cover():
    for n in (0, 1, 5, 8):
        for size in (1, 2, 3, 7):
            owned = [shards_for_rank(n, r, size) for r in range(size)]
            assert sorted(k for ks in owned for k in ks) == list(range(n))
            assert all(k % size == r for r, ks in enumerate(owned) for k in ks)
    assert shards_for_rank(1, 1, 2) == []  # more ranks than shards: nothing to do
    with pytest.raises(ValueError):
        shards_for_rank(4, 2, 2)


def test_two_gloo_processes_build_the_one_process_store_byte_for_byte(tmp_path, reference):
    corpus, one = reference
    proc, stats = _torchrun(tmp_path, corpus, tmp_path / "two", "run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [(s["rank"], s["world_size"]) for s in stats] == [(0, 2), (1, 2)]
    assert [s["shards_computed"] for s in stats] == [2, 2] and stats[0]["shards_per_rank"] == [2, 2]
    two = _store_files(tmp_path / "two")
    assert sorted(two) == sorted(one) and any(name.endswith("frames_2.npy") for name in two)
    assert not any("shards" in name or ".tmp" in name for name in two)
    assert [name for name in one if one[name] != two[name]] == []


@pytest.mark.slow  # two torchrun launches of three processes each: 31 s in the fast suite on 2 cores
def test_killed_rank_is_resumed_by_a_rerun(tmp_path, reference):
    corpus, one = reference
    cache = tmp_path / "two"
    killed, _ = _torchrun(tmp_path, corpus, cache, "killed", env={"KILL_AFTER_FIRST_SHARD": "1"})
    assert killed.returncode != 0
    shards = sorted(p.name for p in cache.glob("*/shards/*.npz"))
    assert shards == ["00000.npz", "00001.npz", "00002.npz"] and not list(cache.glob("*/index.json"))
    # the rerun has one missing shard for two ranks: rank 1 has nothing to do and still joins the barriers
    proc, stats = _torchrun(tmp_path, corpus, cache, "rerun")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [s["shards_computed"] for s in stats] == [1, 0] and not stats[1]["cache_hit"]
    assert _store_files(cache) == one


@pytest.mark.slow  # a whole audit under torchrun: 23 s in the fast suite on 2 cores
def test_run_under_torchrun_reports_once_from_rank_0(tmp_path, reference):
    corpus, _ = reference
    config = tmp_path / "audit.toml"
    config.write_text('attacks = ["speaker_id"]\n[speaker_id]\nattackers = ["logreg"]\nn_boot = 200\n')
    out = tmp_path / "report"
    run_env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    run_env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "audit.cli", "run", "--config", str(config),
           "--model", "tiny-random-wav2vec2", "--corpus", str(corpus), "--layers", "0", "--out", str(out),
           "--cache-dir", str(tmp_path / "store"), "--no-progress"]
    proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("report: ") == 1  # rank 0 only
    results = json.loads((out / "results.json").read_text())
    assert results["store"]["world_size"] == 2 and (out / "report.html").is_file()

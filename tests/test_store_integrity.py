"""Store integrity: shards and store files checked against their records, a lock per store, a full disk.

Every test builds with the tiny random wav2vec2 on 18 short clips in shards of 4 (5 shards), and
compares what it gets with one store built from scratch.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import audit.store as store_mod
from audit.atomic import atomic_save, write_error
from audit.corpus import load_manifest
from audit.errors import StoreError
from audit.extractor import build_extractor
from audit.store import EmbeddingStore
from tests.conftest import write_tone_corpus

REPO = Path(__file__).resolve().parents[1]
KW = dict(progress=False, max_shard_utts=4, max_shard_seconds=20.0)
N_SHARDS = 5  # 18 clips in shards of 4
FULL = "cannot write: disk full (ENOSPC); free some space and rerun (finished shards are kept)"


@pytest.fixture(scope="module")
def module_env(tmp_path_factory):
    """The isolated cache of conftest's autouse fixture, for module-scoped fixtures (built before it applies)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEECH_AUDIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="module")
def extractor(module_env):
    return build_extractor("tiny-random-wav2vec2")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, module_env) -> Path:
    return write_tone_corpus(tmp_path_factory.mktemp("integrity") / "corpus", n_speakers=3, n_utts=6, seconds=0.4)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, corpus_dir, extractor) -> EmbeddingStore:
    """The store of the corpus, built from scratch in a cache of its own."""
    store = EmbeddingStore.build(extractor, load_manifest(corpus_dir), cache_dir=tmp_path_factory.mktemp("fresh"), **KW)
    assert store.stats.shards_total == store.stats.shards_computed == N_SHARDS
    return store


def _build_shards_only(extractor, corpus, cache: Path) -> Path:
    """Extract every shard into ``cache`` and stop before consolidation; the shard folder."""
    def stop(*args, **kwargs):
        raise RuntimeError("stopped before consolidation")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_mod, "_consolidate", stop)
        with pytest.raises(RuntimeError, match="stopped before consolidation"):
            EmbeddingStore.build(extractor, corpus, cache_dir=cache, **KW)
    (shards,) = cache.glob("*/shards")
    assert len(list(shards.glob("*.npz"))) == len(list(shards.glob("*.json"))) == N_SHARDS
    return shards


@pytest.fixture(scope="module")
def partial(tmp_path_factory, corpus_dir, extractor) -> Path:
    """A cache holding every shard of the corpus, not consolidated (copy it before changing it)."""
    cache = tmp_path_factory.mktemp("partial") / "cache"
    _build_shards_only(extractor, load_manifest(corpus_dir), cache)
    return cache


def _copy(cache: Path, to: Path) -> Path:
    shutil.copytree(cache, to)
    return to


def _flip(path: Path, where: int | None = None) -> None:
    """Invert one byte of ``path`` (its middle one by default)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if where is None else where] ^= 0xFF
    path.write_bytes(bytes(data))


def assert_same_store(a: EmbeddingStore, b: EmbeddingStore) -> None:
    """Same utterances, and every layer's frames, offsets and pooled vectors equal (the files byte for byte)."""
    assert a.utt_ids == b.utt_ids and a.num_layers == b.num_layers
    for layer in range(a.num_layers):
        for name in ("frames", "offsets"):
            assert np.array_equal(np.load(a.root / f"{name}_{layer}.npy"), np.load(b.root / f"{name}_{layer}.npy"))
        assert np.array_equal(a.pooled(layer), b.pooled(layer))
    assert np.array_equal(a.voiced_seconds(), b.voiced_seconds())
    assert a.index["files"] == b.index["files"]  # sizes and sha256 of every file


def _no_temp_files(cache: Path) -> bool:
    return not [p for p in cache.rglob("*") if ".tmp" in p.name]


# --- 1. shards describe themselves and are checked ---------------------------------------------------------------

def test_shard_with_a_flipped_byte_is_the_only_one_recomputed(tmp_path, partial, corpus_dir, extractor, fresh):
    cache = _copy(partial, tmp_path / "cache")
    (shards,) = cache.glob("*/shards")
    record = json.loads((shards / "00002.json").read_text())
    corpus = load_manifest(corpus_dir)
    assert record["utt_ids"] == [u.utt_id for u in corpus.utterances[8:12]] and len(record["sha256"]) == 64
    assert record["spans"][0] == [corpus.utterances[8].path, 0.0, None, corpus.utterances[8].duration]
    _flip(shards / "00002.npz")
    with pytest.warns(UserWarning, match=r"00002\.npz: sha256 differs from its record.*recomputing it"):
        store = EmbeddingStore.build(extractor, corpus, cache_dir=cache, **KW)
    assert store.stats.shards_total == N_SHARDS and store.stats.shards_computed == 1
    assert_same_store(store, fresh)
    assert not (store.root / "shards").exists() and _no_temp_files(cache)


@pytest.mark.parametrize("damage, reason", [
    ("truncate", r"\d+ bytes, its record says \d+"),
    ("not_a_zip", r"14 bytes, its record says \d+"),
    ("flip_first_byte", r"sha256 differs"),
    ("no_record", r"no record 00003\.json"),
    ("garbled_record", r"unreadable record 00003\.json"),
])
def test_damaged_shard_or_record_is_recomputed(tmp_path, partial, corpus_dir, extractor, fresh, damage, reason):
    cache = _copy(partial, tmp_path / "cache")
    (shards,) = cache.glob("*/shards")
    shard, record = shards / "00003.npz", shards / "00003.json"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "not_a_zip":
        shard.write_bytes(b"not a zip file")
    elif damage == "flip_first_byte":
        _flip(shard, 0)
    elif damage == "no_record":
        record.unlink()
    else:
        record.write_text(record.read_text()[:-5])
    with pytest.warns(UserWarning, match=rf"00003\.npz: {reason}"):
        store = EmbeddingStore.build(extractor, load_manifest(corpus_dir), cache_dir=cache, **KW)
    assert store.stats.shards_computed == 1
    assert_same_store(store, fresh)


def _edit_manifest(corpus: Path, row: int, **values: str) -> None:
    with open(corpus / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[row].update(values)
    with open(corpus / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_shard_of_an_edited_span_is_recomputed(tmp_path, corpus_dir, extractor):
    corpus_path = shutil.copytree(corpus_dir, tmp_path / "corpus")
    _build_shards_only(extractor, load_manifest(corpus_path), tmp_path / "cache")
    # a new duration_s leaves the store key (files, ids, start, end) and the shard bounds as they are
    _edit_manifest(corpus_path, 5, duration_s="0.777")
    edited = load_manifest(corpus_path)
    with pytest.warns(UserWarning, match=r"00001\.npz: utterance spans .* differ from the corpus"):
        store = EmbeddingStore.build(extractor, edited, cache_dir=tmp_path / "cache", **KW)
    assert store.stats.shards_computed == 1
    assert_same_store(store, EmbeddingStore.build(extractor, edited, cache_dir=tmp_path / "fresh", **KW))


def test_shards_of_moved_bounds_are_never_used(tmp_path, corpus_dir, extractor):
    corpus_path = shutil.copytree(corpus_dir, tmp_path / "corpus")
    _build_shards_only(extractor, load_manifest(corpus_path), tmp_path / "cache")
    # a long duration_s moves every shard bound (at most 20 s of audio a shard): each shard holds other utterances
    _edit_manifest(corpus_path, 1, duration_s="30")
    edited = load_manifest(corpus_path)
    with pytest.warns(UserWarning) as caught:
        store = EmbeddingStore.build(extractor, edited, cache_dir=tmp_path / "cache", **KW)
    assert all("holds other utterances than the corpus has at this place" in str(w.message) for w in caught)
    stale = {Path(str(w.message).split(":")[0]).name for w in caught}
    assert stale == {f"{k:05d}.npz" for k in range(N_SHARDS)}
    assert store.stats.shards_total == store.stats.shards_computed == 6
    assert_same_store(store, EmbeddingStore.build(extractor, edited, cache_dir=tmp_path / "fresh", **KW))


def test_consolidation_checks_every_shard_again(tmp_path, partial, corpus_dir, extractor, fresh, monkeypatch):
    cache = _copy(partial, tmp_path / "cache")
    (shards,) = cache.glob("*/shards")
    missing = store_mod._missing_shards

    def damage_after_the_check(*args):
        todo = missing(*args)
        _flip(shards / "00004.npz")  # after the shards were found intact, before consolidation reads them
        return todo

    monkeypatch.setattr(store_mod, "_missing_shards", damage_after_the_check)
    with pytest.raises(StoreError, match=r"00004\.npz: sha256 differs .*rerun to recompute it"):
        EmbeddingStore.build(extractor, load_manifest(corpus_dir), cache_dir=cache, **KW)
    assert not (shards / "00004.npz").exists() and (shards / "00003.npz").exists()
    monkeypatch.setattr(store_mod, "_missing_shards", missing)
    store = EmbeddingStore.build(extractor, load_manifest(corpus_dir), cache_dir=cache, **KW)
    assert store.stats.shards_computed == 1
    assert_same_store(store, fresh)


# --- 2. store files checked on open --------------------------------------------------------------------------------

def test_flipped_byte_in_a_store_file_is_refused_on_open_and_rebuilt(tmp_path, fresh, corpus_dir, extractor):
    cache = _copy(fresh.root.parent, tmp_path / "cache")
    root = cache / fresh.root.name
    assert set(fresh.index["files"]) == {"voiced_seconds.npy"} | {
        f"{name}_{layer}.npy" for layer in range(3) for name in ("frames", "offsets", "mean", "std")}
    _flip(root / "frames_1.npy")
    with pytest.raises(StoreError, match=r"frames_1\.npy: sha256 differs from index\.json"):
        EmbeddingStore(root)
    with pytest.warns(UserWarning, match=r"frames_1\.npy: sha256 differs from index\.json.*rebuilding the store"):
        store = EmbeddingStore.build(extractor, load_manifest(corpus_dir), cache_dir=cache, **KW)
    assert store.stats.shards_computed == N_SHARDS
    assert_same_store(store, fresh)
    assert EmbeddingStore(root).stats.shards_total == 0  # intact again


@pytest.mark.parametrize("damage, message", [
    ("truncate_mean", r"mean_2\.npy: \d+ bytes, index\.json records \d+"),
    ("delete_offsets", r"offsets_0\.npy: missing"),
    ("old_version", r"store version 2 != 3"),
    ("edit_index", r"index\.json: content differs from its recorded sha256"),
    ("garble_index", r"index\.json: unreadable"),
])
def test_damaged_or_outdated_store_is_rebuilt(tmp_path, fresh, corpus_dir, extractor, damage, message):
    cache = _copy(fresh.root.parent, tmp_path / "cache")
    root = cache / fresh.root.name
    index_path = root / "index.json"
    index = json.loads(index_path.read_text())
    if damage == "truncate_mean":
        (root / "mean_2.npy").write_bytes((root / "mean_2.npy").read_bytes()[:-4])
    elif damage == "delete_offsets":
        (root / "offsets_0.npy").unlink()
    elif damage == "old_version":
        index_path.write_text(json.dumps(dict(index, version=2)))
    elif damage == "edit_index":
        index_path.write_text(json.dumps(dict(index, layer_names=["a", "b", "c"])))
    else:
        index_path.write_text(index_path.read_text()[:100])
    with pytest.raises(StoreError, match=message):
        EmbeddingStore(root)
    with pytest.warns(UserWarning, match=message + ".*rebuilding the store"):
        store = EmbeddingStore.build(extractor, load_manifest(corpus_dir), cache_dir=cache, **KW)
    assert store.stats.shards_computed == N_SHARDS
    assert_same_store(store, fresh)


def test_hashes_are_remembered_until_a_file_changes(tmp_path, fresh, corpus_dir, extractor, monkeypatch):
    cache = _copy(fresh.root.parent, tmp_path / "cache")
    root = cache / fresh.root.name
    hashed: list[str] = []
    sha256_file = store_mod._sha256_file
    monkeypatch.setattr(store_mod, "_sha256_file", lambda p: hashed.append(p.name) or sha256_file(p))
    EmbeddingStore(root)
    assert sorted(hashed) == sorted(fresh.index["files"]) and (root / "verified.json").is_file()
    hashed.clear()
    store = EmbeddingStore.build(extractor, load_manifest(corpus_dir), cache_dir=cache, **KW)
    assert hashed == [] and store.stats.cache_hit  # unchanged since verified: sizes only
    # same size, same mtime, one byte changed: the ctime tells
    path = root / "std_1.npy"
    st = path.stat()
    _flip(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(StoreError, match=r"std_1\.npy: sha256 differs"):
        EmbeddingStore(root)
    assert hashed == ["std_1.npy"]


# --- 3. one build of a store at a time -----------------------------------------------------------------------------

# Builds the store once both processes are ready (so that both start at once); prints its stats as JSON.
# Each forward pass sleeps, so the other process must wait for the lock long enough to say so.
CONCURRENT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path

    import torch
    torch.set_num_threads(1)

    import audit.store as store_mod
    from audit.corpus import load_manifest
    from audit.extractor import build_extractor

    corpus_dir, cache_dir, ready, other = sys.argv[1:5]
    inner = build_extractor("tiny-random-wav2vec2")

    class Slow:
        def __getattr__(self, name):
            return getattr(inner, name)

        def __call__(self, wavs):
            time.sleep(0.4)
            return inner(wavs)

    store_mod.LOCK_NOTICE_S = 0.5
    corpus = load_manifest(corpus_dir)
    Path(ready).touch()
    deadline = time.monotonic() + 120
    while not Path(other).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    store = store_mod.EmbeddingStore.build(Slow(), corpus, cache_dir=cache_dir, progress=False, max_shard_utts=4,
                                           max_shard_seconds=20.0)
    print(json.dumps({"computed": store.stats.shards_computed, "total": store.stats.shards_total,
                      "root": str(store.root), "files": store.index["files"]}))
""")


def test_two_processes_building_one_store_extract_it_once(tmp_path, corpus_dir, fresh):
    script = tmp_path / "build.py"
    script.write_text(CONCURRENT)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(var, None)
    ready = [tmp_path / "ready0", tmp_path / "ready1"]
    procs = [subprocess.Popen([sys.executable, str(script), str(corpus_dir), str(tmp_path / "cache"), str(ready[i]),
                               str(ready[1 - i])], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(err[-2000:] for _, err in outs)
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(r["computed"] for r in results) == [0, N_SHARDS]  # one extracted every shard, the other none
    assert results[0]["root"] == results[1]["root"] and results[0]["files"] == results[1]["files"] == \
        fresh.index["files"]
    waiter = next(err for (_, err), r in zip(outs, results) if r["computed"] == 0)
    assert "another process is building this store; waiting for it" in waiter
    assert (tmp_path / "cache" / f"{fresh.root.name}.lock").is_file()


def test_a_lock_that_cannot_be_created_only_stops_a_build(tmp_path, fresh, corpus_dir, extractor, monkeypatch):
    class Unwritable:
        def __init__(self, path):
            self.path = path

        def acquire(self, timeout=None):
            raise PermissionError(errno.EACCES, "Permission denied", self.path)

    monkeypatch.setattr(store_mod, "FileLock", Unwritable)
    cache = _copy(fresh.root.parent, tmp_path / "cache")
    corpus = load_manifest(corpus_dir)
    assert EmbeddingStore.build(extractor, corpus, cache_dir=cache, **KW).stats.cache_hit  # reading needs no lock
    with pytest.raises(StoreError, match=rf"{fresh.root.name}\.lock: cannot write: Permission denied$"):
        EmbeddingStore.build(extractor, corpus, cache_dir=tmp_path / "empty", **KW)


# --- 4. a full disk -------------------------------------------------------------------------------------------------

def test_write_error_is_one_line_naming_the_target():
    target = Path("/data/store/frames_0.npy")
    assert write_error(target, OSError(errno.ENOSPC, "No space left on device", "/data/store/.x.tmp1")) == \
        "/data/store/frames_0.npy: cannot write: disk full (ENOSPC)"
    assert write_error(target, OSError(errno.EDQUOT, "Disk quota exceeded")) == \
        "/data/store/frames_0.npy: cannot write: disk quota exceeded (EDQUOT)"
    assert write_error(target, PermissionError(errno.EACCES, "Permission denied")) == \
        "/data/store/frames_0.npy: cannot write: Permission denied"
    assert write_error("out.txt", OSError("two\nlines")) == "out.txt: cannot write: two lines"


def test_atomic_save_removes_its_temporary_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")

    def half_then_full(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(OSError) as err:
        atomic_save(path, half_then_full)
    assert err.value.errno == errno.ENOSPC and path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def _disk_full_at(monkeypatch, name: str) -> None:
    """``atomic_save`` of the file ``name`` writes its temporary file, then fails as on a full disk."""
    def faulty(path, write):
        if Path(path).name != name:
            return atomic_save(path, write)

        def write_then_fail(tmp: Path) -> None:
            write(tmp)
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

        return atomic_save(path, write_then_fail)

    monkeypatch.setattr(store_mod, "atomic_save", faulty)


@pytest.mark.parametrize("name, kept", [("00002.npz", 2), ("00001.json", 1), ("frames_1.npy", N_SHARDS),
                                        ("std_2.npy", N_SHARDS), ("index.json", N_SHARDS)])
def test_full_disk_is_one_line_and_a_rerun_continues(tmp_path, partial, corpus_dir, extractor, fresh, monkeypatch,
                                                     name, kept):
    extracting = name.endswith((".npz", ".json")) and name != "index.json"
    cache = tmp_path / "cache" if extracting else _copy(partial, tmp_path / "cache")
    corpus = load_manifest(corpus_dir)
    _disk_full_at(monkeypatch, name)
    with pytest.raises(StoreError) as err:
        EmbeddingStore.build(extractor, corpus, cache_dir=cache, **KW)
    message = str(err.value)
    (root,) = [p for p in cache.iterdir() if p.is_dir()]
    target = root / "shards" / name if extracting else root / name
    assert message == f"{target}: {FULL}"
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    assert _no_temp_files(cache) and not (root / "index.json").exists()
    assert len(list((root / "shards").glob("*.npz"))) == kept
    monkeypatch.setattr(store_mod, "atomic_save", atomic_save)
    store = EmbeddingStore.build(extractor, corpus, cache_dir=cache, **KW)
    assert store.stats.shards_computed == N_SHARDS - kept
    assert_same_store(store, fresh)


def test_full_disk_reaches_the_cli_as_one_line(tmp_path, corpus_dir, monkeypatch, capsys):
    import warnings

    from audit.cli import main

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() sets its own
    _disk_full_at(monkeypatch, "00000.npz")
    code = main(["extract", "--model", "tiny-random-wav2vec2", "--corpus", str(corpus_dir),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("speech-audit: error: ") and err[0].endswith(f"00000.npz: {FULL}")

"""The embedding store: every layer's hidden states of a corpus, computed once, kept on disk.

Layout of ``<cache>/<key>/`` (``key`` hashes the model weights, extractor settings and corpus):

* ``index.json``      — utterance ids, layer names/dims/frame rates, counts, and the size and
  sha256 of every other file below; written last, so its presence means the store is complete;
* ``frames_<l>.npy``  — float16 ``(total_frames, D)`` for layer ``l`` (memory-mapped on read);
* ``offsets_<l>.npy`` — int64 ``(N + 1,)``: utterance ``i`` owns rows ``offsets[i]:offsets[i+1]``;
* ``mean_<l>.npy`` / ``std_<l>.npy`` — float32 ``(N, D)`` pooled statistics (computed in float32
  before the frames are rounded to float16);
* ``voiced_seconds.npy`` — float64 ``(N,)`` speaking time of each utterance by voice activity
  detection (:mod:`audit.vad`), measured while the audio is decoded for the model anyway;
* ``verified.json``   — which files were hashed and found intact, per (size, mtime, ctime), so an
  unchanged store is not re-read on every open (absent until a store is first reopened);
* ``shards/<k>.npz`` + ``shards/<k>.json`` — only while the store is being built: one shard's
  arrays, and its record (utterance ids and spans, size and sha256 of the ``.npz``).

Beside the folder, ``<cache>/<key>.lock`` is the file lock a build holds, so that two processes
building the same store at once do not both extract it: one builds, the other waits and reuses it.

Extraction runs shard by shard (a fixed partition of the corpus by utterance count and audio
duration); each shard is written atomically to ``shards/`` (its record first, then the ``.npz``)
and reused by a later build only when its record matches the corpus slice and its checksum, so a
killed run resumes where it stopped and a damaged or stale shard is recomputed, with a warning.
Only one shard is held in memory, so memory stays bounded as the corpus grows; consolidation
checks every shard again and streams them into the per-layer files.

Opening a store checks every file's size against ``index.json``, and its sha256 (once per
unchanged file, see ``verified.json``): a build that finds a damaged or outdated store warns and
rebuilds it, ``EmbeddingStore(root)`` raises :class:`StoreError` naming the file. A write that
fails (a full disk) is one :class:`StoreError` line naming the file; the temporary file is gone,
finished shards are kept, and a rerun continues once there is space.

Under ``torch.distributed`` (``torchrun``: ``WORLD_SIZE`` > 1, or a process group already
initialised) the missing shards are split between the ranks (:mod:`audit.distributed`); rank 0
holds the lock for the whole job, checks the existing store and shards, and consolidates once
every rank is done; the others open the finished store after it. The store folder is the only
thing the ranks share, so several machines work on one shared filesystem. The files are the same,
byte for byte, whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from audit import distributed
from audit.atomic import atomic_save, write_error
from audit.audio import load_audio
from audit.cache import cache_root
from audit.corpus import Corpus, Utterance
from audit.errors import StoreError
from audit.extractor import Extractor

STORE_VERSION = 3

#: Seconds a build waits quietly for another process's lock on the store before saying so, and
#: the interval between later notices.
LOCK_NOTICE_S = 5.0
LOCK_REPEAT_S = 60.0

VERIFIED_FILE = "verified.json"


def default_cache_dir() -> Path:
    """``$SPEECH_AUDIT_CACHE/store`` if set, else ``~/.cache/speech-audit/store``."""
    return cache_root() / "store"


def store_key(extractor: Extractor, corpus: Corpus) -> str:
    """Store key: hash of the extractor fingerprint and the corpus fingerprint."""
    return hashlib.sha256(f"{STORE_VERSION}:{extractor.fingerprint()}:{corpus.fingerprint()}".encode()).hexdigest()[:24]


def shard_bounds(durations: Sequence[float], *, max_utts: int = 64, max_seconds: float = 600.0) -> list[tuple[int, int]]:
    """Deterministic partition of utterances into shards of bounded count and audio duration."""
    bounds, start, acc = [], 0, 0.0
    for i, d in enumerate(durations):
        if i > start and (i - start >= max_utts or acc + d > max_seconds):
            bounds.append((start, i))
            start, acc = i, 0.0
        acc += d
    bounds.append((start, len(durations)))
    return bounds


def _write_failure(path: Path, exc: OSError) -> StoreError:
    """The one-line :class:`StoreError` of an ``OSError`` while writing ``path`` (a full disk, a read-only folder)."""
    hint = "; free some space and rerun (finished shards are kept)" if exc.errno == errno.ENOSPC else ""
    return StoreError(write_error(path, exc) + hint)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Raise an ``OSError`` of the body, which writes ``path``, as :func:`_write_failure`'s :class:`StoreError`."""
    try:
        yield
    except OSError as exc:
        raise _write_failure(path, exc) from exc


class _HashingWriter:
    """Write-only file wrapper that hashes and counts the bytes it passes on (for files written front to back)."""

    def __init__(self, fh) -> None:
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.size += view.nbytes
        return self.fh.write(view)

    def record(self) -> dict:
        """``{"size", "sha256"}`` of what was written, as index.json keeps it."""
        return {"size": self.size, "sha256": self.sha.hexdigest()}


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def _save_npy(path: Path, arr: np.ndarray) -> dict:
    """Write ``arr`` to ``path`` atomically (``np.save`` format); returns its size and sha256."""
    writer = None

    def write(tmp: Path) -> None:
        nonlocal writer
        with open(tmp, "wb") as fh:
            writer = _HashingWriter(fh)
            np.save(writer, arr)

    with _writing(path):
        atomic_save(path, write)
    return writer.record()


def _save_json(path: Path, obj: dict, indent: int | None = None) -> None:
    with _writing(path):
        atomic_save(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=indent)))


def _batches(lengths: Sequence[int], batch_size: int, can_pad: bool) -> list[list[int]]:
    """Length-bucketed batches: sort by length, chunk; equal lengths only when padding is unsafe."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if can_pad:
        return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    out: list[list[int]] = []
    for i in order:
        if out and lengths[out[-1][0]] == lengths[i] and len(out[-1]) < batch_size:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _store_file_names(num_layers: int) -> list[str]:
    """Every data file of a complete store (index.json aside), in the order consolidation writes them."""
    names = ["voiced_seconds.npy"]
    for layer in range(num_layers):
        names += [f"frames_{layer}.npy", f"offsets_{layer}.npy", f"mean_{layer}.npy", f"std_{layer}.npy"]
    return names


def _index_digest(index: dict) -> str:
    """sha256 of index.json's content (its creation time and this digest aside), in a canonical JSON form."""
    body = json.loads(json.dumps({k: v for k, v in index.items() if k not in ("created", "index_sha256")}))
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_files(root: Path, files: dict, num_layers: int, check_hashes: bool) -> None:
    """Raise :class:`StoreError` naming the first store file whose size (always) or sha256 differs from index.json.

    A file's hash is remembered in ``verified.json`` with its size, mtime and ctime, and is read
    again only when one of them changes (a best effort cache: a read-only folder costs the re-hash).
    """
    verified_path = root / VERIFIED_FILE
    known: dict = {}
    if check_hashes:
        with contextlib.suppress(OSError, ValueError):
            known = json.loads(verified_path.read_text())
        known = known if isinstance(known, dict) else {}
    kept: dict = {}
    for name in _store_file_names(num_layers):
        path, rec = root / name, files.get(name)
        if not isinstance(rec, dict) or not isinstance(rec.get("size"), int) or not isinstance(rec.get("sha256"), str):
            raise StoreError(f"{path}: index.json records no size and sha256 for it")
        try:
            st = path.stat()
        except OSError as exc:
            raise StoreError(f"{path}: missing or unreadable ({exc.strerror or exc})") from exc
        if st.st_size != rec["size"]:
            raise StoreError(f"{path}: {st.st_size} bytes, index.json records {rec['size']} (the file is damaged)")
        if not check_hashes:
            continue
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, rec["sha256"]]
        if known.get(name) != stamp:
            try:
                digest = _sha256_file(path)
            except OSError as exc:
                raise StoreError(f"{path}: unreadable ({exc.strerror or exc})") from exc
            if digest != rec["sha256"]:
                raise StoreError(f"{path}: sha256 differs from index.json (the file is damaged or was modified)")
        kept[name] = stamp
    if check_hashes and kept != known:
        with contextlib.suppress(OSError):
            atomic_save(verified_path, lambda tmp: tmp.write_text(json.dumps(kept, indent=0)))


@dataclass
class ExtractionStats:
    """What a build did: shards computed vs reused, audio seconds, model seconds.

    Under torch.distributed, ``shards_computed``, ``audio_seconds`` and ``model_seconds`` count
    this rank's work; ``shards_per_rank`` holds every rank's ``shards_computed`` (rank order).
    """

    shards_total: int = 0
    shards_computed: int = 0
    audio_seconds: float = 0.0
    model_seconds: float = 0.0
    wall_seconds: float = 0.0
    world_size: int = 1
    rank: int = 0
    shards_per_rank: list[int] = field(default_factory=list)

    @property
    def cache_hit(self) -> bool:
        """True when no model work was done (by any rank)."""
        return self.shards_computed == 0 and not any(self.shards_per_rank)

    @property
    def shards_computed_all(self) -> int:
        """Shards computed by every rank together (this process's count outside torch.distributed)."""
        return sum(self.shards_per_rank) if self.shards_per_rank else self.shards_computed


class EmbeddingStore:
    """Read access to a complete store folder (see module docstring for the layout)."""

    def __init__(self, root: str | Path, *, check_hashes: bool = True) -> None:
        """Open a complete store, checking every file against index.json (:class:`StoreError` naming the file if not).

        Sizes are always checked; ``check_hashes`` also checks the sha256 of every file not
        verified before in its current state. A build skips the hashes of the store it just wrote.
        """
        self.root = Path(root)
        index_path = self.root / "index.json"
        if not index_path.is_file():
            raise StoreError(f"{self.root}: not a complete embedding store (no index.json)")
        try:
            self.index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{index_path}: unreadable ({exc})") from exc
        if not isinstance(self.index, dict):
            raise StoreError(f"{index_path}: not a store index (a JSON object)")
        if self.index.get("version") != STORE_VERSION:
            raise StoreError(f"{index_path}: store version {self.index.get('version')} != {STORE_VERSION}")
        if self.index.get("index_sha256") != _index_digest(self.index):
            raise StoreError(f"{index_path}: content differs from its recorded sha256 "
                             "(the file is damaged or was edited)")
        self.utt_ids: list[str] = self.index["utt_ids"]
        self.layer_names: list[str] = self.index["layer_names"]
        self.hidden_sizes: list[int] = self.index["hidden_sizes"]
        self.frame_rates: list[float] = self.index["frame_rates"]
        files = self.index.get("files")
        _check_files(self.root, files if isinstance(files, dict) else {}, len(self.layer_names), check_hashes)
        self.stats = ExtractionStats()
        self._frames: dict[int, np.ndarray] = {}
        self._offsets: dict[int, np.ndarray] = {}

    @property
    def num_layers(self) -> int:
        """Number of layers in the store."""
        return len(self.layer_names)

    def __len__(self) -> int:
        return len(self.utt_ids)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise StoreError(f"layer {layer} out of range: the store has layers 0..{self.num_layers - 1}")

    def pooled(self, layer: int, kind: str = "meanstd") -> np.ndarray:
        """Pooled ``(N, D)`` mean or ``(N, 2D)`` mean+std embeddings of a layer (float32)."""
        self._check_layer(layer)
        mean = np.load(self.root / f"mean_{layer}.npy")
        if kind == "mean":
            return mean
        if kind == "meanstd":
            return np.concatenate([mean, np.load(self.root / f"std_{layer}.npy")], axis=1)
        raise StoreError(f"pooled kind {kind!r}: expected 'mean' or 'meanstd'")

    def offsets(self, layer: int) -> np.ndarray:
        """Row offsets ``(N + 1,)`` of each utterance in the layer's frame matrix."""
        self._check_layer(layer)
        if layer not in self._offsets:
            self._offsets[layer] = np.load(self.root / f"offsets_{layer}.npy")
        return self._offsets[layer]

    def frames(self, layer: int, i: int) -> np.ndarray:
        """Frame-level ``(T, D)`` hidden states of utterance ``i`` (float32 copy)."""
        self._check_layer(layer)
        if layer not in self._frames:
            self._frames[layer] = np.load(self.root / f"frames_{layer}.npy", mmap_mode="r")
        off = self.offsets(layer)
        return np.asarray(self._frames[layer][off[i]:off[i + 1]], dtype=np.float32)

    def voiced_seconds(self) -> np.ndarray:
        """Speaking time ``(N,)`` of each utterance (voice activity detection), in seconds."""
        return np.load(self.root / "voiced_seconds.npy")

    @property
    def duration_source(self) -> str:
        """How :meth:`voiced_seconds` was measured."""
        return str(self.index.get("duration_source", "unknown"))

    def layer_info(self, layer: int) -> dict:
        """Name, dimension and frame rate of a layer."""
        self._check_layer(layer)
        return {"index": layer, "name": self.layer_names[layer], "dim": self.hidden_sizes[layer],
                "frame_rate_hz": self.frame_rates[layer]}

    @classmethod
    def build(cls, extractor: Extractor, corpus: Corpus, *, cache_dir: str | Path | None = None,
              batch_size: int = 8, progress: bool = True, max_shard_utts: int = 64,
              max_shard_seconds: float = 600.0) -> "EmbeddingStore":
        """Open the store for ``(extractor, corpus)``, extracting whatever is missing first.

        A complete store is verified and opened without loading the model; a damaged or outdated
        one is rebuilt (with a warning). Otherwise missing shards are computed (one forward pass
        per batch yields every layer) and the store is consolidated. The build holds the store's
        file lock, so a concurrent build of the same store waits and then reuses it. Under
        torch.distributed every rank calls this: rank 0 holds the lock, the missing shards are
        split between the ranks, rank 0 consolidates, and every rank returns the finished store.
        """
        t0 = time.perf_counter()
        cache = Path(cache_dir or default_cache_dir())
        key = store_key(extractor, corpus)
        root = cache / key
        rank, world_size = distributed.world()
        if world_size > 1:
            distributed.init_from_env()
            rank, world_size = distributed.world()
            keys = distributed.all_gather(key)
            if len(set(keys)) > 1:
                raise StoreError(f"rank {rank}: ranks disagree on the store key ({', '.join(sorted(set(keys)))}): "
                                 "every rank needs the same model and the same corpus (same paths, same files)")
        with _writing(cache):
            cache.mkdir(parents=True, exist_ok=True)
        # Rank 0 holds the lock for the whole job; the others wait for it at the first collective below.
        with _store_lock(cache / f"{key}.lock", hold=rank == 0, complete=(root / "index.json").is_file()):
            store = _reuse_or_clear(cls, root, corpus) if rank == 0 else None
            if distributed.broadcast_from_main(store is not None):
                if store is None:
                    store = cls(root, check_hashes=False)  # rank 0 has just verified it
                store.stats = ExtractionStats(wall_seconds=time.perf_counter() - t0, world_size=world_size, rank=rank)
                return store
            stats = _extract_missing(extractor, corpus, root, rank, world_size, batch_size=batch_size,
                                     progress=progress, max_shard_utts=max_shard_utts,
                                     max_shard_seconds=max_shard_seconds)
        store = cls(root, check_hashes=False)  # just written here or by rank 0: sizes checked
        stats.wall_seconds = time.perf_counter() - t0
        store.stats = stats
        return store


def _extract_missing(extractor: Extractor, corpus: Corpus, root: Path, rank: int, world_size: int, *,
                     batch_size: int, progress: bool, max_shard_utts: int,
                     max_shard_seconds: float) -> ExtractionStats:
    """Compute the missing shards (this rank's share of them), then consolidate (rank 0); returns this rank's stats."""
    shard_dir = root / "shards"
    with _writing(shard_dir):
        shard_dir.mkdir(parents=True, exist_ok=True)
    bounds = shard_bounds([u.duration for u in corpus], max_utts=max_shard_utts, max_seconds=max_shard_seconds)
    shard_paths = [shard_dir / f"{k:05d}.npz" for k in range(len(bounds))]
    slices = [corpus.utterances[b0:b1] for b0, b1 in bounds]
    stats = ExtractionStats(shards_total=len(bounds), world_size=world_size, rank=rank)
    # Rank 0's list of missing shards is everyone's, so a shard written meanwhile cannot change the split.
    todo = distributed.broadcast_from_main(_missing_shards(root, shard_paths, slices) if rank == 0 else None)
    mine = [todo[i] for i in distributed.shards_for_rank(len(todo), rank, world_size)]
    n_mine = sum(len(slices[k]) for k in mine)
    desc = f"extract {extractor.spec}" + (f" (rank 0 of {world_size})" if world_size > 1 else "")
    with tqdm(total=n_mine, unit="utt", desc=desc, disable=not progress or not mine or rank != 0) as bar:
        for k in mine:
            utts = slices[k]
            if world_size > 1 and shard_paths[k].is_file() and _shard_problem(shard_paths[k], utts) is None:
                bar.update(len(utts))  # another process finished it meanwhile
                continue
            t_model = _extract_shard(extractor, utts, shard_paths[k], batch_size)
            stats.shards_computed += 1
            stats.model_seconds += t_model
            stats.audio_seconds += sum(u.duration for u in utts)
            bar.update(len(utts))
    # A collective, hence a barrier: once it returns every rank has written its shards.
    stats.shards_per_rank = distributed.all_gather(stats.shards_computed)
    if rank == 0:
        if world_size > 1:
            _wait_visible([q for p in shard_paths for q in (_record_path(p), p)])
        _consolidate(root, shard_dir, bounds, extractor, corpus)
    distributed.barrier()  # index.json is written
    if rank != 0:
        _wait_visible([root / "index.json"])
    return stats


def _acquire(lock: FileLock, path: Path) -> None:
    """Acquire ``lock``, waiting as long as it takes; says on stderr that it waits after a few seconds."""
    t0, wait = time.monotonic(), LOCK_NOTICE_S
    while True:
        try:
            lock.acquire(timeout=wait)
            return
        except Timeout:
            print(f"{path}: another process is building this store; waiting for it "
                  f"({time.monotonic() - t0:.0f} s so far)", file=sys.stderr, flush=True)
            wait = LOCK_REPEAT_S


@contextlib.contextmanager
def _store_lock(path: Path, *, hold: bool, complete: bool) -> Iterator[None]:
    """Hold the file lock ``path`` while the body runs (when ``hold``): one build of a store at a time.

    Where the lock file cannot be created (a read-only folder) a complete store is still opened
    unlocked: reading it needs no lock. Otherwise that is a :class:`StoreError`.
    """
    lock = FileLock(str(path)) if hold else None
    if lock is not None:
        try:
            _acquire(lock, path)
        except OSError as exc:
            if not complete:
                raise _write_failure(path, exc) from exc
            lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _reuse_or_clear(cls: type[EmbeddingStore], root: Path, corpus: Corpus) -> EmbeddingStore | None:
    """The complete, intact store at ``root`` for ``corpus``; else None, a damaged or outdated one deleted (warned)."""
    if not (root / "index.json").is_file():
        return None
    try:
        store = cls(root)
        if store.utt_ids != [u.utt_id for u in corpus]:
            raise StoreError(f"{root / 'index.json'}: utterance ids differ from the corpus")
        return store
    except StoreError as err:
        warnings.warn(f"{err}; rebuilding the store", stacklevel=3)
    for child in root.iterdir():
        try:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        except OSError as exc:
            raise StoreError(f"{child}: cannot remove it to rebuild the store ({exc.strerror or exc})") from exc
    return None


def _record_path(shard: Path) -> Path:
    """The JSON record beside a shard: ``00003.npz`` -> ``00003.json``."""
    return shard.with_suffix(".json")


def _shard_record(utts: Sequence[Utterance]) -> dict:
    """What a shard holds, as its record keeps it: utterance ids and spans (path, start, end, duration)."""
    return json.loads(json.dumps({"version": STORE_VERSION, "utt_ids": [u.utt_id for u in utts],
                                  "spans": [[u.path, u.start, u.end, u.duration] for u in utts]}))


def _shard_problem(path: Path, utts: Sequence[Utterance]) -> str | None:
    """Why the shard ``path`` cannot be used for ``utts`` (None when it can): checked against its record."""
    record_path = _record_path(path)
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        return f"no record {record_path.name} (no checksum)"
    except (OSError, ValueError) as exc:
        return f"unreadable record {record_path.name} ({exc})"
    if not isinstance(record, dict):
        return f"unreadable record {record_path.name} (not a JSON object)"
    expected = _shard_record(utts)
    if record.get("version") != STORE_VERSION:
        return f"written by store version {record.get('version')}, not {STORE_VERSION}"
    if record.get("utt_ids") != expected["utt_ids"]:
        return "holds other utterances than the corpus has at this place (the manifest or the shard size changed)"
    if record.get("spans") != expected["spans"]:
        return "utterance spans (path, start, end, duration) differ from the corpus (the manifest changed)"
    try:
        size = path.stat().st_size
        if size != record.get("size"):
            return f"{size} bytes, its record says {record.get('size')} (damaged or truncated)"
        if _sha256_file(path) != record.get("sha256"):
            return "sha256 differs from its record (the file is damaged)"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None


def _remove_shard(path: Path) -> None:
    for p in (path, _record_path(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _missing_shards(root: Path, shard_paths: Sequence[Path], slices: Sequence[Sequence[Utterance]]) -> list[int]:
    """Positions of the shards to compute: absent, or present but not matching the corpus (removed, with a warning).

    Also removes temporary files a killed run left behind (the caller holds the store's lock).
    """
    for folder in (root, shard_paths[0].parent):
        for tmp in folder.glob(".*.tmp*"):
            with contextlib.suppress(OSError):
                tmp.unlink()
    todo = []
    for k, (path, utts) in enumerate(zip(shard_paths, slices)):
        if not path.is_file():
            todo.append(k)
            continue
        problem = _shard_problem(path, utts)
        if problem is not None:
            warnings.warn(f"{path}: {problem}; recomputing it", stacklevel=4)
            _remove_shard(path)
            todo.append(k)
    return todo


def _wait_visible(paths: Sequence[Path], timeout_s: float = 120.0) -> None:
    """Wait until every file is visible here: on a shared filesystem (e.g. NFS) a file another
    machine has just written can take a few seconds to appear."""
    deadline = time.monotonic() + timeout_s
    missing = [p for p in paths if not p.is_file()]
    while missing:
        if time.monotonic() > deadline:
            raise StoreError(f"{missing[0]}: not visible {timeout_s:.0f} s after every rank finished "
                             f"({len(missing)} file(s) missing); is the store folder on a filesystem all ranks share?")
        time.sleep(0.5)
        for folder in {p.parent for p in missing}:
            with contextlib.suppress(OSError):
                os.listdir(folder)  # re-reads the folder (refreshes a network filesystem's cached listing)
        missing = [p for p in missing if not p.is_file()]


def _extract_shard(extractor: Extractor, utts, path: Path, batch_size: int) -> float:
    """Extract one shard and write it atomically, its record first; returns seconds spent in the model."""
    from audit.vad import voiced_seconds

    wavs = [load_audio(u.path, start=u.start, end=u.end) for u in utts]
    results: list[list[np.ndarray] | None] = [None] * len(utts)
    t_model = 0.0
    for batch in _batches([w.size for w in wavs], batch_size, extractor.can_pad_batch):
        t = time.perf_counter()
        outs = extractor([wavs[i] for i in batch])
        t_model += time.perf_counter() - t
        for i, layers in zip(batch, outs):
            results[i] = layers
    arrays: dict[str, np.ndarray] = {"voiced": np.array([voiced_seconds(w) for w in wavs], dtype=np.float64)}
    for layer in range(extractor.num_layers):
        per_utt = [r[layer] for r in results]
        for u, a in zip(utts, per_utt):
            if a.ndim != 2 or a.shape[0] == 0 or not np.all(np.isfinite(a)):
                raise StoreError(f"{u.path}: model {extractor.spec} gave {a.shape} non-finite/empty states at layer {layer}")
        arrays[f"frames_{layer}"] = np.concatenate(per_utt).astype(np.float16)
        arrays[f"lengths_{layer}"] = np.array([a.shape[0] for a in per_utt], dtype=np.int64)
        arrays[f"mean_{layer}"] = np.stack([a.mean(0) for a in per_utt]).astype(np.float32)
        arrays[f"std_{layer}"] = np.stack([a.std(0) for a in per_utt]).astype(np.float32)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        # The record goes first, so a visible shard always has one (a record without its shard is ignored).
        record = dict(_shard_record(utts), size=tmp.stat().st_size, sha256=_sha256_file(tmp))
        _save_json(_record_path(path), record)

    with _writing(path):
        atomic_save(path, write)
    return t_model


def _read_shard(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Arrays ``names`` of a shard (checked beforehand); :class:`StoreError` naming it if it cannot be read."""
    try:
        with np.load(path) as z:
            return {name: z[name] for name in names}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise StoreError(f"{path}: unreadable shard ({exc}); delete it and rerun") from exc


def _save_frames(path: Path, shard_paths: Sequence[Path], layer: int,
                 shape: tuple[int, int]) -> tuple[dict, np.ndarray, np.ndarray]:
    """Write a layer's ``frames_<l>.npy`` atomically from the shards: the ``.npy`` header, then each shard's rows.

    Written front to back (no memory map: a full disk is an ``OSError`` here, not a crash on a
    page fault) and hashed on the way. Returns its size and sha256, and the layer's pooled
    means and standard deviations gathered from the same shards.
    """
    writer = None
    means: list[np.ndarray] = []
    stds: list[np.ndarray] = []

    def write(tmp: Path) -> None:
        nonlocal writer
        with open(tmp, "wb") as fh:
            writer = _HashingWriter(fh)
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                      "shape": shape}
            np.lib.format.write_array_header_1_0(writer, header)
            rows = 0
            for p in shard_paths:
                z = _read_shard(p, [f"frames_{layer}", f"mean_{layer}", f"std_{layer}"])
                f = np.ascontiguousarray(z[f"frames_{layer}"], dtype=np.float16)
                if f.ndim != 2 or f.shape[1] != shape[1]:
                    raise StoreError(f"{p}: layer {layer} frames of shape {f.shape}, expected (T, {shape[1]})")
                writer.write(f)
                rows += f.shape[0]
                means.append(z[f"mean_{layer}"])
                stds.append(z[f"std_{layer}"])
            if rows != shape[0]:
                raise StoreError(f"{path}: the shards hold {rows} frames of layer {layer}, "
                                 f"their lengths say {shape[0]}")

    with _writing(path):
        atomic_save(path, write)
    return writer.record(), np.concatenate(means), np.concatenate(stds)


def _consolidate(root: Path, shard_dir: Path, bounds: Sequence[tuple[int, int]], extractor: Extractor,
                 corpus: Corpus) -> None:
    """Check every shard, stream them into per-layer files, then write index.json last (the completion marker)."""
    from audit.vad import DURATION_SOURCE

    shard_paths = [shard_dir / f"{k:05d}.npz" for k in range(len(bounds))]
    for path, (b0, b1) in zip(shard_paths, bounds):
        problem = _shard_problem(path, corpus.utterances[b0:b1]) if path.is_file() else "missing"
        if problem is not None:
            _remove_shard(path)
            raise StoreError(f"{path}: {problem}; removed it, rerun to recompute it")
    files: dict[str, dict] = {}
    lengths = {layer: [] for layer in range(extractor.num_layers)}
    voiced = []
    for p in shard_paths:
        z = _read_shard(p, ["voiced"] + [f"lengths_{layer}" for layer in lengths])
        voiced.append(z["voiced"])
        for layer in lengths:
            lengths[layer].append(z[f"lengths_{layer}"])
    files["voiced_seconds.npy"] = _save_npy(root / "voiced_seconds.npy", np.concatenate(voiced))
    for layer in range(extractor.num_layers):
        lens = np.concatenate(lengths[layer])
        if lens.size != len(corpus):
            raise StoreError(f"{root}: shards hold {lens.size} utterances, corpus has {len(corpus)}")
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        frames_path = root / f"frames_{layer}.npy"
        files[frames_path.name], means, stds = _save_frames(frames_path, shard_paths, layer,
                                                            (int(offsets[-1]), int(extractor.hidden_sizes[layer])))
        for name, arr in (("offsets", offsets), ("mean", means), ("std", stds)):
            files[f"{name}_{layer}.npy"] = _save_npy(root / f"{name}_{layer}.npy", arr)
    index = {"version": STORE_VERSION, "utt_ids": [u.utt_id for u in corpus],
             "layer_names": extractor.layer_names, "hidden_sizes": extractor.hidden_sizes,
             "frame_rates": extractor.frame_rates, "extractor": extractor.describe(),
             "corpus": corpus.describe(), "corpus_fingerprint": corpus.fingerprint(),
             "extractor_fingerprint": extractor.fingerprint(), "duration_source": DURATION_SOURCE,
             "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    index["index_sha256"] = _index_digest(index)
    _save_json(root / "index.json", index, indent=1)
    shutil.rmtree(shard_dir, ignore_errors=True)

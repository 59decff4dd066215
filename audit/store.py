"""The embedding store: every layer's hidden states of a corpus, computed once, kept on disk.

Layout of ``<cache>/<key>/`` (``key`` hashes the model weights, extractor settings and corpus):

* ``index.json``      — utterance ids, layer names/dims/frame rates, counts; written last, so
  its presence means the store is complete;
* ``frames_<l>.npy``  — float16 ``(total_frames, D)`` for layer ``l`` (memory-mapped on read);
* ``offsets_<l>.npy`` — int64 ``(N + 1,)``: utterance ``i`` owns rows ``offsets[i]:offsets[i+1]``;
* ``mean_<l>.npy`` / ``std_<l>.npy`` — float32 ``(N, D)`` pooled statistics (computed in float32
  before the frames are rounded to float16);
* ``voiced_seconds.npy`` — float64 ``(N,)`` speaking time of each utterance by voice activity
  detection (:mod:`audit.vad`), measured while the audio is decoded for the model anyway.

Extraction runs shard by shard (a fixed partition of the corpus by utterance count and audio
duration); each shard is written atomically to ``shards/`` and skipped when present, so a killed
run resumes where it stopped. Only one shard is held in memory, so memory stays bounded as the
corpus grows; consolidation streams shards into memory-mapped files.

Under ``torch.distributed`` (``torchrun``: ``WORLD_SIZE`` > 1, or a process group already
initialised) the missing shards are split between the ranks (:mod:`audit.distributed`); rank 0
consolidates once every rank is done, and the others open the finished store after it. The
store folder is the only thing the ranks share, so several machines work on one shared
filesystem. The files are the same, byte for byte, whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from audit import distributed
from audit.atomic import atomic_save
from audit.audio import load_audio
from audit.cache import cache_root
from audit.corpus import Corpus
from audit.errors import StoreError
from audit.extractor import Extractor

STORE_VERSION = 2


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


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)

    atomic_save(path, write)


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

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        index_path = self.root / "index.json"
        if not index_path.is_file():
            raise StoreError(f"{self.root}: not a complete embedding store (no index.json)")
        self.index = json.loads(index_path.read_text())
        if self.index.get("version") != STORE_VERSION:
            raise StoreError(f"{self.root}: store version {self.index.get('version')} != {STORE_VERSION}")
        self.utt_ids: list[str] = self.index["utt_ids"]
        self.layer_names: list[str] = self.index["layer_names"]
        self.hidden_sizes: list[int] = self.index["hidden_sizes"]
        self.frame_rates: list[float] = self.index["frame_rates"]
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

        A complete store is opened without loading the model. Otherwise missing shards are
        computed (one forward pass per batch yields every layer) and the store is consolidated.
        Under torch.distributed every rank calls this: the missing shards are split between the
        ranks, rank 0 consolidates, and every rank returns the finished store.
        """
        t0 = time.perf_counter()
        root = Path(cache_dir or default_cache_dir()) / store_key(extractor, corpus)
        rank, world_size = distributed.world()
        if world_size > 1:
            distributed.init_from_env()
            rank, world_size = distributed.world()
            keys = distributed.all_gather(root.name)
            if len(set(keys)) > 1:
                raise StoreError(f"rank {rank}: ranks disagree on the store key ({', '.join(sorted(set(keys)))}): "
                                 "every rank needs the same model and the same corpus (same paths, same files)")
        if (root / "index.json").is_file():
            store = cls(root)
            if store.utt_ids != [u.utt_id for u in corpus]:
                raise StoreError(f"{root}: utterance ids differ from the corpus; delete the folder and re-run")
            store.stats = ExtractionStats(wall_seconds=time.perf_counter() - t0, world_size=world_size, rank=rank)
            return store
        shard_dir = root / "shards"
        shard_dir.mkdir(parents=True, exist_ok=True)
        bounds = shard_bounds([u.duration for u in corpus], max_utts=max_shard_utts, max_seconds=max_shard_seconds)
        shard_paths = [shard_dir / f"{k:05d}.npz" for k in range(len(bounds))]
        stats = ExtractionStats(shards_total=len(bounds), world_size=world_size, rank=rank)
        # Rank 0's list of missing shards is everyone's, so a shard written meanwhile cannot change the split.
        todo = distributed.broadcast_from_main(
            [k for k, p in enumerate(shard_paths) if not p.is_file()] if rank == 0 else None)
        mine = [todo[i] for i in distributed.shards_for_rank(len(todo), rank, world_size)]
        n_mine = sum(bounds[k][1] - bounds[k][0] for k in mine)
        desc = f"extract {extractor.spec}" + (f" (rank 0 of {world_size})" if world_size > 1 else "")
        with tqdm(total=n_mine, unit="utt", desc=desc, disable=not progress or not mine or rank != 0) as bar:
            for k in mine:
                utts = corpus.utterances[bounds[k][0]:bounds[k][1]]
                if world_size > 1 and shard_paths[k].is_file():  # another process finished it meanwhile
                    bar.update(len(utts))
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
                _wait_visible(shard_paths)
            _consolidate(root, shard_dir, len(bounds), extractor, corpus)
        distributed.barrier()  # index.json is written
        if rank != 0:
            _wait_visible([root / "index.json"])
        store = cls(root)
        stats.wall_seconds = time.perf_counter() - t0
        store.stats = stats
        return store


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
    """Extract one shard and write it atomically; returns seconds spent in the model."""
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

    atomic_save(path, write)
    return t_model


def _consolidate(root: Path, shard_dir: Path, n_shards: int, extractor: Extractor, corpus: Corpus) -> None:
    """Stream shards into per-layer files, then write index.json last (the completion marker)."""
    shard_paths = [shard_dir / f"{k:05d}.npz" for k in range(n_shards)]
    from audit.vad import DURATION_SOURCE

    lengths = {layer: [] for layer in range(extractor.num_layers)}
    voiced = []
    for p in shard_paths:
        with np.load(p) as z:
            voiced.append(z["voiced"])
            for layer in lengths:
                lengths[layer].append(z[f"lengths_{layer}"])
    _save_npy(root / "voiced_seconds.npy", np.concatenate(voiced))
    for layer in range(extractor.num_layers):
        lens = np.concatenate(lengths[layer])
        if lens.size != len(corpus):
            raise StoreError(f"{root}: shards hold {lens.size} utterances, corpus has {len(corpus)}")
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        dim = extractor.hidden_sizes[layer]
        frames_tmp = root / f".frames_{layer}.npy.tmp"
        mm = np.lib.format.open_memmap(frames_tmp, mode="w+", dtype=np.float16, shape=(int(offsets[-1]), dim))
        means, stds, row = [], [], 0
        for p in shard_paths:
            with np.load(p) as z:
                f = z[f"frames_{layer}"]
                mm[row:row + f.shape[0]] = f
                row += f.shape[0]
                means.append(z[f"mean_{layer}"])
                stds.append(z[f"std_{layer}"])
        mm.flush()
        del mm
        os.replace(frames_tmp, root / f"frames_{layer}.npy")
        for name, arr in (("offsets", offsets), ("mean", np.concatenate(means)), ("std", np.concatenate(stds))):
            _save_npy(root / f"{name}_{layer}.npy", arr)
    index = {"version": STORE_VERSION, "utt_ids": [u.utt_id for u in corpus],
             "layer_names": extractor.layer_names, "hidden_sizes": extractor.hidden_sizes,
             "frame_rates": extractor.frame_rates, "extractor": extractor.describe(),
             "corpus": corpus.describe(), "corpus_fingerprint": corpus.fingerprint(),
             "extractor_fingerprint": extractor.fingerprint(), "duration_source": DURATION_SOURCE,
             "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_save(root / "index.json", lambda tmp: tmp.write_text(json.dumps(index, indent=1)))
    shutil.rmtree(shard_dir, ignore_errors=True)

"""Extraction benchmark: pipeline vs bare model forward, cold vs warm store, peak RSS at 1x and 4x audio.

Prints measured figures (nothing is asserted): seconds of compute per second of audio for

* the bare model forward on in-memory audio (the extractor called on pre-decoded clips),
* the full pipeline into a cold store (decode + forward + float16 + atomic shard writes + consolidation),
  timed alternately with the bare forward over a few rounds and quoted as medians,
* a warm store (same key: no model work),

and the peak resident memory of a fresh process extracting 1x and 4x the audio.

The same lines are measured on each device (``--devices``, default the CPU plus CUDA when
torch sees a GPU); on a GPU the pipeline's throughput is also given as a ratio of the bare
forward's (target >= 0.8) and the fresh processes report their peak GPU memory too. Without
a GPU one line says that the GPU lines were not measured.

Usage: ``python benchmarks/extraction.py [--model whisper-tiny.en] [--n 24] [--corpus PATH] [--devices cpu,cuda]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.audio import load_audio  # noqa: E402
from audit.corpus import Corpus, load_corpus  # noqa: E402
from audit.extractor import build_extractor  # noqa: E402
from audit.store import EmbeddingStore, _batches  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "librispeech_subset"


def pick_corpus(spec: str, n: int, repeat: int = 1) -> Corpus:
    """The first ``n`` utterances of ``spec`` (test-other when it is the shared subset), repeated."""
    corpus = load_corpus(spec)
    if any(u.attributes.get("subset") == "test-other" for u in corpus):
        corpus = corpus.where(["subset=test-other"])
    base = corpus.utterances[:n]
    utts = [replace(u, utt_id=f"{u.utt_id}_r{r}") for r in range(repeat) for u in base]
    return Corpus(corpus.name, utts)


def child_peak_rss(model: str, spec: str, n: int, repeat: int, batch_size: int, device: str = "cpu") -> dict:
    """Run one cold extraction on ``device`` in a fresh process; its peak RSS and GPU memory (MiB), audio seconds."""
    code = (
        "import json,resource,sys,tempfile; sys.path.insert(0, %r)\n"
        "import torch\n"
        "from benchmarks.extraction import pick_corpus\n"
        "from audit.extractor import build_extractor\nfrom audit.store import EmbeddingStore\n"
        "c = pick_corpus(%r, %d, %d)\n"
        "s = EmbeddingStore.build(build_extractor(%r, device=%r), c, cache_dir=tempfile.mkdtemp(), batch_size=%d, "
        "progress=False)\n"
        "gpu = torch.cuda.max_memory_allocated() / 2**20 if %r.startswith('cuda') else None\n"
        "print(json.dumps({'audio_s': c.total_seconds, 'n': len(c), 'gpu_mib': gpu, 'rss_mib': "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    ) % (str(ROOT), spec, n, repeat, model, device, batch_size, device)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(model: str, corpus: Corpus, spec: str, n: int, batch_size: int, device: str, rounds: int = 3) -> None:
    """Print the bare-forward, cold, warm and peak-memory lines of one device.

    The bare forward and the cold build are timed ``rounds`` times each, alternating (bare,
    cold, then cold, bare, ...), each cold build into an empty cache: one pair of single runs
    swung from -23% to +15% between sessions on this 2-core machine, so the overhead is quoted
    from the medians, with every round's figure beside it. Each cold build also times its own
    model calls, which splits its wall time into model and the rest (decode, checks, float16,
    atomic writes, consolidation) within the same run.
    """
    from statistics import median

    audio_s = corpus.total_seconds
    ext = build_extractor(model, device=device).load()
    wavs = [load_audio(u.path, start=u.start, end=u.end) for u in corpus]
    ext(wavs[:1])  # warm-up: first-call allocations are not what we measure

    def bare_forward() -> float:
        t = time.perf_counter()
        for batch in _batches([w.size for w in wavs], batch_size, ext.can_pad_batch):
            ext([wavs[i] for i in batch])
        return time.perf_counter() - t

    def cold_build(cache: str) -> tuple[float, float]:
        t = time.perf_counter()
        store = EmbeddingStore.build(ext, corpus, cache_dir=cache, batch_size=batch_size, progress=False)
        return time.perf_counter() - t, store.stats.model_seconds

    bares, colds = [], []
    with tempfile.TemporaryDirectory() as root:
        for r in range(rounds):
            for kind in (("bare", "cold") if r % 2 == 0 else ("cold", "bare")):
                if kind == "bare":
                    bares.append(bare_forward())
                else:
                    colds.append(cold_build(f"{root}/round{r}"))
        t = time.perf_counter()
        warm_store = EmbeddingStore.build(build_extractor(model, device=device), corpus,
                                          cache_dir=f"{root}/round{rounds - 1}", progress=False)
        warm = time.perf_counter() - t
    bare, cold = median(bares), median(c for c, _ in colds)
    in_model, outside = median(m for _, m in colds), median(c - m for c, m in colds)
    each = ", ".join(f"{100 * (c - b) / b:+.1f}%" for b, (c, _) in zip(bares, colds))
    print(f"[{device}] audio: {len(corpus)} utterances, {audio_s:.1f} s; {rounds} rounds, bare and cold alternating")
    print(f"[{device}] bare model forward : {bare:7.2f} s  = {bare / audio_s:.4f} s per audio-second "
          f"(median; rounds {', '.join(f'{b:.2f}' for b in bares)} s)")
    target = "target < 10%" if device == "cpu" else f"throughput {bare / cold:.2f}x the bare forward's; target >= 0.8"
    print(f"[{device}] pipeline, cold     : {cold:7.2f} s  = {cold / audio_s:.4f} s per audio-second "
          f"(median; overhead {100 * (cold - bare) / bare:+.1f}% vs bare, per round {each}; {target})")
    print(f"[{device}]   inside the cold builds: {in_model:.2f} s in the model, {outside:.2f} s outside it "
          f"({100 * outside / in_model:+.1f}% on top of its own model time; medians)")
    print(f"[{device}] pipeline, warm     : {warm:7.3f} s  = {warm / audio_s:.5f} s per audio-second "
          f"(cache hit: {warm_store.stats.cache_hit}; {colds[-1][0] / max(warm, 1e-9):.0f}x faster than its cold "
          f"build, {colds[-1][0]:.2f} s)")
    one = child_peak_rss(model, spec, n, 1, batch_size, device)
    four = child_peak_rss(model, spec, n, 4, batch_size, device)
    growth = 100 * (four["rss_mib"] - one["rss_mib"]) / one["rss_mib"]
    print(f"[{device}] peak RSS 1x ({one['audio_s']:.0f} s audio): {one['rss_mib']:.0f} MiB; "
          f"4x ({four['audio_s']:.0f} s audio): {four['rss_mib']:.0f} MiB; growth {growth:+.1f}% (target within 10%)")
    if one["gpu_mib"] is not None:
        growth = 100 * (four["gpu_mib"] - one["gpu_mib"]) / one["gpu_mib"]
        print(f"[{device}] peak GPU memory 1x: {one['gpu_mib']:.0f} MiB; 4x: {four['gpu_mib']:.0f} MiB; "
              f"growth {growth:+.1f}% (target within 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--n", type=int, default=24, help="utterances in the 1x corpus")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/cold rounds (median quoted)")
    parser.add_argument("--devices", help="comma-separated devices (default: cpu, plus cuda when torch sees a GPU)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: need at least 1")
    if args.corpus == str(DEFAULT_CORPUS) and not DEFAULT_CORPUS.exists():
        print(f"skipped: corpus {args.corpus} not present (the shared LibriSpeech subset is needed; "
              "or pass --corpus)")
        return
    import torch

    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"model {args.model}, corpus {args.corpus}, torch threads {torch.get_num_threads()}, "
          f"devices {', '.join(devices)}")
    corpus = pick_corpus(args.corpus, args.n)
    for device in devices:
        measure(args.model, corpus, args.corpus, args.n, args.batch_size, device, args.rounds)
    if not torch.cuda.is_available():
        print("GPU: none here (torch.cuda.is_available() is False): the GPU lines were not measured")


if __name__ == "__main__":
    main()

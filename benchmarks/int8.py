"""int8 benchmark: extraction speed and per-layer speaker-ID leakage of the int8 vs the float32 model.

Prints measured figures side by side (nothing is asserted):

* extraction speed of the float32 and the int8 extractor (torch dynamic quantisation of the
  Linear layers, CPU) on the same clips, in audio-seconds per second, and their ratio (target
  >= 1.5x): the bare model forward on pre-decoded clips, batch by batch with the two models
  alternating so that load from other jobs hits both alike; then the model seconds of each
  full store build;
* closed-set speaker identification per layer on each store, through the project's own attack
  family (split, attacker, CIs as in an audit): top-1 with its 95% CI for float32 and int8, and
  whether the CIs overlap, next to the relative error of the int8 frames.

The cold store builds alternate over ``--rounds`` (3) and their medians are quoted with every
round's figure.

Defaults: whisper-tiny.en on the test-other utterances of ``../shared/data/librispeech_subset``
(skipped with a message when absent); pooled logistic regression only.

Usage: ``python benchmarks/int8.py [--model whisper-tiny.en] [--corpus PATH] [--speed-n 24] [--batch-size 8]
[--rounds 3]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from attacks.speaker_id import SpeakerIDSettings, attack_speaker_id, feasibility, split_speaker_id  # noqa: E402
from audit.audio import load_audio  # noqa: E402
from audit.compare import Agreement  # noqa: E402
from audit.corpus import Corpus, load_corpus  # noqa: E402
from audit.embeddings import layer_set  # noqa: E402
from audit.extractor import Extractor, build_extractor  # noqa: E402
from audit.family import RunContext  # noqa: E402
from audit.pipeline import corpus_labels  # noqa: E402
from audit.results import fmt_ci  # noqa: E402
from audit.store import EmbeddingStore, _batches, store_key  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "librispeech_subset"
ATTACKERS = ["logreg"]


def audit_corpus(spec: str, n: int | None) -> Corpus:
    """The corpus (its test-other utterances when it has a ``subset`` column), the first ``n`` if given."""
    corpus = load_corpus(spec, progress=False)
    if any(u.attributes.get("subset") == "test-other" for u in corpus):
        corpus = corpus.where(["subset=test-other"])
    return Corpus(corpus.name, corpus.utterances[:n], corpus.filters) if n else corpus


def timed_forward(extractors: dict[str, Extractor], wavs: list[np.ndarray], batch_size: int) -> dict[str, float]:
    """Seconds each extractor spends on ``wavs``, batch by batch, the order of the two alternating per batch."""
    seconds = dict.fromkeys(extractors, 0.0)
    names = list(extractors)
    for k, batch in enumerate(_batches([w.size for w in wavs], batch_size, all(e.can_pad_batch
                                                                               for e in extractors.values()))):
        for name in names if k % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            extractors[name]([wavs[i] for i in batch])
            seconds[name] += time.perf_counter() - t
    return seconds


def linear_share(extractors: dict[str, Extractor], wavs: list[np.ndarray], batch_size: int) -> dict[str, tuple]:
    """Per extractor: (forward seconds, seconds inside its Linear layers), timed by forward hooks, models alternating.

    The Linear layers are what dynamic int8 quantisation replaces; the rest of the forward
    (attention kernels, convolutions, norms, copies) runs in float32 either way, which bounds
    the whole-forward speed-up (Amdahl).
    """
    import torch
    from torch.ao.nn.quantized import dynamic as qdynamic

    inside = dict.fromkeys(extractors, 0.0)
    handles = []
    for name, ext in extractors.items():
        modules = [m for v in vars(ext).values() for m in (v, getattr(v, "_net", None))
                   if isinstance(m, torch.nn.Module)]
        for linear in {id(x): x for m in modules for x in m.modules()
                       if isinstance(x, (torch.nn.Linear, qdynamic.Linear))}.values():
            started: list[float] = []
            handles.append(linear.register_forward_pre_hook(lambda *_, s=started: s.append(time.perf_counter())))

            def done(*_, s=started, key=name) -> None:
                inside[key] += time.perf_counter() - s.pop()

            handles.append(linear.register_forward_hook(done))
    try:
        total = timed_forward(extractors, wavs, batch_size)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (total[name], inside[name]) for name in extractors}


def frame_error(a: EmbeddingStore, b: EmbeddingStore, layer: int) -> float:
    """Relative Frobenius error ``||b - a|| / ||a||`` of one layer's frames over the whole store."""
    num = den = 0.0
    for i in range(len(a)):
        fa, fb = a.frames(layer, i).astype(np.float64), b.frames(layer, i).astype(np.float64)
        num += float(((fb - fa) ** 2).sum())
        den += float((fa ** 2).sum())
    return float(np.sqrt(num / den))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--n", type=int, default=None, help="utterances audited (default: all)")
    parser.add_argument("--speed-n", type=int, default=24, help="utterances in the alternating speed run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="cold store builds of each model, alternating")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: need at least 1")
    if not Path(args.corpus).exists():
        print(f"skipped: corpus {args.corpus} not present (the shared LibriSpeech subset is needed)")
        return
    import torch
    from threadpoolctl import threadpool_limits

    corpus = audit_corpus(args.corpus, args.n)
    print(f"model {args.model}, corpus {corpus.describe()}, torch threads {torch.get_num_threads()}, "
          f"quantized engine {torch.backends.quantized.engine}")
    extractors = {"fp32": build_extractor(args.model).load(),
                  "int8": build_extractor(args.model, quantize="int8").load()}
    print(f"int8: {extractors['int8'].settings['quantization']}")

    speed = corpus.utterances[:args.speed_n]
    wavs = [load_audio(u.path, start=u.start, end=u.end) for u in speed]
    audio_s = sum(w.size for w in wavs) / 16000
    for ext in extractors.values():
        ext(wavs[:1])  # warm-up: first-call allocations are not what we measure
    secs = timed_forward(extractors, wavs, args.batch_size)
    rate = {name: audio_s / s for name, s in secs.items()}
    print(f"\nextraction speed, bare forward, {len(wavs)} clips, {audio_s:.0f} s audio, batches alternating:")
    for name in extractors:
        print(f"  {name}: {secs[name]:7.2f} s = {rate[name]:6.1f} audio-s per s")
    print(f"  int8 / fp32 speed: {rate['int8'] / rate['fp32']:.2f}x (target >= 1.5x)")
    share = linear_share(extractors, wavs, args.batch_size)
    (fp_total, fp_linear), (q_total, q_linear) = share["fp32"], share["int8"]
    frac = fp_linear / fp_total
    print("  where the time goes (forward hooks on the Linear layers, the part int8 quantises; same clips again):")
    print(f"    Linear layers: fp32 {fp_linear:.2f} s of {fp_total:.2f} s ({100 * frac:.0f}%), int8 {q_linear:.2f} s "
          f"of {q_total:.2f} s: the quantised layers alone run {fp_linear / q_linear:.2f}x faster")
    print(f"    the other {100 * (1 - frac):.0f}% of the fp32 forward stays float32, so even free Linear layers would "
          f"give at most {1 / (1 - frac):.2f}x (Amdahl)")

    stores: dict[str, EmbeddingStore] = {}
    with tempfile.TemporaryDirectory() as cache:
        # Cold builds alternate (fp32 first, then int8 first, ...), each into an empty cache: one build of
        # each read 1.32x on one run and 1.48x on the next, so the medians of the rounds are quoted.
        model_s: dict[str, list[float]] = {name: [] for name in extractors}
        for r in range(args.rounds):
            for name in list(extractors) if r % 2 == 0 else list(extractors)[::-1]:
                store = EmbeddingStore.build(extractors[name], corpus, cache_dir=f"{cache}/{name}{r}",
                                             batch_size=args.batch_size, progress=False)
                model_s[name].append(store.stats.model_seconds)
                stores[name] = store
        keys = {name: store_key(ext, corpus) for name, ext in extractors.items()}
        print(f"\nstore builds, {len(corpus)} clips, {corpus.total_seconds:.0f} s audio, {args.rounds} cold builds "
              f"each, alternating (store keys differ: {keys['fp32'] != keys['int8']}):")
        for name, store in stores.items():
            median = float(np.median(model_s[name]))
            print(f"  {name}: model {median:7.2f} s = {store.stats.audio_seconds / median:6.1f} audio-s per s "
                  f"(median; rounds {', '.join(f'{x:.2f}' for x in model_s[name])} s)")
        ratios = [f / q for f, q in zip(model_s["fp32"], model_s["int8"])]
        print(f"  int8 / fp32 speed: {np.median(model_s['fp32']) / np.median(model_s['int8']):.2f}x (medians; per "
              f"round {', '.join(f'{x:.2f}' for x in ratios)}x)")

        settings = SpeakerIDSettings(attackers=list(ATTACKERS))
        labels = corpus_labels(corpus)
        split = split_speaker_id(labels, settings, args.seed)
        reason = feasibility(labels, split, settings)
        if reason:
            print(f"\nspeaker ID not measurable: {reason}")
            return
        n_layers = extractors["fp32"].num_layers
        run = RunContext(seed=args.seed, n_layers=n_layers)
        print(f"\nclosed-set speaker ID per layer: attackers {', '.join(ATTACKERS)} only (pooled mean+std; an "
              f"audit also runs the MLP and the frame-level ECAPA attacker), {len(split.train)} train / "
              f"{len(split.test)} test utterances, {len(set(corpus.speakers))} speakers, {settings.n_boot} "
              "bootstrap resamples; 95% CIs per layer (not adjusted for the pick of a layer)")
        print(f"  {'layer':<10}{'int8 frame err':>15}  {'fp32 top-1 [95% CI]':<24}{'int8 top-1 [95% CI]':<24}"
              f"{'diff':>7}  int8 inside fp32's CI")
        t0 = time.perf_counter()
        with threadpool_limits(limits=1, user_api="blas"):
            for layer in range(n_layers):
                res = {}
                for name, store in stores.items():
                    view = layer_set(store, corpus, layer)
                    ctx = run.layer(layer, store.frame_rates[layer])
                    res[name] = attack_speaker_id(view.subset(split.train), view.subset(split.test), settings, ctx)
                agreement = Agreement("speaker-ID top-1", f"layer {layer}",
                                      (res["fp32"]["top1"], res["fp32"]["ci95"]),
                                      (res["int8"]["top1"], res["int8"]["ci95"]), True)
                cells = [f"{100 * res[n]['top1']:5.1f}% {fmt_ci(res[n]['ci95'])}" for n in ("fp32", "int8")]
                error = frame_error(stores["fp32"], stores["int8"], layer)
                diff = 100 * (res["int8"]["top1"] - res["fp32"]["top1"])
                print(f"  {layer} {stores['fp32'].layer_names[layer]:<8}{error:>15.4f}  {cells[0]:<24}{cells[1]:<24}"
                      f"{diff:+6.1f}  {agreement.verdict}")
        print(f"  chance {100 * res['fp32']['chance']:.1f}%; attacks took {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()

"""The extractor and embedding store: batching, caching, resume after an interrupted extraction."""

from __future__ import annotations

import numpy as np
import pytest

from audit.audio import load_audio
from audit.corpus import load_manifest
from audit.errors import AudioError, ModelLoadError
from audit.extractor import build_extractor
from audit.store import EmbeddingStore
from tests.conftest import write_tone_corpus


class CountingExtractor:
    """Wraps an extractor, counts forward calls and can fail after ``fail_after`` calls."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.calls, self.fail_after = inner, 0, fail_after

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, wavs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        return self.inner(wavs)


def test_store_layout_and_pooled_stats(tone_corpus, tmp_path):
    corpus = load_manifest(tone_corpus)
    ext = build_extractor("tiny-random-wav2vec2")
    store = EmbeddingStore.build(ext, corpus, cache_dir=tmp_path / "store", progress=False)
    assert store.num_layers == ext.num_layers == 3 and len(store) == len(corpus)
    frames = store.frames(2, 5)
    wav = load_audio(corpus.utterances[5].path)
    direct = ext([wav])[0][2]
    assert frames.shape == direct.shape
    np.testing.assert_allclose(frames, direct, atol=2e-2 * np.abs(direct).max())
    np.testing.assert_allclose(store.pooled(2, "mean")[5], direct.mean(0), rtol=1e-4, atol=1e-5)
    assert store.pooled(1).shape == (len(corpus), 64)
    # the speaking time (voice activity detection) of every clip is measured while its audio is decoded
    voiced = store.voiced_seconds()
    assert voiced.shape == (len(corpus),) and "webrtcvad" in store.duration_source
    assert np.all(voiced <= np.array([u.duration for u in corpus]) + 0.03) and voiced.max() > 0.5


def test_second_build_does_no_model_work(tone_corpus, tmp_path):
    corpus = load_manifest(tone_corpus)
    first = CountingExtractor(build_extractor("tiny-random-wav2vec2"))
    EmbeddingStore.build(first, corpus, cache_dir=tmp_path, progress=False)
    again = CountingExtractor(build_extractor("tiny-random-wav2vec2"), fail_after=0)
    store = EmbeddingStore.build(again, corpus, cache_dir=tmp_path, progress=False)
    assert first.calls > 0 and again.calls == 0 and store.stats.cache_hit


def test_interrupted_extraction_resumes(tmp_path):
    corpus = load_manifest(write_tone_corpus(tmp_path / "c", n_speakers=3, n_utts=8))
    kw = dict(cache_dir=tmp_path / "store", progress=False, max_shard_utts=5, batch_size=5)
    killed = CountingExtractor(build_extractor("tiny-random-wav2vec2"), fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        EmbeddingStore.build(killed, corpus, **kw)
    resumed = CountingExtractor(build_extractor("tiny-random-wav2vec2"))
    store = EmbeddingStore.build(resumed, corpus, **kw)
    assert store.stats.shards_total == 5 and store.stats.shards_computed == 2
    fresh = EmbeddingStore.build(build_extractor("tiny-random-wav2vec2"), corpus, progress=False,
                                 cache_dir=tmp_path / "fresh", max_shard_utts=5)
    np.testing.assert_array_equal(store.pooled(1), fresh.pooled(1))


def test_bad_file_stops_extraction_but_keeps_finished_shards(tmp_path):
    root = write_tone_corpus(tmp_path / "c", n_speakers=2, n_utts=6)
    (root / "audio" / "spk1_5.wav").write_bytes(b"not audio at all")
    corpus = load_manifest(root)
    kw = dict(cache_dir=tmp_path / "store", progress=False, max_shard_utts=4)
    with pytest.raises(AudioError, match="spk1_5.wav"):
        EmbeddingStore.build(build_extractor("tiny-random-wav2vec2"), corpus, **kw)
    shards = list((tmp_path / "store").glob("*/shards/*.npz"))
    assert len(shards) == 2


def test_batched_equals_one_at_a_time(tone_corpus):
    ext = build_extractor("tiny-random-wav2vec2")
    wavs = [load_audio(u.path) for u in load_manifest(tone_corpus).utterances[::4]]
    batched = ext(wavs)
    single = [ext([w])[0] for w in wavs]
    dev = max(float(np.abs(b - s).max()) for bb, ss in zip(batched, single) for b, s in zip(bb, ss))
    assert dev < 1e-4, f"max deviation batched vs unbatched: {dev:.2e}"


def test_unknown_model_and_unreachable_hub_fail_in_one_line(monkeypatch):
    with pytest.raises(ModelLoadError, match="unknown model 'wav2vec-nonsense'"):
        build_extractor("wav2vec-nonsense")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        build_extractor("facebook/wav2vec2-base")
    message = str(err.value)
    assert "\n" not in message and "--model DIR" in message


def test_local_folder_goes_through_from_pretrained(tmp_path, tone_corpus):
    from transformers import Wav2Vec2FeatureExtractor

    tiny = build_extractor("tiny-random-wav2vec2")
    tiny._model.save_pretrained(tmp_path / "w2v")
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(tmp_path / "w2v")
    ext = build_extractor(str(tmp_path / "w2v"))
    assert not ext.can_pad_batch and ext.num_layers == 3
    wav = load_audio(load_manifest(tone_corpus).utterances[0].path)
    out = ext([wav])[0]
    np.testing.assert_allclose(out[2], tiny([wav])[0][2], atol=1e-4)


def test_hf_whisper_folder_slices_frames_like_the_offline_encoder(tmp_path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80)
    WhisperModel(config).save_pretrained(tmp_path / "wh")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(tmp_path / "wh")
    ext = build_extractor(str(tmp_path / "wh"))
    assert ext.num_layers == 3 and ext.frame_rates == [50.0] * 3
    wavs = [np.random.default_rng(i).standard_normal(n).astype(np.float32) * 0.1 for i, n in enumerate((16000, 40000))]
    out = ext(wavs)
    assert [o[0].shape for o in out] == [(50, 32), (125, 32)]
    dev = max(float(np.abs(a - b).max()) for a, b in zip(out[1], ext([wavs[1]])[0]))
    assert dev < 1e-4, f"batched vs unbatched deviation {dev:.2e}"

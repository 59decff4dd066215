"""Tests for audit.ge2e: fidelity to resemblyzer, layer shapes, speaker sanity, errors."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audit.errors import AudioError, ModelLoadError
from audit.ge2e import GE2EEncoder

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from resemblyzer import VoiceEncoder
    from resemblyzer.audio import normalize_volume

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LIBRI = DATA / "librispeech_subset"
SR = 16000


@pytest.fixture(scope="module")
def encoder() -> GE2EEncoder:
    return GE2EEncoder()


@pytest.fixture(scope="module")
def reference() -> VoiceEncoder:
    return VoiceEncoder("cpu", verbose=False)


@pytest.fixture(scope="module")
def test_other() -> dict[str, list[Path]]:
    """Utterance paths per test-other speaker, in manifest order."""
    manifest = LIBRI / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"LibriSpeech subset not found at {LIBRI}")
    by_speaker: dict[str, list[Path]] = {}
    with manifest.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["subset"] == "test-other":
                by_speaker.setdefault(row["speaker"], []).append(LIBRI / row["path"])
    if len(by_speaker) < 2:
        pytest.skip("fewer than two test-other speakers in the LibriSpeech subset")
    return by_speaker


def _load(path: Path) -> np.ndarray:
    wav, sr = sf.read(path, dtype="float32")
    assert sr == SR
    return wav


@pytest.fixture(scope="module")
def real_clip(test_other: dict[str, list[Path]]) -> np.ndarray:
    return _load(next(iter(test_other.values()))[0])


def _synthetic(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(0)
    tone = sum(np.sin(2 * np.pi * 130.0 * k * t) / k for k in range(1, 8))
    return (0.05 * tone + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def _reference_embedding(reference: VoiceEncoder, wav: np.ndarray) -> np.ndarray:
    return reference.embed_utterance(normalize_volume(wav, -30, increase_only=True))


@pytest.mark.parametrize("seconds", [None, 0.8])
def test_embed_utterance_matches_resemblyzer(encoder, reference, real_clip, seconds):
    wav = real_clip if seconds is None else real_clip[: int(seconds * SR)]
    ours = encoder.embed_utterance(wav)
    ref = _reference_embedding(reference, wav)
    assert ours.shape == (256,) and ours.dtype == np.float32
    assert np.max(np.abs(ours - ref)) < 1e-4
    assert float(ours @ ref) > 0.9999


def test_embedding_layer_matches_resemblyzer_partials(encoder, reference, real_clip):
    _, ref_partials, _ = reference.embed_utterance(
        normalize_volume(real_clip, -30, increase_only=True), return_partials=True
    )
    ours = encoder.layers(real_clip)[-1]
    assert ours.shape == ref_partials.shape
    assert np.max(np.abs(ours - ref_partials)) < 1e-4


def test_layer_shapes_and_frame_counts(encoder):
    assert encoder.layer_names == ["lstm1", "lstm2", "lstm3", "embedding"]
    assert encoder.num_layers == 4 and encoder.hidden_sizes == [256] * 4
    assert encoder.frame_rates[:3] == [100.0] * 3
    assert encoder.frame_rates[3] == pytest.approx(1 / 0.77)
    assert encoder.weights_path.name == "pretrained.pt" and encoder.weights_path.is_file()
    for seconds in (0.8, 3.3):
        wav = _synthetic(seconds)
        outs = encoder.layers(wav)
        assert len(outs) == encoder.num_layers
        for out, size in zip(outs, encoder.hidden_sizes):
            assert out.ndim == 2 and out.shape[1] == size and out.dtype == np.float32
            assert np.all(np.isfinite(out))
        for out in outs[:3]:
            assert abs(out.shape[0] - round(seconds * 100)) <= 2
        assert np.allclose(np.linalg.norm(outs[3], axis=1), 1.0, atol=1e-5)
        expected = np.mean(outs[3], axis=0)
        expected /= np.linalg.norm(expected)
        assert np.allclose(encoder.embed_utterance(wav), expected, atol=1e-6)
    assert encoder.layers(_synthetic(0.8))[3].shape[0] == 1
    assert encoder.layers(_synthetic(3.3))[3].shape[0] == 3


def test_same_speaker_more_similar_than_different(encoder, test_other):
    speakers = list(test_other)[:2]
    embeds = {
        spk: [encoder.embed_utterance(_load(p), source=str(p)) for p in test_other[spk][:2]]
        for spk in speakers
    }
    a, b = speakers
    same = [float(embeds[a][0] @ embeds[a][1]), float(embeds[b][0] @ embeds[b][1])]
    different = [float(x @ y) for x in embeds[a] for y in embeds[b]]
    assert min(same) > max(different) + 0.1, (same, different)


@pytest.mark.parametrize(
    "wav, problem",
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.full(SR, np.nan, dtype=np.float32), "NaN"),
        (np.array([0.1, np.inf, 0.2] * 1000, dtype=np.float32), "NaN or infinite"),
        (np.zeros(SR, dtype=np.float32), "silence"),
        (np.zeros((2, SR), dtype=np.float32), "1-D"),
    ],
)
def test_bad_audio_raises(encoder, wav, problem):
    for method in (encoder.layers, encoder.embed_utterance):
        with pytest.raises(AudioError, match=problem) as info:
            method(wav, source="clip.flac")
        assert "clip.flac" in str(info.value)


def test_bad_weights_raise(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(ModelLoadError, match="missing.pt"):
        GE2EEncoder(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="corrupt.pt"):
        GE2EEncoder(corrupt)

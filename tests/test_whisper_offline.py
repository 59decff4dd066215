"""Tests of the offline Whisper tiny.en loader, ASR judge and encoder hidden states."""

from __future__ import annotations

import csv
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.errors import AudioError, ModelLoadError
from audit.whisper_offline import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    WhisperBundle,
    encoder_hidden_states,
    load_whisper_tiny_en,
    model_dir,
    parse_ct2_model,
    read_ct2_model,
    transcribe,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def bundle() -> WhisperBundle:
    return load_whisper_tiny_en()


def _synthetic(seconds: float, seed: int) -> np.ndarray:
    """A voiced-like harmonic signal with a gliding pitch plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    f0 = 110.0 + 40.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    signal = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    return (0.1 * envelope * signal + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def _ct2_string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _ct2_file(version: int = 6, dtype_code: int = 4) -> bytes:
    """A tiny valid CTranslate2 file: one float16 (2, 3) variable and one alias."""
    values = np.arange(6, dtype="<f2").tobytes()
    return (
        struct.pack("<I", version)
        + _ct2_string("WhisperSpec")
        + struct.pack("<I", 3)
        + struct.pack("<I", 1)
        + _ct2_string("decoder/embeddings/weight")
        + struct.pack("<B", 2)
        + struct.pack("<II", 2, 3)
        + struct.pack("<B", dtype_code)
        + struct.pack("<I", len(values))
        + values
        + struct.pack("<I", 1)
        + _ct2_string("decoder/projection/weight")
        + _ct2_string("decoder/embeddings/weight")
    )


def test_read_ct2_model_parses_header_variables_and_aliases(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(_ct2_file())
    parsed = parse_ct2_model(path)
    assert (parsed.version, parsed.spec, parsed.revision) == (6, "WhisperSpec", 3)
    variables = read_ct2_model(path)
    weight = variables["decoder/embeddings/weight"]
    assert weight.dtype == np.float16 and weight.shape == (2, 3)
    np.testing.assert_array_equal(weight.ravel(), np.arange(6))
    assert variables["decoder/projection/weight"] is weight


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (_ct2_file(version=5), "version 5"),
        (_ct2_file(dtype_code=9), "unknown dtype code 9"),
        (_ct2_file() + b"\0", "trailing bytes"),
    ],
)
def test_read_ct2_model_rejects_malformed_files(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=re.escape(str(path))) as info:
        read_ct2_model(path)
    assert problem in str(info.value)


def test_read_ct2_model_on_truncated_weights_names_the_file(tmp_path: Path) -> None:
    source = model_dir() / "model.bin"
    truncated = tmp_path / "model.bin"
    with source.open("rb") as handle:
        truncated.write_bytes(handle.read(source.stat().st_size // 2))
    with pytest.raises(ModelLoadError, match=re.escape(str(truncated))) as info:
        read_ct2_model(truncated)
    assert "truncated" in str(info.value)


def test_loader_fills_every_tensor_once_with_matching_shapes(bundle: WhisperBundle) -> None:
    model = bundle.model
    state = model.state_dict()
    assert len(state) == 168
    assert bundle.filled.isdisjoint(bundle.tied)
    assert bundle.filled | set(bundle.tied) == set(state)
    assert len(bundle.filled) == len(state) - 1
    for name, source in bundle.tied.items():
        assert state[name].data_ptr() == state[source].data_ptr(), name
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in state.values())
    assert bundle.n_parameters == sum(p.numel() for p in model.parameters())
    assert not model.training
    config = model.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (384, 4, 4)
    assert (config.encoder_attention_heads, config.encoder_ffn_dim, config.vocab_size) == (6, 1536, 51864)
    assert (config.num_mel_bins, config.max_source_positions, config.max_target_positions) == (80, 1500, 448)

    ct2 = read_ct2_model(bundle.weights_path)
    fused = ct2["decoder/layer_2/self_attention/linear_0/weight"].astype(np.float32)
    layer = model.model.decoder.layers[2]
    np.testing.assert_array_equal(layer.self_attn.k_proj.weight.detach().numpy(), fused[384:768])
    cross = ct2["decoder/layer_2/attention/linear_1/bias"].astype(np.float32)
    np.testing.assert_array_equal(layer.encoder_attn.v_proj.bias.detach().numpy(), cross[384:])
    assert layer.self_attn.k_proj.bias is None and layer.encoder_attn.k_proj.bias is None


def test_transcribes_a_librispeech_test_other_clip(bundle: WhisperBundle) -> None:
    sf = pytest.importorskip("soundfile")
    jiwer = pytest.importorskip("jiwer")
    corpus = DATA / "librispeech_subset"
    manifest = corpus / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"shared data not found at {manifest}")
    with manifest.open(newline="", encoding="utf-8") as handle:
        row = next(r for r in csv.DictReader(handle) if r["subset"] == "test-other")
    audio, rate = sf.read(corpus / row["path"], dtype="float32")

    (hypothesis,) = transcribe(bundle, [audio], sample_rate=rate)

    def normalise(text: str) -> str:
        return " ".join(re.sub(r"[^\w\s']", " ", text.upper()).split())

    error = jiwer.wer(normalise(row["transcript"]), normalise(hypothesis))
    assert hypothesis == hypothesis.strip() and hypothesis
    assert error < 0.35, f"WER {error:.3f}: {hypothesis!r} vs {row['transcript']!r}"


def test_encoder_hidden_states_shapes_and_batch_invariance(bundle: WhisperBundle) -> None:
    clips = [_synthetic(3.3, 0), _synthetic(1.7, 1), _synthetic(5.05, 2)]
    batched = encoder_hidden_states(bundle, clips)
    single = [encoder_hidden_states(bundle, [clip])[0] for clip in clips]

    assert len(batched) == 3
    assert len(batched[0]) == 5
    assert all(layer.shape == (165, 384) and layer.dtype == np.float32 for layer in batched[0])
    for clip, layers in zip(clips, batched):
        assert all(layer.shape == (math.ceil(clip.size / FRAME_SAMPLES), 384) for layer in layers)
    deviation = max(
        float(np.max(np.abs(b - s))) for b_layers, s_layers in zip(batched, single) for b, s in zip(b_layers, s_layers)
    )
    assert deviation < 1e-4, f"batched vs one-at-a-time max abs deviation {deviation:.3g}"


def test_encoder_hidden_states_concatenates_30_s_windows(bundle: WhisperBundle) -> None:
    long_clip = _synthetic(31.0, 3)
    (layers,) = encoder_hidden_states(bundle, [long_clip])
    assert [layer.shape for layer in layers] == [(1550, 384)] * 5


def test_bad_audio_raises_audio_error(bundle: WhisperBundle) -> None:
    with pytest.raises(AudioError, match="clip 0"):
        encoder_hidden_states(bundle, [np.zeros((2, 100), dtype=np.float32)])
    with pytest.raises(AudioError, match="clip 1"):
        transcribe(bundle, [np.zeros(100, dtype=np.float32), np.array([np.nan], dtype=np.float32)])

"""The pluggable vocoder: a speechbrain HiFi-GAN folder loads offline, aligns, and fails clearly when absent."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.config import config_from_dict
from audit.errors import ConfigError, ModelLoadError
from audit.pipeline import AuditPipeline
from audit.vocoder import GriffinLimVocoder, HifiGanVocoder, build_vocoder
from tests.conftest import write_tone_corpus

# A tiny HiFi-GAN generator (upsampling 8 * 4 * 8 = 256 samples per frame, like the LibriTTS 16 kHz model)
# in speechbrain's folder layout: hyperparams.yaml + generator.ckpt.
TINY_HIFIGAN_YAML = """\
sample_rate: 16000
generator: !new:speechbrain.lobes.models.HifiGAN.HifiganGenerator
  in_channels: 80
  out_channels: 1
  resblock_type: "1"
  resblock_dilation_sizes: [[1, 3, 5]]
  resblock_kernel_sizes: [3]
  upsample_kernel_sizes: [16, 8, 16]
  upsample_initial_channel: 32
  upsample_factors: [8, 4, 8]
modules:
  generator: !ref <generator>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
  loadables:
    generator: !ref <generator>
"""


@pytest.fixture(scope="module")
def hifigan_folder(tmp_path_factory) -> Path:
    from hyperpyyaml import load_hyperpyyaml

    folder = tmp_path_factory.mktemp("hifigan")
    (folder / "hyperparams.yaml").write_text(TINY_HIFIGAN_YAML)
    torch.manual_seed(0)
    generator = load_hyperpyyaml(TINY_HIFIGAN_YAML)["generator"]
    torch.save(generator.state_dict(), folder / "generator.ckpt")
    return folder


def test_hifigan_folder_loads_with_its_hop_and_analysis(hifigan_folder):
    voc = HifiGanVocoder(str(hifigan_folder), trust_remote_code=True).load()
    assert (voc.hop_length, voc.frame_rate, voc.n_mels) == (256, 62.5, 80)
    wav = 0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    mel = voc.analyze(wav)
    assert mel.shape == (1 + 16000 // 256, 80)
    out = voc.synthesize(mel, length=wav.size)
    assert out.shape == wav.shape and out.dtype == np.float32 and np.all(np.isfinite(out))
    described = voc.describe()
    assert described["mel"]["hop_length"] == 256 and described["source"] == str(hifigan_folder)


def test_hifigan_output_is_aligned_with_its_input_frames(hifigan_folder):
    """The generator's own input padding is cut: a burst in frames 30-32 sounds around frame 31, not 36."""
    voc = HifiGanVocoder(str(hifigan_folder), trust_remote_code=True).load()
    silent = np.full((60, 80), np.log(1e-5), dtype=np.float32)
    burst = silent.copy()
    burst[30:33] = 0.0
    diff = np.abs(voc.synthesize(burst) - voc.synthesize(silent)).reshape(-1, voc.hop_length).sum(axis=1)
    centre = float(np.sum(np.arange(diff.size) * diff) / np.sum(diff))
    assert abs(centre - 31) < 2.5, centre


def test_vocoder_specs_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        build_vocoder("speechbrain/tts-hifigan-libritts-16kHz")
    assert time.monotonic() - start < 10
    assert "\n" not in str(info.value) and "tts-hifigan-libritts-16kHz" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no hyperparams.yaml"):
        build_vocoder(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="expected 'griffinlim'"):
        build_vocoder("wavenet")
    with pytest.raises(ConfigError, match="inversion.vocoder='wavenet'"):
        config_from_dict({"inversion": {"vocoder": "wavenet"}}).validate()
    assert isinstance(build_vocoder("griffinlim"), GriffinLimVocoder)


def test_unreachable_vocoder_fails_the_run_before_extraction(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=4, n_utts=3)
    cfg = config_from_dict({"model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(tmp_path / "r"),
                            "cache_dir": str(tmp_path / "s"), "progress": False,
                            "attacks": ["speaker_id", "inversion"],
                            "inversion": {"vocoder": "speechbrain/tts-hifigan-libritts-16kHz"}})
    with pytest.raises(ModelLoadError, match="vocoder"):
        AuditPipeline(cfg).run()
    assert not (tmp_path / "s").exists()  # nothing was extracted


def test_inversion_trains_on_the_neural_vocoders_mel(tmp_path, hifigan_folder):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=4, n_utts=5)
    out = tmp_path / "r"
    cfg = config_from_dict({"model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(out),
                            "cache_dir": str(tmp_path / "s"), "progress": False, "layers": [1],
                            "trust_remote_code": True,
                            "attacks": ["speaker_id", "inversion"],
                            "speaker_id": {"attackers": ["logreg"], "n_boot": 200},
                            "inversion": {"max_epochs": 2, "n_eval": 4, "n_examples": 1, "skip_judges": True,
                                          "n_boot": 200, "vocoder": str(hifigan_folder)}})
    with pytest.warns(UserWarning, match="skip_judges"):
        AuditPipeline(cfg).run()
    frame = json.loads((out / "results.json").read_text())["layers"][0]["attacks"]["inversion"]["frame"]
    assert frame["budget"]["vocoder"]["mel"]["hop_length"] == 256
    assert frame["budget"]["target_rate"] == 62.5
    assert "62.5 Hz" in frame["mel"]["mel_space"]
    assert any(f.endswith("_reconstruction.wav") for f in frame["files"])

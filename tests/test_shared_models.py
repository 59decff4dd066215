"""One Whisper tiny.en per run: the extractor and the ASR judge share the loaded weights."""

from __future__ import annotations

import audit.whisper_offline
from audit.extractor import SHARED_WHISPER, build_extractor
from audit.family import RunContext
from audit.judges import ASRJudge


def test_extractor_and_judge_load_whisper_once_per_run(monkeypatch):
    real = audit.whisper_offline.load_whisper_tiny_en
    loads = []

    def counting_load(*args, **kwargs):
        loads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(audit.whisper_offline, "load_whisper_tiny_en", counting_load)
    run = RunContext()
    judge = ASRJudge().load(run.once(SHARED_WHISPER, audit.whisper_offline.load_whisper_tiny_en))
    extractor = build_extractor("whisper-tiny.en")
    extractor.share_models(run.once)
    extractor.load()
    assert len(loads) == 1 and extractor._bundle is judge.bundle_
    int8 = build_extractor("whisper-tiny.en", quantize="int8")
    int8.share_models(run.once)
    int8.load()  # a quantised extractor never shares (it must not alter the judge's modules)
    assert len(loads) == 2 and int8._bundle is not judge.bundle_


def test_extractor_and_speaker_judge_share_ge2e():
    from audit.extractor import SHARED_GE2E
    from audit.ge2e import GE2EEncoder
    from audit.judges import SpeakerJudge

    run = RunContext()
    judge = SpeakerJudge().load(run.once(SHARED_GE2E, GE2EEncoder))
    extractor = build_extractor("ge2e")
    extractor.share_models(run.once)
    extractor.load()
    assert extractor._encoder is judge.encoder_


def test_hf_whisper_extractor_loads_the_encoder_only_and_matches_the_offline_one(tmp_path):
    import numpy as np
    from transformers import WhisperFeatureExtractor

    from audit.whisper_offline import load_whisper_tiny_en

    folder = tmp_path / "whisper-tiny.en"
    load_whisper_tiny_en().model.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    hf, offline = build_extractor(str(folder)).load(), build_extractor("whisper-tiny.en")
    assert sum(p.numel() for p in hf._model.parameters()) < 10_000_000  # no decoder built
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    for a, b in zip(hf([clip])[0], offline([clip])[0]):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-4

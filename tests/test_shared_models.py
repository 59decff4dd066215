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

"""The attackers' opt-in bfloat16 autocast (``attacker_precision``): checked by key, really bfloat16, still an attacker.

A bfloat16 attacker must still read a planted leak near 100% and pure noise at chance, and
the run's setting must reach every attacker network, in this process and in worker processes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.frame_speaker_id import FrameSpeakerID, budgeted_frame_attacker
from attacks.inversion import InversionDecoder, InversionSettings, _decoder
from attacks.speaker_id import SpeakerIDSettings, attack_speaker_id
from audit.cli import build_parser
from audit.config import AuditConfig
from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError
from audit.estimators import check_precision, mixed_precision, native_bfloat16
from audit.family import RunContext

FRAME = {"channels": 16, "emb_dim": 8, "crop_seconds": 1.0, "max_epochs": 6, "patience": 6, "batch_size": 8,
         "n_boot": 200, "learning_curve": False}


def speaker_frames(*, n_speakers: int = 4, n_utts: int = 10, dim: int = 16, leak: float = 3.0,
                   seed: int = 0) -> tuple[EmbeddingSet, EmbeddingSet]:
    """Train and test sets (half of each speaker's utterances each) whose frames sit ``leak`` sd from a speaker mean.

    ``leak = 0`` is pure noise: the frames say nothing about who spoke.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_speakers, dim)) * leak
    seqs, speakers = [], []
    for s in range(n_speakers):
        for _ in range(n_utts):
            seqs.append((centres[s] + rng.standard_normal((int(rng.integers(60, 100)), dim))).astype(np.float32))
            speakers.append(f"spk{s}")
    data = EmbeddingSet(np.stack([x.mean(0) for x in seqs]), np.array(speakers),
                        [f"utt{i}" for i in range(len(seqs))], frame_source=seqs.__getitem__)
    test = np.arange(len(seqs)) % 2 == 1
    return data.subset(np.flatnonzero(~test)), data.subset(np.flatnonzero(test))


def test_precision_is_checked_by_key():
    assert check_precision("bfloat16") == "bfloat16"
    with pytest.raises(ConfigError, match=r"^attacker_precision='float16': expected one of float32, bfloat16$"):
        AuditConfig(attacker_precision="float16").validate()
    with pytest.raises(ConfigError, match=r"^FrameSpeakerID: precision='half'"):
        FrameSpeakerID(**FRAME, precision="half").fit(speaker_frames()[0])
    with pytest.raises(ConfigError, match=r"^InversionDecoder: precision='fp16'"):
        InversionDecoder(input_rate=50, target_rate=100, precision="fp16").fit([np.zeros((50, 4))] * 2,
                                                                                 [np.zeros((100, 4))] * 2)
    args = build_parser().parse_args(["run", "--attacker-precision", "bfloat16"])
    assert args.attacker_precision == "bfloat16"
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["run", "--attacker-precision", "int8"])
    assert exit_info.value.code == 2


def test_bfloat16_is_a_reported_weakening_and_float32_is_not():
    assert not [w for w in AuditConfig().validate().weakening_settings() if "precision" in w]
    weak = [w for w in AuditConfig(attacker_precision="bfloat16").validate().weakening_settings() if "precision" in w]
    assert len(weak) == 1 and weak[0].startswith("attacker_precision='bfloat16'")


def test_mixed_precision_autocasts_only_under_bfloat16():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with mixed_precision("cpu", "float32"):
        assert layer(x).dtype == torch.float32
    with mixed_precision("cpu", "bfloat16"):
        assert layer(x).dtype == torch.bfloat16
    assert layer(x).dtype == torch.float32 and layer.weight.dtype == torch.float32


def test_bfloat16_frame_attacker_computes_in_bfloat16_and_reads_a_planted_leak():
    train, test = speaker_frames()
    fp32 = FrameSpeakerID(**FRAME).fit(train)
    bf16 = FrameSpeakerID(**FRAME, precision="bfloat16").fit(train)
    emb32, emb16 = fp32.transform(test), bf16.transform(test)
    assert emb16.dtype == np.float32 and all(p.dtype == torch.float32 for p in bf16.net_.parameters())
    assert not np.array_equal(emb32, emb16)  # the autocast is in effect ...
    result = bf16.evaluate(test)
    assert result.budget["precision"] == "bfloat16" and fp32.evaluate(test).budget["precision"] == "float32"
    assert result.metrics["top1"] >= 0.95  # ... and the attacker still finds who spoke
    assert result.metrics["ci95"][1] > result.metrics["ci95"][0]


def test_bfloat16_frame_attacker_reads_chance_on_pure_noise():
    train, test = speaker_frames(leak=0.0, n_speakers=4, n_utts=16)
    result = FrameSpeakerID(**FRAME, precision="bfloat16").fit(train).evaluate(test)
    low, high = result.metrics["ci95"]
    assert low <= result.chance <= high and result.metrics["top1"] < 0.5


def test_bfloat16_decoder_learns_a_planted_mapping_like_float32():
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((6, 10))
    frames = [rng.standard_normal((50, 6)).astype(np.float32) for _ in range(8)]
    mels = [np.repeat(x @ weights, 2, axis=0).astype(np.float32) for x in frames]
    kw = dict(input_rate=50, target_rate=100, channels=16, n_layers=1, max_epochs=15, lr=1e-2, batch_size=4)
    fp32 = InversionDecoder(**kw).fit(frames, mels)
    bf16 = InversionDecoder(**kw, precision="bfloat16").fit(frames, mels)
    pred = bf16.predict(frames[:2])
    assert all(p.dtype == np.float32 and np.isfinite(p).all() for p in pred)
    assert not np.array_equal(pred[0], fp32.predict(frames[:1])[0])
    first, last = bf16.history_[0]["val_loss"], bf16.budget_["best_val_loss"]
    assert last < 0.6 * first  # it learns the mapping ...
    assert last == pytest.approx(fp32.budget_["best_val_loss"], rel=0.1)  # ... about as well as float32
    assert bf16.budget_["precision"] == "bfloat16"


def test_the_run_precision_reaches_the_attacker_networks():
    ctx = RunContext(attacker_precision="bfloat16").layer(0, 50.0)
    assert ctx.attacker_precision == "bfloat16" and RunContext().layer(0, 50.0).attacker_precision == "float32"
    assert _decoder(InversionSettings(), 50.0, 100.0, 0, ctx.device, ctx.attacker_precision).precision == "bfloat16"
    assert budgeted_frame_attacker(SpeakerIDSettings(), seed=0, frame_rate=50.0,
                                   precision="bfloat16").precision == "bfloat16"
    train, test = speaker_frames(n_utts=6)
    settings = SpeakerIDSettings(attackers=["frame"], frame_max_epochs=1, frame_channels=16, n_boot=50)
    result = attack_speaker_id(train, test, settings, ctx)
    assert result["attackers"]["frame"]["budget"]["precision"] == "bfloat16"


def test_worker_processes_rebuild_the_run_settings_precision_included():
    run = RunContext(seed=3, n_layers=5, device="cpu", attacker_precision="bfloat16", trust_remote_code=True)
    run.once("memo", lambda: 1)
    rebuilt = RunContext(**run.settings())
    assert rebuilt.attacker_precision == "bfloat16" and rebuilt.settings() == run.settings()
    assert not rebuilt.has("memo")  # work done once per process is not shipped


def test_native_bfloat16_follows_the_cpu_probe(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    assert native_bfloat16("cpu") is False
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert native_bfloat16("cpu") is True

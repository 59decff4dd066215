"""The torch estimators' ``device``: CPU results unchanged, CUDA checked up front, the run's device passed through.

Also the frame attacker's batched embedding: padded batches of ragged sequences give each
sequence's one-at-a-time embedding (ECAPA and x-vector, chunked and tiled sequences included).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import attacks.frame_speaker_id as fsid
from attacks import speaker_id, verification
from attacks.frame_speaker_id import FrameSpeakerID, budgeted_frame_attacker, receptive_field, tile_frames
from attacks.inversion import InversionDecoder, InversionSettings, _decoder, _judges
from attacks.speaker_id import SpeakerIDSettings, attack_speaker_id
from attacks.verification import VerificationSettings, attack_verification
from audit import defense_runner
from audit.defense import DefenseContext
from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError
from audit.estimators import seeded, torch_device
from audit.family import RunContext
from audit.judges import ASRJudge, SpeakerJudge
from audit.utility import CTCProbe, UtilitySettings, UtilityTask, measure_utility
from defenses.adversarial import AdversarialDefense, AdversarialSettings

CUDA = torch.cuda.is_available()
FRAME = {"channels": 16, "emb_dim": 8, "crop_seconds": 1.0, "max_epochs": 3, "patience": 2, "batch_size": 8,
         "n_boot": 50, "learning_curve": False}
WORDS = ("yes", "no", "up", "down", "left", "right")


def frame_set(*, n_speakers: int = 4, n_utts: int = 6, dim: int = 8, seed: int = 0) -> EmbeddingSet:
    """Ragged frame sequences of speakers that differ in how the dimensions co-vary, with transcripts."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_speakers, dim))
    seqs, speakers, texts = [], [], []
    for s in range(n_speakers):
        for _ in range(n_utts):
            n = int(rng.integers(40, 90))
            seqs.append((rng.standard_normal((n, dim)) + rng.standard_normal((n, 1)) * signs[s]).astype(np.float32))
            speakers.append(f"spk{s}")
            texts.append(" ".join(rng.choice(WORDS, 2)))
    pooled = np.stack([np.concatenate([x.mean(0), x.std(0)]) for x in seqs]).astype(np.float32)
    return EmbeddingSet(pooled, np.array(speakers), [f"utt{i}" for i in range(len(seqs))],
                        {"label": np.array([str(i % 2) for i in range(len(seqs))], dtype=object)},
                        seqs.__getitem__, transcripts=np.array(texts, dtype=object))


@pytest.fixture()
def no_cuda(monkeypatch):
    """A machine without CUDA, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ---------------------------------------------------------------------------- the check


def test_torch_device_accepts_cpu_and_names_device_otherwise(no_cuda):
    assert torch_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"^FrameSpeakerID: device='{name}': CUDA is not available"):
            torch_device(name, "FrameSpeakerID")
    for name in ("auto", "gpu", "cuda:x", 0):
        with pytest.raises(ConfigError, match=r"device=.*expected 'cpu', 'cuda' or 'cuda:N'"):
            torch_device(name)


def test_contexts_carry_the_device():
    assert RunContext().device == "cpu" and DefenseContext().device == "cpu"
    assert RunContext(device="cuda:1").layer(0, 50.0).device == "cuda:1"


# ---------------------------------------------------------------------------- CPU unchanged


def test_frame_attacker_cpu_equals_default():
    data = frame_set()
    default, cpu = FrameSpeakerID(**FRAME).fit(data), FrameSpeakerID(**FRAME, device="cpu").fit(data)
    assert default.history_ == cpu.history_
    emb = cpu.transform(data)
    assert isinstance(emb, np.ndarray) and emb.dtype == np.float32
    np.testing.assert_array_equal(default.transform(data), emb)
    assert isinstance(cpu.mean_, np.ndarray) and cpu.net_.weight.device == torch.device("cpu")


def test_inversion_decoder_cpu_equals_default():
    rng = np.random.default_rng(0)
    frames = [rng.standard_normal((50, 6)).astype(np.float32) for _ in range(4)]
    mels = [rng.standard_normal((101, 10)).astype(np.float32) for _ in range(4)]
    kw = dict(input_rate=50, target_rate=100, channels=8, n_layers=1, max_epochs=2, spectral_convergence_weight=0.1)
    default, cpu = InversionDecoder(**kw).fit(frames, mels), InversionDecoder(**kw, device="cpu").fit(frames, mels)
    assert default.history_ == cpu.history_
    for a, b in zip(default.predict(frames[:2]), cpu.predict(frames[:2])):
        assert isinstance(b, np.ndarray)
        np.testing.assert_array_equal(a, b)


def test_ctc_probe_cpu_equals_default():
    data = frame_set(n_utts=4)
    kw = dict(hidden=8, max_epochs=2, batch_size=8, n_boot=50)
    default, cpu = CTCProbe(**kw).fit(data), CTCProbe(**kw, device="cpu").fit(data)
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in default.history_] == [
        {k: v for k, v in h.items() if k != "seconds"} for h in cpu.history_]
    assert default.transcribe(data) == cpu.transcribe(data)


@pytest.mark.parametrize("utility", [UtilityTask("ctc"), UtilityTask("classification", "label")])
def test_adversarial_defense_cpu_equals_default(utility):
    data = frame_set(n_utts=4)
    settings = AdversarialSettings(hidden=8, epochs=2)
    default = AdversarialDefense(settings, DefenseContext(utility=utility)).fit(data)
    cpu = AdversarialDefense(settings, DefenseContext(utility=utility, device="cpu")).fit(data)
    assert default.history_ == cpu.history_ and default.training_adversary_ == cpu.training_adversary_
    np.testing.assert_array_equal(default.transform(data).pooled, cpu.transform(data).pooled)


# ---------------------------------------------------------------------------- CUDA where there is none


def test_every_estimator_refuses_cuda_without_it(no_cuda):
    data = frame_set(n_utts=4)
    with pytest.raises(ConfigError, match=r"^FrameSpeakerID: device='cuda'"):
        FrameSpeakerID(**FRAME, device="cuda").fit(data)
    with pytest.raises(ConfigError, match=r"^CTCProbe: device='cuda'"):
        CTCProbe(device="cuda").fit(data)
    with pytest.raises(ConfigError, match=r"^InversionDecoder: device='cuda:1'"):
        InversionDecoder(input_rate=50, target_rate=100, device="cuda:1").fit([data.frames(0)] * 2,
                                                                                [np.zeros((160, 4))] * 2)
    with pytest.raises(ConfigError, match=r"^adversarial defense: device='cuda'"):
        AdversarialDefense(AdversarialSettings(), DefenseContext(utility=UtilityTask("ctc"), device="cuda")).fit(data)
    with pytest.raises(ConfigError, match=r"device='cuda'"):
        measure_utility(UtilityTask("ctc"), data, data, UtilitySettings(), 0, "cuda")
    with pytest.raises(ConfigError, match=r"^ASR judge: device='cuda'"):
        ASRJudge(device="cuda").load(bundle=object())
    with pytest.raises(ConfigError, match=r"^speaker judge: device='cuda:1'"):
        SpeakerJudge(device="cuda:1").load(encoder=object())


def test_families_pass_the_run_device_to_the_frame_attacker(no_cuda):
    data = frame_set(n_utts=4)
    ctx = RunContext(device="cuda").layer(0, 50.0)
    with pytest.raises(ConfigError, match=r"^FrameSpeakerID: device='cuda'"):
        attack_speaker_id(data, data, SpeakerIDSettings(attackers=["frame"]), ctx)
    with pytest.raises(ConfigError, match=r"^FrameSpeakerID: device='cuda'"):
        attack_verification(data, data, VerificationSettings(scorers=["lda", "frame"], n_boot=50), ctx)
    assert _decoder(InversionSettings(), 50.0, 100.0, 0, ctx.device).device == "cuda"
    with pytest.raises(ConfigError, match=r"^ASR judge: device='cuda'"):  # the inversion judges too
        _judges(InversionSettings(), RunContext(device="cuda"))
    assert budgeted_frame_attacker(SpeakerIDSettings(), seed=0, frame_rate=50.0, device="cuda:2").device == "cuda:2"
    assert speaker_id.budgeted_frame_attacker is verification.budgeted_frame_attacker is budgeted_frame_attacker


class _Seen(Exception):
    """Raised by a spy once it has recorded what it was given."""


def test_defense_runner_passes_the_layer_device(monkeypatch):
    seen = {}

    def spy_utility(task, train, test, settings, seed, device="cpu"):
        seen["utility"] = device
        raise _Seen

    def spy_build(settings, ctx):
        seen["defense"] = ctx.device
        raise _Seen

    monkeypatch.setattr(defense_runner, "measure_utility", spy_utility)
    data = frame_set(n_utts=2)
    rows = np.arange(len(data))
    plan = SimpleNamespace(splits={}, eval_rows=rows, fit_rows=rows, task=UtilityTask("classification", "label"),
                           utility_split=SimpleNamespace(train=rows, test=rows))
    cfg = SimpleNamespace(seed=0, progress=False, utility_probe=UtilitySettings())
    comparison = defense_runner._LayerComparison(plan, cfg, {}, data, RunContext(device="cuda:3").layer(0, 50.0))
    with pytest.raises(_Seen):
        comparison.defended(SimpleNamespace(name="spy", build=spy_build), {}, None)
    with pytest.raises(_Seen):
        comparison.reference()
    assert seen == {"defense": "cuda:3", "utility": "cuda:3"}


# ---------------------------------------------------------------------------- batched embedding


def _one_at_a_time(att: FrameSpeakerID, net: torch.nn.Module, seqs: list[np.ndarray]) -> np.ndarray:
    """The embedding loop before batching: one chunk per forward pass."""
    minimum = receptive_field(att.arch)
    out = np.empty((len(seqs), att.emb_dim), dtype=np.float32)
    net.eval()
    with torch.no_grad(), seeded(att.seed):
        for i, x in enumerate(seqs):
            pieces = np.array_split(x, math.ceil(x.shape[0] / fsid._MAX_FORWARD_FRAMES))
            emb = [net.embed(torch.from_numpy(tile_frames(p, minimum))[None]) for p in pieces]
            out[i] = torch.cat(emb).mean(0).numpy()
    return out


@pytest.mark.parametrize("arch", ["ecapa", "xvector"])
def test_batched_embedding_equals_one_at_a_time(arch, monkeypatch):
    monkeypatch.setattr(fsid, "_MAX_FORWARD_FRAMES", 150)  # chunk the long sequences
    monkeypatch.setattr(fsid, "_EMBED_BATCH_FRAMES", 600)  # several batches
    monkeypatch.setattr(fsid, "_EMBED_WINDOW", 9)  # several windows
    rng = np.random.default_rng(1)
    lengths = [5, 12, 30, 30, 30, 47, 60, 61, 99, 140, 149, 151, 320, 75, 88, 30, 2, 133]
    seqs = [rng.standard_normal((n, 12)).astype(np.float32) for n in lengths]
    att = FrameSpeakerID(arch=arch, channels=16, emb_dim=8, seed=3)
    with seeded(0):
        net = fsid._SpeakerNet(arch, np.full(12, 0.1), np.full(12, 1.3), 16, 8, 4)
        for m in net.modules():  # trained-looking BatchNorm statistics
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    reference = _one_at_a_time(att, net, seqs)
    batched = att._embed(net, len(seqs), seqs.__getitem__)
    assert batched.dtype == np.float32
    np.testing.assert_allclose(batched, reference, rtol=0, atol=1e-5)
    # Plain zero padding would miss the tolerance: the convolutions' reflect padding sees the zeros.
    x = np.zeros((2, 60, 12), dtype=np.float32)
    x[0, :30], x[1] = seqs[2], seqs[6]
    with torch.no_grad(), seeded(att.seed):
        naive = net.embed(torch.from_numpy(x), torch.tensor([30 / 60, 1.0]))[0].numpy()
    assert np.abs(naive - reference[2]).max() > 1e-5
    assert all(getattr(m, "_forward_pre_hooks", {}) == {} for m in net.modules())
    assert not any("_get_gauss_noise" in vars(m) for m in net.modules())


# ---------------------------------------------------------------------------- on a GPU


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_estimators_run_on_cuda_and_return_numpy():
    data = frame_set(n_utts=4)
    att = FrameSpeakerID(**FRAME, device="cuda").fit(data)
    assert att.net_.weight.is_cuda and isinstance(att.mean_, np.ndarray)
    emb = att.transform(data)
    assert isinstance(emb, np.ndarray) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert isinstance(att.evaluate(data).metrics["top1"], float)
    probe = CTCProbe(hidden=8, max_epochs=2, batch_size=8, n_boot=50, device="cuda").fit(data)
    assert all(isinstance(t, str) for t in probe.transcribe(data))
    defense = AdversarialDefense(AdversarialSettings(hidden=8, epochs=2),
                                 DefenseContext(utility=UtilityTask("ctc"), device="cuda")).fit(data)
    assert isinstance(defense.transform(data).frames(0), np.ndarray)
    dec = InversionDecoder(input_rate=50, target_rate=100, channels=8, n_layers=1, max_epochs=2,
                           device="cuda").fit([data.frames(i) for i in range(4)],
                                              [np.zeros((2 * data.frames(i).shape[0], 4)) for i in range(4)])
    assert isinstance(dec.predict([data.frames(0)])[0], np.ndarray)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_embeds_like_the_cpu_in_float32():
    data = frame_set()
    att = FrameSpeakerID(**FRAME).fit(data)
    on_cpu = att.transform(data)
    att.net_.to("cuda")
    np.testing.assert_allclose(att.transform(data), on_cpu, rtol=0, atol=1e-4)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_judges_on_cuda_hear_what_the_cpu_judges_hear():
    from pathlib import Path

    from audit.audio import load_audio
    from audit.ge2e import GE2EEncoder
    from audit.whisper_offline import load_whisper_tiny_en

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech_subset" / "audio" / "test-other"
    files = sorted(folder.glob("*/*.flac"))[:4]
    if not files:
        pytest.skip(f"shared data {folder} not present")
    wavs = [load_audio(f) for f in files]
    bundle, encoder = load_whisper_tiny_en(), GE2EEncoder()
    on_cpu = ASRJudge().load(bundle).transcribe(wavs), SpeakerJudge().load(encoder).embed(wavs)
    asr, spk = ASRJudge(device="cuda").load(bundle), SpeakerJudge(device="cuda").load(encoder)
    assert asr.transcribe(wavs) == on_cpu[0]
    np.testing.assert_allclose(spk.embed(wavs), on_cpu[1], rtol=0, atol=1e-4)
    # the shared CPU models were copied to the GPU, not moved
    assert next(bundle.model.parameters()).device.type == "cpu"
    assert next(encoder._net.parameters()).device.type == "cpu"

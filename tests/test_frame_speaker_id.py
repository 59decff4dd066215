"""Frame-level speaker ID: generated frame sequences (no audio), tiny ECAPA/x-vector budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.frame_speaker_id import FrameSpeakerID, receptive_field
from attacks.speaker_id import LogisticSpeakerID
from audit.curves import epoch_capped
from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError, StoreError
from audit.splits import utterance_split

TINY = {"channels": 32, "emb_dim": 16, "crop_seconds": 1.0, "max_epochs": 8, "patience": 3,
        "batch_size": 16, "n_boot": 200, "learning_curve": False}


def frame_set(*, n_speakers: int = 5, n_utts: int = 8, dim: int = 16, signal: float = 0.8,
              seed: int = 0) -> EmbeddingSet:
    """Speakers differ only in how the dimensions co-vary over time, not in per-dimension stats.

    Frame ``t`` of speaker ``s`` is ``noise_t + signal * z_t * sign_s`` with a random scalar
    ``z_t`` and a speaker's random +-1 vector ``sign_s``: every dimension has mean 0 and the
    same variance for every speaker, so pooled mean/std carry (almost) nothing, while a
    network that projects frames before pooling finds the speaker.
    """
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_speakers, dim))
    seqs, speakers = [], []
    for s in range(n_speakers):
        for _ in range(n_utts):
            n = int(rng.integers(100, 201))
            x = rng.standard_normal((n, dim)) + signal * rng.standard_normal((n, 1)) * signs[s]
            seqs.append(x.astype(np.float32))
            speakers.append(f"spk{s}")
    pooled = np.stack([np.concatenate([x.mean(0), x.std(0)]) for x in seqs])
    return EmbeddingSet(pooled, np.array(speakers), [f"utt{i}" for i in range(len(seqs))],
                        frame_source=lambda i: seqs[i])


def split_sets(data: EmbeddingSet) -> tuple[EmbeddingSet, EmbeddingSet]:
    split = utterance_split(data.speakers, test_fraction=0.375, seed=0)
    return data.subset(split.train), data.subset(split.test)


@pytest.fixture(scope="module")
def signal_sets() -> tuple[EmbeddingSet, EmbeddingSet]:
    return split_sets(frame_set())


@pytest.fixture(scope="module")
def fitted(signal_sets) -> FrameSpeakerID:
    return FrameSpeakerID(**TINY).fit(signal_sets[0])


def test_frame_attacker_beats_chance_where_pooled_stats_are_weak(signal_sets, fitted):
    train, test = signal_sets
    result = fitted.evaluate(test)
    assert result.attack == "speaker_id" and result.attacker == "frame-ecapa"
    assert result.chance == pytest.approx(1 / 5)
    assert result.metrics["ci95"][0] > result.chance
    pooled = LogisticSpeakerID(n_boot=200).fit(train).evaluate(test)
    assert result.metrics["top1"] > pooled.metrics["top1"]
    budget = result.budget
    assert budget["n_train"] + budget["n_val"] == len(train) and budget["n_val"] == 5
    assert 1 <= budget["best_epoch"] <= budget["epochs"] <= TINY["max_epochs"]
    assert budget["steps"] > 0 and budget["n_params"] > 0 and budget["crop_frames"] == 50
    assert result.converged == (budget["epochs"] < TINY["max_epochs"])
    assert fitted.mean_.shape == fitted.std_.shape == (16,)


def test_transform_returns_speaker_embeddings(signal_sets, fitted):
    emb = fitted.transform(signal_sets[1])
    assert emb.shape == (len(signal_sets[1]), TINY["emb_dim"]) and emb.dtype == np.float32
    assert np.isfinite(emb).all()


def test_same_seed_same_result_and_global_rng_untouched(signal_sets, fitted):
    train, test = signal_sets
    state = torch.random.get_rng_state()
    again = FrameSpeakerID(**TINY).fit(train)
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(again.transform(test), fitted.transform(test))
    assert again.evaluate(test).metrics == fitted.evaluate(test).metrics


def test_pure_noise_stays_near_chance():
    train, test = split_sets(frame_set(signal=0.0, seed=1))
    result = FrameSpeakerID(**TINY).fit(train).evaluate(test)
    low, high = result.metrics["ci95"]
    assert low <= result.chance <= high


def test_learning_curve_and_sequences_shorter_than_receptive_field():
    rng = np.random.default_rng(2)
    seqs = [rng.standard_normal((int(rng.integers(2, 6)), 8)).astype(np.float32) for _ in range(12)]
    data = EmbeddingSet(np.zeros((12, 16)), np.repeat(["a", "b", "c"], 4), [str(i) for i in range(12)],
                        frame_source=lambda i: seqs[i])
    attacker = FrameSpeakerID(**{**TINY, "arch": "xvector", "frame_rate": 1.3, "max_epochs": 2,
                                 "learning_curve": True}).fit(data)
    assert attacker.crop_frames == receptive_field("xvector")
    assert attacker.transform(data).shape == (12, TINY["emb_dim"])
    result = attacker.evaluate(data)
    assert result.attacker == "frame-xvector"
    assert [row["fraction"] for row in result.learning_curve] == [0.25, 0.5, 1.0]
    # the epoch curve behind `converged` is recorded, one row per epoch run
    history = result.budget["history"]
    assert [row["epoch"] for row in history] == [1, 2] == list(range(1, result.budget["epochs"] + 1))
    assert all(0.0 <= row["val_top1"] <= 1.0 and row["train_loss"] > 0 for row in history)


def test_an_attacker_cut_off_by_max_epochs_reads_as_epoch_capped(signal_sets):
    train, test = signal_sets
    cut = FrameSpeakerID(**{**TINY, "max_epochs": 1}).fit(train).evaluate(test).to_dict()
    assert cut["converged"] is False and epoch_capped(cut) == {"epochs": 1, "best_epoch": 1}
    # the early stop fired (patience 1 within 8 epochs): not capped, even with the same budget keys
    early = FrameSpeakerID(**{**TINY, "patience": 1}).fit(train)
    assert early.converged_ and epoch_capped(early.evaluate(test).to_dict()) is None
    assert early.record_["epochs"] < 8


def test_max_train_frames_caps_the_cache(signal_sets):
    train = signal_sets[0]
    attacker = FrameSpeakerID(**{**TINY, "max_epochs": 1, "max_train_frames": 2000}).fit(train)
    cached = attacker.cached_frames_
    assert cached <= 2000 + len(train) and cached < attacker.total_train_frames_
    assert attacker.evaluate(signal_sets[1]).budget["train_frames_total"] == attacker.total_train_frames_


@pytest.mark.parametrize("bad", [{"arch": "lstm"}, {"channels": 20}, {"val_fraction": 1.0},
                                 {"frame_rate": 0}, {"batch_size": 1}, {"max_train_frames": 0}])
def test_invalid_settings_name_the_value(signal_sets, bad):
    (key, value), = bad.items()
    with pytest.raises(ConfigError, match=f"{key}={value!r}"):
        FrameSpeakerID(**{**TINY, **bad}).fit(signal_sets[0])


def test_unfitted_and_pooled_only_inputs_fail_clearly(signal_sets):
    with pytest.raises(RuntimeError, match="not fitted"):
        FrameSpeakerID().transform(signal_sets[1])
    train = signal_sets[0]
    pooled_only = EmbeddingSet(train.pooled, train.speakers, train.utt_ids)
    with pytest.raises(StoreError, match="pooled-only"):
        FrameSpeakerID(**TINY).fit(pooled_only)

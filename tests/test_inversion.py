"""Inversion decoders on generated data: overfitting, shapes, seeding, the shuffled-alignment check."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from attacks.inversion import (InversionDecoder, VoiceProfileDecoder, audio_log_mels, default_n_frames,
                               envelope_lsd_db, resample_frames, shuffle_alignment)
from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError, CorpusError
from audit.signal_metrics import MEL_SETTINGS

IN_RATE, DIM, LATENT, N_MELS, SECONDS = 50.0, 16, 4, 80, 2.0
OUT_RATE = MEL_SETTINGS.frame_rate


def smooth_corpus(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Smooth random signals sampled at frame centres (50 Hz) and mapped frame-wise to "mels".

    Each utterance is a continuous 4-d latent ``z(t)`` (sums of slow sinusoids) seen through a
    fixed random linear map to 16 dimensions; the inputs are ``x((k + 0.5) / 50)``, the targets
    ``f(z(j / 100))`` for a fixed random nonlinear ``f: R^4 -> R^80``, so the decoder must get
    the time alignment right to fit them.
    """
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((LATENT, DIM))
    w1, w2 = rng.standard_normal((LATENT, 32)) / 2.0, rng.standard_normal((32, N_MELS))
    bias = np.linspace(-6.0, 1.0, N_MELS)
    frames, mels = [], []
    for _ in range(n):
        freq = rng.uniform(0.3, 2.0, (3, LATENT))
        phase = rng.uniform(0, 2 * np.pi, (3, LATENT))
        amp = rng.uniform(0.5, 1.5, (3, LATENT))

        def signal(t: np.ndarray) -> np.ndarray:
            return np.sum(amp * np.sin(2 * np.pi * freq * t[:, None, None] + phase), axis=1)

        t_in = (np.arange(int(SECONDS * IN_RATE)) + 0.5) / IN_RATE
        t_out = np.arange(default_n_frames(t_in.size, IN_RATE, OUT_RATE)) / OUT_RATE
        frames.append((signal(t_in) @ mix).astype(np.float32))
        mels.append((np.tanh(signal(t_out) @ w1) @ w2 + bias).astype(np.float32))
    return frames, mels


def small_decoder(**kw) -> InversionDecoder:
    settings = dict(input_rate=IN_RATE, target_rate=OUT_RATE, channels=64, n_layers=2, kernel_size=3,
                    max_epochs=120, patience=120, batch_size=8, lr=5e-3, crop_seconds=1.0, seed=0)
    return InversionDecoder(**{**settings, **kw})


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny networks: one torch thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus() -> tuple[list[np.ndarray], list[np.ndarray]]:
    return smooth_corpus(6)


@pytest.fixture(scope="module")
def fitted(corpus) -> InversionDecoder:
    return small_decoder().fit(*corpus)


def test_resample_frames_follows_frame_centres() -> None:
    t_in = (np.arange(20) + 0.5) / IN_RATE
    out = resample_frames(t_in[:, None], IN_RATE, OUT_RATE)
    t_out = np.arange(out.shape[0]) / OUT_RATE
    inside = (t_out >= t_in[0]) & (t_out <= t_in[-1])
    assert out.shape == (default_n_frames(20, IN_RATE, OUT_RATE), 1) == (41, 1)
    np.testing.assert_allclose(out[inside, 0], t_out[inside], atol=1e-6)
    assert out[0, 0] == pytest.approx(t_in[0]) and out[-1, 0] == pytest.approx(t_in[-1])


def test_decoder_overfits_tiny_corpus(fitted: InversionDecoder) -> None:
    train = [row["train_loss"] for row in fitted.history_]
    assert min(train) < train[0] / 10
    assert fitted.budget_["n_train"] == 5 and fitted.budget_["n_val"] == 1
    assert fitted.budget_["epochs"] == 120 and fitted.converged_ is False
    assert 1 <= fitted.budget_["best_epoch"] <= 120
    assert fitted.budget_["params"] == sum(p.numel() for p in fitted.net_.parameters())
    assert fitted.mean_.shape == fitted.std_.shape == (DIM,)
    assert fitted.target_mean_.shape == (N_MELS,)


def test_predict_returns_requested_frames(fitted: InversionDecoder, corpus) -> None:
    frames, mels = corpus
    pred = fitted.predict(frames[:2], n_frames=[150, 257])
    assert [p.shape for p in pred] == [(150, N_MELS), (257, N_MELS)]
    assert all(p.dtype == np.float32 and np.isfinite(p).all() for p in pred)
    default = fitted.predict(frames[:1])[0]
    assert default.shape == mels[0].shape
    assert np.mean(np.abs(default - mels[0])) < np.mean(np.abs(mels[0] - mels[0].mean(0)))
    data = EmbeddingSet(np.zeros((2, 1)), np.array(["a", "b"]), ["u0", "u1"], frame_source=frames.__getitem__)
    np.testing.assert_array_equal(fitted.predict_set(data)[1], fitted.predict(frames[1:2])[0])


def test_same_seed_same_weights(corpus) -> None:
    frames, mels = corpus
    a = small_decoder(max_epochs=3).fit(frames, mels)
    b = small_decoder(max_epochs=3).fit(frames, mels)
    threads = torch.get_num_threads()
    c = small_decoder(max_epochs=3, seed=1, num_threads=threads + 1).fit(frames, mels)
    assert torch.get_num_threads() == threads and c.budget_["torch_threads"] == threads + 1
    for key, value in a.net_.state_dict().items():
        assert torch.equal(value, b.net_.state_dict()[key])
    assert any(not torch.equal(v, c.net_.state_dict()[k]) for k, v in a.net_.state_dict().items())
    assert a.history_ == b.history_


def test_shuffled_alignment_scores_clearly_worse(fitted: InversionDecoder, corpus) -> None:
    frames, mels = corpus
    shuffled = shuffle_alignment(frames, seed=0)
    assert [s.shape for s in shuffled] == [f.shape for f in frames]
    assert not any(np.array_equal(s, f) for s, f in zip(shuffled, frames))
    null = small_decoder(max_epochs=60, patience=10).fit(shuffled, mels)
    assert null.budget_["best_val_loss"] > 3 * fitted.budget_["best_val_loss"]


def test_spectral_convergence_and_early_stop(corpus) -> None:
    frames, mels = corpus
    dec = small_decoder(spectral_convergence_weight=0.5, max_epochs=200, patience=2, lr=3e-2,
                        min_delta=0.0).fit(frames, mels)
    assert dec.converged_ is True and dec.budget_["epochs"] < 200
    assert dec.budget_["epochs"] - dec.budget_["best_epoch"] == 2
    assert np.isfinite([row["val_loss"] for row in dec.history_]).all()


def test_improvements_below_min_delta_do_not_extend_training(corpus) -> None:
    """Patience counts only relative improvements of at least min_delta; the best weights by any improvement stay."""
    frames, mels = corpus
    dec = small_decoder(max_epochs=40, patience=3, min_delta=0.9).fit(frames, mels)
    losses = [row["val_loss"] for row in dec.history_]
    # no epoch cuts the loss by 90%, so training stops `patience` epochs after the first one
    assert dec.converged_ is True and dec.budget_["epochs"] == 1 + 3
    assert dec.budget_["best_epoch"] == int(np.argmin(losses)) + 1 > 1
    assert dec.budget_["min_delta"] == 0.9
    with pytest.raises(ConfigError, match="min_delta=1.5"):
        small_decoder(min_delta=1.5).fit(frames, mels)


def test_decoder_rejects_bad_input(corpus) -> None:
    frames, mels = corpus
    with pytest.raises(ConfigError, match="num_threads=0"):
        small_decoder(num_threads=0).fit(frames, mels)
    with pytest.raises(ConfigError, match="kernel_size=4"):
        small_decoder(kernel_size=4).fit(frames, mels)
    with pytest.raises(ConfigError, match="target_rate=62.5"):
        small_decoder(target_rate=62.5).fit(frames, mels)
    with pytest.raises(CorpusError, match="2 frame sequences but 3"):
        small_decoder().fit(frames[:2], mels[:3])
    with pytest.raises(RuntimeError, match="not fitted"):
        small_decoder().predict(frames)
    with pytest.raises(CorpusError, match=">= 2 utterances"):
        shuffle_alignment(frames[:1], seed=0)


def test_voice_profile_beats_mean_baseline() -> None:
    rng = np.random.default_rng(0)
    pooled = rng.standard_normal((90, 24))
    envelope = pooled @ rng.standard_normal((24, N_MELS)) * 0.3 + np.linspace(-6, 1, N_MELS)
    mels = [e + 0.5 * rng.standard_normal((int(rng.integers(20, 60)), N_MELS)) for e in envelope]
    dec = VoiceProfileDecoder(n_boot=200).fit(pooled[:60], mels[:60])
    assert dec.predict(pooled[60:]).shape == (30, N_MELS)
    result = dec.evaluate(pooled[60:], mels[60:])
    assert result.metrics["lsd_db"] < 0.5 * result.metrics["baseline_lsd_db"]
    assert result.metrics["ci95"][1] < result.metrics["baseline_ci95"][0]
    assert result.chance == result.metrics["baseline_lsd_db"] and result.metrics["lsd_gain_db"] > 0
    assert dec.alpha_ in dec.alpha_grid and set(dec.budget_["validation_lsd_db"]) == {"0.1", "1.0", "10.0", "100.0"}


def test_envelope_lsd_definition() -> None:
    true = np.zeros((2, N_MELS))
    pred = np.zeros((2, N_MELS))
    pred[1] = np.log(10.0)
    np.testing.assert_allclose(envelope_lsd_db(pred, true), [0.0, 20.0])


def test_audio_log_mels_are_vocoder_targets() -> None:
    t = np.arange(16000) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    (mel,) = audio_log_mels([wav])
    assert mel.shape == (default_n_frames(50, IN_RATE, OUT_RATE), N_MELS) == (1 + wav.size // 160, N_MELS)


def test_inversion_table_says_how_many_clips_stoi_measured() -> None:
    from attacks.inversion import inversion_table

    def layer(index: int, signal: dict) -> dict:
        frame = {"signal": signal, "vocoder_copy_signal": signal, "content": "skipped", "speaker": "skipped"}
        return {"index": index, "name": f"l{index}", "attacks": {"inversion": {"frame": frame}}}

    some = {"mcd_db": 5.0, "lsd_db": 9.0, "stoi": 0.71, "stoi_not_measurable": 2, "stoi_n_utterances": 20}
    none = {"mcd_db": 5.0, "lsd_db": 9.0, "stoi": None, "stoi_not_measurable": 20, "stoi_n_utterances": 20}
    full = {"mcd_db": 5.0, "lsd_db": 9.0, "stoi": 0.8, "stoi_not_measurable": 0, "stoi_n_utterances": 20}
    table = inversion_table({"layers": [layer(1, some), layer(2, none), layer(3, full)]})
    cells = [row[4] for row in table.rows]
    assert cells[:3] == ["0.710 (18/20 clips)", "n/a (0/20 clips)", "0.800"]
    assert "fewer than 30 frames" in table.notes[0] and "not scored 0" in table.notes[0]

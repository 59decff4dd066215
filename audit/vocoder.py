"""The inversion attack's default vocoder: log-mel analysis and Griffin-Lim synthesis.

The inversion decoder predicts the project's log-mel (:func:`log_mel`, settings
:data:`audit.signal_metrics.MEL_SETTINGS`); :class:`GriffinLimVocoder` turns such
a matrix back into 16 kHz audio (least-squares inverse mel filterbank, then
Griffin-Lim phase retrieval), so the judges can listen to it. Being untrained,
it works offline and adds no learned prior about speakers: what the judges
recover comes from the embeddings, up to the vocoder's own loss, which the
"vocoder copy" (original -> log-mel -> vocoder) measures.
"""

from __future__ import annotations

import numpy as np
import torch

from audit.signal_metrics import MEL_SETTINGS, log_mel_spectrogram


def log_mel(wav: np.ndarray) -> np.ndarray:
    """The project's log-mel of a 16 kHz mono waveform (the decoder's target).

    ``logmel[t, m] = ln(max(sum_k fb[k, m] * |STFT(wav)[k, t]|, 1e-5))`` with
    :data:`~audit.signal_metrics.MEL_SETTINGS` (Hann 1024, hop 160, 80 Slaney
    mels over 0-8 kHz, magnitude, natural log).

    Parameters
    ----------
    wav : ndarray of shape (n,)
        Mono waveform at 16 kHz.

    Returns
    -------
    ndarray of shape (1 + n // 160, 80), float32
    """
    s = MEL_SETTINGS
    return log_mel_spectrogram(wav, sr=s.sample_rate, n_fft=s.n_fft, hop=s.hop_length, n_mels=s.n_mels)


class GriffinLimVocoder:
    """Log-mel to waveform: least-squares inverse mel, then Griffin-Lim.

    ``synthesize``: ``M = exp(logmel).T`` (mel magnitude);
    ``S = relu(argmin_S ||fb.T @ S - M||)`` (minimum-norm least squares,
    ``torchaudio.transforms.InverseMelScale``); then ``n_iter`` iterations of
    fast Griffin-Lim (``torchaudio.transforms.GriffinLim``, magnitude
    ``power=1``, ``momentum``, random initial phase from ``seed``) with the
    STFT of :data:`~audit.signal_metrics.MEL_SETTINGS`.

    Parameters
    ----------
    n_iter : int, default=32
        Griffin-Lim iterations.
    momentum : float, default=0.99
        Fast Griffin-Lim momentum, in [0, 1).
    seed : int, default=0
        Seed of the initial random phase (the global torch RNG is left untouched).

    Examples
    --------
    >>> wav = np.sin(2 * np.pi * 220 * np.arange(16000) / 16000).astype(np.float32)
    >>> GriffinLimVocoder().synthesize(log_mel(wav)).shape
    (16000,)
    """

    sample_rate: int = MEL_SETTINGS.sample_rate
    n_mels: int = MEL_SETTINGS.n_mels

    def __init__(self, *, n_iter: int = 32, momentum: float = 0.99, seed: int = 0) -> None:
        import torchaudio.transforms as T

        if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 1:
            raise ValueError(f"n_iter must be a positive integer, got n_iter={n_iter!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in the range [0, 1), got momentum={momentum!r}")
        self.n_iter = int(n_iter)
        self.momentum = float(momentum)
        self.seed = int(seed)
        s = MEL_SETTINGS
        self._inverse_mel = T.InverseMelScale(
            n_stft=s.n_fft // 2 + 1, n_mels=s.n_mels, sample_rate=s.sample_rate, f_min=s.f_min,
            f_max=s.f_max, norm="slaney", mel_scale="slaney",
        )
        self._griffin_lim = T.GriffinLim(
            n_fft=s.n_fft, n_iter=self.n_iter, win_length=s.win_length, hop_length=s.hop_length,
            power=1.0, momentum=self.momentum, rand_init=True,
        )

    @property
    def frame_rate(self) -> float:
        """Log-mel frames per second the vocoder expects (100.0 Hz)."""
        return MEL_SETTINGS.frame_rate

    @property
    def hop_length(self) -> int:
        """Samples per log-mel frame (160)."""
        return MEL_SETTINGS.hop_length

    def describe(self) -> dict:
        """Settings for reports: name, iterations, momentum, seed and the mel settings."""
        return {"vocoder": "griffin-lim", "n_iter": self.n_iter, "momentum": self.momentum,
                "seed": self.seed, "mel": MEL_SETTINGS.to_dict()}

    def synthesize(self, logmel: np.ndarray, *, length: int | None = None) -> np.ndarray:
        """Waveform of a log-mel matrix.

        Parameters
        ----------
        logmel : ndarray of shape (T, 80)
            Natural-log magnitude mel spectrogram as made by :func:`log_mel`.
        length : int, optional
            Output length in samples; default ``(T - 1) * 160``, the length of
            the clip whose analysis gives ``T`` frames up to the last partial hop.

        Returns
        -------
        ndarray of shape (length,), float32
            16 kHz mono waveform.
        """
        lm = np.asarray(logmel, dtype=np.float32)
        if lm.ndim != 2 or lm.shape[1] != self.n_mels or lm.shape[0] < 2:
            raise ValueError(f"logmel must have shape (T >= 2, {self.n_mels}), got shape {list(lm.shape)}")
        if not np.all(np.isfinite(lm)):
            raise ValueError("logmel contains NaN or infinite values")
        n_out = (lm.shape[0] - 1) * self.hop_length if length is None else int(length)
        if n_out < 1:
            raise ValueError(f"length must be positive, got length={length!r}")
        mel = torch.exp(torch.from_numpy(np.ascontiguousarray(lm.T)))
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            spec = self._inverse_mel(mel)
            self._griffin_lim.length = n_out
            wav = self._griffin_lim(spec)
        return wav.numpy().astype(np.float32, copy=False)

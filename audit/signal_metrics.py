"""Signal-level scores of a reconstruction against its original (inversion attack).

Pure functions on 16 kHz mono waveforms, or on the natural-log mel matrices the
inversion decoder predicts. Pairs are frame-aligned (the decoder's output is
aligned with its input, so no DTW): frame sequences are truncated to the
shorter one, waveforms to the shorter length.

The project's mel analysis is :data:`MEL_SETTINGS`; the default vocoder
(:mod:`audit.vocoder`) inverts exactly this log-mel, so a decoder trained on it
produces audio and the cepstral scores here are computed on the same matrices.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from audit.audio import as_waveform

_DB_PER_NEPER = 10.0 / math.log(10.0)
"""``10 / ln 10``: converts a natural-log power ratio to dB."""


@dataclass(frozen=True)
class MelSettings:
    """Settings of the project's log-mel analysis.

    ``logmel[t, m] = ln(max(sum_k fb[k, m] * |X[k, t]|, log_floor))``: ``X`` is
    the STFT (periodic Hann window of ``win_length`` samples, ``n_fft``-point
    FFT, hop ``hop_length``, ``center=True`` with reflect padding, so a clip of
    ``n`` samples has ``1 + n // hop_length`` frames), ``|X|`` its magnitude
    (not power), and ``fb`` the Slaney-scale, Slaney-normalised (area)
    triangular filterbank over ``[f_min, f_max]`` (librosa's default, as in
    HiFi-GAN). At 16 kHz the frames come at ``sample_rate / hop_length`` = 100 Hz,
    twice the 50 Hz of wav2vec 2.0 / HuBERT / WavLM / Whisper encoder frames
    and equal to GE2E's LSTM frame rate.
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0
    log_floor: float = 1e-5

    @property
    def frame_rate(self) -> float:
        """Log-mel frames per second (``sample_rate / hop_length``)."""
        return self.sample_rate / self.hop_length

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-friendly dict (for reports)."""
        return {**asdict(self), "frame_rate": self.frame_rate, "magnitude": True,
                "window": "hann", "mel_scale": "slaney", "mel_norm": "slaney", "log": "natural"}


MEL_SETTINGS = MelSettings()
"""The project's mel settings: 16 kHz, 80 mels, n_fft = win = 1024, hop 160 (100 Hz)."""

DEFAULT_ORDER = 24
"""Cepstral order of MCD: coefficients 1..24 (c0 excluded)."""


def _check_wav(wav: np.ndarray, name: str) -> np.ndarray:
    """A non-empty, finite, real 1-D waveform as float32 (:func:`audit.audio.as_waveform`)."""
    return as_waveform(wav, source=name)


def _check_logmel(logmel: np.ndarray, name: str) -> np.ndarray:
    """A finite (T, n_mels) matrix with T >= 1, as float64."""
    arr = np.asarray(logmel, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 2:
        raise ValueError(f"{name} must have shape (T >= 1, n_mels >= 2), got shape {list(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_order(order: int, n_mels: int) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order < n_mels:
        raise ValueError(f"order must be an integer in [1, n_mels - 1] = [1, {n_mels - 1}], got order={order!r}")
    return int(order)


@functools.lru_cache(maxsize=8)
def _window(win_length: int) -> torch.Tensor:
    """Periodic Hann window of ``win_length`` samples."""
    return torch.hann_window(win_length, dtype=torch.float32)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sr: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised mel filterbank over ``[0, sr / 2]``.

    Returns
    -------
    torch.Tensor of shape (n_fft // 2 + 1, n_mels)
        ``torchaudio.functional.melscale_fbanks(..., norm="slaney", mel_scale="slaney")``.
    """
    import torchaudio.functional as AF

    return AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sr / 2, n_mels, sr, norm="slaney", mel_scale="slaney")


def _stft_magnitude(wav: np.ndarray, *, n_fft: int, hop: int, win_length: int,
                    window: torch.Tensor) -> torch.Tensor:
    """|STFT| of shape (T, n_fft // 2 + 1), centred with reflect padding (zeros if too short)."""
    x = torch.from_numpy(np.ascontiguousarray(wav))
    pad_mode = "reflect" if x.numel() > n_fft // 2 else "constant"
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=win_length, window=window,
                      center=True, pad_mode=pad_mode, return_complex=True)
    return spec.abs().T


def log_mel_spectrogram(
    wav: np.ndarray,
    *,
    sr: int = MEL_SETTINGS.sample_rate,
    n_fft: int = MEL_SETTINGS.n_fft,
    hop: int = MEL_SETTINGS.hop_length,
    n_mels: int = MEL_SETTINGS.n_mels,
) -> np.ndarray:
    """Natural-log magnitude mel spectrogram as defined by :class:`MelSettings`.

    ``logmel[t, m] = ln(max(sum_k fb[k, m] * |X[k, t]|, 1e-5))`` with a Hann
    window of ``n_fft`` samples, hop ``hop``, Slaney mel filterbank over
    ``[0, sr / 2]``.

    Parameters
    ----------
    wav : ndarray of shape (n,)
        Mono waveform at ``sr`` Hz.
    sr, n_fft, hop, n_mels : int
        Analysis settings; the defaults are :data:`MEL_SETTINGS`.

    Returns
    -------
    ndarray of shape (1 + n // hop, n_mels), float32
    """
    x = _check_wav(wav, "wav")
    mag = _stft_magnitude(x, n_fft=n_fft, hop=hop, win_length=n_fft, window=_window(int(n_fft)))
    mel = mag @ mel_filterbank(int(sr), int(n_fft), int(n_mels))
    return torch.log(torch.clamp(mel, min=MEL_SETTINGS.log_floor)).numpy()


def cepstrum_from_logmel(logmel: np.ndarray, *, order: int = DEFAULT_ORDER) -> np.ndarray:
    """Mel cepstrum of log-mel frames: orthonormal DCT-II over mel bins, c0 dropped.

    ``c[t, d] = sqrt(2 / M) * sum_{m=0}^{M-1} logmel[t, m] * cos(pi * d * (m + 1/2) / M)``
    for ``d = 1..order`` (``M`` = number of mel bins; this is
    ``scipy.fft.dct(logmel, type=2, norm="ortho")[:, 1:order + 1]``). ``c0``,
    the frame's mean log level, is excluded, so a gain change does not move
    the cepstrum except where the log floor clips.

    Parameters
    ----------
    logmel : ndarray of shape (T, M)
        Natural-log mel spectrogram.
    order : int, default=24
        Highest coefficient kept, ``1 <= order < M``.

    Returns
    -------
    ndarray of shape (T, order), float64
    """
    from scipy.fft import dct

    lm = _check_logmel(logmel, "logmel")
    order = _check_order(order, lm.shape[1])
    return dct(lm, type=2, norm="ortho", axis=1)[:, 1 : order + 1]


def mel_cepstrum(
    wav: np.ndarray,
    *,
    sr: int = MEL_SETTINGS.sample_rate,
    order: int = DEFAULT_ORDER,
    n_fft: int = MEL_SETTINGS.n_fft,
    hop: int = MEL_SETTINGS.hop_length,
    n_mels: int = MEL_SETTINGS.n_mels,
) -> np.ndarray:
    """Mel cepstrum of a waveform: :func:`cepstrum_from_logmel` of :func:`log_mel_spectrogram`.

    ``c[t, d]`` for ``d = 1..order`` is the orthonormal DCT-II, over the
    ``n_mels`` bins, of the natural-log magnitude mel spectrum of frame ``t``
    (floor 1e-5); ``c0`` is excluded.

    Parameters
    ----------
    wav : ndarray of shape (n,)
        Mono waveform at ``sr`` Hz.
    sr, n_fft, hop, n_mels : int
        Mel analysis settings; the defaults are :data:`MEL_SETTINGS`.
    order : int, default=24
        Cepstral order.

    Returns
    -------
    ndarray of shape (1 + n // hop, order), float64
    """
    return cepstrum_from_logmel(log_mel_spectrogram(wav, sr=sr, n_fft=n_fft, hop=hop, n_mels=n_mels),
                                order=order)


def _aligned(ref: np.ndarray, deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = min(ref.shape[0], deg.shape[0])
    return ref[:n], deg[:n]


def _paired_logmels(ref_logmel: np.ndarray, deg_logmel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated log-mels with equal bin counts, truncated to the shorter one's frames."""
    ref = _check_logmel(ref_logmel, "ref_logmel")
    deg = _check_logmel(deg_logmel, "deg_logmel")
    if ref.shape[1] != deg.shape[1]:
        raise ValueError(f"ref_logmel and deg_logmel must have the same number of mel bins, "
                         f"got {ref.shape[1]} and {deg.shape[1]}")
    return _aligned(ref, deg)


def mcd_from_logmel(ref_logmel: np.ndarray, deg_logmel: np.ndarray, *,
                    order: int = DEFAULT_ORDER) -> tuple[float, dict[str, Any]]:
    """Plain mel-cepstral distortion (dB) between two log-mel matrices.

    ``MCD = (1 / T) * sum_t (10 / ln 10) * sqrt(2 * sum_{d=1}^{order} (c_ref[t, d] - c_deg[t, d])^2)``
    with ``c`` from :func:`cepstrum_from_logmel` (orthonormal DCT-II of the
    natural-log mel frame, ``c0`` excluded). No time warping: both matrices are
    truncated to ``T = min(T_ref, T_deg)`` frames. Because the cepstra come
    from an orthonormal DCT of 80 log-mel bins (not SPTK's all-pass mel-cepstral
    analysis), values are on this definition's own scale; compare them only
    with MCDs computed the same way.

    Parameters
    ----------
    ref_logmel, deg_logmel : ndarray of shape (T_ref, M), (T_deg, M)
        Natural-log mel spectrograms with the same number of mel bins.
    order : int, default=24

    Returns
    -------
    mcd : float
        In dB; 0 for identical inputs.
    extra : dict
        ``n_frames`` (T), ``order``, ``per_frame`` (T,) per-frame distortions.
    """
    ref, deg = _paired_logmels(ref_logmel, deg_logmel)
    diff = cepstrum_from_logmel(ref, order=order) - cepstrum_from_logmel(deg, order=order)
    per_frame = _DB_PER_NEPER * np.sqrt(2.0 * np.sum(diff * diff, axis=1))
    return float(per_frame.mean()), {"n_frames": int(per_frame.size), "order": int(order),
                                     "per_frame": per_frame}


def mcd(ref: np.ndarray, deg: np.ndarray, *, sr: int = MEL_SETTINGS.sample_rate,
        order: int = DEFAULT_ORDER) -> tuple[float, dict[str, Any]]:
    """Plain mel-cepstral distortion (dB) of a degraded waveform against its reference.

    ``MCD = (1 / T) * sum_t (10 / ln 10) * sqrt(2 * sum_{d=1}^{order} (c_ref[t, d] - c_deg[t, d])^2)``
    where ``c`` is :func:`mel_cepstrum` (orthonormal DCT-II of the natural-log
    magnitude mel spectrum with :data:`MEL_SETTINGS`, coefficients 1..order,
    ``c0`` excluded) and ``T`` the smaller of the two frame counts (no DTW).
    Equals ``mcd_from_logmel(log_mel_spectrogram(ref), log_mel_spectrogram(deg))``.

    Parameters
    ----------
    ref, deg : ndarray of shape (n_ref,), (n_deg,)
        Mono waveforms at ``sr`` Hz.
    sr : int, default=16000
    order : int, default=24

    Returns
    -------
    mcd : float
        In dB.
    extra : dict
        ``n_frames``, ``order``, ``per_frame``.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    >>> mcd(x, x)[0]
    0.0
    """
    return mcd_from_logmel(log_mel_spectrogram(_check_wav(ref, "ref"), sr=sr),
                           log_mel_spectrogram(_check_wav(deg, "deg"), sr=sr), order=order)


def log_spectral_distance(
    ref: np.ndarray,
    deg: np.ndarray,
    *,
    sr: int = MEL_SETTINGS.sample_rate,
    n_fft: int = MEL_SETTINGS.n_fft,
    hop: int = MEL_SETTINGS.hop_length,
    eps: float = 1e-10,
) -> tuple[float, dict[str, Any]]:
    """Log-spectral distance (dB) on the linear-frequency STFT power spectrum.

    ``LSD = (1 / T) * sum_t sqrt((1 / K) * sum_k (P_ref[t, k] - P_deg[t, k])^2)`` with
    ``P[t, k] = 10 * log10(max(|X[t, k]|^2, eps))``, ``X`` the STFT (Hann
    window ``n_fft``, hop ``hop``, centred), ``K = n_fft // 2 + 1`` bins and
    ``T`` the smaller frame count (no DTW).

    Parameters
    ----------
    ref, deg : ndarray of shape (n_ref,), (n_deg,)
        Mono waveforms at ``sr`` Hz.
    sr : int, default=16000
        Only checked for positivity (the distance does not depend on it).
    n_fft, hop : int
        STFT settings; defaults from :data:`MEL_SETTINGS`.
    eps : float, default=1e-10
        Power floor (-100 dB re. a full-scale unit).

    Returns
    -------
    lsd : float
        In dB; 0 for identical inputs.
    extra : dict
        ``n_frames``, ``n_bins``, ``per_frame`` (T,).
    """
    if sr <= 0:
        raise ValueError(f"sr must be positive, got sr={sr!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got eps={eps!r}")
    window = _window(int(n_fft))
    specs = []
    for name, wav in (("ref", ref), ("deg", deg)):
        mag = _stft_magnitude(_check_wav(wav, name), n_fft=n_fft, hop=hop, win_length=n_fft, window=window)
        power = mag.double().square().clamp(min=eps)
        specs.append((10.0 * torch.log10(power)).numpy())
    a, b = _aligned(*specs)
    per_frame = np.sqrt(np.mean((a - b) ** 2, axis=1))
    return float(per_frame.mean()), {"n_frames": int(per_frame.size), "n_bins": int(a.shape[1]),
                                     "per_frame": per_frame}


def lsd_from_logmel(ref_logmel: np.ndarray, deg_logmel: np.ndarray) -> tuple[float, dict[str, Any]]:
    """Log-spectral distance (dB) over mel bins of two natural-log magnitude mel matrices.

    ``LSD_mel = (1 / T) * sum_t sqrt((1 / M) * sum_m (D[t, m])^2)`` with
    ``D = (20 / ln 10) * (ref_logmel - deg_logmel)``, the difference in dB of
    mel power (``20 log10`` of the mel magnitude). Frames truncated to the
    smaller count. Not equal to :func:`log_spectral_distance` (mel bins, not
    linear-frequency bins; the log floor is the one of the matrices).

    Parameters
    ----------
    ref_logmel, deg_logmel : ndarray of shape (T_ref, M), (T_deg, M)

    Returns
    -------
    lsd : float
        In dB.
    extra : dict
        ``n_frames``, ``n_bins``, ``per_frame`` (T,).
    """
    ref, deg = _paired_logmels(ref_logmel, deg_logmel)
    diff = 2.0 * _DB_PER_NEPER * (ref - deg)
    per_frame = np.sqrt(np.mean(diff * diff, axis=1))
    return float(per_frame.mean()), {"n_frames": int(per_frame.size), "n_bins": int(ref.shape[1]),
                                     "per_frame": per_frame}


def stoi(ref: np.ndarray, deg: np.ndarray, *, sr: int = MEL_SETTINGS.sample_rate,
         extended: bool = False) -> float:
    """Short-time objective intelligibility (Taal et al. 2011) or ESTOI (Jensen & Taal 2016).

    ``pystoi.stoi(ref[:n], deg[:n], sr, extended)`` with ``n`` the shorter
    length: pystoi resamples to 10 kHz, drops the frames where the reference is
    more than 40 dB below its loudest frame, and correlates one-third-octave
    envelopes over 384 ms segments. pystoi returns 1e-5 (with a warning) when
    fewer than 30 frames remain. STOI's floor is not 0: its clipping step
    bounds the degraded band envelopes by ``(1 + 10^(15/20))`` times the
    reference's, so white noise against speech scores about 0.4 STOI (ESTOI,
    which does not clip, about 0).

    Parameters
    ----------
    ref, deg : ndarray of shape (n_ref,), (n_deg,)
        Clean reference and processed signal at ``sr`` Hz.
    sr : int, default=16000
    extended : bool, default=False
        ESTOI instead of STOI.

    Returns
    -------
    float
        About 1 for identical signals; lower is less intelligible.
    """
    from pystoi import stoi as _pystoi

    a = _check_wav(ref, "ref").astype(np.float64)
    b = _check_wav(deg, "deg").astype(np.float64)
    n = min(a.size, b.size)
    return float(_pystoi(a[:n], b[:n], int(sr), extended=bool(extended)))

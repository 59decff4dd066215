"""Signal-level scores of a reconstruction against its original (inversion attack).

Pure functions on 16 kHz mono waveforms, or on the natural-log mel matrices the
inversion decoder predicts. Pairs are frame-aligned (the decoder's output is
aligned with its input, so no DTW): frame sequences are truncated to the
shorter one, waveforms to the shorter length.

Two cepstral distances live here and they are on different scales:

* :func:`mcd` - the textbook mel-cepstral distortion of two waveforms, as
  ESPnet's ``evaluate_mcd`` computes it: SPTK mel-cepstra (``pysptk.mcep``,
  :data:`MCD_SETTINGS`), ``c0`` excluded, ``(10 / ln 10) * sqrt(2 * sum_d
  (c_d - c'_d)^2)`` per frame, averaged over frames. This is the number to
  compare with published MCDs (``mcd_db`` in reports).
* :func:`logmel_cepstral_distance` - the same per-frame formula on an
  orthonormal DCT of the project's 80-bin log-mel (no all-pass warping, no
  SPTK analysis). It scores predicted log-mel matrices directly, without a
  vocoder, and is *not comparable with published MCD* (the Griffin-Lim copy
  of LibriSpeech test-other clip 1688-142285-0004 reads 8.4 dB on it and
  2.0 dB on :func:`mcd`; white noise at amplitude 0.01 added to the same clip
  reads 69.9 dB and 9.5 dB).

The project's mel analysis is :data:`MEL_SETTINGS`; the default vocoder
(:mod:`audit.vocoder`) inverts exactly this log-mel, so a decoder trained on it
produces audio, and the log-mel scores here are computed on the same matrices.
"""

from __future__ import annotations

import functools
import math
import warnings
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
"""Cepstral order of both cepstral distances: coefficients 1..24 enter the distance (c0 excluded)."""


@dataclass(frozen=True)
class MCDSettings:
    """Settings of the textbook MCD (:func:`mcd`), those of ESPnet's ``evaluate_mcd`` at 16 kHz.

    Frames of ``n_fft`` samples every ``hop_length`` samples, not centred (the
    first frame starts at sample 0, the last one ends inside the clip), each
    multiplied by SPTK's power-normalised Hamming window
    (``pysptk.sptk.hamming(n_fft)``, the window ESPnet uses); the waveform is
    first put on the 16-bit integer scale (float samples times 32768, as
    ESPnet reads its audio as int16). Each frame's mel-cepstrum of ``order``
    (``order + 1`` coefficients ``c0..c_order``) is
    ``pysptk.mcep(frame, order, alpha, eps=eps, etype=1)``: SPTK's iterative
    mel-cepstral analysis with the periodogram floored by adding ``eps``.
    ESPnet picks order 23 at 16 kHz; this project uses 24 (coefficients
    1..24 in the distance).
    """

    sample_rate: int = 16000
    order: int = DEFAULT_ORDER
    alpha: float = 0.42
    n_fft: int = 1024
    hop_length: int = 256
    eps: float = 1e-6
    int16_scale: float = 32768.0

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-friendly dict (for reports)."""
        return {**asdict(self), "window": "hamming (pysptk.sptk.hamming, power-normalised)",
                "analysis": "pysptk.mcep, etype=1", "c0_excluded": True, "dtw": False,
                "definition": mcd_definition(order=self.order, alpha=self.alpha, n_fft=self.n_fft,
                                             hop=self.hop_length, sr=self.sample_rate)}


MCD_SETTINGS = MCDSettings()
"""The textbook MCD's settings: 16 kHz, order 24, alpha 0.42, FFT 1024, hop 256, Hamming window."""


def mcd_definition(*, order: int = MCD_SETTINGS.order, alpha: float = MCD_SETTINGS.alpha,
                   n_fft: int = MCD_SETTINGS.n_fft, hop: int = MCD_SETTINGS.hop_length,
                   sr: int = MCD_SETTINGS.sample_rate) -> str:
    """One-line statement of the MCD definition with these settings (for results and reports).

    Examples
    --------
    >>> mcd_definition()[:40]
    'MCD (dB), pysptk mel-cepstrum: pysptk.mc'
    """
    return (f"MCD (dB), pysptk mel-cepstrum: pysptk.mcep order {order} ({order + 1} coefficients), "
            f"alpha {alpha}, {sr} Hz, FFT {n_fft}, hop {hop}, Hamming window {n_fft} "
            f"(pysptk.sptk.hamming), int16 scale, eps {MCD_SETTINGS.eps}, etype 1; c0 excluded; "
            f"per frame (10/ln10)*sqrt(2*sum_{{d=1..{order}}} (c_d - c'_d)^2), mean over frames; "
            f"frames aligned, cut to the shorter signal, no DTW, no frame skipped")


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
    """DCT cepstrum of log-mel frames: orthonormal DCT-II over mel bins, c0 dropped.

    ``c[t, d] = sqrt(2 / M) * sum_{m=0}^{M-1} logmel[t, m] * cos(pi * d * (m + 1/2) / M)``
    for ``d = 1..order`` (``M`` = number of mel bins; this is
    ``scipy.fft.dct(logmel, type=2, norm="ortho")[:, 1:order + 1]``). ``c0``,
    the frame's mean log level, is excluded, so a gain change does not move
    the cepstrum except where the log floor clips. Not an SPTK mel-cepstrum
    (:func:`mel_cepstrum_sptk`): no all-pass frequency warping, and the
    spectrum is already reduced to ``M`` mel bands.

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


def logmel_cepstral_distance(ref_logmel: np.ndarray, deg_logmel: np.ndarray, *,
                             order: int = DEFAULT_ORDER) -> tuple[float, dict[str, Any]]:
    """Cepstral distance (dB) between two log-mel matrices; *not comparable with published MCD*.

    ``D = (1 / T) * sum_t (10 / ln 10) * sqrt(2 * sum_{d=1}^{order} (c_ref[t, d] - c_deg[t, d])^2)``
    with ``c`` from :func:`cepstrum_from_logmel` (orthonormal DCT-II of the
    natural-log mel frame, ``c0`` excluded). No time warping: both matrices are
    truncated to ``T = min(T_ref, T_deg)`` frames. The formula is MCD's, but
    the cepstra come from a DCT of 80 log-mel bins, not from SPTK's all-pass
    mel-cepstral analysis of the spectrum, so the values sit on a scale of
    their own (several times the textbook :func:`mcd`: a Griffin-Lim copy of a
    LibriSpeech clip reads about 8.4 dB here and 2.0 dB there). Use it to
    score predicted log-mels without a vocoder and compare it only with
    itself; report it under a name such as ``logmel_cd_db``, never ``mcd_db``.

    Parameters
    ----------
    ref_logmel, deg_logmel : ndarray of shape (T_ref, M), (T_deg, M)
        Natural-log mel spectrograms with the same number of mel bins.
    order : int, default=24

    Returns
    -------
    distance : float
        In dB; 0 for identical inputs.
    extra : dict
        ``n_frames`` (T), ``order``, ``per_frame`` (T,) per-frame distances.
    """
    ref, deg = _paired_logmels(ref_logmel, deg_logmel)
    diff = cepstrum_from_logmel(ref, order=order) - cepstrum_from_logmel(deg, order=order)
    per_frame = _DB_PER_NEPER * np.sqrt(2.0 * np.sum(diff * diff, axis=1))
    return float(per_frame.mean()), {"n_frames": int(per_frame.size), "order": int(order),
                                     "per_frame": per_frame}


def _import_pysptk() -> Any:
    """``pysptk``, imported without its ``pkg_resources is deprecated`` warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import pysptk
    return pysptk


def _check_int(value: int, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")
    return int(value)


def mel_cepstrum_sptk(
    wav: np.ndarray,
    *,
    sr: int = MCD_SETTINGS.sample_rate,
    order: int = MCD_SETTINGS.order,
    alpha: float = MCD_SETTINGS.alpha,
    n_fft: int = MCD_SETTINGS.n_fft,
    hop: int = MCD_SETTINGS.hop_length,
) -> np.ndarray:
    """SPTK mel-cepstrum of a waveform, framed as ESPnet's ``evaluate_mcd`` frames it.

    The waveform is scaled to the 16-bit integer range (times 32768) and cut
    into ``1 + (n - n_fft) // hop`` frames of ``n_fft`` samples starting at
    ``0, hop, 2 hop, ...`` (no centring or padding; a clip shorter than
    ``n_fft`` is zero-padded at the end to one frame). Frame ``t`` is
    multiplied by ``pysptk.sptk.hamming(n_fft)`` (power-normalised Hamming) and
    analysed with ``pysptk.mcep(frame, order, alpha, eps=1e-6, etype=1)``.

    Parameters
    ----------
    wav : ndarray of shape (n,)
        Mono waveform at ``sr`` Hz, float samples in about [-1, 1].
    sr : int, default=16000
        Sample rate; only checked (``alpha`` = 0.42 is the usual all-pass
        constant for 16 kHz; pass the one for another rate).
    order : int, default=24
        Mel-cepstral order: ``order + 1`` coefficients ``c0..c_order``.
    alpha : float, default=0.42
        All-pass constant, ``-1 < alpha < 1``.
    n_fft : int, default=1024
        Frame and FFT length, a power of two (SPTK's FFT needs one).
    hop : int, default=256
        Frame shift in samples.

    Returns
    -------
    ndarray of shape (frames, order + 1), float64

    Raises
    ------
    RuntimeError
        If SPTK's analysis fails on a frame (message names the frame).
    """
    pysptk = _import_pysptk()
    x = _check_wav(wav, "wav").astype(np.float64) * MCD_SETTINGS.int16_scale
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise ValueError(f"sr must be a positive integer, got sr={sr!r}")
    n_fft = _check_int(n_fft, "n_fft", 2)
    if n_fft & (n_fft - 1):
        raise ValueError(f"n_fft must be a power of two (SPTK's FFT), got n_fft={n_fft}")
    order = _check_int(order, "order", 1)
    if order >= n_fft // 2:
        raise ValueError(f"order must be < n_fft // 2 = {n_fft // 2}, got order={order}")
    hop = _check_int(hop, "hop", 1)
    if not -1.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in (-1, 1), got alpha={alpha!r}")
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * pysptk.sptk.hamming(n_fft)
    out = np.empty((frames.shape[0], order + 1), dtype=np.float64)
    for t, frame in enumerate(frames):
        try:
            out[t] = pysptk.mcep(np.ascontiguousarray(frame), order, float(alpha),
                                 eps=MCD_SETTINGS.eps, etype=1)
        except RuntimeError as exc:
            raise RuntimeError(f"pysptk.mcep failed on frame {t} (samples {t * hop}..{t * hop + n_fft}): "
                               f"{exc}") from exc
    return out


def _check_mcep(c: np.ndarray, name: str) -> np.ndarray:
    """A finite (T, order + 1) mel-cepstrum matrix with T >= 1 and order >= 1 (1-D: one frame)."""
    arr = np.asarray(c, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 2:
        raise ValueError(f"{name} must have shape (T >= 1, order + 1 >= 2), got shape {list(np.shape(c))}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def mcd_from_mcep(c_ref: np.ndarray, c_deg: np.ndarray) -> tuple[float, dict[str, Any]]:
    """Mel-cepstral distortion (dB) of two mel-cepstrum sequences, ``c0`` excluded.

    ``MCD = (1 / T) * sum_t (10 / ln 10) * sqrt(2 * sum_{d=1}^{order} (c_ref[t, d] - c_deg[t, d])^2)``
    with column 0 (``c0``, the frame's log gain) left out and ``T`` the smaller
    frame count (both truncated; no DTW).

    Parameters
    ----------
    c_ref, c_deg : ndarray of shape (T_ref, order + 1), (T_deg, order + 1)
        Mel-cepstra ``c0..c_order`` per frame (a 1-D array is one frame).

    Returns
    -------
    mcd : float
        In dB; 0 for identical inputs.
    extra : dict
        ``n_frames`` (T), ``order``, ``per_frame`` (T,), ``per_frame_std``,
        ``per_frame_median``, ``per_frame_max``.

    Examples
    --------
    >>> round(mcd_from_mcep(np.zeros(25), np.eye(25)[1])[0], 4)  # 10 / ln 10 * sqrt(2)
    6.1419
    """
    ref, deg = _check_mcep(c_ref, "c_ref"), _check_mcep(c_deg, "c_deg")
    if ref.shape[1] != deg.shape[1]:
        raise ValueError(f"c_ref and c_deg must have the same number of coefficients, "
                         f"got {ref.shape[1]} and {deg.shape[1]}")
    ref, deg = _aligned(ref, deg)
    diff = ref[:, 1:] - deg[:, 1:]
    per_frame = _DB_PER_NEPER * np.sqrt(2.0 * np.sum(diff * diff, axis=1))
    return float(per_frame.mean()), {
        "n_frames": int(per_frame.size), "order": int(ref.shape[1] - 1), "per_frame": per_frame,
        "per_frame_std": float(per_frame.std()), "per_frame_median": float(np.median(per_frame)),
        "per_frame_max": float(per_frame.max()),
    }


def mcd(
    ref_wav: np.ndarray,
    deg_wav: np.ndarray,
    *,
    sr: int = MCD_SETTINGS.sample_rate,
    order: int = MCD_SETTINGS.order,
    alpha: float = MCD_SETTINGS.alpha,
    n_fft: int = MCD_SETTINGS.n_fft,
    hop: int = MCD_SETTINGS.hop_length,
) -> tuple[float, dict[str, Any]]:
    """Textbook mel-cepstral distortion (dB) of a degraded waveform against its reference.

    ``MCD = (1 / T) * sum_t (10 / ln 10) * sqrt(2 * sum_{d=1}^{order} (c_ref[t, d] - c_deg[t, d])^2)``
    with ``c`` the SPTK mel-cepstra of :func:`mel_cepstrum_sptk` (order 24,
    alpha 0.42, FFT 1024, hop 256, Hamming window), ``c0`` excluded, as
    ESPnet's ``evaluate_mcd`` computes it except that the frames are taken as
    aligned (the pair is a signal and its reconstruction): both frame
    sequences are cut to the shorter one, ``T`` frames, and no DTW is run.
    Every frame counts, silent ones included (ESPnet skips none either).
    This is :func:`mcd_from_mcep` of the two mel-cepstra.

    Parameters
    ----------
    ref_wav, deg_wav : ndarray of shape (n_ref,), (n_deg,)
        Mono waveforms at ``sr`` Hz.
    sr, order, alpha, n_fft, hop
        Analysis settings (:func:`mel_cepstrum_sptk`); defaults :data:`MCD_SETTINGS`.

    Returns
    -------
    mcd : float
        In dB; 0 for identical signals.
    extra : dict
        ``n_frames``, ``order``, ``per_frame`` (T,), ``per_frame_std``,
        ``per_frame_median``, ``per_frame_max``, ``alpha``, ``n_fft``, ``hop``,
        ``definition`` (:func:`mcd_definition`).

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    >>> mcd(x, x)[0]
    0.0
    """
    settings = {"sr": sr, "order": order, "alpha": alpha, "n_fft": n_fft, "hop": hop}
    c_ref = mel_cepstrum_sptk(_check_wav(ref_wav, "ref_wav"), **settings)
    c_deg = mel_cepstrum_sptk(_check_wav(deg_wav, "deg_wav"), **settings)
    value, extra = mcd_from_mcep(c_ref, c_deg)
    extra.update({"alpha": float(alpha), "n_fft": int(n_fft), "hop": int(hop),
                  "definition": mcd_definition(order=int(order), alpha=float(alpha), n_fft=int(n_fft),
                                               hop=int(hop), sr=int(sr))})
    return value, extra


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


STOI_MIN_FRAMES = 30
"""pystoi's ``N``: STFT frames (after silence removal) one intermediate-intelligibility segment needs."""

_PYSTOI_SHORT_WARNING = "Not enough STFT frames to compute intermediate intelligibility"
"""Start of the warning pystoi issues (returning 1e-5) when fewer than :data:`STOI_MIN_FRAMES` frames remain."""


def _pystoi_pair(ref: np.ndarray, deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 waveforms cut to the shorter length (the pair pystoi scores)."""
    a = _check_wav(ref, "ref").astype(np.float64)
    b = _check_wav(deg, "deg").astype(np.float64)
    n = min(a.size, b.size)
    return a[:n], b[:n]


def _stoi_frames_of(ref: np.ndarray, sr: int) -> int:
    """pystoi's STFT frame count of a float64 reference after its resampling and silence removal."""
    import importlib

    from pystoi import utils

    pystoi_module = importlib.import_module("pystoi.stoi")  # the module; ``pystoi.stoi`` is also the function
    fs, frame = pystoi_module.FS, pystoi_module.N_FRAME
    x = utils.resample_oct(ref, fs, sr) if sr != fs else ref
    if x.size <= frame:  # no energy frame at all (pystoi itself fails here on an empty max)
        return 0
    x_kept, _ = utils.remove_silent_frames(x, x, pystoi_module.DYN_RANGE, frame, frame // 2)
    return len(range(0, x_kept.size - frame, frame // 2))  # pystoi's stft(x, N_FRAME, NFFT, overlap=2) frames


def stoi_frames(ref: np.ndarray, deg: np.ndarray, *, sr: int = MEL_SETTINGS.sample_rate) -> int:
    """STFT frames pystoi keeps for the pair after silence removal; STOI needs :data:`STOI_MIN_FRAMES`.

    pystoi's own criterion, with its own functions and constants: the reference cut to the
    pair's common length is resampled to 10 kHz (``pystoi.utils.resample_oct``), frames more
    than 40 dB below its loudest frame are dropped (``pystoi.utils.remove_silent_frames``,
    256-sample frames, hop 128), and the frames of pystoi's STFT of what is left are counted.
    Only the reference decides which frames are silent, so the degraded signal only sets the length.
    """
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise ValueError(f"sr must be a positive integer, got sr={sr!r}")
    a, _ = _pystoi_pair(ref, deg)
    return _stoi_frames_of(a, int(sr))


def stoi(ref: np.ndarray, deg: np.ndarray, *, sr: int = MEL_SETTINGS.sample_rate,
         extended: bool = False) -> float | None:
    """Short-time objective intelligibility (Taal et al. 2011) or ESTOI (Jensen & Taal 2016); None if not measurable.

    ``pystoi.stoi(ref[:n], deg[:n], sr, extended)`` with ``n`` the shorter
    length: pystoi resamples to 10 kHz, drops the frames where the reference is
    more than 40 dB below its loudest frame, and correlates one-third-octave
    envelopes over 384 ms segments. STOI's floor is not 0: its clipping step
    bounds the degraded band envelopes by ``(1 + 10^(15/20))`` times the
    reference's, so white noise against speech scores about 0.4 STOI (ESTOI,
    which does not clip, about 0).

    A pair with fewer than :data:`STOI_MIN_FRAMES` frames left after silence
    removal (:func:`stoi_frames`: a clip under about 0.4 s of speech, or one
    mostly 40 dB below its peak) has no 384 ms segment to score. pystoi would
    return 1e-5 ("unintelligible") with a warning, or fail outright on a clip
    shorter than one 25.6 ms frame; this function returns None instead, without
    calling pystoi or warning, so callers leave the clip out of their means.

    Parameters
    ----------
    ref, deg : ndarray of shape (n_ref,), (n_deg,)
        Clean reference and processed signal at ``sr`` Hz.
    sr : int, default=16000
    extended : bool, default=False
        ESTOI instead of STOI.

    Returns
    -------
    float or None
        About 1 for identical signals; lower is less intelligible; None when not measurable.
    """
    from pystoi import stoi as _pystoi

    if stoi_frames(ref, deg, sr=sr) < STOI_MIN_FRAMES:
        return None
    a, b = _pystoi_pair(ref, deg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(_pystoi(a, b, int(sr), extended=bool(extended)))
    # pystoi's own too-few-frames signal, should a future pystoi count frames otherwise
    if any(str(w.message).startswith(_PYSTOI_SHORT_WARNING) for w in caught):
        return None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return value

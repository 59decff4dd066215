"""Voiced duration of a clip, for the speech-rate attribute, measured with WebRTC's VAD.

Speech rate divides transcript characters by duration; with the whole file's duration,
leading/trailing silence and padding dilute it (on fixed-length padded clips it becomes
plain transcript length). :func:`voiced_seconds` instead counts the frames webrtcvad
classifies as speech. The audio is quantised to 16-bit PCM and cut into non-overlapping
frames (a trailing partial frame is dropped); a fresh detector is used per call, so the
result depends on the clip alone. Pauses between speech frames shorter than
``fill_gap_ms`` (stop closures, short breaths) are counted as speech; longer pauses and
everything before the first / after the last speech frame are not. webrtcvad adapts its
noise model from the clip's start, so on noisy lead-in it may flag the first ~0.1 s.
"""

from __future__ import annotations

import math
import warnings
from types import ModuleType

import numpy as np

from audit.audio import as_waveform
from audit.errors import AudioError, CorpusError

VAD_RATES = (8000, 16000, 32000, 48000)
VAD_FRAME_MS = (10, 20, 30)
AGGRESSIVENESS = 2
FRAME_MS = 30
FILL_GAP_MS = 150
DURATION_SOURCE = (f"webrtcvad speech frames (aggressiveness {AGGRESSIVENESS}, {FRAME_MS} ms frames, "
                   f"pauses under {FILL_GAP_MS} ms between speech frames counted as speech)")


def voiced_seconds(wav: np.ndarray, sample_rate: int = 16000, *, aggressiveness: int = AGGRESSIVENESS,
                   frame_ms: int = FRAME_MS, fill_gap_ms: int = FILL_GAP_MS) -> float:
    """Seconds of ``wav`` that webrtcvad classifies as speech, short pauses filled.

    Parameters
    ----------
    wav : 1-D finite float waveform, nominally in [-1, 1] (samples beyond are clipped).
    sample_rate : one of 8000, 16000, 32000, 48000 Hz.
    aggressiveness : webrtcvad mode 0 (least) to 3 (most aggressive in rejecting non-speech).
    frame_ms : VAD frame length, 10, 20 or 30 ms.
    fill_gap_ms : pauses shorter than this between two speech frames count as speech; 0 disables.

    Returns
    -------
    float
        Number of speech frames (after gap filling) times the frame length, in seconds.
    """
    _check_settings(sample_rate, aggressiveness, frame_ms, fill_gap_ms)
    arr = np.asarray(wav)
    if arr.ndim == 1 and arr.size and not np.issubdtype(arr.dtype, np.floating):
        raise AudioError(f"voiced_seconds: waveform must be floating point in [-1, 1], got dtype {arr.dtype}")
    arr = as_waveform(arr, source="voiced_seconds")
    frame_len = int(sample_rate) * int(frame_ms) // 1000
    n_frames = arr.size // frame_len
    if n_frames == 0:
        return 0.0
    pcm = np.round(np.clip(arr[: n_frames * frame_len], -1.0, 1.0) * 32767.0).astype("<i2")
    vad = _webrtcvad().Vad(int(aggressiveness))
    frames = pcm.reshape(n_frames, frame_len)
    speech = np.fromiter((vad.is_speech(frame.tobytes(), int(sample_rate)) for frame in frames), dtype=bool,
                         count=n_frames)
    return float(_fill_gaps(speech, math.ceil(fill_gap_ms / frame_ms) - 1).sum()) * frame_ms / 1000.0


def _fill_gaps(speech: np.ndarray, max_gap: int) -> np.ndarray:
    """Mark runs of at most ``max_gap`` non-speech frames lying between speech frames as speech."""
    filled = speech.copy()
    hits = np.flatnonzero(speech)
    steps = np.diff(hits)
    for k in np.flatnonzero((steps > 1) & (steps <= max_gap + 1)):
        filled[hits[k] + 1:hits[k + 1]] = True
    return filled


def _check_settings(sample_rate: int, aggressiveness: int, frame_ms: int, fill_gap_ms: int) -> None:
    for name, value, allowed in (("sample_rate", sample_rate, VAD_RATES), ("frame_ms", frame_ms, VAD_FRAME_MS),
                                 ("aggressiveness", aggressiveness, (0, 1, 2, 3))):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in allowed:
            raise CorpusError(f"voiced_seconds: {name}={value!r} is not supported by webrtcvad; use one of {allowed}")
    if isinstance(fill_gap_ms, bool) or not isinstance(fill_gap_ms, int) or fill_gap_ms < 0:
        raise CorpusError(f"voiced_seconds: fill_gap_ms={fill_gap_ms!r} must be a non-negative integer")


def _webrtcvad() -> ModuleType:
    """Import webrtcvad (installed with Resemblyzer), hiding its pkg_resources deprecation warning."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            import webrtcvad
    except ImportError as exc:
        raise CorpusError("voiced durations need the 'webrtcvad' package (pip install webrtcvad)") from exc
    return webrtcvad

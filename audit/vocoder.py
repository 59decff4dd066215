"""Vocoders for the inversion attack: each analyses audio into its own log-mel and synthesises it back.

A vocoder states the log-mel it understands (``analyze``, ``frame_rate``, ``n_mels``); the
inversion decoder is trained to predict exactly that, and ``synthesize`` turns a prediction into
16 kHz audio for the judges.

* :class:`GriffinLimVocoder` (default, ``"griffinlim"``): the project's log-mel
  (:func:`log_mel`, :data:`audit.signal_metrics.MEL_SETTINGS`, 100 Hz), least-squares inverse
  mel filterbank, Griffin-Lim phase retrieval. Untrained, so it works offline and adds no learned
  prior about speakers: what the judges recover comes from the embeddings, up to the vocoder's
  own loss, which the "vocoder copy" (original -> log-mel -> vocoder) measures.
* :class:`HifiGanVocoder`: a speechbrain HiFi-GAN (hub id such as
  ``speechbrain/tts-hifigan-libritts-16kHz`` or a local speechbrain folder) loaded through the
  same path as the other real models (cached copy, else download; one-line failure offline).
  Its analysis is the same log-mel family with the generator's hop (256 samples: 62.5 Hz).
  A trained vocoder gives the attacker a speech prior, so it is the stronger attack when at hand.

:func:`build_vocoder` maps the ``inversion.vocoder`` setting to one of them.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import numpy as np
import torch

from audit.errors import ModelLoadError
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


class Vocoder(ABC):
    """A log-mel analysis and its inverse at 16 kHz.

    Subclasses set ``n_mels`` and ``hop_length`` and implement :meth:`analyze`,
    :meth:`synthesize` and :meth:`describe`.
    """

    sample_rate: int = MEL_SETTINGS.sample_rate
    n_mels: int = MEL_SETTINGS.n_mels
    hop_length: int = MEL_SETTINGS.hop_length

    @property
    def frame_rate(self) -> float:
        """Log-mel frames per second the vocoder expects."""
        return self.sample_rate / self.hop_length

    @abstractmethod
    def analyze(self, wav: np.ndarray) -> np.ndarray:
        """The ``(1 + n // hop, n_mels)`` log-mel this vocoder inverts (the decoder's target)."""

    @abstractmethod
    def synthesize(self, logmel: np.ndarray, *, length: int | None = None) -> np.ndarray:
        """16 kHz waveform of a log-mel made by :meth:`analyze` (or predicted like it)."""

    @abstractmethod
    def describe(self) -> dict:
        """Settings for the report."""

    def _check(self, logmel: np.ndarray, length: int | None) -> tuple[np.ndarray, int]:
        lm = np.asarray(logmel, dtype=np.float32)
        if lm.ndim != 2 or lm.shape[1] != self.n_mels or lm.shape[0] < 2:
            raise ValueError(f"logmel must have shape (T >= 2, {self.n_mels}), got shape {list(lm.shape)}")
        if not np.all(np.isfinite(lm)):
            raise ValueError("logmel contains NaN or infinite values")
        n_out = (lm.shape[0] - 1) * self.hop_length if length is None else int(length)
        if n_out < 1:
            raise ValueError(f"length must be positive, got length={length!r}")
        return lm, n_out


class GriffinLimVocoder(Vocoder):
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

    def analyze(self, wav: np.ndarray) -> np.ndarray:
        """The project's log-mel (:func:`log_mel`, 100 Hz)."""
        return log_mel(wav)

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
        lm, n_out = self._check(logmel, length)
        mel = torch.exp(torch.from_numpy(np.ascontiguousarray(lm.T)))
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            spec = self._inverse_mel(mel)
            self._griffin_lim.length = n_out
            wav = self._griffin_lim(spec)
        return wav.numpy().astype(np.float32, copy=False)


#: Mel analysis of speechbrain's 16 kHz LibriTTS HiFi-GAN (its model card): Hann 1024, 80 Slaney mels
#: over 0-8 kHz, magnitude, log clamped at 1e-5, i.e. :func:`log_mel_spectrogram`; the hop is the
#: generator's total upsampling factor. A folder's hyperparams.yaml may override these keys.
HIFIGAN_MEL_KEYS = {"n_fft": 1024, "n_mel_channels": 80, "sample_rate": 16000}


class HifiGanVocoder(Vocoder):
    """A speechbrain HiFi-GAN generator as the inversion vocoder.

    Parameters
    ----------
    source : str
        Hub id (``"speechbrain/tts-hifigan-libritts-16kHz"``) or a local folder holding a
        speechbrain ``hyperparams.yaml`` (with a ``generator``) and its checkpoint. Without
        network access a hub id must already be in the Hugging Face cache; otherwise
        :meth:`load` fails in one line naming the source.

    Attributes (after :meth:`load`)
    -------------------------------
    hop_length : int
        Samples per mel frame, measured from the generator (output samples per input frame).
    lead_in_ : int
        Samples the generator emits for its own input padding before the first frame (cut).
    n_fft, n_mels, sample_rate : int
        The analysis settings (hyperparams.yaml keys ``n_fft``, ``n_mel_channels``,
        ``sample_rate`` when present, else the LibriTTS 16 kHz card's values).
    """

    def __init__(self, source: str, *, trust_remote_code: bool = False) -> None:
        self.source = source
        self.trust_remote_code = trust_remote_code

    def load(self) -> "HifiGanVocoder":
        """Resolve the source, load the generator and measure its hop; returns ``self``."""
        if hasattr(self, "model_"):
            return self
        from audit.extractor import speechbrain_source

        folder = speechbrain_source(self.source, label="vocoder", trust_remote_code=self.trust_remote_code)
        try:
            from speechbrain.inference.vocoders import HIFIGAN

            model = HIFIGAN.from_hparams(source=folder, run_opts={"device": "cpu"})
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ModelLoadError(f"vocoder {self.source!r}: speechbrain could not load a HiFi-GAN from it "
                                 f"({type(exc).__name__}: {first})") from exc
        if model is None:
            raise ModelLoadError(f"vocoder {self.source!r}: speechbrain returned no model")
        model.eval()
        hp = {k: getattr(model.hparams, k, v) for k, v in HIFIGAN_MEL_KEYS.items()}
        self.n_fft, self.n_mels, self.sample_rate = int(hp["n_fft"]), int(hp["n_mel_channels"]), int(hp["sample_rate"])
        if self.sample_rate != MEL_SETTINGS.sample_rate:
            raise ModelLoadError(f"vocoder {self.source!r}: sample_rate {self.sample_rate} Hz, the audit works at "
                                 f"{MEL_SETTINGS.sample_rate} Hz")
        self.model_ = model
        # The generator pads its input (speechbrain: ``inference_padding`` frames each side), so its
        # output is (T + 2p) * hop samples: two probe lengths give both the hop and the lead-in to cut.
        floor = np.log(MEL_SETTINGS.log_floor)
        n10, n20 = (self._generate(np.full((t, self.n_mels), floor, dtype=np.float32)).size for t in (10, 20))
        self.hop_length = (n20 - n10) // 10
        self.lead_in_ = (n10 - 10 * self.hop_length) // 2
        self.folder_ = str(folder)
        return self

    def _generate(self, lm: np.ndarray) -> np.ndarray:
        mel = torch.from_numpy(np.ascontiguousarray(lm.T, dtype=np.float32))[None]
        with torch.inference_mode():
            wav = self.model_.decode_batch(mel)
        return wav.reshape(-1).numpy().astype(np.float32)

    def analyze(self, wav: np.ndarray) -> np.ndarray:
        """Log-mel with this generator's hop (``log_mel_spectrogram(wav, hop=hop_length)``)."""
        self.load()
        return log_mel_spectrogram(wav, sr=self.sample_rate, n_fft=self.n_fft, hop=self.hop_length, n_mels=self.n_mels)

    def synthesize(self, logmel: np.ndarray, *, length: int | None = None) -> np.ndarray:
        """Generator output, cut or zero-padded to ``length`` samples (default ``(T - 1) * hop``)."""
        self.load()
        lm, n_out = self._check(logmel, length)
        wav = self._generate(lm)[self.lead_in_:]
        return wav[:n_out] if wav.size >= n_out else np.pad(wav, (0, n_out - wav.size))

    def describe(self) -> dict:
        """Source, resolved folder and the mel analysis."""
        self.load()
        return {"vocoder": "hifigan (speechbrain)", "source": self.source, "folder": self.folder_,
                "mel": {"sample_rate": self.sample_rate, "n_fft": self.n_fft, "win_length": self.n_fft,
                        "hop_length": self.hop_length, "n_mels": self.n_mels, "f_min": 0.0,
                        "f_max": self.sample_rate / 2, "scale": "slaney", "magnitude": "power 1",
                        "log": "natural, floor 1e-5", "frame_rate": self.frame_rate}}


def check_vocoder_spec(spec: str) -> str | None:
    """Problem with an ``inversion.vocoder`` value, or None: griffinlim, an org/name hub id, or a folder."""
    if spec == "griffinlim" or os.path.isdir(spec) or (spec.count("/") == 1 and not spec.startswith((".", "/"))):
        return None
    return ("expected 'griffinlim', a speechbrain HiFi-GAN hub id (e.g. 'speechbrain/tts-hifigan-libritts-16kHz') "
            "or an existing local folder")


def build_vocoder(spec: str, *, seed: int = 0, trust_remote_code: bool = False) -> Vocoder:
    """The vocoder named by ``spec`` (see :func:`check_vocoder_spec`), loaded (``trust_remote_code``: see
    :func:`audit.extractor.speechbrain_source`)."""
    problem = check_vocoder_spec(spec)
    if problem:
        raise ModelLoadError(f"vocoder {spec!r}: {problem}")
    if spec == "griffinlim":
        return GriffinLimVocoder(seed=seed)
    return HifiGanVocoder(spec, trust_remote_code=trust_remote_code).load()

"""Inversion attacks: decode embeddings back into the speaker's spectrum.

Threat: the attacker holds embeddings of the audited layer and a side corpus of their own
(audio plus the same model's embeddings of it). They train a decoder from embeddings to the
log-mel spectrogram of the audio and apply it to the victim's embeddings; a vocoder
(:mod:`audit.vocoder`) turns the decoded log-mel back into sound that the judges score
(content WER, speaker similarity, STOI). Two decoders:

* :class:`InversionDecoder` -- frame-level ``(T, D)`` hidden states to an 80-bin natural-log
  mel spectrogram at the vocoder's frame rate: a 1-D convolutional network (input projection,
  pre-norm residual blocks with GELU and channel LayerNorm, output projection), L1 loss
  (optionally plus spectral convergence) on random aligned crops, early-stopped on a held-out
  part of what it is given;
* :class:`VoiceProfileDecoder` -- pooled (utterance-level) embeddings to the utterance's
  average log-mel envelope (the "voice profile"), by ridge regression.

Time alignment (frame rates differ: 50 Hz for Whisper/wav2vec2 frames, 100 Hz for GE2E's
LSTMs and for the project's log-mel, hop 160 at 16 kHz): input frame ``k`` at ``input_rate``
summarises the audio ``[k, k + 1) / input_rate`` and sits at its centre
``(k + 0.5) / input_rate``; mel frame ``j`` of a centred STFT sits at ``j / target_rate``.
Each input dimension is linearly interpolated onto the mel frame times (held constant beyond
the ends) *before* the conv stack (:func:`resample_frames`), so input and target share one
time axis, a crop is the same frames of both, and the network itself is rate-agnostic. (The
price: at 50 -> 100 Hz the stack runs on twice the input frames. A learned upsampler after
the stack would save compute but tie the network to one integer rate ratio, and it decodes
worse: on the complete default's layer 1 (Whisper tiny.en, synthetic corpus, same data and
seed) the stack at 50 Hz with a learned 2x output reached a best validation loss of 0.135, and
three blocks at 50 Hz plus one at 100 Hz 0.130, against 0.127 here, at 1.4x and 1.1x the
speed.)

Sanity check: :func:`shuffle_alignment` pairs every utterance's target with another
utterance's frames; a decoder trained on that must score clearly worse than the real one,
otherwise the decoder is learning the corpus average rather than reading the embeddings.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F

from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError, CorpusError, StoreError
from audit.estimators import NotFittedError, check_precision, full_fp32, mixed_precision, seeded, torch_device
from audit.extractor import SHARED_GE2E, SHARED_WHISPER
from audit.family import (AttackFamily, FamilySettings, LayerContext, RunContext, check_layer_selection,
                          check_range)
from audit.metrics import DegenerateBootstrap, bootstrap_ci, speaker_bootstrap_ci
from audit.names import safe_filename
from audit.measures import Bands, Measure, caveats_of, combine, rate, read_figure
from audit.personal import PersonalField
from audit.results import (AttackResult, RiskRating, Table, fmt_ci, fmt_num, fmt_pct, is_ok,
                           layer_attack, skip_cell)
from audit.signal_metrics import lsd_from_logmel
from audit.splits import Split, speaker_disjoint_split
from audit.summary import rating_reason, worst_rating

# Predicted log-mels are clamped to this before ``exp`` in the spectral-convergence term.
_MAX_LOG_MEL = 30.0


def default_n_frames(n_in: int, input_rate: float, target_rate: float) -> int:
    """Mel frames of a centred STFT of audio lasting ``n_in / input_rate`` seconds.

    ``1 + floor(n_in * target_rate / input_rate)``; pass the exact count where the audio
    length is known (e.g. ``log_mel(wav).shape[0]``).
    """
    return 1 + int(math.floor(n_in * target_rate / input_rate + 1e-9))


def resample_frames(x: np.ndarray, input_rate: float, target_rate: float,
                    n_out: int | None = None) -> np.ndarray:
    """Linearly interpolate frames ``(T, D)`` at ``input_rate`` onto ``n_out`` mel frame times.

    Input frame ``k`` sits at ``(k + 0.5) / input_rate`` seconds, output frame ``j`` at
    ``j / target_rate``; values beyond the first/last input frame are held constant.

    Parameters
    ----------
    x : ndarray of shape (T, D)
    input_rate, target_rate : float
        Frames per second of ``x`` and of the output.
    n_out : int or None, default=None
        Output frames; ``default_n_frames(T, input_rate, target_rate)`` when None.

    Returns
    -------
    ndarray of shape (n_out, D), float32

    Examples
    --------
    >>> resample_frames(np.arange(4.0)[:, None], 50.0, 100.0, 8)[:, 0]
    array([0. , 0. , 0.5, 1. , 1.5, 2. , 2.5, 3. ], dtype=float32)
    """
    x = np.asarray(x, dtype=np.float32)
    if n_out is None:
        n_out = default_n_frames(x.shape[0], input_rate, target_rate)
    pos = np.arange(n_out) * (input_rate / target_rate) - 0.5
    pos = np.clip(pos, 0.0, x.shape[0] - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, x.shape[0] - 1)
    w = (pos - lo).astype(np.float32)[:, None]
    return (1.0 - w) * x[lo] + w * x[hi]


def fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """``x`` ``(T, D)`` cut to its first ``length`` frames, tiled by repetition when shorter."""
    if x.shape[0] < length:
        x = np.tile(x, (math.ceil(length / x.shape[0]), 1))
    return x[:length]


def shuffle_alignment(frames_list: Sequence[np.ndarray], seed: int) -> list[np.ndarray]:
    """Misaligned inputs: every utterance's frames replaced by another utterance's.

    A seeded derangement (a random cyclic order, each utterance takes its successor's frames)
    so no utterance keeps its own; the borrowed frames are cut or tiled to the original length.
    Training a decoder on ``(shuffle_alignment(frames), mels)`` gives the no-information
    reference for the inversion attack.

    Parameters
    ----------
    frames_list : sequence of ndarray of shape (T_i, D)
        At least two utterances.
    seed : int

    Returns
    -------
    list of ndarray
        Same lengths and width as ``frames_list``.
    """
    n = len(frames_list)
    if n < 2:
        raise CorpusError(f"shuffle_alignment needs >= 2 utterances, got {n}")
    cycle = np.random.default_rng(seed).permutation(n)
    donor = np.empty(n, dtype=int)
    donor[cycle] = np.roll(cycle, -1)
    return [fit_length(np.asarray(frames_list[donor[i]]), np.asarray(frames_list[i]).shape[0])
            for i in range(n)]


def audio_log_mels(wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Decoder targets: ``audit.vocoder.log_mel`` of each 16 kHz waveform, ``(1 + n // hop, 80)``."""
    from audit.vocoder import log_mel

    return [log_mel(np.asarray(w, dtype=np.float32)) for w in wavs]


def envelope_lsd_db(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Log-spectral distance (dB) of each row of two ``(N, n_mels)`` natural-log mel envelopes.

    Row ``i`` is :func:`audit.signal_metrics.lsd_from_logmel` of a one-frame matrix:
    ``sqrt(mean_m((20 / ln 10 * (true[i, m] - pred[i, m])) ** 2))``, the RMS over mel bins of
    the dB difference of mel magnitude (``dB = 20 * log10(e) * |delta ln magnitude|``).
    """
    return np.array([lsd_from_logmel(t[None], p[None])[0] for p, t in zip(pred, true)])


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run torch code on ``n`` intra-op threads (unchanged when None), then restore the setting."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_sequences(seqs: Sequence[np.ndarray], name: str, width: int | None = None) -> list[np.ndarray]:
    """``seqs`` as float32 arrays, checked: 2-D, non-empty, finite, one common width."""
    out = []
    for i, s in enumerate(seqs):
        a = np.asarray(s, dtype=np.float32)
        if a.ndim != 2 or a.shape[0] == 0:
            raise StoreError(f"{name}[{i}] has shape {a.shape}, expected (T>0, D)")
        width = a.shape[1] if width is None else width
        if a.shape[1] != width:
            raise StoreError(f"{name}[{i}] has width {a.shape[1]}, expected {width}")
        if not np.isfinite(a).all():
            raise StoreError(f"{name}[{i}] contains non-finite values")
        out.append(a)
    return out


def _half(x: np.ndarray) -> np.ndarray:
    """``x`` as float16 to halve the training cache, unless that overflows."""
    x16 = x.astype(np.float16)
    return x16 if np.isfinite(x16).all() else x


def _seeded_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (fit, validation) indices of ``n`` items: ``round(fraction * n)`` held out, >= 1."""
    n_val = min(n - 1, max(1, int(round(fraction * n))))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class _ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, T)`` tensors, returned contiguous.

    Contiguous because the GELU that follows receives a contiguous gradient from the next
    convolution: with its input a transposed view, the two layouts differ and torch's CPU
    GELU backward falls off its vectorised path (measured 8 ms against 1 ms per call, a quarter
    of the decoder's training step).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2).contiguous()


class _ResBlock(nn.Module):
    """Pre-norm residual block: ``x + conv1x1(GELU(conv_k(GELU(norm(x)))))``."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.norm = _ChannelNorm(channels)
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(F.gelu(self.conv(F.gelu(self.norm(x)))))


class _DecoderNet(nn.Module):
    """Standardised frames ``(B, T, D)`` -> standardised log-mel ``(B, T, n_mels)``."""

    def __init__(self, dim: int, n_mels: int, channels: int, n_layers: int, kernel_size: int) -> None:
        super().__init__()
        self.inp = nn.Conv1d(dim, channels, 1)
        self.blocks = nn.Sequential(*[_ResBlock(channels, kernel_size) for _ in range(n_layers)])
        self.norm = _ChannelNorm(channels)
        self.out = nn.Conv1d(channels, n_mels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.inp(x.transpose(1, 2)))
        return self.out(F.gelu(self.norm(h))).transpose(1, 2)


class InversionDecoder:
    """Convolutional decoder from frame-level embeddings to a log-mel spectrogram.

    Inputs are standardised per dimension with training statistics (``mean_``, ``std_``) and
    linearly interpolated from ``input_rate`` onto the mel frame times at ``target_rate``
    (see the module docstring) before the conv stack; targets are standardised per mel bin
    (``target_mean_``, ``target_std_``) and the network predicts them in those units. The
    interpolated training inputs are cached in memory as float16 (``2 * D`` bytes per mel
    frame, e.g. about 50 MB for 80 utterances of 8 s at D=384, 100 Hz).

    Parameters
    ----------
    input_rate : float
        Frames per second of the embeddings (50 for Whisper/wav2vec2, 100 for GE2E LSTMs).
    target_rate : float
        Frames per second of the log-mel: the vocoder's ``frame_rate`` (100 for the project's
        hop of 160 samples at 16 kHz).
    channels : int, default=256
        Width of the conv stack.
    n_layers : int, default=4
        Residual blocks (receptive field ``1 + n_layers * (kernel_size - 1)`` mel frames).
    kernel_size : int, default=5
        Odd temporal kernel of each block.
    max_epochs : int, default=60
        An epoch is one pass over the training frames in expectation.
    patience : int, default=8
        Epochs without a validation improvement of at least ``min_delta`` before training
        stops; the best weights (by any improvement) are kept.
    min_delta : float, default=1e-3
        Relative validation-loss improvement that counts for ``patience`` (Keras' habit): late
        steps that improve by less than 0.1% no longer keep a converged decoder training.
    batch_size : int, default=16
    lr : float, default=1e-3
        Initial Adam learning rate (gradients clipped to norm 1), halved whenever validation
        loss has not improved for ``max(1, patience // 3)`` epochs.
    crop_seconds : float, default=3.0
        Length of the random aligned training crops; shorter utterances are tiled.
    spectral_convergence_weight : float, default=0.0
        Weight of ``||exp(Y) - exp(Y_hat)||_F / ||exp(Y)||_F`` (mel magnitude) added to the L1
        loss on standardised log-mels.
    val_fraction : float, default=0.15
        Seeded fraction of the given utterances held out for early stopping (at least one).
    num_threads : int or None, default=None
        Torch intra-op threads during :meth:`fit` and :meth:`predict` (restored afterwards);
        None keeps torch's setting. On a small shared CPU, 1 is often several times faster
        than oversubscribed cores.
    seed : int, default=0
    device : str, default="cpu"
        Torch device (``"cpu"``, ``"cuda"``, ``"cuda:N"``); the decoder trains and predicts there
        (weights initialised on the CPU). :meth:`predict` returns float32 numpy arrays.
    precision : {"float32", "bfloat16"}, default="float32"
        ``"bfloat16"`` runs the forward passes under torch's bfloat16 autocast
        (:func:`~audit.estimators.mixed_precision`; weights, loss and optimiser stay float32).

    Attributes
    ----------
    net_ : torch.nn.Module
        On ``device``.
    history_ : list of dict
        Per epoch: ``train_loss``, ``val_loss`` (the objective) and ``val_l1`` (mean absolute
        error in natural-log mel units).
    budget_ : dict
        ``epochs, best_epoch, steps, n_train, n_val, params, fit_seconds`` and more.
    converged_ : bool
        True when training stopped by patience rather than at ``max_epochs``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> frames = [rng.standard_normal((100, 8)).astype(np.float32) for _ in range(4)]
    >>> mels = [rng.standard_normal((201, 80)).astype(np.float32) for _ in range(4)]
    >>> dec = InversionDecoder(input_rate=50, target_rate=100, channels=16, n_layers=1,
    ...                        max_epochs=2).fit(frames, mels)
    >>> dec.predict(frames[:1], n_frames=[130])[0].shape
    (130, 80)
    """

    def __init__(self, *, input_rate: float, target_rate: float, channels: int = 256, n_layers: int = 4,
                 kernel_size: int = 5, max_epochs: int = 60, patience: int = 8, min_delta: float = 1e-3,
                 batch_size: int = 16, lr: float = 1e-3, crop_seconds: float = 3.0,
                 spectral_convergence_weight: float = 0.0, val_fraction: float = 0.15,
                 num_threads: int | None = None, seed: int = 0, device: str = "cpu",
                 precision: str = "float32") -> None:
        self.input_rate = input_rate
        self.target_rate = target_rate
        self.channels = channels
        self.n_layers = n_layers
        self.kernel_size = kernel_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.min_delta = min_delta
        self.batch_size = batch_size
        self.lr = lr
        self.crop_seconds = crop_seconds
        self.spectral_convergence_weight = spectral_convergence_weight
        self.val_fraction = val_fraction
        self.num_threads = num_threads
        self.seed = seed
        self.device = device
        self.precision = precision

    # ------------------------------------------------------------------ checks

    def _validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""
        name = type(self).__name__
        for key in ("channels", "n_layers", "kernel_size", "max_epochs", "patience", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name}: {key}={value!r} must be an int >= 1")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"{name}: kernel_size={self.kernel_size!r} must be odd")
        for key in ("input_rate", "target_rate", "lr", "crop_seconds"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"{name}: {key}={value!r} must be a finite number > 0")
        if not 0 <= self.spectral_convergence_weight < math.inf:
            raise ConfigError(f"{name}: spectral_convergence_weight={self.spectral_convergence_weight!r} "
                              "must be a finite number >= 0")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"{name}: val_fraction={self.val_fraction!r} must be in (0, 1)")
        if not 0 <= self.min_delta < 1:
            raise ConfigError(f"{name}: min_delta={self.min_delta!r} must be in [0, 1)")
        threads = self.num_threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or threads < 1):
            raise ConfigError(f"{name}: num_threads={threads!r} must be None or an int >= 1")
        torch_device(self.device, name)
        check_precision(self.precision, name)

    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(frames, mels) first")

    def _check_durations(self, frames: list[np.ndarray], mels: list[np.ndarray]) -> None:
        """Raise :class:`ConfigError` when a pair's durations disagree (wrong rates or pairing)."""
        for i, (x, y) in enumerate(zip(frames, mels)):
            dur_in, dur_out = x.shape[0] / self.input_rate, y.shape[0] / self.target_rate
            tolerance = max(0.1 * dur_out, 2.0 / self.input_rate + 2.0 / self.target_rate)
            if abs(dur_in - dur_out) > tolerance:
                raise ConfigError(
                    f"{type(self).__name__}: utterance {i} has {x.shape[0]} frames at input_rate="
                    f"{self.input_rate!r} Hz ({dur_in:.2f} s) but {y.shape[0]} mel frames at target_rate="
                    f"{self.target_rate!r} Hz ({dur_out:.2f} s); check the rates and the pairing")

    # ------------------------------------------------------------------ training

    @property
    def crop_frames(self) -> int:
        """Mel frames per training crop."""
        return max(1, int(round(self.crop_seconds * self.target_rate)))

    def _loss(self, pred: torch.Tensor, target: torch.Tensor, t_mean: torch.Tensor,
              t_std: torch.Tensor) -> torch.Tensor:
        """L1 on standardised log-mels plus the weighted spectral convergence of mel magnitude."""
        loss = F.l1_loss(pred, target)
        if self.spectral_convergence_weight > 0:
            true = torch.exp(target * t_std + t_mean)
            est = torch.exp(torch.clamp(pred * t_std + t_mean, max=_MAX_LOG_MEL))
            sc = torch.linalg.vector_norm(true - est, dim=(1, 2)) / torch.linalg.vector_norm(true, dim=(1, 2))
            loss = loss + self.spectral_convergence_weight * sc.mean()
        return loss

    def _evaluate(self, net: _DecoderNet, xs: list[np.ndarray], ys: list[np.ndarray],
                  t_mean: torch.Tensor, t_std: torch.Tensor) -> tuple[float, float]:
        """Frame-weighted objective and natural-log L1 on full utterances."""
        net.eval()
        device = t_std.device
        total, l1, frames = 0.0, 0.0, 0
        with torch.no_grad():
            for x, y in zip(xs, ys):
                with mixed_precision(device, self.precision):
                    pred = net(torch.from_numpy(x.astype(np.float32))[None].to(device)).float()
                target = torch.from_numpy(y)[None].to(device)
                total += float(self._loss(pred, target, t_mean, t_std)) * y.shape[0]
                l1 += float(torch.mean(torch.abs(pred - target) * t_std)) * y.shape[0]
                frames += y.shape[0]
        return total / frames, l1 / frames

    def fit(self, frames: Sequence[np.ndarray], mels: Sequence[np.ndarray]) -> "InversionDecoder":
        """Train on paired utterances, early-stopped on a seeded held-out part of them.

        Parameters
        ----------
        frames : sequence of ndarray of shape (T_i, D)
            Frame-level embeddings at ``input_rate``.
        mels : sequence of ndarray of shape (T'_i, n_mels)
            Natural-log mel spectrograms of the same utterances at ``target_rate``.

        Returns
        -------
        self
        """
        t0 = time.perf_counter()
        self._validate()
        if len(frames) != len(mels):
            raise CorpusError(f"{len(frames)} frame sequences but {len(mels)} mel spectrograms")
        if len(frames) < 2:
            raise CorpusError(f"{type(self).__name__} needs >= 2 utterances (one for validation), "
                              f"got {len(frames)}")
        frames = _check_sequences(frames, "frames")
        mels = _check_sequences(mels, "mels")
        self._check_durations(frames, mels)
        fit_idx, val_idx = _seeded_holdout(len(frames), self.val_fraction, self.seed)

        stacked = np.concatenate([frames[i] for i in fit_idx]).astype(np.float64)
        mean, std = stacked.mean(0), stacked.std(0)
        std[std <= 1e-6 * max(float(std.max()), 1e-30)] = 1.0
        targets = np.concatenate([mels[i] for i in fit_idx]).astype(np.float64)
        t_mean, t_std = targets.mean(0), targets.std(0)
        t_std[t_std <= 1e-6 * max(float(t_std.max()), 1e-30)] = 1.0
        del stacked, targets
        self.mean_, self.std_ = mean.astype(np.float32), std.astype(np.float32)
        self.target_mean_, self.target_std_ = t_mean.astype(np.float32), t_std.astype(np.float32)

        xs = [_half(self._inputs(x, y.shape[0])) for x, y in zip(frames, mels)]
        ys = [(y - self.target_mean_) / self.target_std_ for y in mels]
        with _torch_threads(self.num_threads):
            self.net_, record = self._train(xs, ys, fit_idx, val_idx)
        self.history_ = record.pop("history")
        self.converged_ = record.pop("converged")
        self.n_params_ = record["params"]
        self.fit_seconds_ = time.perf_counter() - t0
        self.budget_ = {**record, "fit_seconds": round(self.fit_seconds_, 3), "input_rate": self.input_rate,
                        "target_rate": self.target_rate, "channels": self.channels,
                        "n_layers": self.n_layers, "kernel_size": self.kernel_size,
                        "crop_frames": self.crop_frames, "max_epochs": self.max_epochs,
                        "patience": self.patience, "min_delta": self.min_delta, "batch_size": self.batch_size,
                        "lr": self.lr, "precision": self.precision,
                        "spectral_convergence_weight": self.spectral_convergence_weight,
                        "torch_threads": self.num_threads or torch.get_num_threads()}
        return self

    def _inputs(self, x: np.ndarray, n_out: int) -> np.ndarray:
        """Standardised frames interpolated onto ``n_out`` mel frame times."""
        return resample_frames((x - self.mean_) / self.std_, self.input_rate, self.target_rate, n_out)

    def _train(self, xs: list[np.ndarray], ys: list[np.ndarray], fit_idx: np.ndarray,
               val_idx: np.ndarray) -> tuple[_DecoderNet, dict]:
        """Adam on random aligned crops with early stopping; returns the best net (on ``device``) and its record."""
        device = torch_device(self.device, type(self).__name__)
        rng = np.random.default_rng(self.seed)
        crop = self.crop_frames
        lengths = np.array([ys[i].shape[0] for i in fit_idx])
        epoch_items = np.repeat(fit_idx, np.maximum(1, np.round(lengths / crop).astype(int)))
        t_mean, t_std = torch.from_numpy(self.target_mean_).to(device), torch.from_numpy(self.target_std_).to(device)
        val_x, val_y = [xs[i] for i in val_idx], [ys[i] for i in val_idx]
        history, best, best_state, best_epoch, steps, stopped = [], math.inf, None, 0, 0, False
        counted, counted_epoch = math.inf, 0
        with seeded(self.seed, device):
            net = _DecoderNet(xs[0].shape[1], ys[0].shape[1], self.channels, self.n_layers,
                              self.kernel_size).to(device)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)
            # Halve the step when validation stalls, so training settles before patience runs out.
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5,
                                                                 patience=max(1, self.patience // 3))
            for epoch in range(1, self.max_epochs + 1):
                net.train()
                losses = []
                order = rng.permutation(epoch_items)
                for b in range(0, order.size, self.batch_size):
                    xb, yb = [], []
                    for i in order[b:b + self.batch_size]:
                        start = int(rng.integers(0, max(1, ys[i].shape[0] - crop + 1)))
                        xb.append(fit_length(xs[i][start:], crop))
                        yb.append(fit_length(ys[i][start:], crop))
                    with mixed_precision(device, self.precision):
                        pred = net(torch.from_numpy(np.stack(xb).astype(np.float32)).to(device)).float()
                    loss = self._loss(pred, torch.from_numpy(np.stack(yb)).to(device), t_mean, t_std)
                    opt.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                    opt.step()
                    losses.append(loss.item())
                    steps += 1
                val_loss, val_l1 = self._evaluate(net, val_x, val_y, t_mean, t_std)
                history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                                "val_l1": val_l1, "lr": opt.param_groups[0]["lr"]})
                plateau.step(val_loss)
                if val_loss < best:
                    best, best_epoch = val_loss, epoch
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                if val_loss < counted * (1 - self.min_delta):
                    counted, counted_epoch = val_loss, epoch
                elif epoch - counted_epoch >= self.patience:
                    stopped = True
                    break
            net.load_state_dict(best_state)
            net.eval()
        record = {"epochs": len(history), "best_epoch": best_epoch, "steps": steps,
                  "n_train": int(fit_idx.size), "n_val": int(val_idx.size),
                  "train_frames": int(lengths.sum()), "best_val_loss": best,
                  "best_val_l1": history[best_epoch - 1]["val_l1"],
                  "params": int(sum(p.numel() for p in net.parameters())),
                  "converged": stopped, "history": history}
        return net, record

    # ------------------------------------------------------------------ public API

    def predict(self, frames: Sequence[np.ndarray], n_frames: Sequence[int] | None = None) -> list[np.ndarray]:
        """Decoded log-mels of frame sequences.

        Parameters
        ----------
        frames : sequence of ndarray of shape (T_i, D)
        n_frames : sequence of int or None, default=None
            Mel frames wanted per utterance (the original audio's ``log_mel`` length); by
            default :func:`default_n_frames` of each sequence.

        Returns
        -------
        list of ndarray of shape (n_frames_i, n_mels), float32
            Natural-log mel spectrograms at ``target_rate``.
        """
        self._check_fitted()
        frames = _check_sequences(frames, "frames", self.mean_.size)
        if n_frames is None:
            n_frames = [default_n_frames(x.shape[0], self.input_rate, self.target_rate) for x in frames]
        if len(n_frames) != len(frames):
            raise ConfigError(f"n_frames has {len(n_frames)} entries for {len(frames)} sequences")
        out = []
        self.net_.eval()
        device = next(self.net_.parameters()).device
        with torch.no_grad(), _torch_threads(self.num_threads), full_fp32(device):
            for x, n in zip(frames, n_frames):
                if isinstance(n, bool) or int(n) != n or n < 1:
                    raise ConfigError(f"n_frames entries must be ints >= 1, got {n!r}")
                with mixed_precision(device, self.precision):
                    pred = self.net_(torch.from_numpy(self._inputs(x, int(n)))[None].to(device))[0]
                pred = pred.float().cpu().numpy()
                out.append((pred * self.target_std_ + self.target_mean_).astype(np.float32))
        return out

    def fit_set(self, train: EmbeddingSet, mels: Sequence[np.ndarray]) -> "InversionDecoder":
        """:meth:`fit` on ``train.frames(i)`` paired with ``mels[i]``."""
        return self.fit([train.frames(i) for i in range(len(train))], mels)

    def predict_set(self, data: EmbeddingSet, n_frames: Sequence[int] | None = None) -> list[np.ndarray]:
        """:meth:`predict` on ``data.frames(i)``."""
        return self.predict([data.frames(i) for i in range(len(data))], n_frames)


def mean_envelopes(mels: Sequence[np.ndarray]) -> np.ndarray:
    """Average log-mel envelope of each utterance: ``(N, n_mels)`` means over frames."""
    return np.stack([np.asarray(m, dtype=np.float64).mean(0) for m in _check_sequences(mels, "mels")])


class VoiceProfileDecoder:
    """Ridge regression from pooled embeddings to the average log-mel envelope ("voice profile").

    Inputs are standardised; ``alpha`` is chosen by the mean log-spectral distance
    (:func:`envelope_lsd_db`) on a seeded held-out part of the training data, then the
    model is refitted on all of it.

    Parameters
    ----------
    alpha_grid : tuple of float, default=(0.1, 1.0, 10.0, 100.0)
        Ridge penalties tried.
    val_fraction : float, default=0.2
        Fraction of training utterances held out to choose ``alpha``.
    n_boot : int, default=1000
        Bootstrap resamples of the CIs in :meth:`evaluate`.
    seed : int, default=0

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> pooled, W = rng.standard_normal((40, 6)), rng.standard_normal((6, 80))
    >>> mels = [np.tile(p @ W, (5, 1)) for p in pooled]
    >>> VoiceProfileDecoder().fit(pooled, mels).predict(pooled).shape
    (40, 80)
    """

    def __init__(self, *, alpha_grid: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0), val_fraction: float = 0.2,
                 n_boot: int = 1000, seed: int = 0) -> None:
        self.alpha_grid = alpha_grid
        self.val_fraction = val_fraction
        self.n_boot = n_boot
        self.seed = seed

    def _validate(self) -> None:
        name = type(self).__name__
        if not len(self.alpha_grid) or not all(0 < a < math.inf for a in self.alpha_grid):
            raise ConfigError(f"{name}: alpha_grid={self.alpha_grid!r} must be non-empty positive numbers")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"{name}: val_fraction={self.val_fraction!r} must be in (0, 1)")

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(pooled, mels) first")

    @staticmethod
    def _check_pooled(pooled: np.ndarray, n: int | None = None, dim: int | None = None) -> np.ndarray:
        X = np.asarray(pooled, dtype=np.float64)
        if X.ndim != 2 or (n is not None and X.shape[0] != n) or (dim is not None and X.shape[1] != dim):
            raise StoreError(f"pooled has shape {X.shape}, expected ({n or 'N'}, {dim or 'D'})")
        if not np.isfinite(X).all():
            raise StoreError("pooled embeddings contain non-finite values")
        return X

    def fit(self, pooled: np.ndarray, mels: Sequence[np.ndarray]) -> "VoiceProfileDecoder":
        """Fit on pooled ``(N, D)`` embeddings and the N utterances' log-mels ``(T_i, n_mels)``."""
        t0 = time.perf_counter()
        self._validate()
        Y = mean_envelopes(mels)
        X = self._check_pooled(pooled, len(Y))
        if len(Y) < 3:
            raise CorpusError(f"{type(self).__name__} needs >= 3 utterances, got {len(Y)}")
        fit_idx, val_idx = _seeded_holdout(len(Y), self.val_fraction, self.seed)
        self.val_scores_ = {}
        for alpha in self.alpha_grid:
            model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(X[fit_idx], Y[fit_idx])
            lsd = envelope_lsd_db(model.predict(X[val_idx]), Y[val_idx])
            self.val_scores_[str(alpha)] = float(lsd.mean())
        self.alpha_ = min(self.alpha_grid, key=lambda a: self.val_scores_[str(a)])
        self.model_ = make_pipeline(StandardScaler(), Ridge(alpha=self.alpha_)).fit(X, Y)
        self.train_mean_ = Y.mean(0)
        self.fit_seconds_ = time.perf_counter() - t0
        self.budget_ = {"n_train": int(len(Y)), "n_val": int(val_idx.size), "n_features": int(X.shape[1]),
                        "alpha": self.alpha_, "validation_lsd_db": self.val_scores_,
                        "fit_seconds": round(self.fit_seconds_, 3)}
        return self

    def predict(self, pooled: np.ndarray) -> np.ndarray:
        """Predicted average log-mel envelopes ``(N, n_mels)``."""
        self._check_fitted()
        X = self._check_pooled(pooled, dim=self.model_[0].n_features_in_)
        return self.model_.predict(X)

    def fit_set(self, train: EmbeddingSet, mels: Sequence[np.ndarray]) -> "VoiceProfileDecoder":
        """:meth:`fit` on ``train.pooled``."""
        return self.fit(train.pooled, mels)

    def evaluate(self, pooled: np.ndarray, mels: Sequence[np.ndarray],
                 speakers: np.ndarray | None = None) -> AttackResult:
        """Envelope log-spectral distance against the baseline that predicts the training mean.

        Metrics: ``lsd_db`` (mean over utterances of :func:`envelope_lsd_db` between
        predicted and true average envelopes) with a bootstrap 95% CI (resampling speakers
        when ``speakers`` can be resampled in more than one way, else utterances), ``baseline_lsd_db`` (same
        for the training-mean envelope; also the result's ``chance``) and ``lsd_gain_db``
        (baseline minus decoder; > 0 means the pooled embedding reveals the voice profile).
        """
        self._check_fitted()
        Y = mean_envelopes(mels)
        pred = self.predict(self._check_pooled(pooled, len(Y)))
        lsd = envelope_lsd_db(pred, Y)
        base = envelope_lsd_db(np.broadcast_to(self.train_mean_, Y.shape), Y)
        n_boot, seed = self.n_boot, self.seed

        def ci(values: np.ndarray) -> list[float]:
            if speakers is not None:
                _, idx = np.unique(speakers, return_inverse=True)
                try:
                    return list(speaker_bootstrap_ci(lambda c: float(np.average(values, weights=c[idx])),
                                                     int(idx.max()) + 1, n_boot=n_boot, seed=seed))
                except DegenerateBootstrap:  # speakers that resample one way only: resample utterances
                    pass
            return list(bootstrap_ci(np.mean, values, n_boot=n_boot, seed=seed))

        metrics = {"lsd_db": float(lsd.mean()), "ci95": ci(lsd), "baseline_lsd_db": float(base.mean()),
                   "baseline_ci95": ci(base),
                   "lsd_gain_db": float(base.mean() - lsd.mean()), "n_test": int(len(Y)),
                   "definition": "LSD = RMS over mel bins of 20*log10(e)*(ln A_true - ln A_pred) dB, "
                                 "A = mel magnitude, ln A averaged over the utterance's frames"}
        return AttackResult("inversion", "voice_profile", metrics, chance=float(base.mean()),
                            budget=dict(self.budget_), converged=True)


@dataclass
class InversionSettings(FamilySettings):
    """Inversion-attack settings (TOML section ``[inversion]``).

    The attacker trains the decoder on a side corpus of other people (speaker-disjoint split)
    and inverts the test speakers' embeddings. ``n_eval`` test utterances (two or more per
    evaluated speaker, so the speaker judge can link them) are vocoded and scored by the
    judges; ``n_examples`` of them are saved as audio. ``skip_judges`` reports signal metrics
    only (a weakened audit); ``shuffled_control`` also trains a decoder on misaligned
    embeddings, the sanity check that the decoder reads them. ``layers`` (None: every audited
    layer) limits inversion to layer indices, ``"leakiest"`` (the headline layer) and ``"last"``.
    """

    BUDGET = ("max_train_utts", "n_eval", "max_epochs", "channels", "n_boot")
    QUICK = {"max_epochs": 40, "n_boot": 200}

    test_fraction: float = 0.3
    max_train_utts: int = 400
    n_eval: int = 16
    n_examples: int = 2
    max_epochs: int = 150
    channels: int = 128
    vocoder: str = "griffinlim"
    asr_judge: str = "whisper-tiny.en"
    speaker_judge: str = "ge2e"
    skip_judges: bool = False
    shuffled_control: bool = False
    min_frame_rate: float = 10.0
    n_boot: int = 1000
    layers: list[int | str] | None = None

    def validate(self, prefix: str = "inversion.") -> None:
        """Raise :class:`ConfigError` naming the bad key."""
        check_range(prefix, "test_fraction", self.test_fraction, 0, 1)
        for key in ("max_train_utts", "n_eval", "max_epochs", "channels"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{prefix}{key}={getattr(self, key)!r}: must be >= 1")
        if self.n_examples < 0:
            raise ConfigError(f"{prefix}n_examples={self.n_examples!r}: must be >= 0")
        from audit.vocoder import check_vocoder_spec

        problem = check_vocoder_spec(self.vocoder)
        if problem:
            raise ConfigError(f"{prefix}vocoder={self.vocoder!r}: {problem}")
        if self.n_boot < 100:
            raise ConfigError(f"{prefix}n_boot={self.n_boot!r}: must be >= 100 for a meaningful 95% CI")
        if self.layers is not None:
            check_layer_selection(prefix, "layers", self.layers)

    def _extra_weakening(self, prefix: str) -> list[str]:
        if self.skip_judges:
            return [f"{prefix}skip_judges: no ASR or speaker judge scored the reconstructions"]
        return []


def _content_key(wavs: list[np.ndarray]) -> str:
    """Hash of the audio itself, so run-level memos can never be confused between clips."""
    h = hashlib.sha1()
    for w in wavs:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


class _RunMemoJudge:
    """A loaded judge whose answers on the same audio are reused within a run.

    The originals are the same for every layer, so their transcripts and speaker embeddings
    are computed once per run; only the reconstructions are judged per layer.
    """

    def __init__(self, judge: Any, run: RunContext, name: str) -> None:
        self.judge = judge
        self.run = run
        self.name = name

    def transcribe(self, wavs: Sequence[np.ndarray]) -> list[str]:
        """The judge's transcripts of ``wavs`` (reused for audio already transcribed in this run)."""
        wavs = list(wavs)
        return self.run.once((self.name, "transcribe", _content_key(wavs)), lambda: self.judge.transcribe(wavs))

    def embed(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """The judge's speaker embeddings of ``wavs`` (reused likewise)."""
        wavs = list(wavs)
        return self.run.once((self.name, "embed", _content_key(wavs)), lambda: self.judge.embed(wavs))

    def describe(self) -> dict[str, Any]:
        """The wrapped judge's description."""
        return self.judge.describe()


def eval_rows(speakers: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` rows for the judges: two or more per chosen speaker, so the speaker judge can link them.

    Speakers with at least two rows are taken in a seeded order, two rows each, until ``n``
    rows are chosen (at least two speakers); any rows left to fill come round-robin from
    the chosen speakers. With fewer than two such speakers, rows are spread round-robin over
    all speakers (the speaker judge then records why it cannot link).
    """
    rng = np.random.default_rng(seed)
    names = np.unique(speakers)
    groups = {s: rng.permutation(np.flatnonzero(speakers == s)) for s in names[rng.permutation(names.size)]}
    multi = [s for s, g in groups.items() if g.size >= 2]
    if len(multi) < 2:
        pool = list(groups.values())
    else:
        pool = [groups[s] for s in multi[:max(2, n // 2)]]
    order = [g[k] for k in range(max(len(g) for g in pool)) for g in pool if k < len(g)]
    return np.sort(np.array(order[:max(n, 4 if len(multi) >= 2 else 0)], dtype=int))


def _mel_metrics(true: list[np.ndarray], pred: list[np.ndarray], n_boot: int, seed: int) -> dict:
    """Mel-space distances of decoded vs true log-mels (not the textbook MCD: see ``signal.mcd_db``)."""
    from audit.signal_metrics import logmel_cepstral_distance

    cd = np.array([logmel_cepstral_distance(t, p)[0] for t, p in zip(true, pred)])
    lsd = np.array([lsd_from_logmel(t, p)[0] for t, p in zip(true, pred)])
    return {"logmel_cd_db": float(cd.mean()),
            "logmel_cd_db_ci95": list(bootstrap_ci(np.mean, cd, n_boot=n_boot, seed=seed)),
            "logmel_cd_definition": "cepstral distance of DCT-II cepstra of the 80-bin log-mel: a mel-space "
                                    "distance on its own scale, not comparable with published MCD",
            "lsd_db": float(lsd.mean()), "lsd_db_ci95": list(bootstrap_ci(np.mean, lsd, n_boot=n_boot, seed=seed)),
            "n_utterances": len(true)}


def _decoder(settings: InversionSettings, input_rate: float, target_rate: float, seed: int,
             device: str = "cpu", precision: str = "float32") -> InversionDecoder:
    """The audit's decoder budget: 128 channels, lr 3e-3 halved on plateaus, patience 8, one torch thread.

    It runs on ``device`` in ``precision``. Measured against other schedules on the complete
    default's layers 1 and 4 (same data and seed; best validation loss, lower is better): this
    one 0.127 / 0.238 (102 / 61 epochs); lr 6e-3 halved on plateaus 0.130 / 0.245; a 40-epoch
    cosine decay from 3e-3 or 6e-3 0.144 or 0.136 at layer 1. Fewer epochs decode worse.
    """
    return InversionDecoder(input_rate=input_rate, target_rate=target_rate, channels=settings.channels, lr=3e-3,
                            max_epochs=settings.max_epochs, patience=8, num_threads=1, seed=seed, device=device,
                            precision=precision)


def _analyse(run: RunContext, data: EmbeddingSet,
             analyses: dict[str, Callable[[np.ndarray], np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Every named analysis of every utterance's audio, once per run, decoding each utterance once."""
    keys = {name: ("analysis", name, tuple(data.utt_ids)) for name in analyses}
    computed: dict[str, list[np.ndarray]] = {name: [] for name, key in keys.items() if not run.has(key)}
    if computed:
        for i in range(len(data)):
            wav = data.audio(i)
            for name, values in computed.items():
                values.append(analyses[name](wav))
    return {name: run.once(key, lambda name=name: computed[name]) for name, key in keys.items()}


def _audio(run: RunContext, data: EmbeddingSet, i: int) -> np.ndarray:
    """Row ``i``'s audio, decoded once per run (used for the few originals the judges hear)."""
    return run.once(("audio", data.utt_ids[i]), lambda: data.audio(i))


def _vocoder(settings: InversionSettings, run: RunContext) -> Any:
    from audit.vocoder import build_vocoder

    return run.once(("vocoder", settings.vocoder),
                    lambda: build_vocoder(settings.vocoder, seed=run.seed, trust_remote_code=run.trust_remote_code))


def _judges(settings: InversionSettings, run: RunContext) -> tuple[_RunMemoJudge, _RunMemoJudge]:
    from audit.judges import ASRJudge, SpeakerJudge

    # Both judges run on the run's device; the models they read from the run memo stay on the CPU.
    def load_asr() -> ASRJudge:
        if settings.asr_judge != "whisper-tiny.en":
            return ASRJudge(model=settings.asr_judge, device=run.device).load()
        from audit.whisper_offline import load_whisper_tiny_en

        # one Whisper tiny.en per run: the audited extractor, when it is that model, reads the same bundle
        return ASRJudge(model=settings.asr_judge, device=run.device).load(run.once(SHARED_WHISPER,
                                                                                   load_whisper_tiny_en))

    def load_spk() -> SpeakerJudge:
        if settings.speaker_judge != "ge2e":
            return SpeakerJudge(model=settings.speaker_judge, trust_remote_code=run.trust_remote_code,
                                device=run.device).load()
        from audit.ge2e import GE2EEncoder

        return SpeakerJudge(model=settings.speaker_judge, device=run.device).load(run.once(SHARED_GE2E, GE2EEncoder))

    asr = run.once(("asr", settings.asr_judge), load_asr)
    spk = run.once(("spk", settings.speaker_judge), load_spk)
    return _RunMemoJudge(asr, run, "asr"), _RunMemoJudge(spk, run, "spk")


def preflight_inversion(settings: InversionSettings, run: RunContext) -> None:
    """Load the vocoder and judges (kept in the run context) before any embedding is extracted.

    A model that cannot load then fails the run at once, in one line, instead of after hours of attacks.
    """
    _vocoder(settings, run)
    if not settings.skip_judges:
        _judges(settings, run)


def split_inversion(labels: EmbeddingSet, settings: InversionSettings, seed: int) -> Split:
    """Speaker-disjoint split: the attacker's side corpus holds other people."""
    return speaker_disjoint_split(labels.speakers, test_fraction=settings.test_fraction, seed=seed)


def attack_inversion(train: EmbeddingSet, test: EmbeddingSet, settings: InversionSettings,
                     ctx: LayerContext) -> dict:
    """Invert one layer: voice-profile decoder on pooled embeddings, frame decoder + judges on frames.

    ``train`` (at most ``max_train_utts`` of it, seeded) is the attacker's side corpus and
    ``test`` holds other speakers. Frame-level inversion needs frames at ``>= min_frame_rate``
    Hz; other layers get the pooled attack only, with the reason recorded. Decoding the audio,
    the originals' log-mels, vocoder copies and the judges' answers on the originals are
    computed once per run (``ctx.run``), not once per layer. The frame decoders run on the
    run's device and precision (``ctx.device``, ``ctx.attacker_precision``).
    """
    from audit.judges import content_leakage, mel_cepstra, signal_scores, speaker_leakage
    from audit.vocoder import log_mel

    run, seed, frame_rate = ctx.run, ctx.seed, ctx.frame_rate
    rng = np.random.default_rng(seed)
    used = np.sort(rng.permutation(len(train))[:settings.max_train_utts])
    train = train.subset(used)
    frame_ok = train.frame_source is not None and frame_rate >= settings.min_frame_rate
    out: dict[str, Any] = {"n_train_used": int(used.size)}
    vocoder = _vocoder(settings, run) if frame_ok else None
    # A neural vocoder's decoder predicts that vocoder's own log-mel; the voice profile uses the project's.
    analyses = {"log_mel": log_mel}
    if frame_ok and settings.vocoder != "griffinlim":
        analyses[f"vocoder:{settings.vocoder}"] = vocoder.analyze
    train_an, test_an = _analyse(run, train, analyses), _analyse(run, test, analyses)
    train_mels, test_mels = train_an["log_mel"], test_an["log_mel"]
    profile = VoiceProfileDecoder(seed=seed, n_boot=settings.n_boot).fit(train.pooled, train_mels)
    out["voice_profile"] = profile.evaluate(test.pooled, test_mels, speakers=test.speakers).to_dict()
    if not frame_ok:
        reason = ("pooled-only layer" if train.frame_source is None else
                  f"frames at {frame_rate:.2f} Hz cannot be aligned to audio (< {settings.min_frame_rate:g} Hz)")
        out["frame"] = AttackResult.skip("inversion", "conv-decoder", f"{reason}: voice-profile attack only").to_dict()
        return out
    if settings.vocoder != "griffinlim":
        train_mels, test_mels = train_an[f"vocoder:{settings.vocoder}"], test_an[f"vocoder:{settings.vocoder}"]
    decoder = _decoder(settings, frame_rate, vocoder.frame_rate, seed, ctx.device, ctx.attacker_precision)
    decoder.fit([train.frames(i) for i in range(len(train))], train_mels)
    n_frames = [m.shape[0] for m in test_mels]
    pred = decoder.predict([test.frames(i) for i in range(len(test))], n_frames=n_frames)
    metrics: dict[str, Any] = {"mel": {**_mel_metrics(test_mels, pred, settings.n_boot, seed),
                                       "mel_space": f"the vocoder's log-mel ({vocoder.frame_rate:g} Hz)"}}
    if settings.shuffled_control:
        shuffled = _decoder(settings, frame_rate, vocoder.frame_rate, seed, ctx.device, ctx.attacker_precision)
        shuffled.fit(shuffle_alignment([train.frames(i) for i in range(len(train))], seed), train_mels)
        metrics["shuffled_control_mel"] = _mel_metrics(
            test_mels, shuffled.predict([test.frames(i) for i in range(len(test))], n_frames=n_frames),
            settings.n_boot, seed)
    rows = eval_rows(test.speakers, settings.n_eval, seed)
    originals = [_audio(run, test, int(i)) for i in rows]
    recon = [vocoder.synthesize(pred[i], length=originals[k].size) for k, i in enumerate(rows)]
    key = (_content_key(originals), settings.vocoder)
    copies = run.once(("copy", key),
                      lambda: [vocoder.synthesize(test_mels[i], length=originals[k].size) for k, i in enumerate(rows)])
    cepstra = run.once(("mel-cepstra", key[0]), lambda: mel_cepstra(originals))
    metrics["signal"] = signal_scores(originals, recon, n_boot=settings.n_boot, seed=seed, original_cepstra=cepstra)
    metrics["vocoder_copy_signal"] = run.once(("copy-signal", key), lambda: signal_scores(
        originals, copies, n_boot=settings.n_boot, seed=seed, original_cepstra=cepstra))
    for m in (metrics["signal"], metrics["vocoder_copy_signal"]):
        m.pop("per_utterance", None)
    if settings.skip_judges:
        metrics["judges"] = "skipped (inversion.skip_judges = true)"
    else:
        asr, spk = _judges(settings, run)
        refs = [test.transcripts[i] if test.transcripts is not None else None for i in rows]
        if all(refs):
            spk_rows = test.speakers[rows]  # the CIs resample speakers
            metrics["content"] = _strip(content_leakage(asr, originals, recon, refs, speakers=spk_rows,
                                                        n_boot=settings.n_boot, seed=seed))
            metrics["vocoder_copy_content"] = run.once(("copy-content", key), lambda: _strip(
                content_leakage(asr, originals, copies, refs, speakers=spk_rows, n_boot=settings.n_boot, seed=seed)))
        else:
            metrics["content"] = "skipped: some evaluated utterances have no transcript"
        try:
            metrics["speaker"] = speaker_leakage(spk, originals, recon, test.speakers[rows], n_boot=settings.n_boot,
                                                 seed=seed)
        except ValueError as err:
            metrics["speaker"] = f"skipped: {err}"
    examples = _write_examples(ctx.out_dir, ctx.index, test, rows, originals, copies, recon, test_mels, pred,
                               settings.n_examples) if ctx.out_dir is not None else []
    budget = {**decoder.budget_, "vocoder": vocoder.describe(), "n_eval": len(rows)}
    curve = [{"epoch": k + 1, **h} for k, h in enumerate(decoder.history_)]
    out["frame"] = {**AttackResult("inversion", "conv-decoder", metrics, chance=None, budget=budget,
                                   learning_curve=curve, converged=decoder.converged_).to_dict(),
                    "examples": examples, "files": [f for ex in examples for f in ex["files"].values()]}
    return out


def _strip(content: dict) -> dict:
    """Keep the numbers and the first few hypotheses (the rest is bulk)."""
    for name in ("hypotheses_reconstruction", "hypotheses_original"):
        if name in content:
            content[name] = content[name][:3]
    return content


def _write_examples(out_dir: Path, layer: int | None, test: EmbeddingSet, rows: np.ndarray,
                    originals: list[np.ndarray], copies: list[np.ndarray], recon: list[np.ndarray],
                    true_mels: list[np.ndarray], pred_mels: list[np.ndarray], n_examples: int) -> list[dict]:
    """Listenable triplets (original, vocoder copy, reconstruction) and a mel comparison plot per example.

    Each example records whose speech it is (``utt_id``, ``speaker``, ``transcript``: personal data
    that a redacted report removes) and its ``files`` by kind (``original``, ``vocoder_copy``,
    ``reconstruction``, ``mels``), relative to ``out_dir``.
    """
    from audit.audio import write_audio
    from audit.plots import mel_comparison

    folder = Path(out_dir) / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for k in range(min(n_examples, len(rows))):
        row = rows[k]
        utt = safe_filename(test.utt_ids[row])
        files = {}
        for kind, wav in (("original", originals[k]), ("vocoder_copy", copies[k]), ("reconstruction", recon[k])):
            files[kind] = f"examples/layer{layer}_{utt}_{kind}.wav"
            write_audio(Path(out_dir) / files[kind], wav)
        files["mels"] = f"examples/layer{layer}_{utt}_mels.png"
        mel_comparison(Path(out_dir) / files["mels"], true_mels[row], pred_mels[row],
                       title=f"layer {layer}: original vs reconstructed log-mel")
        transcript = test.transcripts[row] if test.transcripts is not None else None
        examples.append({"layer": layer, "utt_id": str(test.utt_ids[row]), "speaker": str(test.speakers[row]),
                         "transcript": None if transcript is None else str(transcript), "files": files})
    return examples


def _stoi_cell(sig: dict) -> str:
    """STOI to 3 decimals, with ``(m/n clips)`` when some clips were too short or silent for STOI."""
    missing, total = sig.get("stoi_not_measurable") or 0, sig.get("stoi_n_utterances")
    value = fmt_num(sig.get("stoi"), ".3f")
    return f"{value} ({total - missing}/{total} clips)" if missing and total else value


def inversion_table(results: dict) -> Table:
    """One row per layer (signal, judges, voice profile), plus the vocoder-copy reference row."""
    table = Table("Inversion per layer (decoder -> log-mel -> vocoder, unseen speakers)",
                  ["layer", "name", "MCD dB", "LSD dB", "STOI", "judge WER (originals)", "speaker-judge EER",
                   "linked top-1", "voice-profile LSD dB (baseline)"])
    copy = None
    for la in results["layers"]:
        inv = layer_attack(la, "inversion")
        if not inv:
            continue
        prof = inv.get("voice_profile") or {}
        prof_cell = (f"{fmt_num(prof.get('lsd_db'), '.2f')} ({fmt_num(prof.get('baseline_lsd_db'), '.2f')})"
                     if is_ok(prof) else skip_cell(prof))
        fr = inv.get("frame")
        if not is_ok(fr):
            table.rows.append([str(la["index"]), la["name"], skip_cell(fr)] + [""] * 5 + [prof_cell])
            continue
        sig, content, spk = fr.get("signal", {}), fr.get("content"), fr.get("speaker")
        wer_cell = (f"{fmt_pct(content['wer_reconstruction'])} ({fmt_pct(content['wer_original'])})"
                    if isinstance(content, dict) else str(content or "n/a"))
        table.rows.append([str(la["index"]), la["name"], fmt_num(sig.get("mcd_db"), ".2f"),
                           fmt_num(sig.get("lsd_db"), ".2f"), _stoi_cell(sig), wer_cell,
                           fmt_pct(spk.get("eer")) if isinstance(spk, dict) else str(spk or "n/a"),
                           fmt_pct(spk.get("top1")) if isinstance(spk, dict) else "n/a", prof_cell])
        copy = copy or fr
        if isinstance(content, dict) and isinstance(spk, dict):
            table.notes.append(
                f"Layer {la['index']}: reconstructions give judge WER {fmt_pct(content['wer_reconstruction'])} vs "
                f"{fmt_pct(content['wer_original'])} on the originals, and the speaker judge links them to the right "
                f"speaker {fmt_pct(spk['top1'])} of the time (chance {fmt_pct(spk.get('chance'))}).")
    if copy is not None:
        vs, vc = copy.get("vocoder_copy_signal", {}), copy.get("vocoder_copy_content")
        wer_cell = (f"{fmt_pct(vc['wer_reconstruction'])} ({fmt_pct(vc['wer_original'])})"
                    if isinstance(vc, dict) else "n/a")
        table.rows.append(["copy", "original mel -> vocoder", fmt_num(vs.get("mcd_db"), ".2f"),
                           fmt_num(vs.get("lsd_db"), ".2f"), _stoi_cell(vs), wer_cell, "", "", ""])
    table.notes.insert(0, "MCD: textbook mel-cepstral distortion in dB (SPTK mel-cepstrum by pysptk, order 24, "
                          "alpha 0.42, c0 excluded, frame-aligned, no DTW), comparable with published figures; LSD: "
                          "log-spectral distance in dB; STOI via pystoi, over the clips it can measure (`m/n clips`: "
                          "the others keep fewer than 30 frames after pystoi's silence removal and are left out, "
                          "not scored 0); judge WER: Whisper tiny.en with Whisper's "
                          "English text normaliser on references and hypotheses; speaker judge: GE2E cosine to each "
                          "speaker's enrolment (the utterance itself left out). The `copy` row runs the original mel "
                          "through the same vocoder: the vocoder's own loss, separate from the decoder's.")
    return table if table.rows else Table(table.title, [])


#: Reconstruction is rated ``high`` when the judge ASR's WER on reconstructions has a CI upper bound at
#: or below this (more than half the words recovered), or the speaker judge's top-1 a CI lower bound at
#: or above :data:`HIGH_SPEAKER_TOP1`; ``medium`` when the WER CI stays below :data:`MEDIUM_WER` or the
#: top-1 lower bound exceeds twice chance. Without judges, STOI's CI lower bound: :data:`STOI_BANDS`.
HIGH_WER = 0.5
#: ... or when it is at most this many points above the judge's own WER on the originals (a judge that
#: already misses words of the originals cannot score a reconstruction better than that).
HIGH_WER_ABOVE_ORIGINAL = 0.25
MEDIUM_WER = 0.9
HIGH_SPEAKER_TOP1 = 0.5
STOI_BANDS = (0.6, 0.4)


#: Speaker-judge bands on top-1 (CI bounds): high from :data:`HIGH_SPEAKER_TOP1`, medium above twice chance.
SPEAKER_BANDS = Bands(HIGH_SPEAKER_TOP1, 2.0, medium_times_chance=True)
#: Intelligibility bands on STOI when no judge ran (CI bounds).
STOI_RISK_BANDS = Bands(STOI_BANDS[0], STOI_BANDS[1], medium_inclusive=True)

METRICS = (
    Measure("frame.signal.mcd_db", False, ci="mcd_db_ci95", chance=None, unit="db", low=0.0, high=None,
            description="MCD of reconstructions, dB"),
    Measure("frame.signal.lsd_db", False, ci="lsd_db_ci95", chance=None, unit="db", low=0.0, high=None,
            description="log-spectral distance, dB"),
    Measure("frame.signal.stoi", True, ci="stoi_ci95", chance=None, unit="score", low=-1.0, bands=STOI_RISK_BANDS,
            description="STOI of reconstructions (a mean correlation: slightly negative for noise)"),
    Measure("frame.signal.estoi", True, ci="estoi_ci95", chance=None, unit="score", low=-1.0,
            description="ESTOI of reconstructions"),
    Measure("frame.content.wer_reconstruction", False, ci="wer_reconstruction_ci95", chance=None, unit="rate",
            high=None, label="judge WER on reconstructions", description="judge ASR WER on reconstructions"),
    Measure("frame.speaker.top1", True, ci="top1_ci95", label="speaker-judge top-1 on reconstructions",
            bands=SPEAKER_BANDS, description="speaker judge top-1 on reconstructions"),
    Measure("frame.speaker.eer", False, ci="eer_ci95", chance=0.5, description="speaker judge EER"),
)
_MEASURE = {m.pattern: m for m in METRICS}


def wer_bands(wer_original: float | None) -> Bands:
    """Judge-WER bands (lower is leakier): high at or below 50% or the originals' WER + 25 points, medium below 90%."""
    high = max(HIGH_WER, wer_original + HIGH_WER_ABOVE_ORIGINAL) if wer_original is not None else HIGH_WER
    return Bands(high, MEDIUM_WER, high_inclusive=True)


def _rate_layer(index: int, result: dict) -> RiskRating | None:
    """One layer's reconstruction risk: the judges' WER and speaker top-1, each rated by its CI bounds; either met."""
    where = f"layer {index}"
    frame = result.get("frame") or {}
    _, _, caveats = caveats_of(frame)
    rated = []
    wer = read_figure(result, "frame.content.wer_reconstruction", _MEASURE["frame.content.wer_reconstruction"], where)
    if wer.value is not None:
        bands = wer_bands((frame.get("content") or {}).get("wer_original"))
        rated.append((rate(wer, bands), wer, bands,
                      f"a judge ASR transcribes the reconstructions with WER {fmt_pct(wer.value)} (CI "
                      f"{fmt_ci(wer.ci95)}; {fmt_pct((frame.get('content') or {}).get('wer_original'))} on the "
                      "originals)"))
    spk = read_figure(result, "frame.speaker.top1", _MEASURE["frame.speaker.top1"], where)
    if spk.value is not None:
        rated.append((rate(spk, SPEAKER_BANDS), spk, SPEAKER_BANDS,
                      f"a speaker judge links them to the right speaker {fmt_pct(spk.value)} of the time (CI "
                      f"{fmt_ci(spk.ci95)}, chance {fmt_pct(spk.chance)})"))
    if rated:
        evidence = (f"{where}: speech decoded from the embeddings by a decoder trained on other people: "
                    + "; ".join(text for _, _, _, text in rated) + "; the threat is met when either judge's figure is")
        bands_text = "; ".join(f"{fig.measure.label}: {bands.describe(bool(fig.measure.higher_is_leakier), fig.measure.show)}"
                               for _, fig, bands, _ in rated)
        rating = combine([r for r, _, _, _ in rated])
        _, fig, _, _ = min(rated, key=lambda t: t[0].sort_key())
    else:
        stoi = read_figure(result, "frame.signal.stoi", _MEASURE["frame.signal.stoi"], where)
        if stoi.value is None:
            return None
        rating, fig = rate(stoi, STOI_RISK_BANDS), stoi
        evidence = (f"{where}: reconstructions reach STOI {fmt_num(stoi.value, '.2f')} (CI "
                    f"{fmt_ci(stoi.ci95, 1, '.2f')}) against the originals (judges were skipped, so "
                    "intelligibility is estimated from STOI)")
        bands_text = STOI_RISK_BANDS.describe(True, lambda x: f"{x:g}")
    reason = rating_reason(evidence, bands_text, rating, [f"decoder: {caveat}" for caveat in caveats])
    return RiskRating("reconstruction", rating.level, reason, f"inversion.{fig.measure.pattern}", fig.value,
                      fig.interval, fig.chance, index, worst=rating.worst, best=rating.best, caveats=caveats)


def rate_reconstruction(results: dict) -> RiskRating:
    """Risk that the embeddings can be turned back into intelligible, attributable speech: the worst layer."""
    ratings = [r for la in results["layers"]
               if is_ok(inv := layer_attack(la, "inversion")) and is_ok(inv.get("frame"))
               and (r := _rate_layer(la["index"], inv)) is not None]
    return worst_rating(ratings) or RiskRating("reconstruction", "not measured", "no layer has an inversion result")


#: What a redacted report removes from an inversion result: whose speech each example is, what was said
#: (the manifest's transcript, the ASR judge's hypotheses) and the recorded voice (the original and its
#: vocoder copy). The reconstruction and the mel plot stay: they are the finding.
PERSONAL = (
    PersonalField("frame.examples.*.utt_id", "utterance_id"),
    PersonalField("frame.examples.*.speaker", "speaker_id"),
    PersonalField("frame.examples.*.transcript", "transcript"),
    PersonalField("frame.examples.*.files.original", "audio_file"),
    PersonalField("frame.examples.*.files.vocoder_copy", "audio_file"),
    PersonalField("frame.content.hypotheses_reconstruction", "transcript"),
    PersonalField("frame.content.hypotheses_original", "transcript"),
    PersonalField("frame.vocoder_copy_content.hypotheses_reconstruction", "transcript"),
    PersonalField("frame.vocoder_copy_content.hypotheses_original", "transcript"),
)
FAMILY = AttackFamily(
    name="inversion", settings=InversionSettings, split=split_inversion, attack=attack_inversion,
    table=inversion_table, preflight=preflight_inversion, default=False,
    threat="reconstruction", risk=rate_reconstruction, metrics=METRICS, personal=PERSONAL,
    description="inversion: embeddings decoded back into listenable speech, judged for content and voice",
    threat_model="a decoder trained on other people's speech turns the embeddings back into audio, judged for what "
                 "is said (ASR WER) and who says it (a speaker judge).")

"""Closed-set speaker identification from frame-level hidden states (the strongest attacker).

Threat: as in :mod:`attacks.speaker_id`, the attacker holds labelled utterances of the same
speakers and asks "who is speaking?" for new ones, but here it holds the whole ``T x D``
frame sequence of the audited layer rather than its pooled mean/std, and trains a speaker
embedding network on it from scratch: ECAPA-TDNN (speechbrain, reduced width for CPU) or an
x-vector TDNN. Temporal patterns and cross-dimension correlations that pooling averages away
are then within reach, so a layer that looks private to a pooled probe can still leak who spoke.

Recipe (everything is fitted on the training split; the test split is only scored):

* inputs are standardised per dimension with the mean/std of the training frames
  (``mean_``, ``std_``);
* each step sees random crops of ``crop_seconds * frame_rate`` frames (utterances shorter than
  a crop are tiled by repetition); one epoch is one pass over the training frames in
  expectation; Adam;
* head: cosine classifier trained with additive angular margin (AAM-softmax, ``margin``,
  ``scale``), the usual ECAPA recipe; it makes the embeddings cosine-comparable, so
  :meth:`FrameSpeakerID.transform` feeds the open-set verification attack directly. Test-time
  class probabilities are ``softmax(scale * cosine)`` (no margin);
* validation: a per-speaker, utterance-level part of the TRAINING split, scored on full
  utterances after every epoch by top-1 accuracy (ties broken by the lower cross-entropy);
  training stops after ``patience`` epochs without improvement and the best weights are kept.
  ``converged`` is True when that early stop happened before ``max_epochs``.

Sequences shorter than the network's receptive field (e.g. GE2E's partial-embedding layer at
~1.3 frames/s) are tiled by repetition to that length, so every layer of the store can be
attacked; very long utterances are embedded in chunks whose embeddings are averaged. Full
sequences (validation, :meth:`FrameSpeakerID.transform`) are embedded in zero-padded batches of
similar lengths, each row exactly as if it were alone (:func:`_as_if_alone`), so batching changes
the embeddings only by float rounding (< 1e-6 in the tests).

The network trains and embeds on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``) in float32;
results come back as numpy arrays.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.lobes.models.Xvector import Xvector
from speechbrain.nnet.CNN import Conv1d as SpeechbrainConv1d
from speechbrain.nnet.losses import AdditiveAngularMargin
from speechbrain.nnet.pooling import StatisticsPooling
from torch import nn
from torch.nn import functional as F

from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError, CorpusError
from audit.family import check_layer_selection
from audit.estimators import (CURVE_FRACTIONS, check_is_fitted, check_precision, frame_moments, full_fp32,
                              learning_curve, mixed_precision, seeded, stratified_fraction, torch_device)
from audit.metrics import closed_set_metrics
from audit.results import AttackResult
from audit.splits import Grouping, closed_set_split

ARCHS = ("ecapa", "xvector")

# Kernel sizes and dilations of the two encoders (speechbrain's defaults).
_LAYOUT = {"ecapa": ((5, 3, 3, 3, 1), (1, 2, 3, 4, 1)), "xvector": ((5, 3, 3, 1, 1), (1, 2, 3, 1, 1))}

# Longest sequence embedded in one forward pass; longer utterances are chunked.
_MAX_FORWARD_FRAMES = 3000

# Padded frames (rows x longest row) per forward pass when embedding full sequences on the CPU;
# 8x as many on CUDA. 200 utterances of 150-400 frames (D=384, 256 channels, 2 threads) embed in
# 2.7 s at 4000 frames per batch, 4.6 s one utterance per pass; larger batches were slower again.
_EMBED_BATCH_FRAMES = 4000

# Utterances read into memory at a time when embedding (batches are formed within this window).
_EMBED_WINDOW = 256

# Batches of training crops used to re-estimate BatchNorm statistics before each validation.
_BN_REFRESH_BATCHES = 8


def receptive_field(arch: str) -> int:
    """Frames seen by one output frame of the ``arch`` encoder (the shortest useful input)."""
    kernels, dilations = _LAYOUT[arch]
    return 1 + sum((k - 1) * d for k, d in zip(kernels, dilations))


def tile_frames(x: np.ndarray, length: int) -> np.ndarray:
    """``x`` ``(T, D)`` repeated along time to at least ``length`` frames (unchanged if longer)."""
    if x.shape[0] >= length:
        return x
    return np.tile(x, (math.ceil(length / x.shape[0]), 1))[:length]


def _padded_convs(encoder: nn.Module) -> list[SpeechbrainConv1d]:
    """The encoder's convolutions that pad time (``"same"``, kernel > 1); all pad by reflection."""
    convs = [m for m in encoder.modules()
             if isinstance(m, SpeechbrainConv1d) and m.padding == "same" and m.kernel_size > 1]
    for conv in convs:
        if conv.padding_mode != "reflect":
            raise RuntimeError(f"batched embedding expects reflect padding, got {conv.padding_mode!r}")
    return convs


def _reflect_past_end(module: nn.Module, args: tuple, *, index: torch.Tensor, dim: int) -> tuple:
    """Forward pre-hook: the conv input with each row's frames past its own end replaced by its reflection."""
    x = args[0]
    return (x.gather(dim, index.unsqueeze(3 - dim).expand_as(x)),)


def reflect_index(lengths: np.ndarray, width: int) -> torch.Tensor:
    """``(B, width)`` source frame of every padded position: itself inside the row, the reflection past its end.

    Past the end of a row of ``T`` frames, position ``t`` reads ``2 * (T - 1) - t`` (what
    ``F.pad(mode="reflect")`` puts there for the row alone); further out (garbage that no frame
    inside the row reads) it reads frame 0.
    """
    t = torch.arange(width)[None]
    n = torch.as_tensor(lengths, dtype=torch.long)[:, None]
    return torch.where(t < n, t, (2 * (n - 1) - t).clamp(min=0))


@contextlib.contextmanager
def _as_if_alone(encoder: nn.Module, index: torch.Tensor | None, noise: torch.Tensor | None) -> Iterator[None]:
    """Run ``encoder`` on a zero-padded batch so each row gets its one-row result (up to float rounding).

    * speechbrain's convolutions reflect-pad at the end of the *tensor*; a forward pre-hook on
      each (:func:`_reflect_past_end` with :func:`reflect_index`) rewrites every row's frames past
      its own end, so the frames inside the row see exactly their one-row inputs. A ragged batch
      is ``margin`` frames (the widest conv padding) longer than its longest row, so every row's
      reflected frames lie inside the tensor; what lies past a row's end is then masked by the
      length-aware pooling (squeeze-excitation means, attentive or plain statistics pooling).
    * speechbrain's ``StatisticsPooling`` (x-vector) adds tiny Gaussian noise to the mean, drawn
      per call; ``noise`` holds the rows drawn one row per call in the one-row order, and is
      returned in place of the batch's draw.
    """
    handles = []
    if index is not None:
        index = index.to(next(encoder.parameters()).device)
        handles = [conv.register_forward_pre_hook(partial(_reflect_past_end, index=index,
                                                          dim=2 if conv.skip_transpose else 1))
                   for conv in _padded_convs(encoder)]
    pools = [m for m in encoder.modules() if isinstance(m, StatisticsPooling)] if noise is not None else []

    def rows_noise(shape: tuple, device: Any = None) -> torch.Tensor:
        if tuple(shape) != tuple(noise.shape):
            raise RuntimeError(f"StatisticsPooling asked for noise of shape {tuple(shape)}, drew {tuple(noise.shape)}")
        return noise.clone()

    for pool in pools:
        pool._get_gauss_noise = rows_noise
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for pool in pools:
            del pool._get_gauss_noise


def _build_encoder(arch: str, input_size: int, channels: int, emb_dim: int) -> nn.Module:
    """The speechbrain encoder ``(B, T, D) -> (B, 1, emb_dim)`` at width ``channels``."""
    kernels, dilations = _LAYOUT[arch]
    widths = [channels] * 4 + [3 * channels]
    if arch == "ecapa":
        return ECAPA_TDNN(input_size, lin_neurons=emb_dim, channels=widths, kernel_sizes=list(kernels),
                          dilations=list(dilations), attention_channels=64,
                          se_channels=max(8, channels // 4))
    return Xvector(in_channels=input_size, tdnn_channels=widths, tdnn_kernel_sizes=list(kernels),
                   tdnn_dilations=list(dilations), lin_neurons=emb_dim)


class _SpeakerNet(nn.Module):
    """Standardisation buffers, a TDNN encoder and a cosine classifier head."""

    def __init__(self, arch: str, mean: np.ndarray, std: np.ndarray, channels: int, emb_dim: int,
                 n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.encoder = _build_encoder(arch, mean.size, channels, emb_dim)
        self.weight = nn.Parameter(torch.empty(n_classes, emb_dim))
        nn.init.xavier_uniform_(self.weight)
        #: Padding frames a batch of unequal rows needs beyond its longest row (the widest conv padding).
        self.margin = max((c.dilation * (c.kernel_size - 1) + 1) // 2 for c in _padded_convs(self.encoder))
        #: Channels of x-vector statistics pooling's mean (the width of its noise draw).
        self.pooled_channels = 3 * channels

    def embed(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Speaker embeddings ``(B, emb_dim)`` of raw frames ``(B, T, D)`` (``lengths``: relative, if padded)."""
        return self.encoder((x - self.mean) / self.std, lengths).squeeze(1)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(B, n_classes)`` of embeddings to the class weights."""
        return F.linear(F.normalize(emb), F.normalize(self.weight))


class FrameSpeakerID:
    """ECAPA-TDNN / x-vector speaker classifier trained from scratch on frame sequences.

    Parameters
    ----------
    arch : {"ecapa", "xvector"}, default="ecapa"
        Encoder: speechbrain's ``ECAPA_TDNN`` (channels ``[C, C, C, C, 3C]``, attentive
        statistics pooling with 64 attention channels) or ``Xvector`` (same widths, plain
        statistics pooling).
    channels : int, default=256
        Width ``C`` of the TDNN layers; a positive multiple of 8 (Res2Net scale).
    emb_dim : int, default=128
        Size of the speaker embedding (:meth:`transform`'s output).
    crop_seconds : float, default=2.0
        Length of the random training crops, in seconds.
    frame_rate : float, default=50.0
        Frames per second of the layer (50 for Whisper/wav2vec2, 100 for GE2E's LSTM layers,
        ~1.3 for GE2E's partial-embedding layer). A crop is
        ``max(receptive_field(arch), round(crop_seconds * frame_rate))`` frames.
    max_epochs : int, default=40
    patience : int, default=6
        Epochs without validation improvement before training stops.
    batch_size : int, default=32
    lr : float, default=1e-3
        Adam learning rate.
    weight_decay : float, default=2e-6
        Adam L2 penalty (speechbrain's ECAPA recipe value).
    margin, scale : float, default=0.2, 30.0
        AAM-softmax angular margin (radians) and logit scale.
    val_fraction : float, default=0.2
        Per-speaker fraction of the training utterances held out for early stopping.
    max_train_frames : int or None, default=None
        Cap on the training frames cached in memory (float16): every utterance keeps a random
        window of its proportional share, but at least one crop.
    learning_curve : bool, default=True
        Also train on 25% and 50% of the training data in :meth:`fit` (same budget), for the
        learning curve :meth:`evaluate` reports.
    seed : int, default=0
    n_boot : int, default=1000
        Bootstrap resamples of the accuracy CIs.
    n_comparisons : int, default=1
        Attackers x layers compared in the run; above 1 the top-1 also gets a
        ``selection_ci95`` at level ``1 - 0.05 / n_comparisons``.
    device : str, default="cpu"
        Torch device (``"cpu"``, ``"cuda"``, ``"cuda:N"``); the network trains and embeds there.
        Weights are initialised on the CPU, so a seed starts every device alike.
    precision : {"float32", "bfloat16"}, default="float32"
        ``"bfloat16"`` runs the forward passes under torch's bfloat16 autocast
        (:func:`~audit.estimators.mixed_precision`; weights, loss and optimiser stay float32).

    Attributes
    ----------
    classes_ : ndarray of shape (n_speakers,)
        Sorted speaker labels; the columns of :meth:`predict_proba`.
    mean_, std_ : ndarray of shape (D,)
        Input standardisation, from the frames of the training (not validation) utterances.
    net_ : torch.nn.Module
        The trained encoder and cosine head (best validation epoch), on ``device``.
    history_ : list of dict
        Per epoch: ``train_loss``, ``val_top1``, ``val_loss``.
    converged_ : bool
        Early stopping fired before ``max_epochs``.
    validation_score_ : float
        Best validation top-1 (compared across attackers to pick the strongest, never on test).
    curve_nets_ : dict of float to torch.nn.Module
        The learning curve's networks by training fraction (empty without ``learning_curve``).
    n_params_, total_train_frames_, cached_frames_, fit_seconds_, curve_seconds_ : int, int, int, float, float

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> seqs = [rng.standard_normal((60, 8)).astype(np.float32) for _ in range(8)]
    >>> data = EmbeddingSet(np.zeros((8, 16)), np.repeat(["a", "b"], 4), [str(i) for i in range(8)],
    ...                     frame_source=seqs.__getitem__)
    >>> attacker = FrameSpeakerID(channels=16, emb_dim=8, max_epochs=2, learning_curve=False).fit(data)
    >>> attacker.transform(data).shape
    (8, 8)
    """

    def __init__(self, *, arch: str = "ecapa", channels: int = 256, emb_dim: int = 128,
                 crop_seconds: float = 2.0, frame_rate: float = 50.0, max_epochs: int = 40,
                 patience: int = 6, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 2e-6,
                 margin: float = 0.2, scale: float = 30.0, val_fraction: float = 0.2,
                 max_train_frames: int | None = None, learning_curve: bool = True, seed: int = 0,
                 n_boot: int = 1000, n_comparisons: int = 1, device: str = "cpu", precision: str = "float32") -> None:
        self.arch = arch
        self.channels = channels
        self.emb_dim = emb_dim
        self.crop_seconds = crop_seconds
        self.frame_rate = frame_rate
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.margin = margin
        self.scale = scale
        self.val_fraction = val_fraction
        self.max_train_frames = max_train_frames
        self.learning_curve = learning_curve
        self.seed = seed
        self.n_boot = n_boot
        self.n_comparisons = n_comparisons
        self.device = device
        self.precision = precision

    # ------------------------------------------------------------------ checks

    def _validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""
        def positive_int(name: str, low: int = 1) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"FrameSpeakerID: {name}={value!r} must be an int >= {low}")

        def positive_float(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"FrameSpeakerID: {name}={value!r} must be a finite number > 0")

        if self.arch not in ARCHS:
            raise ConfigError(f"FrameSpeakerID: arch={self.arch!r} must be one of {ARCHS}")
        for name in ("channels", "emb_dim", "max_epochs", "patience", "n_boot"):
            positive_int(name)
        positive_int("batch_size", 2)
        if self.channels % 8:
            raise ConfigError(f"FrameSpeakerID: channels={self.channels!r} must be a multiple of 8")
        for name in ("crop_seconds", "frame_rate", "lr", "scale"):
            positive_float(name)
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"FrameSpeakerID: weight_decay={self.weight_decay!r} must be >= 0")
        if not 0 <= self.margin < math.pi / 2:
            raise ConfigError(f"FrameSpeakerID: margin={self.margin!r} must be in [0, pi/2)")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"FrameSpeakerID: val_fraction={self.val_fraction!r} must be in (0, 1)")
        if self.max_train_frames is not None:
            positive_int("max_train_frames")
        torch_device(self.device, "FrameSpeakerID")
        check_precision(self.precision, "FrameSpeakerID")

    def _check_fitted(self) -> None:
        check_is_fitted(self, "net_")

    # ------------------------------------------------------------------ data

    @property
    def crop_frames(self) -> int:
        """Frames per training crop (never below the encoder's receptive field)."""
        return max(receptive_field(self.arch), int(round(self.crop_seconds * self.frame_rate)))

    def _cache_frames(self, train: EmbeddingSet, rng: np.random.Generator) -> tuple[list[np.ndarray], int]:
        """Training frames read once (float16 unless out of its range), capped by ``max_train_frames``.

        With a cap, the lengths are read in a first pass and every utterance keeps a random
        window of ``max_train_frames / total`` of its frames, but at least one crop. Returns the
        cached sequences and the total number of frames before the cap.
        """
        dim = train.checked_frames(0).shape[1]
        share = 1.0
        if self.max_train_frames is not None:
            total = sum(train.checked_frames(i, dim).shape[0] for i in range(len(train)))
            share = min(1.0, self.max_train_frames / total)
        cache, total = [], 0
        for i in range(len(train)):
            x = train.checked_frames(i, dim)
            total += x.shape[0]
            if share < 1.0:
                keep = min(x.shape[0], max(self.crop_frames, int(x.shape[0] * share)))
                start = int(rng.integers(0, x.shape[0] - keep + 1))
                x = x[start:start + keep]
            x16 = x.astype(np.float16)
            cache.append(x16 if np.isfinite(x16).all() else x)
        return cache, total

    def _embed(self, net: _SpeakerNet, n: int, frames: Callable[[int], np.ndarray]) -> np.ndarray:
        """Embeddings ``(n, emb_dim)`` of full sequences, long ones in chunks whose embeddings are averaged.

        Every chunk is embedded as if alone (tiled to the receptive field if shorter), but in
        zero-padded batches of similar lengths (:func:`_as_if_alone`): the result equals
        embedding one chunk per forward pass up to float rounding, x-vector noise included.
        Utterances are read ``_EMBED_WINDOW`` at a time.
        """
        minimum = receptive_field(self.arch)
        device = net.mean.device
        budget = _EMBED_BATCH_FRAMES * (8 if device.type == "cuda" else 1)
        pool = next((m for m in net.modules() if isinstance(m, StatisticsPooling)), None)
        out = np.empty((n, self.emb_dim), dtype=np.float32)
        net.eval()
        with torch.no_grad(), seeded(self.seed, device):
            for first in range(0, n, _EMBED_WINDOW):
                rows = range(first, min(n, first + _EMBED_WINDOW))
                pieces, owner = [], []
                for i in rows:
                    x = np.asarray(frames(i), dtype=np.float32)
                    for p in np.array_split(x, math.ceil(x.shape[0] / _MAX_FORWARD_FRAMES)):
                        pieces.append(tile_frames(p, minimum))
                        owner.append(i)
                noise = None
                if pool is not None:  # drawn in the one-chunk-per-pass order, before any batch runs
                    noise = torch.cat([pool._get_gauss_noise((1, net.pooled_channels), device=device)
                                       for _ in pieces])
                with mixed_precision(device, self.precision):
                    emb = self._embed_pieces(net, pieces, noise, budget)
                owner = np.asarray(owner)
                for i in rows:
                    mine = np.flatnonzero(owner == i)
                    out[i] = emb[mine[0]] if mine.size == 1 else torch.from_numpy(emb[mine]).mean(0).numpy()
        return out

    @staticmethod
    def _embed_pieces(net: _SpeakerNet, pieces: list[np.ndarray], noise: torch.Tensor | None,
                      budget: int) -> np.ndarray:
        """Embeddings ``(len(pieces), emb_dim)`` of sequences, batched by length within ``budget`` padded frames."""
        device = net.mean.device
        lengths = np.array([p.shape[0] for p in pieces])
        order = np.argsort(lengths, kind="stable")
        emb = np.empty((len(pieces), net.weight.shape[1]), dtype=np.float32)
        start = 0
        while start < order.size:
            stop = start + 1
            while stop < order.size and (stop + 1 - start) * (lengths[order[stop]] + net.margin) <= budget:
                stop += 1
            batch = order[start:stop]
            longest = int(lengths[batch].max())
            ragged = bool(lengths[batch].min() < longest)
            width = longest + net.margin if ragged else longest
            x = np.zeros((batch.size, width, pieces[0].shape[1]), dtype=np.float32)
            for b, j in enumerate(batch):
                x[b, :lengths[j]] = pieces[j]
            # Relative lengths a quarter frame short: speechbrain masks ``t < rel * width`` and
            # rounds ``rel * width``, both then exactly the row's length despite float error.
            rel = torch.as_tensor((lengths[batch] - 0.25) / width, dtype=torch.float32).to(device) if ragged else None
            index = reflect_index(lengths[batch], width) if ragged else None
            rows_noise = None if noise is None else noise[torch.as_tensor(batch, device=noise.device)]
            with _as_if_alone(net.encoder, index, rows_noise):
                emb[batch] = net.embed(torch.from_numpy(x).to(device), rel).float().cpu().numpy()
            start = stop
        return emb

    def _scores(self, net: _SpeakerNet, emb: np.ndarray) -> torch.Tensor:
        """Test-time logits ``scale * cosine`` (no margin)."""
        with torch.no_grad(), full_fp32(net.weight.device):
            return self.scale * net.cosine(torch.from_numpy(emb).to(net.weight.device)).cpu()

    # ------------------------------------------------------------------ training

    def _batches(self, order: np.ndarray) -> list[np.ndarray]:
        """Mini-batches of ``order``; a trailing batch of one joins the previous (BatchNorm)."""
        batches = [order[i:i + self.batch_size] for i in range(0, order.size, self.batch_size)]
        if len(batches) > 1 and batches[-1].size == 1:
            batches[-2:] = [np.concatenate(batches[-2:])]
        return batches

    def _train(self, cache: list[np.ndarray], y: np.ndarray, grouping: Grouping, n_classes: int,
               seed: int) -> tuple[_SpeakerNet, dict]:
        """Train one network on ``cache`` (labels ``y``) with early stopping; return it and its record.

        The validation utterances are a per-speaker, recording-grouped part of ``cache``
        (speakers too small to split stay in training); without any, all ``max_epochs`` run
        and the last weights are kept. The network is built on the CPU and trained on ``device``.
        """
        device = torch_device(self.device, "FrameSpeakerID")
        rng = np.random.default_rng(seed)
        try:
            val = closed_set_split(grouping, test_fraction=self.val_fraction, seed=seed + 1).test
        except CorpusError:
            val = np.zeros(0, dtype=int)
        fit_idx = np.setdiff1d(np.arange(len(cache)), val)
        mean, std = frame_moments([cache[i] for i in fit_idx])
        lengths = np.array([cache[i].shape[0] for i in fit_idx])
        crop = self.crop_frames
        epoch_items = np.repeat(fit_idx, np.maximum(1, np.round(lengths / crop).astype(int)))
        history, best, best_state, best_epoch, steps, stopped = [], (-1.0, math.inf), None, 0, 0, False
        with seeded(seed, device):
            net = _SpeakerNet(self.arch, mean, std, self.channels, self.emb_dim, n_classes).to(device)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            aam = AdditiveAngularMargin(margin=self.margin, scale=self.scale)
            for epoch in range(1, self.max_epochs + 1):
                losses = self._train_epoch(net, opt, aam, cache, y, epoch_items, rng)
                steps += len(losses)
                row = {"epoch": epoch, "train_loss": float(np.mean(losses))}
                if val.size:
                    self._refresh_batchnorm(net, cache, epoch_items, rng)
                    logits = self._scores(net, self._embed(net, val.size, lambda j: cache[val[j]]))
                    target = torch.from_numpy(y[val])
                    row["val_top1"] = float((logits.argmax(1) == target).float().mean())
                    row["val_loss"] = float(F.cross_entropy(logits, target))
                history.append(row)
                score = (row.get("val_top1", 0.0), row.get("val_loss", 0.0))
                if not val.size or score[0] > best[0] or (score[0] == best[0] and score[1] < best[1]):
                    best, best_epoch = score, epoch
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                elif epoch - best_epoch >= self.patience:
                    stopped = True
                    break
            net.load_state_dict(best_state)
        record = {"epochs": len(history), "best_epoch": best_epoch, "steps": steps,
                  "n_train": int(fit_idx.size), "n_val": int(val.size),
                  "train_frames": int(lengths.sum()), "val_top1": best[0] if val.size else None,
                  "converged": stopped, "history": history}
        return net, record

    def _train_epoch(self, net: _SpeakerNet, opt: torch.optim.Optimizer, aam: AdditiveAngularMargin,
                     cache: list[np.ndarray], y: np.ndarray, items: np.ndarray,
                     rng: np.random.Generator) -> list[float]:
        """One pass of AAM-softmax steps over random crops of ``items``; the per-step losses."""
        net.train()
        n_classes = net.weight.shape[0]
        losses = []
        for batch in self._batches(rng.permutation(items)):
            target = torch.from_numpy(y[batch]).to(net.weight.device)
            with mixed_precision(net.weight.device, self.precision):
                cos = net.cosine(net.embed(self._crop_batch(cache, batch, rng, net.weight.device))).float()
            loss = F.cross_entropy(aam(cos, F.one_hot(target, n_classes).float()), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses

    def _refresh_batchnorm(self, net: _SpeakerNet, cache: list[np.ndarray], items: np.ndarray,
                           rng: np.random.Generator) -> None:
        """Re-estimate BatchNorm running statistics with the current weights (no gradient).

        With few steps per epoch the exponential running averages lag behind the weights and
        the eval-mode network scores far below its training-mode self; a forward pass over
        up to ``_BN_REFRESH_BATCHES`` batches of fresh training crops fixes the averages.
        """
        norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        net.train()
        with torch.no_grad(), mixed_precision(net.weight.device, self.precision):
            for batch in self._batches(rng.permutation(items))[:_BN_REFRESH_BATCHES]:
                net.embed(self._crop_batch(cache, batch, rng, net.weight.device))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum

    def _crop_batch(self, cache: list[np.ndarray], batch: np.ndarray, rng: np.random.Generator,
                    device: torch.device) -> torch.Tensor:
        """Random ``crop_frames`` windows of the ``batch`` rows (short ones tiled), ``(B, crop, D)`` on ``device``."""
        crop, out = self.crop_frames, []
        for i in batch:
            x = cache[i]
            if x.shape[0] <= crop:
                out.append(tile_frames(x, crop))
            else:
                start = int(rng.integers(0, x.shape[0] - crop + 1))
                out.append(x[start:start + crop])
        return torch.from_numpy(np.stack(out).astype(np.float32)).to(device)

    # ------------------------------------------------------------------ public API

    def fit(self, train: EmbeddingSet) -> "FrameSpeakerID":
        """Train the encoder and head on ``train``'s frame sequences (validation inside ``train``).

        Parameters
        ----------
        train : EmbeddingSet
            Labelled utterances with frame-level access; at least two speakers.

        Returns
        -------
        self
        """
        t0 = time.perf_counter()
        self._validate()
        if train.n_speakers < 2:
            raise CorpusError(f"speaker ID needs >= 2 training speakers, got {train.n_speakers}")
        self.classes_ = np.unique(train.speakers)
        self._y = np.searchsorted(self.classes_, train.speakers).astype(np.int64)
        self._speakers = np.asarray(train.speakers)
        self._grouping = train.grouping
        cache, self.total_train_frames_ = self._cache_frames(train, np.random.default_rng(self.seed))
        self.cached_frames_ = int(sum(x.shape[0] for x in cache))
        self.net_, self.record_ = self._train(cache, self._y, self._grouping, len(self.classes_), self.seed)
        self.mean_ = self.net_.mean.cpu().numpy().copy()
        self.std_ = self.net_.std.cpu().numpy().copy()
        self.history_ = self.record_["history"]
        self.converged_ = self.record_["converged"]
        self.validation_score_ = max((h["val_top1"] for h in self.history_ if h.get("val_top1") is not None),
                                     default=0.0)
        self.n_params_ = int(sum(p.numel() for p in self.net_.parameters()))
        self.fit_seconds_ = time.perf_counter() - t0
        # The learning curve's networks (25/50% of the training speakers' utterances, same budget) are
        # part of the fit, so a fitted attacker scores several test sets without retraining.
        t1 = time.perf_counter()
        self.curve_nets_ = {}
        if self.learning_curve:
            for fraction in CURVE_FRACTIONS:
                if fraction < 1.0:
                    sub = stratified_fraction(self._speakers, fraction, self.seed)
                    self.curve_nets_[fraction] = self._train([cache[i] for i in sub], self._y[sub],
                                                             self._grouping.subset(sub), len(self.classes_),
                                                             self.seed)[0]
        self.curve_seconds_ = time.perf_counter() - t1
        return self

    def transform(self, data: EmbeddingSet) -> np.ndarray:
        """Speaker embeddings (before the classifier head) of every utterance of ``data``.

        Returns
        -------
        ndarray of shape (N, emb_dim), float32
            Unnormalised; score them with cosine similarity.
        """
        self._check_fitted()
        return self._embed(self.net_, len(data), lambda i: data.checked_frames(i, self.mean_.size))

    def predict_proba(self, data: EmbeddingSet) -> np.ndarray:
        """Class probabilities ``(N, n_speakers)`` (columns ordered as ``classes_``)."""
        self._check_fitted()
        return torch.softmax(self._scores(self.net_, self.transform(data)), 1).numpy().astype(np.float64)

    def evaluate(self, test: EmbeddingSet) -> AttackResult:
        """Score the fitted attacker on held-out utterances of the training speakers."""
        self._check_fitted()
        metrics = closed_set_metrics(self.predict_proba(test), self.classes_, test.speakers,
                                     n_boot=self.n_boot, seed=self.seed, n_comparisons=self.n_comparisons)

        def curve_top1(fraction: float) -> float:
            net = self.curve_nets_[fraction]
            emb = self._embed(net, len(test), lambda i: test.checked_frames(i, self.mean_.size))
            pred = self.classes_[self._scores(net, emb).argmax(1).numpy()]
            return float(np.mean(pred == test.speakers))

        curve = learning_curve("top1", metrics["top1"], curve_top1) if self.learning_curve else []
        return AttackResult("speaker_id", f"frame-{self.arch}", metrics, chance=1.0 / len(self.classes_),
                            budget=self._budget(), learning_curve=curve, converged=self.converged_)

    def _budget(self) -> dict:
        rec = self.record_
        return {"arch": self.arch, "channels": self.channels, "emb_dim": self.emb_dim,
                "n_params": self.n_params_, "n_train": rec["n_train"], "n_val": rec["n_val"],
                "n_speakers": int(len(self.classes_)), "n_features": int(self.mean_.size),
                "train_frames": rec["train_frames"], "train_frames_total": self.total_train_frames_,
                "crop_frames": self.crop_frames, "crop_seconds": self.crop_seconds,
                "frame_rate": self.frame_rate, "batch_size": self.batch_size, "lr": self.lr,
                "head": f"AAM-softmax (margin={self.margin}, scale={self.scale})", "precision": self.precision,
                "max_epochs": self.max_epochs, "patience": self.patience, "epochs": rec["epochs"],
                "best_epoch": rec["best_epoch"], "steps": rec["steps"], "val_top1": rec["val_top1"],
                "fit_seconds": round(self.fit_seconds_, 3), "curve_fit_seconds": round(self.curve_seconds_, 3),
                "history": epoch_history(self.history_)}


def epoch_history(history: list[dict]) -> list[dict]:
    """Per-epoch training loss and validation top-1 / loss, rounded for ``results.json`` (the convergence evidence)."""
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in history]


def check_frame_budget(settings: Any, prefix: str) -> None:
    """Validate the ``frame_max_epochs``/``frame_channels``/``frame_max_train_frames``/``frame_layers`` keys."""
    if settings.frame_max_epochs < 1:
        raise ConfigError(f"{prefix}frame_max_epochs={settings.frame_max_epochs!r}: must be >= 1")
    if settings.frame_channels < 8 or settings.frame_channels % 8:
        raise ConfigError(f"{prefix}frame_channels={settings.frame_channels!r}: must be a positive multiple of 8")
    if settings.frame_max_train_frames < 1000:
        raise ConfigError(f"{prefix}frame_max_train_frames={settings.frame_max_train_frames!r}: must be >= 1000")
    if settings.frame_layers is not None:
        check_layer_selection(prefix, "frame_layers", settings.frame_layers)


def budgeted_frame_attacker(settings: Any, *, seed: int, frame_rate: float, learning_curve: bool = True,
                            n_boot: int = 1000, n_comparisons: int = 1, device: str = "cpu",
                            precision: str = "float32") -> FrameSpeakerID:
    """A :class:`FrameSpeakerID` with a settings section's budget (``frame_*`` keys), on ``device`` in ``precision``."""
    return FrameSpeakerID(frame_rate=frame_rate, max_epochs=settings.frame_max_epochs, channels=settings.frame_channels,
                          max_train_frames=settings.frame_max_train_frames, learning_curve=learning_curve,
                          seed=seed, n_boot=n_boot, n_comparisons=n_comparisons, device=device, precision=precision)

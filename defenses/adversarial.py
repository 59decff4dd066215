"""Adversarial regularization: a frame encoder trained to keep the utility task and hide the speaker.

The model owner's transform of a frozen layer's frames, in the style of Srivastava et al.
(2019, "Privacy-preserving adversarial representation learning in ASR: reality or illusion?"):
three small networks are trained jointly on the owner's training set.

* **Privacy encoder** (what :meth:`AdversarialDefense.transform` applies): a residual per-frame
  MLP in the standardised space of the layer. With the training frames' mean ``m`` and std
  ``s`` (per dimension), ``u = (x - m) / s``, ``z = u + g(u)`` and the output is ``z * s + m``,
  so the defended frames keep the layer's dimension ``D`` and units. ``g = Linear(D, hidden) ->
  GELU -> Linear(hidden, D)`` with its last layer zero-initialised: the untrained encoder is
  exactly the identity, and ``lambda = 0`` changes the representation only as much as utility
  training does.
* **Utility head** on the standardised ``z``, chosen from the audit's utility task
  (``DefenseContext.utility``): for ``ctc``, a per-frame ``Linear`` to
  :func:`audit.ctc.vocab_size` trained with ``CTCLoss(blank=audit.ctc.BLANK, zero_infinity=True)``
  on :func:`audit.ctc.encode` of the transcripts (a linear head keeps the content linearly
  readable frame by frame, which any stronger downstream probe can also read; a BiGRU head cost
  ~20x the encoder's time per batch on CPU); for ``classification:COLUMN``, a linear
  classifier of the mean-pooled ``z``.
* **Speaker adversary**: ``Linear(2D, hidden) -> GELU -> Linear(hidden, n_speakers)`` on the
  mean+std pooled ``z`` of each utterance, predicting the training speakers.

Update schedules (settings key ``updates``):

* ``"reversal"`` (default): a :class:`GradientReversal` layer (identity forward, gradient times
  ``-lambda`` backward) sits between encoder and adversary; one Adam optimiser minimises
  ``utility_loss + CE(adversary(GRL(z)))``, so the adversary learns to identify speakers and the
  encoder learns to defeat it.
* ``"alternating"``: per batch, ``adversary_steps`` Adam updates of the adversary alone on the
  detached pooled ``z``, then one update of encoder + utility head minimising
  ``utility_loss - lambda * CE(adversary(z))`` with the adversary frozen. Maximising the
  cross-entropy is unbounded, so strong ``lambda`` can push the representation far from the
  layer's; the reversal schedule is the default for that reason.

Held-out check: ``val_fraction`` of the training speakers' utterances (grouped by recording
with :func:`audit.splits.closed_set_split`; speakers too small to split stay in training) are
kept out of training, and the training adversary's accuracy on them is reported with chance
``1 / n_speakers``. This is the *training* adversary's view only: a fresh attacker trained
on the frozen defended frames (the audit's attack families) is the real test, and usually
recovers more than the adversary the encoder learned to beat. The game oscillates (the
encoder fools the adversary, which re-learns), so the final figure is noisy, and a held-out
accuracy *below* chance means this adversary is confidently fooled (speakers permuted), not
that the identity is gone.

Training is seeded (``ctx.seed``), runs on ``ctx.device`` (the run's torch device; the networks
are initialised on the CPU) in float32, for a fixed number of epochs (no early stopping: the
adversarial game has no validation criterion); the last weights are kept, on that device, and
:meth:`AdversarialDefense.transform` returns numpy frames.
The heads' output biases start at the log class priors of the training rows (the blank's
share of frames and the character frequencies for CTC; class and speaker frequencies), and
the adversary is first trained alone for :data:`WARMUP_EPOCHS` on the untrained (identity)
encoder's pooled frames (cheap), so the encoder's first updates face a competent adversary. Without
the prior initialisation the encoder's quickest way to lower the CTC loss is to shift every
frame towards the blank (a change of about the frames' whole spread at ``lambda = 0`` in the
tests). Every training utterance's frames are held in memory (600 x 175 x 384 float32 is
~160 MB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from audit import ctc
from audit.defense import Defense, DefenseFailed, DefenseFamily, DefenseSettings, check_positive_int
from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError, CorpusError, StoreError
from audit.estimators import check_is_fitted, frame_moments, full_fp32, seeded, torch_device
from audit.family import check_range
from audit.splits import closed_set_split

UPDATES = ("reversal", "alternating")

#: Epochs of the adversary alone on the identity encoder's pooled frames before the joint training.
WARMUP_EPOCHS = 5

#: Added to the pooled variance before the square root (finite gradients at zero spread).
_POOL_EPS = 1e-5

#: Utterances per forward pass when evaluating (no gradient).
_EVAL_BATCH = 64


# ---------------------------------------------------------------------------- gradient reversal


class GradientReversalFunction(torch.autograd.Function):
    """``y = x`` forward; ``dL/dx = -lambda * dL/dy`` backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambda_: float) -> torch.Tensor:  # noqa: D102
        ctx.lambda_ = float(lambda_)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return -ctx.lambda_ * grad, None


def grad_reverse(x: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """``x`` unchanged, with its gradient multiplied by ``-lambda_`` on the way back."""
    return GradientReversalFunction.apply(x, lambda_)


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse`: ``GradientReversal(lam)(x)``.

    Examples
    --------
    >>> x = torch.ones(3, requires_grad=True)
    >>> GradientReversal(2.0)(x).sum().backward()
    >>> x.grad
    tensor([-2., -2., -2.])
    """

    def __init__(self, lambda_: float = 1.0) -> None:
        super().__init__()
        self.lambda_ = float(lambda_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad_reverse(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"


# ---------------------------------------------------------------------------- settings


@dataclass
class AdversarialSettings(DefenseSettings):
    """Adversarial-regularization settings (keys of a ``[[defense]]`` table with ``name = "adversarial"``).

    ``lambda`` (field ``lambda_``) weighs the adversary against the utility task (0: utility
    training only); ``updates`` is ``"reversal"`` or ``"alternating"`` (module docstring);
    ``hidden`` is the width of the encoder's and the adversary's hidden layer; ``epochs``,
    ``batch_size`` (utterances) and ``lr`` (Adam) set the training budget; ``adversary_steps``
    is the adversary's updates per batch in the alternating schedule; ``val_fraction`` the
    share of the training speakers' utterances held out for the adversary's held-out accuracy.
    """

    KEY_ALIASES = {"lambda": "lambda_"}

    lambda_: float = 1.0
    updates: str = "reversal"
    hidden: int = 256
    epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-3
    adversary_steps: int = 1
    val_fraction: float = 0.2

    def validate(self, prefix: str) -> None:
        """Raise :class:`ConfigError` naming the bad key (``lambda`` for ``lambda_``)."""
        check_range(prefix, "lambda", self.lambda_, 0, open_low=False)
        if not math.isfinite(self.lambda_):
            raise ConfigError(f"{prefix}lambda={self.lambda_!r}: must be finite")
        if self.updates not in UPDATES:
            raise ConfigError(f"{prefix}updates={self.updates!r}: must be one of {', '.join(map(repr, UPDATES))}")
        check_positive_int(prefix, "hidden", self.hidden)
        check_positive_int(prefix, "epochs", self.epochs)
        check_positive_int(prefix, "batch_size", self.batch_size)
        check_range(prefix, "lr", self.lr, 0)
        if not math.isfinite(self.lr):
            raise ConfigError(f"{prefix}lr={self.lr!r}: must be finite")
        check_positive_int(prefix, "adversary_steps", self.adversary_steps)
        check_range(prefix, "val_fraction", self.val_fraction, 0, 1, open_low=False)


# ---------------------------------------------------------------------------- networks


class PrivacyEncoder(nn.Module):
    """Residual per-frame MLP in standardised units: ``x -> (u + g(u)) * std + mean``, ``u = (x - mean) / std``.

    ``g``'s last layer starts at zero, so the untrained encoder is the identity.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: int) -> None:
        super().__init__()
        dim = int(mean.size)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.g = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.g[2].weight)
        nn.init.zeros_(self.g[2].bias)

    def standardize(self, x: np.ndarray) -> np.ndarray:
        """``u = (x - mean) / std`` of numpy frames (float32)."""
        return ((x - self.mean.cpu().numpy()) / self.std.cpu().numpy()).astype(np.float32, copy=False)

    def residual(self, u: torch.Tensor) -> torch.Tensor:
        """``z = u + g(u)`` of standardised frames ``u`` (what the heads see)."""
        return u + self.g(u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Defended frames in the layer's units, same shape as ``x``."""
        return self.residual((x - self.mean) / self.std) * self.std + self.mean


class _CTCHead(nn.Module):
    """Per-frame linear character CTC head on ``(B, T, D)`` frames."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out = nn.Linear(dim, ctc.vocab_size())
        self.ctc = nn.CTCLoss(blank=ctc.BLANK, zero_infinity=True)

    def loss(self, z: torch.Tensor, lengths: torch.Tensor, avg: torch.Tensor, target: Any) -> torch.Tensor:
        labels, target_lengths = target
        log_probs = F.log_softmax(self.out(z), -1)  # (N, V), utterances one after another
        padded = nn.utils.rnn.pad_sequence(torch.split(log_probs, lengths.tolist()))  # (T, B, V)
        return self.ctc(padded, labels, lengths, target_lengths)


class _ClassifierHead(nn.Module):
    """Linear classifier of the mean-pooled frames."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.out = nn.Linear(dim, n_classes)

    def loss(self, z: torch.Tensor, lengths: torch.Tensor, avg: torch.Tensor, target: Any) -> torch.Tensor:
        return F.cross_entropy(self.out(avg @ z), target)


def _meanstd(z: torch.Tensor, avg: torch.Tensor) -> torch.Tensor:
    """Per-utterance mean and std ``(B, 2D)`` of concatenated frames ``z`` ``(N, D)``; ``avg`` ``(B, N)`` averages."""
    mean = avg @ z
    var = torch.clamp(avg @ torch.square(z) - torch.square(mean), min=0.0)
    return torch.cat([mean, torch.sqrt(var + _POOL_EPS)], 1)


def _log_prior(counts: np.ndarray) -> torch.Tensor:
    """Log of add-one smoothed class frequencies (an output bias that starts at the class prior)."""
    counts = np.asarray(counts, dtype=np.float64) + 1.0
    return torch.as_tensor(np.log(counts / counts.sum()), dtype=torch.float32)


# ---------------------------------------------------------------------------- the defense


class AdversarialDefense(Defense):
    """Adversarially regularised frame encoder (see the module docstring).

    Runs on ``ctx.device`` (:class:`~audit.defense.DefenseContext`) in float32.

    Attributes (after ``fit``)
    --------------------------
    encoder_ : PrivacyEncoder
        The transform applied by ``transform`` (on ``ctx.device``).
    utility_head_, adversary_ : torch.nn.Module
        The jointly trained utility head and speaker adversary.
    speakers_ : ndarray
        Training speakers (the adversary's classes, sorted).
    history_ : list of dict
        Per epoch: ``epoch``, ``utility_loss``, ``adversary_loss``, ``adversary_train_accuracy``
        (means over the epoch's batches; the adversary's figures are taken before its update).
    training_adversary_ : dict
        The final adversary's ``heldout_accuracy`` (None without held-out utterances),
        ``train_accuracy``, ``chance``, ``n_speakers``, ``n_heldout``.
    utility_heldout_ : dict or None
        Utility loss on the held-out utterances (``ctc`` loss or ``cross_entropy``).
    """

    settings: AdversarialSettings

    # ------------------------------------------------------------------ fit

    def _fit(self, train: EmbeddingSet) -> None:
        s = self.settings
        task = self.ctx.utility
        if task is None:
            raise DefenseFailed("adversarial regularization needs a utility task")
        if task.kind not in ("ctc", "classification"):
            raise DefenseFailed(f"adversarial regularization: unknown utility task kind {task.kind!r}")
        if train.n_speakers < 2:
            raise DefenseFailed(f"adversarial regularization needs >= 2 training speakers, got {train.n_speakers}")
        seed = int(self.ctx.seed)
        device = torch_device(self.ctx.device, "adversarial defense")
        cache = self._read_frames(train)
        self.speakers_ = np.unique(train.speakers)
        y = np.searchsorted(self.speakers_, train.speakers).astype(np.int64)
        targets = self._utility_targets(task, train)
        heldout = self._heldout(train, seed)
        fit_idx = np.setdiff1d(np.arange(len(train)), heldout)
        mean, std = (m.astype(np.float32) for m in frame_moments([cache[i] for i in fit_idx]))
        rng = np.random.default_rng(seed)
        with seeded(seed, device):
            self.encoder_ = PrivacyEncoder(mean, std, s.hidden)
            cache = [self.encoder_.standardize(x) for x in cache]  # the heads work in standardised units
            dim = int(mean.size)
            self.utility_head_ = (_CTCHead(dim) if task.kind == "ctc"
                                  else _ClassifierHead(dim, len(self.utility_classes_)))
            self.adversary_ = nn.Sequential(nn.Linear(2 * dim, s.hidden), nn.GELU(),
                                            nn.Linear(s.hidden, self.speakers_.size))
            # Output biases start at the log class priors of the training rows.
            with torch.no_grad():
                self.utility_head_.out.bias.copy_(_log_prior(self._utility_counts(cache, targets, fit_idx, task)))
                self.adversary_[2].bias.copy_(_log_prior(np.bincount(y[fit_idx], minlength=self.speakers_.size)))
            for module in (self.encoder_, self.utility_head_, self.adversary_):
                module.to(device)
            self._train(cache, y, targets, fit_idx, rng)
        self.encoder_.eval()
        self.adversary_.eval()
        self.utility_head_.eval()
        n = self.speakers_.size
        with full_fp32(device):
            train_acc, _ = self._evaluate(cache, y, None, fit_idx)
            heldout_acc, heldout_loss = self._evaluate(cache, y, targets, heldout) if heldout.size else (None, None)
        self.utility_heldout_ = None
        if heldout.size:
            self.utility_heldout_ = {"loss": heldout_loss,
                                     "loss_name": "ctc" if task.kind == "ctc" else "cross_entropy",
                                     "n_utterances": int(heldout.size)}
        self.training_adversary_ = {"heldout_accuracy": heldout_acc, "train_accuracy": train_acc,
                                    "chance": 1.0 / n, "n_speakers": int(n), "n_heldout": int(heldout.size)}

    def _read_frames(self, train: EmbeddingSet) -> list[np.ndarray]:
        """Every training utterance's frames as float32, checked (2-D, non-empty, finite, one width)."""
        cache, dim = [], None
        for i in range(len(train)):
            try:
                x = np.ascontiguousarray(train.checked_frames(i, dim))
            except StoreError as err:
                raise DefenseFailed(f"non-finite input frames (or a bad shape) in training utterance "
                                    f"{train.utt_ids[i]!r}: {err}") from err
            dim = x.shape[1]
            cache.append(x)
        return cache

    def _utility_targets(self, task: Any, train: EmbeddingSet) -> list[Any]:
        """Per-row utility targets: CTC label sequences, or class indices (``utility_classes_``)."""
        if task.kind == "ctc":
            if train.transcripts is None:
                raise DefenseFailed("the ctc utility head needs transcripts; this set has none")
            return [ctc.encode("" if t is None else str(t)) for t in train.transcripts]
        if task.column not in train.attributes:
            raise DefenseFailed(f"the classification utility head needs label column {task.column!r}")
        labels = task.targets(train)
        self.utility_classes_ = np.unique(labels)
        if self.utility_classes_.size < 2:
            raise DefenseFailed(f"label column {task.column!r} has fewer than 2 classes in the training set")
        return list(np.searchsorted(self.utility_classes_, labels).astype(np.int64))

    def _utility_counts(self, cache: list[np.ndarray], targets: list[Any], rows: np.ndarray, task: Any) -> np.ndarray:
        """Output counts of the utility head on ``rows``: CTC labels per frame (blank = the rest), or classes."""
        if task.kind == "ctc":
            counts = np.bincount([c for i in rows for c in targets[i]], minlength=ctc.vocab_size()).astype(float)
            counts[ctc.BLANK] = max(1.0, sum(cache[i].shape[0] for i in rows) - counts.sum())
            return counts
        return np.bincount([targets[i] for i in rows], minlength=self.utility_classes_.size).astype(float)

    def _heldout(self, train: EmbeddingSet, seed: int) -> np.ndarray:
        """Held-out rows: a recording-grouped per-speaker share (none when no speaker can be split)."""
        if self.settings.val_fraction <= 0:
            return np.zeros(0, dtype=int)
        try:
            return closed_set_split(train.grouping, test_fraction=self.settings.val_fraction, seed=seed + 1).test
        except CorpusError:
            return np.zeros(0, dtype=int)

    # ------------------------------------------------------------------ batches

    @property
    def _device(self) -> torch.device:
        """Where the fitted networks live."""
        return self.encoder_.mean.device

    def _batch(self, cache: list[np.ndarray], rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames of ``rows`` one after another ``(N, D)`` (no padding), lengths ``(B,)``, averages ``(B, N)``.

        Frames and averages are on the networks' device, lengths stay on the CPU.
        """
        lengths = np.array([cache[i].shape[0] for i in rows])
        ends = np.cumsum(lengths)
        avg = np.zeros((rows.size, int(ends[-1])), dtype=np.float32)
        for j, (end, n) in enumerate(zip(ends, lengths)):
            avg[j, end - n:end] = 1.0 / n
        x = np.concatenate([cache[i] for i in rows])
        return torch.from_numpy(x).to(self._device), torch.from_numpy(lengths), torch.from_numpy(avg).to(self._device)

    def _batch_targets(self, targets: list[Any], rows: np.ndarray, ctc_kind: bool) -> Any:
        """Utility targets of ``rows`` on the device: CTC labels and their lengths, or class indices."""
        if ctc_kind:
            seqs = [targets[i] for i in rows]
            labels = torch.tensor([c for seq in seqs for c in seq], dtype=torch.long, device=self._device)
            return labels, torch.tensor([len(seq) for seq in seqs], dtype=torch.long)
        return torch.tensor([targets[i] for i in rows], dtype=torch.long, device=self._device)

    def _batches(self, order: np.ndarray) -> list[np.ndarray]:
        b = self.settings.batch_size
        return [order[i:i + b] for i in range(0, order.size, b)]

    # ------------------------------------------------------------------ training

    def _train(self, cache: list[np.ndarray], y: np.ndarray, targets: list[Any], fit_idx: np.ndarray,
               rng: np.random.Generator) -> None:
        s = self.settings
        enc, head, adv = self.encoder_, self.utility_head_, self.adversary_
        ctc_kind = isinstance(head, _CTCHead)
        alternating = s.updates == "alternating"
        if alternating:
            main_opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=s.lr)
            adv_opt = torch.optim.Adam(adv.parameters(), lr=s.lr)
        else:
            main_opt = torch.optim.Adam([*enc.parameters(), *head.parameters(), *adv.parameters()], lr=s.lr)
        for module in (enc, head, adv):
            module.train()
        self._warmup(cache, y, fit_idx, rng)
        for epoch in tqdm(range(1, s.epochs + 1), desc="adversarial defense", disable=not self.ctx.progress):
            u_losses, a_losses, a_accs = [], [], []
            for rows in self._batches(rng.permutation(fit_idx)):
                x, lengths, avg = self._batch(cache, rows)
                target = self._batch_targets(targets, rows, ctc_kind)
                spk = torch.from_numpy(y[rows]).to(self._device)
                if alternating:
                    u_loss, a_loss, a_acc = self._alternating_step(x, lengths, avg, target, spk, main_opt, adv_opt)
                else:
                    u_loss, a_loss, a_acc = self._reversal_step(x, lengths, avg, target, spk, main_opt)
                if not (math.isfinite(u_loss) and math.isfinite(a_loss)):
                    raise DefenseFailed(f"training diverged: non-finite loss at epoch {epoch}")
                u_losses.append(u_loss)
                a_losses.append(a_loss)
                a_accs.append(a_acc)
            self.history_.append({"epoch": epoch, "utility_loss": float(np.mean(u_losses)),
                                  "adversary_loss": float(np.mean(a_losses)),
                                  "adversary_train_accuracy": float(np.mean(a_accs))})

    def _warmup(self, cache: list[np.ndarray], y: np.ndarray, fit_idx: np.ndarray, rng: np.random.Generator) -> None:
        """``WARMUP_EPOCHS`` of the adversary alone on the untrained (identity) encoder's pooled frames.

        The encoder's first updates then answer a competent adversary rather than a random one.
        Cheap: the identity encoder's pooled vectors are computed once.
        """
        adv = self.adversary_
        pooled = torch.cat([_meanstd(*self._batch(cache, rows)[::2]) for rows in self._batches(fit_idx)])
        where = np.empty(len(cache), dtype=int)
        where[fit_idx] = np.arange(fit_idx.size)
        opt = torch.optim.Adam(adv.parameters(), lr=self.settings.lr)
        for epoch in range(1, WARMUP_EPOCHS + 1):
            for rows in self._batches(rng.permutation(fit_idx)):
                loss = F.cross_entropy(adv(pooled[where[rows]]), torch.from_numpy(y[rows]).to(self._device))
                if not torch.isfinite(loss):
                    raise DefenseFailed(f"training diverged: non-finite loss at epoch {epoch} "
                                        "of the adversary's warm-up")
                opt.zero_grad()
                loss.backward()
                opt.step()

    def _reversal_step(self, x, lengths, avg, target, spk, opt) -> tuple[float, float, float]:
        """One joint step on ``utility + CE(adversary(GRL(z)))``."""
        z = self.encoder_.residual(x)
        u_loss = self.utility_head_.loss(z, lengths, avg, target)
        logits = self.adversary_(_meanstd(grad_reverse(z, self.settings.lambda_), avg))
        a_loss = F.cross_entropy(logits, spk)
        loss = u_loss + a_loss
        if not torch.isfinite(loss):
            return u_loss.item(), a_loss.item(), 0.0
        opt.zero_grad()
        loss.backward()
        opt.step()
        return u_loss.item(), a_loss.item(), float((logits.argmax(1) == spk).float().mean())

    def _alternating_step(self, x, lengths, avg, target, spk, main_opt, adv_opt) -> tuple[float, float, float]:
        """``adversary_steps`` adversary updates on detached pooled ``z``, then one encoder + head update."""
        s, enc, adv = self.settings, self.encoder_, self.adversary_
        z = enc.residual(x)  # the adversary's updates leave the encoder as it is: one pass serves both
        pooled = _meanstd(z.detach(), avg)
        first = None
        for _ in range(s.adversary_steps):
            logits = adv(pooled)
            a_loss = F.cross_entropy(logits, spk)
            if not torch.isfinite(a_loss):
                return 0.0, a_loss.item(), 0.0
            if first is None:
                first = (a_loss.item(), float((logits.argmax(1) == spk).float().mean()))
            adv_opt.zero_grad()
            a_loss.backward()
            adv_opt.step()
        u_loss = self.utility_head_.loss(z, lengths, avg, target)
        loss = u_loss
        if s.lambda_ > 0:
            adv.requires_grad_(False)
            try:
                loss = u_loss - s.lambda_ * F.cross_entropy(adv(_meanstd(z, avg)), spk)
            finally:
                adv.requires_grad_(True)
        if not torch.isfinite(loss):
            return float("nan"), first[0], first[1]
        main_opt.zero_grad()
        loss.backward()
        main_opt.step()
        return u_loss.item(), first[0], first[1]

    def _evaluate(self, cache: list[np.ndarray], y: np.ndarray, targets: list[Any] | None,
                  rows: np.ndarray) -> tuple[float, float | None]:
        """The adversary's accuracy and the mean utility loss (per utterance; None without ``targets``) on ``rows``."""
        ctc_kind = isinstance(self.utility_head_, _CTCHead)
        hits, loss_sum = 0, 0.0
        with torch.no_grad():
            for start in range(0, rows.size, _EVAL_BATCH):
                part = rows[start:start + _EVAL_BATCH]
                x, lengths, avg = self._batch(cache, part)
                z = self.encoder_.residual(x)
                pred = self.adversary_(_meanstd(z, avg)).argmax(1).cpu().numpy()
                hits += int(np.sum(pred == y[part]))
                if targets is not None:
                    loss = self.utility_head_.loss(z, lengths, avg, self._batch_targets(targets, part, ctc_kind))
                    loss_sum += float(loss) * part.size
        return hits / rows.size, None if targets is None else loss_sum / rows.size

    # ------------------------------------------------------------------ transform

    def _frames(self, frames: np.ndarray, utt_id: str) -> np.ndarray:
        """Defended frames ``(T, D)`` float32: the trained encoder, no gradient."""
        check_is_fitted(self, "encoder_")
        x = np.ascontiguousarray(frames, dtype=np.float32)
        dim = int(self.encoder_.mean.numel())
        if x.ndim != 2 or x.shape[1] != dim:
            raise DefenseFailed(f"frames of {utt_id!r} have shape {x.shape}, the encoder expects (T, {dim})")
        with torch.no_grad(), full_fp32(self._device):
            return self.encoder_(torch.from_numpy(x).to(self._device)).cpu().numpy().astype(np.float32, copy=False)

    def report(self) -> dict:
        """The training adversary's accuracies, the schedule and the final utility losses."""
        check_is_fitted(self, "training_adversary_")
        s = self.settings
        return {"training_adversary": dict(self.training_adversary_), "updates": s.updates,
                "lambda": s.lambda_, "epochs": len(self.history_), "warmup_epochs": WARMUP_EPOCHS,
                "final_utility_loss": self.history_[-1]["utility_loss"] if self.history_ else None,
                "utility_heldout": None if self.utility_heldout_ is None else dict(self.utility_heldout_)}


DEFENSE = DefenseFamily(
    name="adversarial",
    settings=AdversarialSettings,
    estimator=AdversarialDefense,
    description="adversarial regularization: residual frame encoder trained jointly with the utility head "
                "against a speaker adversary (gradient reversal or alternating updates)",
    sweepable=("lambda",),
)

__all__ = ["DEFENSE", "UPDATES", "AdversarialDefense", "AdversarialSettings", "GradientReversal",
           "GradientReversalFunction", "PrivacyEncoder", "grad_reverse"]

"""Utility probes: the downstream accuracy a defense must keep.

A defense is worth nothing if the embeddings no longer do their job. The audit measures that job
with a small probe trained on the defended embeddings of utility-train speakers and scored on
held-out speakers (and, for the ASR probe, held-out sentences):

* ``ctc``: a character CTC head on frames, greedy decoding, scored as CER and WER (jiwer, with
  the project's normaliser on both sides);
* ``classification:COLUMN``: a classifier of a label column on pooled vectors, scored as accuracy.

``retained`` = defended score / undefended score on an accuracy scale (1 - CER for the ASR
probe), and ``retained_above_chance`` = (defended - b) / (undefended - b) with ``b`` the task's
chance level on that scale, each with a paired bootstrap CI over test speakers (however few: the
Clopper-Pearson floor keeps few-speaker intervals honest).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.ctc import BLANK, encode, greedy_decode, vocab_size
from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError, CorpusError, StoreError
from audit.estimators import check_is_fitted, fit_quiet, frame_moments, full_fp32, grid_search, seeded, torch_device
from audit.family import FamilySettings, check_range
from audit.metrics import CI_METHOD, clopper_pearson, leakage_ci, proportion_ci
from audit.splits import Split, closed_set_split, speaker_disjoint_split
from audit.text import normalize_text, wer_counts

if TYPE_CHECKING:
    import torch

TASK_KINDS = ("ctc", "classification")


@dataclass(frozen=True)
class UtilityTask:
    """The utility task of an audit: ``ctc`` (character ASR) or ``classification`` of ``column``."""

    kind: str
    column: str | None = None

    @classmethod
    def parse(cls, text: str, *, key: str = "utility") -> "UtilityTask":
        """``"ctc"`` or ``"classification:COLUMN"``; anything else is a :class:`ConfigError` naming ``key``."""
        kind, _, column = str(text).partition(":")
        if kind == "ctc" and not column:
            return cls("ctc")
        if kind == "classification" and column:
            return cls("classification", column)
        raise ConfigError(f"{key}={text!r}: expected 'ctc' or 'classification:COLUMN' (e.g. classification:digit)")

    @property
    def name(self) -> str:
        """The task as written in a config."""
        return self.kind if self.column is None else f"{self.kind}:{self.column}"

    @property
    def metric(self) -> str:
        """The headline metric: ``cer`` for the ASR probe, ``accuracy`` for classification."""
        return "cer" if self.kind == "ctc" else "accuracy"

    def feasibility(self, labels: EmbeddingSet) -> str | None:
        """Why this corpus cannot support the task (missing transcripts or label column), or None."""
        if self.kind == "ctc":
            texts = labels.transcripts
            missing = 0 if texts is None else sum(1 for t in texts if not t or not str(t).strip())
            if texts is None or missing:
                return (f"the ctc utility probe needs a transcript for every utterance; "
                        f"{len(labels) if texts is None else missing} of {len(labels)} have none")
            return None
        values = labels.attributes.get(self.column)
        if values is None:
            known = ", ".join(sorted(k for k in labels.attributes if k not in ("speech_rate", "voiced_seconds")))
            return f"no label column {self.column!r} in the corpus (columns: {known or 'none'})"
        present = [v for v in values if v is not None and str(v) != ""]
        if len(present) < len(values):
            return f"label column {self.column!r} is empty for {len(values) - len(present)} of {len(values)} utterances"
        if len(set(map(str, present))) < 2:
            return f"label column {self.column!r} has fewer than 2 classes"
        return None

    def targets(self, view: EmbeddingSet) -> np.ndarray:
        """Per-row targets: class labels (str) for classification, transcripts for ctc."""
        if self.kind == "ctc":
            return np.asarray(view.transcripts, dtype=object)
        return np.array([str(v) for v in view.attributes[self.column]], dtype=object)


def resolve_task(text: str | None, labels: EmbeddingSet) -> UtilityTask | None:
    """The configured task; ``"auto"`` is ``ctc`` when every utterance has a transcript, else none."""
    if text is None or text == "none":
        return None
    if text == "auto":
        task = UtilityTask("ctc")
        return task if task.feasibility(labels) is None else None
    return UtilityTask.parse(text)


# ============================================================================ settings

#: Fewest speakers for a speaker-disjoint utility split; below it, recordings within speakers.
MIN_DISJOINT_SPEAKERS = 4
#: Fewest utility-train and utility-test utterances a split must leave.
MIN_TRAIN_ROWS = 4
MIN_TEST_ROWS = 2


@dataclass
class UtilitySettings(FamilySettings):
    """The utility probe's settings (TOML table ``[utility_probe]``).

    ``test_fraction``: share of speakers (or, below :data:`MIN_DISJOINT_SPEAKERS` speakers, of
    each speaker's recordings) scored by the probe. ``ctc_*``: the character CTC head
    (:class:`CTCProbe`): BiLSTM units per direction, most epochs, epochs without validation
    improvement before stopping, Adam learning rate, utterances per batch. The defaults fit a
    420-utterance x 175-frame x 384-dim utility-train set in about 2.5 s per epoch on one core
    (about 45 s when early stopping fires, as on random frames; at most about 80 s for all 30 epochs). ``C_grid``: the
    logistic regression's inverse regularisation strengths tried on validation
    (:class:`ClassificationProbe`). ``n_boot``: bootstrap resamples of every CI.
    """

    BUDGET = ("ctc_hidden", "ctc_epochs", "ctc_patience", "n_boot")
    BUDGET_LISTS = ("C_grid",)
    QUICK = {"ctc_epochs": 10, "n_boot": 200}

    test_fraction: float = 0.3
    ctc_hidden: int = 128
    ctc_epochs: int = 30
    ctc_patience: int = 6
    ctc_lr: float = 5e-3
    ctc_batch_size: int = 16
    C_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    n_boot: int = 1000

    def validate(self, prefix: str = "utility_probe.") -> None:
        """Raise :class:`ConfigError` naming the bad key (``f"{prefix}{key}={value!r}: ..."``)."""
        check_range(prefix, "test_fraction", self.test_fraction, 0, 1)
        for key, low in (("ctc_hidden", 1), ("ctc_epochs", 1), ("ctc_patience", 1), ("ctc_batch_size", 1),
                         ("n_boot", 100)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"{prefix}{key}={value!r}: must be an integer >= {low}"
                                  + (" for a meaningful 95% CI" if key == "n_boot" else ""))
        check_range(prefix, "ctc_lr", self.ctc_lr, 0, 1, open_high=False)
        grid = self.C_grid
        if not isinstance(grid, (list, tuple)) or not grid or not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and 0 < c < math.inf for c in grid):
            raise ConfigError(f"{prefix}C_grid={grid!r}: must be a non-empty list of positive finite numbers")


# ============================================================================ split

#: The unit every utility CI resamples.
CI_UNIT = "speaker"


def bootstrap_clusters(test: EmbeddingSet) -> np.ndarray:
    """The units a utility CI resamples: the test speakers, however few.

    Recordings of one speaker share voice, channel and speaking style, so resampling them as if
    independent gives intervals too narrow (an earlier version did so below 10 test speakers).
    With few speakers the speaker bootstrap has few distinct resamples; every utility CI is then
    kept honest by its union with the exact Clopper-Pearson interval of the pooled counts
    (:func:`rate_ci`, :func:`audit.metrics.proportion_ci`), so it is never zero-width.
    """
    return np.asarray(test.speakers).astype(str)


@dataclass(frozen=True)
class UtilitySplit(Split):
    """A :class:`Split` (utility-train = ``train``, utility-test = ``test``, ``val`` empty) plus the sentence hold-out.

    ``sentences_held_out`` is True for the ctc task, whose ``train`` lacks every utterance whose
    normalised transcript also occurs in ``test``; ``n_dropped`` counts those utterances.
    """

    sentences_held_out: bool = False
    n_dropped: int = 0

    def describe(self) -> dict:
        """:meth:`Split.describe` plus ``sentences_held_out`` and ``n_train_dropped_sentences``."""
        return {**super().describe(), "sentences_held_out": self.sentences_held_out,
                "n_train_dropped_sentences": int(self.n_dropped)}


def utility_split(labels: EmbeddingSet, task: UtilityTask, settings: UtilitySettings, seed: int) -> UtilitySplit:
    """Utility-train / utility-test rows of ``labels`` for ``task``.

    With at least :data:`MIN_DISJOINT_SPEAKERS` speakers the split is speaker-disjoint
    (:func:`audit.splits.speaker_disjoint_split`: the probe is scored on people it never saw);
    with 2 or 3 it is closed-set (:func:`audit.splits.closed_set_split` on ``labels.grouping``:
    sessions/recordings of each speaker on one side only) and ``kind`` says so. For the ctc
    task, sentences are held out as well: every training utterance whose normalised transcript
    (:func:`audit.text.normalize_text`) occurs among the test utterances is dropped from
    ``train`` (counted in ``n_dropped`` and in ``kind``), so the probe is never scored on a
    sentence it was trained on.

    Raises
    ------
    CorpusError
        Fewer than 2 speakers, the task's labels missing, or too few rows left on a side
        (fewer than :data:`MIN_TRAIN_ROWS` train / :data:`MIN_TEST_ROWS` test utterances, or,
        for classification, fewer than 2 classes in train).
    """
    n_speakers = labels.n_speakers
    if n_speakers < 2:
        raise CorpusError(f"utility split impossible: {n_speakers} speaker(s) in the evaluated set; the "
                          f"{task.name} probe needs >= 2")
    reason = task.feasibility(labels)
    if reason is not None:
        raise CorpusError(f"utility split impossible: {reason}")
    if n_speakers >= MIN_DISJOINT_SPEAKERS:
        try:
            base = speaker_disjoint_split(labels.speakers, test_fraction=settings.test_fraction, seed=seed)
        except CorpusError as err:
            raise CorpusError(f"utility split impossible: {err}") from err
        kind = "speaker-disjoint"
    else:
        try:
            base = closed_set_split(labels.grouping, test_fraction=settings.test_fraction, seed=seed)
        except CorpusError as err:
            raise CorpusError(f"utility split impossible with {n_speakers} speakers (closed-set by recording): "
                              f"{err}") from err
        kind = (f"closed-set by {base.group_by} within speakers (only {n_speakers} speakers, fewer than "
                f"{MIN_DISJOINT_SPEAKERS}: the probe is scored on speakers it was trained on)")
    train, n_dropped = base.train, 0
    if task.kind == "ctc":
        norm = np.array([normalize_text(str(t)) for t in labels.transcripts], dtype=object)
        test_sentences = set(norm[base.test].tolist())
        train = base.train[[s not in test_sentences for s in norm[base.train]]].astype(int)
        n_dropped = int(base.train.size - train.size)
        kind += f"; sentences held out ({n_dropped} training utterances dropped: their sentence is in the test set)"
    if train.size < MIN_TRAIN_ROWS or base.test.size < MIN_TEST_ROWS:
        why = (f"; {n_dropped} training utterances dropped because their sentence is also a test sentence"
               if n_dropped else "")
        raise CorpusError(f"utility split impossible: {train.size} utility-train and {base.test.size} utility-test "
                          f"utterances (need >= {MIN_TRAIN_ROWS} and >= {MIN_TEST_ROWS}){why}")
    if task.kind == "classification":
        n_classes = np.unique(task.targets(labels.subset(train))).size
        if n_classes < 2:
            raise CorpusError(f"utility split impossible: label column {task.column!r} has {n_classes} class among "
                              f"the utility-train utterances (need >= 2)")
    return UtilitySplit(train, np.zeros(0, dtype=int), base.test, kind, seed, base.dropped_speakers, base.group_by,
                        base.same_recording, sentences_held_out=task.kind == "ctc", n_dropped=n_dropped)


# ============================================================================ scores

#: How every utility CI is built.
UTILITY_CI_METHOD = (CI_METHOD + "; CER and WER are treated as proportions of min(edits, reference length) "
                     "over the reference length for the binomial floor")


@dataclass
class UtilityScore:
    """A probe's score on utility-test, with the per-row outcomes kept for paired comparisons.

    ``value`` is the headline ``metric`` (``cer``: corpus-level character error rate, sum of
    edits over sum of reference characters; ``accuracy``), ``ci95`` its 95% CI (speaker-clustered
    bootstrap widened to contain the exact Clopper-Pearson interval: never zero-width);
    ``accuracy_scale`` is ``max(0, 1 - CER)`` or the accuracy, the scale :func:`retained` divides
    on. Per row (aligned with ``utt_ids``): ``row_errors`` (character edits; 0/1 misses for
    classification), ``row_lengths`` (normalised reference characters; 1 for classification),
    ``clusters`` (test speakers: the unit every CI resamples, :data:`CI_UNIT`), ``row_labels``
    (the true class labels for classification, None for ctc; :func:`utility_chance` reads them).
    ``extra`` holds ``wer``/``wer_ci95`` for ctc; ``budget`` and ``history`` describe the probe's
    training; ``n_boot`` and ``seed`` are the bootstrap settings of its CIs, which a paired
    comparison against this score reuses.
    """

    task: str
    metric: str
    value: float
    ci95: list[float]
    accuracy_scale: float
    extra: dict
    n_test: int
    n_test_speakers: int
    row_errors: np.ndarray
    row_lengths: np.ndarray
    clusters: np.ndarray
    utt_ids: list[str]
    budget: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    row_labels: np.ndarray | None = None
    n_boot: int = 1000
    seed: int = 0

    @property
    def ci_n_clusters(self) -> int:
        """How many clusters (test speakers) the CIs resample."""
        return int(np.unique(np.asarray(self.clusters).astype(str)).size)

    @property
    def accuracy_scale_ci95(self) -> list[float]:
        """``ci95`` on the accuracy scale (``1 - CER`` bounds, clipped at 0, for ctc)."""
        if self.metric == "cer":
            return [max(0.0, 1.0 - self.ci95[1]), max(0.0, 1.0 - self.ci95[0])]
        return list(self.ci95)

    def to_dict(self) -> dict:
        """JSON-ready plain values (no per-row arrays): the score, its CI, sizes, ``budget`` and ``history``.

        ``ci_unit`` names the unit the CIs resampled (always ``"speaker"``) and ``ci_n_clusters``
        how many there were, so a reader can judge an interval built on few speakers.
        """
        return {"task": self.task, "metric": self.metric, "value": float(self.value),
                "ci95": [float(v) for v in self.ci95], "accuracy_scale": float(self.accuracy_scale),
                "accuracy_scale_ci95": self.accuracy_scale_ci95, "extra": _plain(self.extra),
                "n_test": int(self.n_test), "n_test_speakers": int(self.n_test_speakers),
                "ci_unit": CI_UNIT, "ci_n_clusters": self.ci_n_clusters, "budget": _plain(self.budget),
                "history": _plain(self.history), "ci_method": UTILITY_CI_METHOD}


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars/arrays turned into Python numbers and lists (for JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _clusters(clusters: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Row -> cluster index, number of clusters, and the ``min_distinct`` a speaker bootstrap can ask for."""
    _, idx = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    n = int(idx.max()) + 1 if idx.size else 0
    return idx, n, 1 if n < 2 else 2


def rate_ci(errors: np.ndarray, lengths: np.ndarray, clusters: np.ndarray, *, n_boot: int = 1000,
            seed: int = 0) -> tuple[float, list[float]]:
    """Corpus-level error rate ``sum(errors) / sum(lengths)`` and its 95% CI.

    :func:`audit.metrics.leakage_ci`: test speakers resampled (each row of a drawn speaker
    weighted by its multiplicity), united with the Clopper-Pearson interval of
    ``min(sum errors, sum lengths)`` errors in ``sum lengths`` trials, so it is never zero-width.
    """
    e, n = np.asarray(errors, dtype=np.float64), np.asarray(lengths, dtype=np.float64)
    total = float(n.sum())
    if total <= 0:
        raise ValueError("error rate undefined: the references have no characters/words after normalisation")
    idx, n_clusters, min_distinct = _clusters(clusters)

    def stat(counts: np.ndarray) -> float:
        w = counts[idx]
        denominator = float(w @ n)
        return float(w @ e) / denominator if denominator > 0 else math.nan

    k = int(min(e.sum(), total))
    ((low, high),) = leakage_ci(stat, n_clusters, binomial=(k, int(total)), n_boot=n_boot, seed=seed,
                                min_distinct=min_distinct)
    return float(e.sum()) / total, [float(low), float(high)]


def char_edits(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-row character edits (S + D + I, jiwer) and reference lengths of normalised text.

    Both sides go through :func:`audit.text.normalize_text`; spaces count as characters (jiwer's
    CER). An empty side counts every character of the other as a deletion or insertion.
    """
    import jiwer

    edits, lengths = [], []
    for ref, hyp in zip(references, hypotheses, strict=True):
        r, h = normalize_text(str(ref)), normalize_text(str(hyp))
        if r and h:
            out = jiwer.process_characters(r, h)
            edits.append(int(out.substitutions + out.deletions + out.insertions))
        else:
            edits.append(len(r) + len(h))
        lengths.append(len(r))
    return np.asarray(edits, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


def ctc_score(task: str, references: Sequence[str], hypotheses: Sequence[str], speakers: np.ndarray,
              utt_ids: Sequence[str], *, n_boot: int = 1000, seed: int = 0) -> UtilityScore:
    """The :class:`UtilityScore` of ASR hypotheses: CER (headline) and WER, each with its 95% CI.

    Both CIs resample the test ``speakers`` (:func:`rate_ci`), never single recordings.
    """
    clusters = np.asarray(speakers).astype(str)
    c_edits, c_lengths = char_edits(references, hypotheses)
    cer, cer_ci = rate_ci(c_edits, c_lengths, clusters, n_boot=n_boot, seed=seed)
    words = wer_counts(list(map(str, references)), list(map(str, hypotheses)))
    w_edits = np.add(np.add(words["substitutions"], words["deletions"]), words["insertions"])
    w_lengths = np.asarray(words["n_ref_words"])
    wer, wer_ci = rate_ci(w_edits, w_lengths, clusters, n_boot=n_boot, seed=seed)
    examples = [{"reference": normalize_text(str(r)), "hypothesis": normalize_text(str(h))}
                for r, h in list(zip(references, hypotheses))[:N_EXAMPLES]]
    extra = {"wer": wer, "wer_ci95": wer_ci, "ref_chars": int(c_lengths.sum()), "char_edits": int(c_edits.sum()),
             "ref_words": int(w_lengths.sum()), "word_edits": int(w_edits.sum()),
             "empty_hypotheses": int(sum(1 for h in hypotheses if not normalize_text(str(h)))),
             "examples": examples}
    return UtilityScore(task, "cer", cer, cer_ci, max(0.0, 1.0 - cer), extra, len(c_edits),
                        int(np.unique(clusters).size), c_edits, c_lengths, clusters, list(utt_ids),
                        n_boot=int(n_boot), seed=int(seed))


#: Reference/hypothesis pairs kept in a ctc score's ``extra["examples"]``.
N_EXAMPLES = 5


# ============================================================================ CTC probe


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block (unchanged for None), then restored."""
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar lengths: a random order, sorted by length within pools of 8 batches."""
    order = rng.permutation(lengths.size)
    pool = batch_size * 8
    batches = []
    for start in range(0, order.size, pool):
        part = order[start:start + pool]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, part.size, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches of rows in order of length (inference: least padding)."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, order.size, batch_size)]


class CTCProbe:
    """A small character CTC head trained on a layer's frames: the ASR utility probe.

    Model: per-dimension standardisation (mean/std of the training frames), dropout, a linear
    projection to ``hidden`` dimensions, a 1-layer bidirectional LSTM (or GRU) of ``hidden`` units
    per direction, and a linear layer from ``[projection, forward, backward]`` (a skip connection
    around the recurrent layer), after dropout, to :func:`audit.ctc.vocab_size` classes (blank =
    :data:`audit.ctc.BLANK`). The skip path lets the per-frame (linear) evidence through from the
    first epoch, which shortens CTC's all-blank plateau; the projection and dropout (of whole
    channels, one mask per utterance shared by all its frames: "locked" dropout, also ~10x cheaper
    on CPU than a mask per frame) keep the head small and regularised for utility-train sets of a
    few hundred utterances. LSTM rather than GRU: torch's CPU LSTM (oneDNN) trains about twice as
    fast as its GRU. On Whisper-tiny's last layer with 420 speechocean762 training utterances
    (test: 200 utterances of 20 held-out speakers), test CER 0.43 (this head, 39 epochs), 0.51
    (same with a GRU and per-frame dropout, 22 epochs), 0.57 (a linear per-frame head) and 0.75 (a
    plain BiGRU on the 384 raw dimensions, 30 epochs). The two directions are two unidirectional
    RNNs, the backward one run on each sequence reversed within its own length, so padded batches
    give exactly the per-utterance result without packed sequences (2-3x slower on CPU). Targets:
    :func:`audit.ctc.encode` of the transcripts.

    Training: ``torch.nn.CTCLoss(blank=BLANK, zero_infinity=True)``, Adam, gradient norm clipped
    at 5, batches of similar lengths, seeded (:func:`audit.estimators.seeded`). A
    ``val_fraction`` of the training utterances, whole sentences at a time (no sentence on both
    sides when sentences repeat), is held out; after each epoch they are greedy-decoded and
    scored by CER, and the weights of the lowest validation CER are kept (ties broken by the lower
    validation loss). Training stops after ``patience`` epochs in which neither the validation
    CER nor the validation loss improved: the loss keeps training going through the plateau at
    the start of CTC training, where the output is all blanks and the CER stalls near 1 (an
    early epoch's garbage can even score a lower CER than the blank plateau that follows). Fewer
    than 4 training utterances: no validation, all epochs, last weights.

    Parameters
    ----------
    hidden : int, default=128
    max_epochs : int, default=30
    patience : int, default=6
    lr : float, default=5e-3
    batch_size : int, default=16
    val_fraction : float, default=0.15
    dropout : float, default=0.3
    cell : {"gru", "lstm"}, default="lstm"
    num_threads : int or None, default=1
        torch intra-op threads while fitting and decoding (restored afterwards; None: leave torch's
        setting). One thread: a recurrent layer this small gains nothing from a second thread on
        an idle 2-core machine, and on a busy one two threads are several times slower.
    seed : int, default=0
    n_boot : int, default=1000
        Bootstrap resamples of :meth:`evaluate`'s CIs.
    device : str, default="cpu"
        Torch device (``"cpu"``, ``"cuda"``, ``"cuda:N"``); the probe trains and decodes there, in
        float32 (weights initialised on the CPU). Transcripts and scores are plain Python.

    Attributes
    ----------
    net_ : torch.nn.Module
        On ``device``.
    mean_, std_ : ndarray of shape (D,)
    history_ : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``val_cer``, ``val_loss`` (None without validation),
        ``seconds`` (since training started).
    best_epoch_, converged_ (early stop fired before ``max_epochs``), n_params_, fit_seconds_
    budget_ : dict
        What the fit used (epochs, sizes, seconds), copied into each score's ``budget``.
    """

    def __init__(self, *, hidden: int = 128, max_epochs: int = 30, patience: int = 6, lr: float = 5e-3,
                 batch_size: int = 16, val_fraction: float = 0.15, dropout: float = 0.3, cell: str = "lstm",
                 num_threads: int | None = 1, seed: int = 0, n_boot: int = 1000, device: str = "cpu") -> None:
        self.hidden = hidden
        self.max_epochs = max_epochs
        self.patience = patience
        self.lr = lr
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.dropout = dropout
        self.cell = cell
        self.num_threads = num_threads
        self.seed = seed
        self.n_boot = n_boot
        self.device = device

    # ------------------------------------------------------------------ data

    @staticmethod
    def _needs_frames(data: EmbeddingSet) -> None:
        if data.frame_source is None:
            raise StoreError("the ctc utility probe needs frame-level states; this embedding set is pooled-only")

    @staticmethod
    def _pad(seqs: Sequence[np.ndarray], device: Any = "cpu") -> tuple["torch.Tensor", "torch.Tensor"]:
        """``(B, T_max, D)`` float32 zero-padded batch and the ``(B,)`` lengths, on ``device``."""
        import torch

        lengths = [s.shape[0] for s in seqs]
        out = np.zeros((len(seqs), max(lengths), seqs[0].shape[1]), dtype=np.float32)
        for b, s in enumerate(seqs):
            out[b, :s.shape[0]] = s
        return torch.from_numpy(out).to(device), torch.as_tensor(lengths, dtype=torch.long, device=device)

    def _validation_rows(self, norm_refs: np.ndarray) -> np.ndarray:
        """About ``val_fraction`` of the rows (at least 1), whole normalised sentences at a time."""
        n = norm_refs.size
        if n < 4:
            return np.zeros(0, dtype=int)
        want = max(1, int(round(self.val_fraction * n)))
        rng = np.random.default_rng(self.seed + 1)
        sentences = np.unique(norm_refs)
        if sentences.size < 2:
            return np.sort(rng.permutation(n)[:want])
        chosen, took = [], 0
        for s in sentences[rng.permutation(sentences.size)]:
            size = int(np.count_nonzero(norm_refs == s))
            if took and took + size > want * 1.5:
                continue
            chosen.append(s)
            took += size
            if took >= want:
                break
        val = np.flatnonzero(np.isin(norm_refs, chosen))
        return val if val.size < n else np.zeros(0, dtype=int)

    # ------------------------------------------------------------------ model

    def _decode(self, net: Any, seqs: Callable[[int], np.ndarray], n: int) -> list[str]:
        """Greedy transcripts of ``n`` sequences (``seqs(i)``: raw ``(T, D)`` frames), batched by length."""
        import torch

        frames = [seqs(i) for i in range(n)]
        lengths = np.array([f.shape[0] for f in frames])
        hyps: list[str] = [""] * n
        net.eval()
        with torch.no_grad():
            for batch in _sorted_batches(lengths, max(self.batch_size, 32)):
                x, lens = self._pad([frames[i] for i in batch], net.mean.device)
                log_probs = net(x, lens).cpu().numpy()
                for b, i in enumerate(batch):
                    hyps[i] = greedy_decode(log_probs[b, :lengths[i]])
        return hyps

    def _train(self, cache: list[np.ndarray], targets: list[list[int]], norm_refs: np.ndarray) -> dict:
        """Train with early stopping on validation CER; return the record (network in ``self.net_``, on ``device``)."""
        import torch
        from torch import nn

        device = torch_device(self.device, "CTCProbe")
        val = self._validation_rows(norm_refs)
        fit_rows = np.setdiff1d(np.arange(len(cache)), val)
        mean, std = frame_moments([cache[i] for i in fit_rows])
        lengths = np.array([cache[i].shape[0] for i in fit_rows])
        rng = np.random.default_rng(self.seed)
        history: list[dict] = []
        t0 = time.perf_counter()
        best, best_state, best_epoch, stopped = (math.inf, math.inf), None, 0, False
        best_loss, last_gain = math.inf, 0
        with seeded(self.seed, device):
            net = _CTCNet(mean, std, self.hidden, self.cell, self.dropout).to(device)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)
            loss_fn = nn.CTCLoss(blank=BLANK, zero_infinity=True)
            for epoch in range(1, self.max_epochs + 1):
                net.train()
                losses = []
                for batch in _length_batches(lengths, self.batch_size, rng):
                    rows = fit_rows[batch]
                    loss = self._loss(net, loss_fn, [cache[i] for i in rows], [targets[i] for i in rows])
                    opt.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                    opt.step()
                    losses.append(float(loss.detach()))
                row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_cer": None, "val_loss": None}
                if val.size:
                    net.eval()
                    with torch.no_grad():
                        row["val_loss"] = float(np.mean([
                            float(self._loss(net, loss_fn, [cache[i] for i in chunk], [targets[i] for i in chunk]))
                            for chunk in np.array_split(val, max(1, math.ceil(val.size / 32)))]))
                    hyps = self._decode(net, lambda j: cache[val[j]], val.size)
                    edits, refs = char_edits(norm_refs[val], hyps)
                    row["val_cer"] = float(edits.sum() / max(1, refs.sum()))
                row["seconds"] = round(time.perf_counter() - t0, 2)
                history.append(row)
                score = (row["val_cer"] if val.size else 0.0, row["val_loss"] if val.size else 0.0)
                if not val.size or score[0] < best[0] or (score[0] == best[0] and score[1] < best[1]):
                    best, best_epoch, last_gain = score, epoch, epoch
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                if val.size and score[1] < best_loss:
                    best_loss, last_gain = score[1], epoch
                if val.size and epoch - last_gain >= self.patience:
                    stopped = True
                    break
            net.load_state_dict(best_state)
        self.net_ = net
        return {"epochs": len(history), "best_epoch": best_epoch, "converged": stopped, "history": history,
                "n_fit": int(fit_rows.size), "n_val": int(val.size), "train_frames": int(lengths.sum()),
                "val_cer": best[0] if val.size else None}

    @staticmethod
    def _loss(net: Any, loss_fn: Any, seqs: list[np.ndarray], targets: list[list[int]]) -> "torch.Tensor":
        import torch

        x, lens = CTCProbe._pad(seqs, net.mean.device)
        log_probs = net(x, lens).transpose(0, 1)  # (T, B, V)
        flat = torch.as_tensor([c for t in targets for c in t], dtype=torch.long, device=x.device)
        target_lengths = torch.as_tensor([len(t) for t in targets], dtype=torch.long)
        return loss_fn(log_probs, flat, lens, target_lengths)

    # ------------------------------------------------------------------ public API

    def _validate(self) -> None:
        for name, low in (("hidden", 1), ("max_epochs", 1), ("patience", 1), ("batch_size", 1), ("n_boot", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"CTCProbe: {name}={value!r} must be an int >= {low}")
        if self.num_threads is not None and (isinstance(self.num_threads, bool) or not isinstance(
                self.num_threads, (int, np.integer)) or self.num_threads < 1):
            raise ConfigError(f"CTCProbe: num_threads={self.num_threads!r} must be an int >= 1 or None")
        if self.cell not in ("gru", "lstm"):
            raise ConfigError(f"CTCProbe: cell={self.cell!r} must be 'gru' or 'lstm'")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"CTCProbe: lr={self.lr!r} must be > 0")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"CTCProbe: val_fraction={self.val_fraction!r} must be in (0, 1)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"CTCProbe: dropout={self.dropout!r} must be in [0, 1)")
        torch_device(self.device, "CTCProbe")

    def fit(self, train: EmbeddingSet) -> "CTCProbe":
        """Train on ``train``'s frames and transcripts (validation inside ``train``); return self."""
        t0 = time.perf_counter()
        self._validate()
        self._needs_frames(train)
        reason = UtilityTask("ctc").feasibility(train)
        if reason is not None:
            raise CorpusError(reason)
        if len(train) < 2:
            raise CorpusError(f"the ctc utility probe needs >= 2 training utterances, got {len(train)}")
        dim = train.checked_frames(0).shape[1]
        cache = []
        for i in range(len(train)):
            x = train.checked_frames(i, dim)
            x16 = x.astype(np.float16)
            cache.append(x16 if np.isfinite(x16).all() else x)
        targets = [encode(str(t)) for t in train.transcripts]
        norm_refs = np.array([normalize_text(str(t)) for t in train.transcripts], dtype=object)
        with _torch_threads(self.num_threads):
            record = self._train(cache, targets, norm_refs)
        self.mean_ = self.net_.mean.cpu().numpy().astype(np.float64)
        self.std_ = self.net_.std.cpu().numpy().astype(np.float64)
        self.history_ = record.pop("history")
        self.best_epoch_ = record["best_epoch"]
        self.converged_ = record["converged"]
        self.n_params_ = int(sum(p.numel() for p in self.net_.parameters()))
        self.fit_seconds_ = time.perf_counter() - t0
        self.budget_ = {"probe": f"projection + Bi{self.cell.upper()} (skip) CTC", "hidden": self.hidden,
                        "dropout": self.dropout, "n_params": self.n_params_,
                        "n_features": int(dim), "n_train": len(train), "n_train_speakers": train.n_speakers,
                        **record, "max_epochs": self.max_epochs, "patience": self.patience, "lr": self.lr,
                        "batch_size": self.batch_size, "fit_seconds": round(self.fit_seconds_, 3)}
        return self

    def transcribe(self, data: EmbeddingSet) -> list[str]:
        """Greedy CTC transcripts of every row of ``data``."""
        check_is_fitted(self, "net_")
        self._needs_frames(data)
        with _torch_threads(self.num_threads), full_fp32(self.net_.mean.device):
            return self._decode(self.net_, lambda i: data.checked_frames(i, self.mean_.size), len(data))

    def evaluate(self, test: EmbeddingSet) -> UtilityScore:
        """CER (headline) and WER of greedy transcripts of ``test`` against its transcripts, with 95% CIs."""
        check_is_fitted(self, "net_")
        reason = UtilityTask("ctc").feasibility(test)
        if reason is not None:
            raise CorpusError(reason)
        hyps = self.transcribe(test)
        score = ctc_score("ctc", list(test.transcripts), hyps, bootstrap_clusters(test), test.utt_ids,
                          n_boot=self.n_boot, seed=self.seed)
        score.budget = dict(self.budget_)
        score.history = list(self.history_)
        return score


@functools.lru_cache(maxsize=1)
def _ctc_net_class() -> type:
    """The torch module of :class:`CTCProbe` (built lazily so importing this module does not import torch)."""
    import torch
    from torch import nn

    class _Net(nn.Module):
        def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: int, cell: str, dropout: float) -> None:
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
            rnn = nn.GRU if cell == "gru" else nn.LSTM
            self.dropout = dropout
            self.proj = nn.Linear(mean.size, hidden)
            self.forward_rnn = rnn(hidden, hidden, batch_first=True)
            self.backward_rnn = rnn(hidden, hidden, batch_first=True)
            self.out = nn.Linear(3 * hidden, vocab_size())

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            """``(B, T, V)`` log-probabilities of raw padded frames ``(B, T, D)``."""
            h = self.proj(self._drop((x - self.mean) / self.std))
            t = torch.arange(x.shape[1], device=x.device)[None]
            rev = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)[:, :, None].expand(-1, -1, h.shape[2])
            h_fwd, _ = self.forward_rnn(h)
            h_bwd, _ = self.backward_rnn(h.gather(1, rev))
            h_bwd = h_bwd.gather(1, rev)
            return self.out(self._drop(torch.cat([h, h_fwd, h_bwd], -1))).log_softmax(-1)

        def _drop(self, x: torch.Tensor) -> torch.Tensor:
            """Dropout of whole channels per utterance (one mask shared by all frames; training only)."""
            if not self.training or self.dropout == 0:
                return x
            keep = torch.rand(x.shape[0], 1, x.shape[2], device=x.device) >= self.dropout
            return x * keep / (1 - self.dropout)

    return _Net


def _CTCNet(mean: np.ndarray, std: np.ndarray, hidden: int, cell: str, dropout: float) -> Any:
    return _ctc_net_class()(mean, std, hidden, cell, dropout)


# ============================================================================ classification probe


class ClassificationProbe:
    """Logistic regression of a label column on standardised pooled vectors: the classification utility probe.

    ``C`` is chosen from ``C_grid`` by accuracy on a validation slice of the training rows
    (speaker-disjoint with >= :data:`MIN_DISJOINT_SPEAKERS` training speakers, else recordings
    within speakers, mirroring :func:`utility_split`), then the model is refitted on every
    training row. Without a usable slice (too few speakers/recordings, or one class in its
    training part), ``C = 1.0`` (or the middle of the grid). Test rows of a class never seen in
    training count as errors.

    Attributes
    ----------
    model_ : sklearn Pipeline (StandardScaler, LogisticRegression)
    classes_ : ndarray
    C_, val_scores_, converged_, fit_seconds_, budget_
    """

    def __init__(self, column: str, *, C_grid: Sequence[float] = (0.01, 0.1, 1.0, 10.0), val_fraction: float = 0.2,
                 max_iter: int = 2000, seed: int = 0, n_boot: int = 1000) -> None:
        self.column = column
        self.C_grid = C_grid
        self.val_fraction = val_fraction
        self.max_iter = max_iter
        self.seed = seed
        self.n_boot = n_boot

    @property
    def task(self) -> UtilityTask:
        return UtilityTask("classification", self.column)

    def _targets(self, view: EmbeddingSet) -> np.ndarray:
        if self.column not in view.attributes:
            raise CorpusError(self.task.feasibility(view) or f"no label column {self.column!r}")
        return self.task.targets(view)

    @staticmethod
    def _pooled(view: EmbeddingSet) -> np.ndarray:
        X = np.asarray(view.pooled, dtype=np.float64)
        if X.ndim != 2 or not np.isfinite(X).all():
            raise StoreError(f"pooled vectors of shape {X.shape} must be 2-D and finite")
        return X

    def _make(self, C: float) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=self.max_iter, random_state=self.seed))

    def _validation_rows(self, train: EmbeddingSet) -> np.ndarray:
        try:
            if train.n_speakers >= MIN_DISJOINT_SPEAKERS:
                return speaker_disjoint_split(train.speakers, test_fraction=self.val_fraction, seed=self.seed + 1,
                                              min_test_speakers=1).test
            return closed_set_split(train.grouping, test_fraction=self.val_fraction, seed=self.seed + 1).test
        except CorpusError:
            return np.zeros(0, dtype=int)

    def fit(self, train: EmbeddingSet) -> "ClassificationProbe":
        """Choose ``C`` on a validation slice of ``train``, refit on all of it; return self."""
        t0 = time.perf_counter()
        y = self._targets(train)
        X = self._pooled(train)
        if np.unique(y).size < 2:
            raise CorpusError(f"label column {self.column!r} has fewer than 2 classes among the training utterances")
        grid = [float(c) for c in self.C_grid]
        self.C_ = 1.0 if 1.0 in grid else grid[len(grid) // 2]
        self.val_scores_: dict[str, float] = {}
        val = self._validation_rows(train) if len(grid) > 1 else np.zeros(0, dtype=int)
        fit_rows = np.setdiff1d(np.arange(len(y)), val)
        if val.size and np.unique(y[fit_rows]).size >= 2:
            def score(C: float) -> float:
                model, _ = fit_quiet(self._make(C), X[fit_rows], y[fit_rows])
                return float(np.mean(model.predict(X[val]) == y[val]))

            self.C_, self.val_scores_ = grid_search(grid, score)
        else:
            val = np.zeros(0, dtype=int)
        self.model_, self.converged_ = fit_quiet(self._make(self.C_), X, y)
        self.classes_ = self.model_.classes_
        values, counts = np.unique(y, return_counts=True)
        self._majority = values[int(np.argmax(counts))]
        self.fit_seconds_ = time.perf_counter() - t0
        self.budget_ = {"probe": "logistic regression", "C": self.C_, "C_grid": grid,
                        "validation_scores": self.val_scores_, "n_val": int(val.size), "n_train": len(train),
                        "n_train_speakers": train.n_speakers, "n_features": int(X.shape[1]),
                        "n_classes": int(self.classes_.size), "converged": bool(self.converged_),
                        "n_iter": int(np.max(self.model_[-1].n_iter_)), "fit_seconds": round(self.fit_seconds_, 3)}
        return self

    def predict(self, view: EmbeddingSet) -> np.ndarray:
        """Predicted labels (str) of every row."""
        check_is_fitted(self, "model_")
        return self.model_.predict(self._pooled(view))

    def evaluate(self, test: EmbeddingSet) -> UtilityScore:
        """Accuracy on ``test`` with a 95% CI (speaker-clustered bootstrap + Clopper-Pearson floor)."""
        check_is_fitted(self, "model_")
        y = self._targets(test)
        hits = (self.predict(test) == y).astype(np.int64)
        clusters = bootstrap_clusters(test)
        ((low, high),) = proportion_ci(hits, clusters, n_boot=self.n_boot, seed=self.seed)
        accuracy = float(hits.mean())
        extra = {"n_classes": int(self.classes_.size), "chance": 1.0 / self.classes_.size,
                 "majority_baseline": float(np.mean(y == self._majority)),
                 "n_test_unseen_class": int(np.count_nonzero(~np.isin(y, self.classes_)))}
        return UtilityScore(self.task.name, "accuracy", accuracy, [float(low), float(high)], accuracy, extra,
                            int(hits.size), int(np.unique(clusters).size), 1 - hits,
                            np.ones(hits.size, dtype=np.int64), clusters, list(test.utt_ids),
                            budget=dict(self.budget_), row_labels=np.asarray(y).astype(str),
                            n_boot=int(self.n_boot), seed=int(self.seed))


# ============================================================================ retained, measure


class Retained(tuple):
    """``(value, ci95)`` of :func:`retained`, unpackable as a pair, plus ``reason`` (why value is None, else None)."""

    def __new__(cls, value: float | None, ci95: list[float] | None, reason: str | None = None) -> "Retained":
        self = super().__new__(cls, (value, ci95))
        self.reason = reason
        return self

    def __getnewargs__(self) -> tuple:
        return (self[0], self[1], self.reason)

    @property
    def value(self) -> float | None:
        return self[0]

    @property
    def ci95(self) -> list[float] | None:
        return self[1]

    def to_dict(self) -> dict:
        return {"retained": self.value, "retained_ci95": self.ci95, "retained_reason": self.reason}


class RetainedAboveChance(Retained):
    """``(value, ci95)`` of :func:`retained_above_chance`, plus ``reason``, the chance level ``chance`` and ``basis``.

    ``reason`` says why ``value`` is None, or why ``ci95`` alone is (no finite bound); else None.
    """

    def __new__(cls, value: float | None, ci95: list[float] | None, reason: str | None = None,
                chance: float | None = None, basis: str = "") -> "RetainedAboveChance":
        self = super().__new__(cls, value, ci95, reason)
        self.chance, self.basis = chance, basis
        return self

    def __getnewargs__(self) -> tuple:
        return (self[0], self[1], self.reason, self.chance, self.basis)

    def to_dict(self) -> dict:
        return {"retained_above_chance": self.value, "retained_above_chance_ci95": self.ci95,
                "retained_above_chance_reason": self.reason, "utility_chance": self.chance,
                "utility_chance_basis": self.basis}


def _correct_counts(score: UtilityScore) -> tuple[int, int]:
    """``(k, n)`` of the score on the accuracy scale: correct units ``n - min(errors, n)`` out of ``n``."""
    n = int(np.sum(score.row_lengths))
    return n - min(int(np.sum(score.row_errors)), n), n


def _check_paired(defended: UtilityScore, undefended: UtilityScore, what: str) -> None:
    """Raise ValueError unless the two scores are one task on the same test rows (ids, speakers, lengths, labels)."""
    if defended.task != undefended.task or defended.metric != undefended.metric:
        raise ValueError(f"{what}: scores of different tasks ({defended.task!r} vs {undefended.task!r})")
    if list(defended.utt_ids) != list(undefended.utt_ids):
        raise ValueError(f"{what}: the scores are on different test rows ({len(defended.utt_ids)} vs "
                         f"{len(undefended.utt_ids)} utterances, or another order); a paired comparison needs the same")
    labels = (defended.row_labels, undefended.row_labels)
    if not (np.array_equal(np.asarray(defended.clusters).astype(str), np.asarray(undefended.clusters).astype(str))
            and np.array_equal(defended.row_lengths, undefended.row_lengths)
            and (any(x is None for x in labels) or np.array_equal(np.asarray(labels[0]).astype(str),
                                                  np.asarray(labels[1]).astype(str)))):
        raise ValueError(f"{what}: the scores have the same utt_ids but different speakers, reference lengths or "
                         "labels")


def utility_chance(score: UtilityScore) -> tuple[float | None, str]:
    """The task's chance level ``b`` on the accuracy scale, with the basis in words (or None and why not).

    * ``cer`` (ctc probe): ``b = 0``. The trivial output is the empty hypothesis (all blanks, what
      a CTC head emits when it has learnt nothing): every reference character is a deletion, CER
      exactly 1, accuracy scale ``max(0, 1 - 1) = 0``. A constant string tuned to the test
      sentences, or garbage that aligns with some characters by luck, can score a little above 0,
      but no fixed rule gives that level, so it is not subtracted: for this task the above-chance
      ratio equals the raw one and discounts nothing.
    * ``accuracy`` (classification probe): the majority-class rate of the test labels, the best
      score any answer that ignores the input gets on these rows. It is at least ``1/k`` for
      ``k`` test classes, so it never credits a defense with more utility above chance than the
      uniform-guess level would. None when the score carries no labels (``row_labels``).
    """
    if score.metric == "cer":
        return 0.0, "empty hypothesis: CER 1, accuracy scale 0"
    if score.row_labels is None:
        return None, f"the {score.task} score records no test labels, so its chance level is unknown"
    _, counts = np.unique(np.asarray(score.row_labels).astype(str), return_counts=True)
    return float(counts.max() / counts.sum()), "majority-class rate of the test labels"


def _chance_of_weights(score: UtilityScore) -> Callable[[np.ndarray], float]:
    """``b(w)``: :func:`utility_chance` on rows weighted by ``w`` (a bootstrap resample's multiplicities)."""
    if score.metric == "cer":
        return lambda w: 0.0
    _, code = np.unique(np.asarray(score.row_labels).astype(str), return_inverse=True)
    onehot = np.eye(int(code.max()) + 1)[code]
    return lambda w: float(np.max(w @ onehot) / np.sum(w))


def _ratio_bounds(defended: UtilityScore, undefended: UtilityScore, chance: float) -> tuple[float, float] | None:
    """Conservative bounds of ``(d - b) / (u - b)`` over the two Clopper-Pearson intervals; None if unbounded."""
    dl, dh = clopper_pearson(*_correct_counts(defended))
    ul, uh = clopper_pearson(*_correct_counts(undefended))
    if ul - chance <= 0:
        return None
    corners = [(d - chance) / (u - chance) for d in (dl, dh) for u in (ul, uh)]
    return min(corners), max(corners)


def _paired_ci(defended: UtilityScore, undefended: UtilityScore, value: float, *, above_chance: bool, n_boot: int,
               seed: int) -> list[float] | None:
    """95% CI of ``(d - b) / (u - b)`` (``b = 0`` unless ``above_chance``) by a paired speaker bootstrap.

    Each resample draws test speakers with replacement (:func:`audit.metrics.leakage_ci`) and
    recomputes both accuracy scales, and with ``above_chance`` the chance level, on the same
    rows, so the variation the two scores share cancels. A zero-width interval (identical per-row
    outcomes, or a single test speaker) is united with :func:`_ratio_bounds`; None when those
    are unbounded (the undefended score's lower Clopper-Pearson bound at or below chance).
    """
    idx, n_clusters, min_distinct = _clusters(undefended.clusters)
    n = np.asarray(undefended.row_lengths, dtype=np.float64)
    e_def = np.asarray(defended.row_errors, dtype=np.float64)
    e_und = np.asarray(undefended.row_errors, dtype=np.float64)
    chance_of = _chance_of_weights(undefended) if above_chance else (lambda w: 0.0)

    def stat(counts: np.ndarray) -> float:
        w = counts[idx]
        total = float(w @ n)
        if total <= 0:
            return math.nan
        b = chance_of(w)
        acc_u = max(0.0, 1.0 - float(w @ e_und) / total) - b
        return (max(0.0, 1.0 - float(w @ e_def) / total) - b) / acc_u if acc_u > 0 else math.nan

    try:
        ((low, high),) = leakage_ci(stat, n_clusters, n_boot=n_boot, seed=seed, min_distinct=min_distinct)
    except ValueError:  # the ratio undefined on most resamples: fall back on the binomial bounds alone
        low = high = value
    if not high - low > 1e-12:
        bounds = _ratio_bounds(defended, undefended, utility_chance(undefended)[0] if above_chance else 0.0)
        if bounds is None:
            return None
        low, high = min(low, bounds[0]), max(high, bounds[1])
    return [float(low), float(high)]


def retained(defended: UtilityScore, undefended: UtilityScore, *, n_boot: int = 1000, seed: int = 0) -> Retained:
    """Share of the undefended utility a defense keeps: ``defended.accuracy_scale / undefended.accuracy_scale``.

    The raw ratio: a defense that drops a classifier to its chance level still "retains" chance /
    undefended of it; :func:`retained_above_chance` is the companion that does not credit that.
    The 95% CI is a paired speaker bootstrap (:func:`_paired_ci`): each resample draws test
    speakers with replacement and recomputes both accuracy scales on the same rows, so the
    variation the two scores share cancels. When that interval is zero-width (identical per-row
    outcomes, or a single test speaker), it is united with the conservative ratio bounds of the
    two Clopper-Pearson intervals, ``[lo_d / hi_u, hi_d / lo_u]`` (correct units out of reference
    units on the accuracy scale), which contain the point estimate and have positive width.

    Returns
    -------
    Retained
        ``(value, ci95)``; both None, with ``reason`` saying why, when the undefended accuracy
        scale is 0 (CER >= 1 or accuracy 0): a ratio to nothing is undefined, and reporting it
        as 0 or infinity would misstate what the defense did.

    Raises
    ------
    ValueError
        The two scores are not on the same task or the same test rows (``utt_ids``, in order, and
        their speakers, reference lengths and labels).
    """
    _check_paired(defended, undefended, "retained")
    base = float(undefended.accuracy_scale)
    if base <= 0:
        return Retained(None, None, f"the undefended {undefended.task} probe scores 0 on the accuracy scale "
                                    f"({undefended.metric} {undefended.value:.3f}): retained utility is undefined")
    value = float(defended.accuracy_scale) / base
    return Retained(value, _paired_ci(defended, undefended, value, above_chance=False, n_boot=n_boot, seed=seed))


def retained_above_chance(defended: UtilityScore, undefended: UtilityScore, *, n_boot: int = 1000,
                          seed: int = 0) -> RetainedAboveChance:
    """Share of the undefended utility above chance a defense keeps: ``(d - b) / (u - b)``.

    ``d`` and ``u`` are the two accuracy scales (as :func:`retained`), ``b`` the task's chance
    level on that scale (:func:`utility_chance`: the majority-class rate of the test labels for
    a classifier, 0 for the ctc probe's CER). 1 keeps all of it, 0 leaves the defended probe at
    chance, below 0 below chance. E.g. ``u = 0.9, d = 0.5, b = 0.5`` gives 0 where the raw ratio
    says 0.556. The 95% CI is the same paired speaker bootstrap as :func:`retained`'s, with ``b``
    recomputed on each resample's rows.

    Returns
    -------
    RetainedAboveChance
        ``(value, ci95)`` with ``chance`` (``b``) and ``basis``; value and CI None, with
        ``reason``, when ``u <= b`` (no utility above chance to retain) or ``b`` is unknown; CI
        alone None, with ``reason``, when it has no finite bound (see :func:`_paired_ci`).

    Raises
    ------
    ValueError
        As :func:`retained`.
    """
    _check_paired(defended, undefended, "retained_above_chance")
    chance, basis = utility_chance(undefended)
    if chance is None:
        return RetainedAboveChance(None, None, basis)
    base = float(undefended.accuracy_scale) - chance
    if base <= 1e-12:
        return RetainedAboveChance(
            None, None, f"the undefended {undefended.task} probe scores {undefended.accuracy_scale:.3f} on the "
                        f"accuracy scale, not above its chance level {chance:.3f} ({basis}): there is no utility "
                        "above chance to retain", chance, basis)
    value = (float(defended.accuracy_scale) - chance) / base
    ci = _paired_ci(defended, undefended, value, above_chance=True, n_boot=n_boot, seed=seed)
    reason = None if ci is not None else (
        "no finite 95% CI: the undefended score's Clopper-Pearson lower bound is at or below the chance level")
    return RetainedAboveChance(value, ci, reason, chance, basis)


def measure_utility(task: UtilityTask, train: EmbeddingSet, test: EmbeddingSet, settings: UtilitySettings,
                    seed: int, device: str = "cpu") -> UtilityScore:
    """Fit ``task``'s probe on ``train`` (utility-train rows of a view) and score it on ``test``.

    ``ctc``: :class:`CTCProbe` with the ``ctc_*`` settings, on ``device`` in float32; ``classification``:
    :class:`ClassificationProbe` with ``C_grid``. The score's ``budget`` records the fit (epochs
    used, ``n_train``, ``n_train_speakers``, ``fit_seconds``, ...); it and ``history`` appear in
    :meth:`UtilityScore.to_dict`.
    """
    if task.kind == "ctc":
        probe: Any = CTCProbe(hidden=settings.ctc_hidden, max_epochs=settings.ctc_epochs,
                              patience=settings.ctc_patience, lr=settings.ctc_lr, batch_size=settings.ctc_batch_size,
                              seed=seed, n_boot=settings.n_boot, device=device)
    elif task.kind == "classification":
        probe = ClassificationProbe(task.column, C_grid=tuple(settings.C_grid), seed=seed, n_boot=settings.n_boot)
    else:
        raise ConfigError(f"utility={task.name!r}: unknown task kind {task.kind!r}")
    score = probe.fit(train).evaluate(test)
    score.budget = {**score.budget, "n_test": score.n_test, "n_test_speakers": score.n_test_speakers}
    return score


__all__ = ["CI_UNIT", "CTCProbe", "ClassificationProbe", "MIN_DISJOINT_SPEAKERS", "Retained", "RetainedAboveChance",
           "TASK_KINDS", "UtilityScore", "UtilitySettings", "UtilitySplit", "UtilityTask", "bootstrap_clusters",
           "char_edits", "ctc_score", "measure_utility", "rate_ci", "resolve_task", "retained",
           "retained_above_chance", "utility_chance", "utility_split"]

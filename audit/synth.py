"""Built-in synthetic multi-speaker corpus, spoken by libespeak-ng through ctypes.

The corpus lets the audit run with no downloaded data: each "speaker" is a distinct
eSpeak NG voice (accent + voice variant + pitch + speaking rate + pitch range). The text
comes from a seeded generator (:data:`TEMPLATES` filled from word lists) and no sentence
is spoken twice in a corpus, so no split can put the same text in training and test; the
sentences are dealt to voices at random within length strata, so neither content nor
length depends on the speaker. The result is deterministic: the same seed gives
byte-identical audio, so cached results stay valid across runs.

eSpeak NG keeps synthesis state (pitch flutter phase, gain control, noise generator) in
process-global C statics that survive ``espeak_Terminate``, so an utterance would depend
on everything synthesised before it in the process. To make :func:`synthesize` a pure
function, every call loads a private copy of the library afresh, seeds its noise
generator, synthesises, and unloads it again (a few milliseconds); a lock serialises
calls because the library is not re-entrant.
"""

from __future__ import annotations

import _ctypes
import atexit
import csv
import ctypes
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import threading
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from audit.audio import SAMPLE_RATE, resample, write_audio
from audit.cache import cache_root
from audit.errors import CorpusError

SUBJECTS = (
    "the old farmer", "my younger sister", "a tired nurse", "our new neighbour", "the quiet student",
    "his uncle", "the village baker", "a small child", "the pilot", "her best friend", "the mechanic",
    "a shy painter", "the ship's captain", "my grandmother", "the local doctor", "a young reporter",
    "the gardener", "the history teacher", "our landlord", "the fisherman", "a famous singer",
    "the night guard", "my cousin", "the librarian", "a clever engineer", "the postman", "the mayor",
    "an elderly tourist", "the football coach", "a nervous waiter", "the shopkeeper", "my father",
    "her aunt", "the chef", "a retired sailor", "the tailor", "the bus driver", "a curious scientist",
    "the twins", "our guests",
)
# (past tense, base form, object)
ACTIONS = (
    ("found", "find", "an old map"), ("lost", "lose", "a silver key"),
    ("painted", "paint", "the garden fence"), ("repaired", "repair", "a broken bicycle"),
    ("bought", "buy", "a basket of apples"), ("sold", "sell", "the wooden rocking chair"),
    ("carried", "carry", "a heavy suitcase"), ("cleaned", "clean", "the dusty windows"),
    ("baked", "bake", "a lemon cake"), ("read", "read", "a long letter"),
    ("wrote", "write", "a short poem"), ("hid", "hide", "the birthday presents"),
    ("opened", "open", "a mysterious parcel"), ("watched", "watch", "the fireworks"),
    ("fed", "feed", "the hungry ducks"), ("planted", "plant", "a row of tulips"),
    ("borrowed", "borrow", "a long ladder"), ("dropped", "drop", "a jar of honey"),
    ("photographed", "photograph", "the old lighthouse"), ("counted", "count", "the empty crates"),
    ("wrapped", "wrap", "a fragile vase"), ("polished", "polish", "the brass door handles"),
    ("ordered", "order", "a bowl of soup"), ("collected", "collect", "some pretty seashells"),
    ("studied", "study", "an ancient coin"), ("washed", "wash", "the muddy boots"),
    ("chased", "chase", "a runaway goat"), ("tuned", "tune", "the old piano"),
    ("packed", "pack", "a picnic basket"), ("sketched", "sketch", "the castle walls"),
    ("returned", "return", "a library book"), ("mended", "mend", "a torn jacket"),
    ("rescued", "rescue", "a frightened kitten"), ("delivered", "deliver", "a bunch of flowers"),
    ("moved", "move", "the heavy bookcase"), ("tasted", "taste", "the strawberry jam"),
    ("sharpened", "sharpen", "the kitchen knives"), ("noticed", "notice", "a strange light"),
    ("forgot", "forget", "the shopping list"), ("grabbed", "grab", "a warm blanket"),
    ("heard", "hear", "a distant bell"), ("left", "leave", "an umbrella"),
    ("caught", "catch", "a large fish"), ("fixed", "fix", "the leaking tap"),
    ("brought", "bring", "some fresh bread"), ("chose", "choose", "a blue scarf"),
    ("folded", "fold", "the clean towels"), ("locked", "lock", "the back door"),
    ("followed", "follow", "a narrow path"), ("tidied", "tidy", "the messy cupboard"),
)
PLACES = (
    "near the harbour", "behind the library", "in the garden", "at the market", "by the river",
    "on the train", "outside the bakery", "in the attic", "at the station", "beside the old church",
    "in the village square", "on the beach", "at the edge of the forest", "in the kitchen",
    "under the bridge", "at the farm", "in the school hall", "on the balcony", "near the castle",
    "in the back yard", "at the museum", "on the hillside", "by the lake", "in the cellar",
    "outside the town hall", "in the car park", "on the ferry", "at the bus stop", "in the workshop",
    "across the street",
)
PAST_TIMES = (
    "yesterday", "last night", "this morning", "on Sunday", "before dawn", "after lunch", "last winter",
    "on Friday evening", "during the storm", "early this morning", "late at night", "in the afternoon",
    "last summer", "the other day", "after the concert", "before breakfast", "at midnight", "on Monday",
    "during the holidays", "a week ago",
)
FUTURE_TIMES = (
    "tomorrow", "next week", "on Saturday", "after dinner", "tomorrow morning", "next spring",
    "before the weekend", "later today", "tonight", "next month",
)
FEELINGS = ("surprised", "delighted", "worried", "pleased", "puzzled", "annoyed", "amused", "relieved",
            "tired", "proud")
EVENTS = (
    "the storm arrived", "the guests came", "the shops closed", "the sun went down", "the train left",
    "the rain started", "anyone noticed", "the bell rang", "the lights went out", "the children woke up",
)
# Slots: {s}, {s2} subjects; {past}, {base}, {obj} one action; {place}; {time}; {future}; {feeling}; {event}.
TEMPLATES = (
    "{s} {past} {obj} {place} {time}.",
    "{time}, {s} {past} {obj} {place}.",
    "Did {s} really {base} {obj} {place}?",
    "{s} will {base} {obj} {future}.",
    "{s} wanted to {base} {obj} before {event}.",
    "{s} {past} {obj}, and {s2} looked {feeling}.",
    "I think {s} {past} {obj} {place}.",
    "Nobody knew why {s} {past} {obj} {time}.",
    "{s} {past} {obj} {place}, and everyone was {feeling}.",
    "When {event}, {s} {past} {obj} {place}.",
    "Please ask {s} to {base} {obj} {future}.",
    "It was {s} who {past} {obj} {place}.",
)
MIN_WORDS, MAX_WORDS = 6, 14
POOL_SIZE = 50_000

CORPUS_VERSION = "v2"
MANIFEST_COLUMNS = ("path", "speaker", "transcript", "duration_s", "utt_id",
                    "gender", "voice", "pitch", "rate", "range")

ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
PITCHES = (35, 42, 50, 58, 65)
RATES = (140, 155, 170, 185, 200)
PITCH_RANGES = (25, 40, 55, 70, 85)

PAD_SECONDS = 0.1
PEAK_LEVEL = 0.9
_TRIM_DB = -45.0
_FRAME_SECONDS = 0.01

# espeak-ng C API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_EE_OK = 0
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_LOCK = threading.Lock()
_PRIVATE_LIB: Path | None = None


@dataclass(frozen=True)
class VoiceSpec:
    """One synthetic speaker: an eSpeak NG voice name plus prosody settings.

    ``voice`` is ``<accent>+<variant>`` (e.g. ``en-us+f2``); ``pitch`` and
    ``pitch_range`` are eSpeak's 0-100 base-pitch and intonation-range settings
    (the manifest's ``pitch`` and ``range`` columns); ``rate`` is words per minute.
    """

    speaker: str
    gender: str
    voice: str
    pitch: int
    rate: int
    pitch_range: int


def to_transcript(sentence: str) -> str:
    """Upper-case transcript of a sentence: punctuation except apostrophes removed, spaces collapsed."""
    return " ".join(re.sub(r"[^A-Z' ]+", " ", sentence.upper()).split())


def sentence_pool(size: int, seed: int) -> list[str]:
    """The first ``size`` sentences of the seeded pool: distinct, in random order, from :data:`TEMPLATES`.

    Each sentence fills a random template with random words; one whose word count falls
    outside ``MIN_WORDS..MAX_WORDS``, or whose transcript repeats an earlier one, is
    redrawn. The pool for ``size`` is a prefix of the pool for a larger size (same seed).
    """
    _check_int("size", size, minimum=0, maximum=POOL_SIZE)
    _check_int("seed", seed)
    rng = random.Random(f"speech-audit-sentences-{seed}")
    pool: list[str] = []
    seen: set[str] = set()
    while len(pool) < size:
        past, base, obj = rng.choice(ACTIONS)
        sentence = rng.choice(TEMPLATES).format(
            s=rng.choice(SUBJECTS), s2=rng.choice(SUBJECTS), past=past, base=base, obj=obj,
            place=rng.choice(PLACES), time=rng.choice(PAST_TIMES), future=rng.choice(FUTURE_TIMES),
            feeling=rng.choice(FEELINGS), event=rng.choice(EVENTS))
        sentence = sentence[0].upper() + sentence[1:]
        transcript = to_transcript(sentence)
        if MIN_WORDS <= len(transcript.split()) <= MAX_WORDS and transcript not in seen:
            seen.add(transcript)
            pool.append(sentence)
    return pool


def sentence_plan(n_voices: int, n_sentences: int, seed: int) -> list[list[str]]:
    """Sentences per voice: ``n_voices * n_sentences`` distinct pool sentences, none shared.

    The drawn sentences are sorted by length (letters) into ``n_sentences`` strata of
    ``n_voices`` each, and each stratum is dealt to the voices in a seeded random order, so
    every voice gets one sentence of each length stratum and no voice gets systematically
    longer text. Each voice's list is then shuffled, so position carries no length either.
    """
    _check_int("n_voices", n_voices, minimum=1)
    _check_int("n_sentences", n_sentences, minimum=1)
    if n_voices * n_sentences > POOL_SIZE:
        raise CorpusError(f"n_sentences={n_sentences}: must be at most {POOL_SIZE // n_voices} for "
                          f"{n_voices} voices (the pool holds {POOL_SIZE} distinct sentences, none reused)")
    drawn = sentence_pool(n_voices * n_sentences, seed)
    drawn.sort(key=lambda text: (sum(c.isalpha() for c in text), text))
    rng = random.Random(f"speech-audit-plan-{seed}")
    plan: list[list[str]] = [[] for _ in range(n_voices)]
    for start in range(0, len(drawn), n_voices):
        stratum = drawn[start:start + n_voices]
        rng.shuffle(stratum)
        for sentences, sentence in zip(plan, stratum):
            sentences.append(sentence)
    for sentences in plan:
        rng.shuffle(sentences)
    return plan


def voice_grid(n_voices: int, seed: int) -> list[VoiceSpec]:
    """Draw ``n_voices`` distinct voices, alternating genders, deterministically from ``seed``.

    Variants cycle within each gender so all are used before any repeats. A variant's
    first pitch level is random and each repeat takes the level farthest from those it
    already used, so no two speakers are near-copies; accent, rate and range are drawn at
    random, redrawing any combination already taken. The list for ``n`` voices is a
    prefix of the list for more voices with the same seed.
    """
    _check_int("n_voices", n_voices, minimum=2)
    _check_int("seed", seed)
    per_gender = len(ACCENTS) * len(FEMALE_VARIANTS) * len(PITCHES) * len(RATES) * len(PITCH_RANGES)
    if n_voices > 2 * per_gender:
        raise CorpusError(f"n_voices={n_voices}: must be at most {2 * per_gender} (distinct voices available)")
    rng = random.Random(f"speech-audit-voices-{seed}")
    variants = {"M": list(MALE_VARIANTS), "F": list(FEMALE_VARIANTS)}
    for names in variants.values():
        rng.shuffle(names)
    first = rng.choice("MF")
    counts = {"M": 0, "F": 0}
    pitches_used: dict[str, list[int]] = {}
    taken: set[tuple[str, int, int, int]] = set()
    voices: list[VoiceSpec] = []
    for index in range(n_voices):
        gender = first if index % 2 == 0 else ("F" if first == "M" else "M")
        names = variants[gender]
        variant = names[counts[gender] % len(names)]
        counts[gender] += 1
        used = pitches_used.setdefault(variant, [])
        pitch = _farthest_pitch(used[-(len(PITCHES) - 1):], rng)
        used.append(pitch)
        while True:
            combo = (f"{rng.choice(ACCENTS)}+{variant}", pitch, rng.choice(RATES), rng.choice(PITCH_RANGES))
            if combo not in taken:
                break
        taken.add(combo)
        voices.append(VoiceSpec(f"syn{index:02d}", gender, *combo))
    return voices


def _farthest_pitch(used: list[int], rng: random.Random) -> int:
    """A pitch level as far as possible from ``used`` (ties broken at random)."""
    def gap(p: int) -> int:
        return min((abs(p - u) for u in used), default=0)

    best = max(map(gap, PITCHES))
    return rng.choice([p for p in PITCHES if gap(p) == best])


def synthesize(text: str, voice: VoiceSpec) -> np.ndarray:
    """Speak ``text`` with ``voice``: 16 kHz mono float32, silences trimmed to 0.1 s, peak 0.9.

    Deterministic: the same text and voice give the same samples whatever was
    synthesised before in the process.
    """
    if not text.strip():
        raise CorpusError("synthesize: text is empty")
    pcm, rate = _espeak(text, voice)
    wav = resample(pcm.astype(np.float32) / 32768.0, rate, SAMPLE_RATE)
    wav = _trim(wav, SAMPLE_RATE)
    peak = float(np.max(np.abs(wav)))
    if peak <= 0.0:
        raise CorpusError(f"synthesize: eSpeak NG produced silence for voice {voice.voice!r} and text {text!r}")
    return (wav * (PEAK_LEVEL / peak)).astype(np.float32)


def build_corpus(out_dir: str | Path, *, n_voices: int = 24, n_sentences: int = 20, seed: int = 0,
                 progress: bool = True) -> Path:
    """Synthesise a corpus into ``out_dir`` (``audio/<speaker>/<utt_id>.wav`` + ``manifest.csv``).

    Returns at once when ``out_dir`` already holds a corpus built with the same settings.
    The corpus is built in a temporary sibling folder and moved into place at the end, so
    an interrupted build never leaves a partial corpus behind. Torch runs single-threaded
    during the build: each resampling job is tiny, and thread hand-offs made it up to ten
    times slower on a busy two-core machine.
    """
    _check_int("n_voices", n_voices, minimum=2)
    _check_int("seed", seed)
    plan = sentence_plan(n_voices, n_sentences, seed)
    out_dir = Path(out_dir).expanduser()
    settings = _settings(n_voices, n_sentences, seed, plan)
    if _is_built(out_dir, settings):
        return out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise CorpusError(f"{out_dir}: exists and is not a folder; choose another corpus folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "settings.json").is_file():
        raise CorpusError(f"{out_dir}: folder is not empty and holds no synthetic corpus; refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _write_corpus(staging, settings, voice_grid(n_voices, seed), plan, progress)
        _move_into_place(staging, out_dir, settings)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def default_corpus_dir() -> Path:
    """Cache folder of built-in corpora: ``$SPEECH_AUDIT_CACHE/synthetic`` or ``~/.cache/speech-audit/synthetic``."""
    return cache_root() / "synthetic"


def ensure_default_corpus(*, seed: int = 0, progress: bool = True) -> Path:
    """Build (once) and return the default corpus, 24 voices x 20 sentences, for ``seed``."""
    _check_int("seed", seed)
    return build_corpus(default_corpus_dir() / f"{CORPUS_VERSION}-seed{seed}", seed=seed, progress=progress)


def _check_int(name: str, value: object, *, minimum: int | None = None, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CorpusError(f"{name}={value!r}: must be an integer")
    if minimum is not None and value < minimum:
        raise CorpusError(f"{name}={value}: must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise CorpusError(f"{name}={value}: must be at most {maximum}")


def _settings(n_voices: int, n_sentences: int, seed: int, plan: list[list[str]]) -> dict[str, object]:
    """Build settings; ``content_sha1`` covers the exact sentences spoken and the voice grid."""
    grid = [ACCENTS, MALE_VARIANTS, FEMALE_VARIANTS, PITCHES, RATES, PITCH_RANGES, PAD_SECONDS, PEAK_LEVEL]
    content = json.dumps([plan, grid]).encode("utf-8")
    return {
        "version": CORPUS_VERSION,
        "n_voices": n_voices,
        "n_sentences": n_sentences,
        "seed": seed,
        "sample_rate": SAMPLE_RATE,
        "content_sha1": hashlib.sha1(content).hexdigest(),
        "espeakng_loader": _loader_version(),
    }


def _loader_version() -> str:
    try:
        return metadata.version("espeakng-loader")
    except metadata.PackageNotFoundError:
        return "missing"


def _is_built(folder: Path, settings: dict[str, object]) -> bool:
    try:
        found = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return found == settings and (folder / "manifest.csv").is_file()


def _write_corpus(folder: Path, settings: dict[str, object], voices: list[VoiceSpec], plan: list[list[str]],
                  progress: bool) -> None:
    rows = []
    with tqdm(total=sum(map(len, plan)), desc="Synthesising corpus", unit="utt", disable=not progress) as bar:
        for voice, sentences in zip(voices, plan):
            (folder / "audio" / voice.speaker).mkdir(parents=True)
            for k, sentence in enumerate(sentences):
                utt_id = f"{voice.speaker}_s{k:02d}"
                rel = f"audio/{voice.speaker}/{utt_id}.wav"
                wav = synthesize(sentence, voice)
                write_audio(folder / rel, wav, SAMPLE_RATE)
                rows.append({
                    "path": rel, "speaker": voice.speaker, "transcript": to_transcript(sentence),
                    "duration_s": f"{len(wav) / SAMPLE_RATE:.4f}", "utt_id": utt_id, "gender": voice.gender,
                    "voice": voice.voice, "pitch": voice.pitch, "rate": voice.rate, "range": voice.pitch_range,
                })
                bar.update(1)
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def _move_into_place(staging: Path, out_dir: Path, settings: dict[str, object]) -> None:
    """Rename the finished build onto ``out_dir``; a stale corpus there is moved aside and deleted."""
    stale = None
    if out_dir.is_dir() and any(out_dir.iterdir()):
        stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stale-", dir=out_dir.parent))
        os.replace(out_dir, stale / "old")
    try:
        os.replace(staging, out_dir)
    except OSError as exc:
        if not _is_built(out_dir, settings):
            raise CorpusError(f"{out_dir}: cannot move the finished corpus into place ({exc})") from exc
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


def _private_library() -> Path:
    """Path of a process-private copy of libespeak-ng, so no other loader shares its state."""
    global _PRIVATE_LIB
    if _PRIVATE_LIB is None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise CorpusError("the synthetic corpus needs the 'espeakng-loader' package (pip install espeakng-loader)") from exc
        source = Path(espeakng_loader.get_library_path())
        if not source.is_file():
            raise CorpusError(f"{source}: libespeak-ng from espeakng-loader not found; reinstall espeakng-loader")
        folder = Path(tempfile.mkdtemp(prefix="speech-audit-espeak-"))
        atexit.register(shutil.rmtree, folder, True)
        target = folder / f"libespeak-ng-private{source.suffix}"
        shutil.copyfile(source, target)
        _PRIVATE_LIB = target
    return _PRIVATE_LIB


def _unload(lib: ctypes.CDLL) -> None:
    """Unload ``lib`` so the next load starts from fresh static state."""
    close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary")
    close(lib._handle)


def _data_path() -> bytes:
    import espeakng_loader

    return str(espeakng_loader.get_data_path()).encode()


def _espeak(text: str, voice: VoiceSpec) -> tuple[np.ndarray, int]:
    """Synthesise with a freshly loaded libespeak-ng; return int16 samples and their rate."""
    chunks: list[np.ndarray] = []

    def collect(wav: ctypes.Array, n_samples: int, _events: int | None) -> int:
        if n_samples > 0 and wav:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0

    callback = _SynthCallback(collect)
    encoded = text.encode("utf-8")
    noise_seed = zlib.crc32(f"{voice.voice}|{voice.pitch}|{voice.rate}|{voice.pitch_range}|{text}".encode())
    with _LOCK:
        try:
            lib = ctypes.CDLL(str(_private_library()))
        except OSError as exc:
            raise CorpusError(f"cannot load libespeak-ng: {exc}") from exc
        try:
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                         ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, _data_path(), _INITIALIZE_DONT_EXIT)
            if rate <= 0:
                raise CorpusError(f"libespeak-ng failed to initialise (data folder {_data_path().decode()})")
            try:
                lib.espeak_SetSynthCallback(callback)
                if lib.espeak_SetVoiceByName(voice.voice.encode()) != _EE_OK:
                    raise CorpusError(f"eSpeak NG rejected voice {voice.voice!r} (speaker {voice.speaker})")
                for param, value, name in ((_PARAM_RATE, voice.rate, "rate"), (_PARAM_PITCH, voice.pitch, "pitch"),
                                           (_PARAM_RANGE, voice.pitch_range, "range")):
                    if lib.espeak_SetParameter(param, value, 0) != _EE_OK:
                        raise CorpusError(f"eSpeak NG rejected {name}={value} (speaker {voice.speaker})")
                lib.espeak_ng_SetRandSeed(noise_seed)
                status = lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                if status != _EE_OK or lib.espeak_Synchronize() != _EE_OK:
                    raise CorpusError(f"eSpeak NG failed to synthesise {text!r} (status {status})")
            finally:
                lib.espeak_Terminate()
        finally:
            _unload(lib)
    if not chunks:
        raise CorpusError(f"eSpeak NG produced no audio for {text!r} with voice {voice.voice!r}")
    return np.concatenate(chunks), int(rate)


def _trim(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Cut leading/trailing silence (frames 45 dB below the loudest) down to 0.1 s each side."""
    frame = int(sample_rate * _FRAME_SECONDS)
    n_frames = len(wav) // frame
    if n_frames == 0:
        return wav
    rms = np.sqrt(np.mean(wav[: n_frames * frame].reshape(n_frames, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (_TRIM_DB / 20))
    if loud.size == 0:
        return wav
    pad = int(sample_rate * PAD_SECONDS)
    start, stop = loud[0] * frame, min(len(wav), (loud[-1] + 1) * frame)
    head = np.zeros(max(0, pad - start), dtype=np.float32)
    tail = np.zeros(max(0, stop + pad - len(wav)), dtype=np.float32)
    return np.concatenate([head, wav[max(0, start - pad): stop + pad], tail]).astype(np.float32)

"""Built-in synthetic multi-speaker corpus, spoken by libespeak-ng through ctypes.

The corpus lets the audit run with no downloaded data: each "speaker" is a distinct
eSpeak NG voice (accent + voice variant + pitch + speaking rate + pitch range), each
speaking a seeded subset of :data:`SENTENCES`. The result is deterministic: the same
seed gives byte-identical audio, so cached results stay valid across runs.

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
from audit.errors import CorpusError

SENTENCES: list[str] = [
    "The old ferry crossed the river just before the storm arrived.",
    "Please remember to water the tomatoes while I am away.",
    "A small dog barked at the mail carrier every single morning.",
    "We watched the fireworks from the roof of the library.",
    "Her grandmother kept a jar of buttons on the kitchen shelf.",
    "The train was delayed because of ice on the northern tracks.",
    "Nobody expected the quiet student to win the debate.",
    "Fresh bread smells wonderful when it comes straight out of the oven.",
    "The museum closes early on public holidays, so plan ahead.",
    "He painted the fence bright yellow without asking anyone.",
    "Thick fog rolled across the harbour and hid the lighthouse.",
    "My brother prefers tea, but I usually drink coffee.",
    "They found an old map hidden behind the bookcase.",
    "The children built a sandcastle that survived until the evening tide.",
    "Could you turn the music down a little, please?",
    "The mechanic said the brakes would need replacing soon.",
    "Wild strawberries grow along the edge of the forest path.",
    "She practised the violin for hours before the audition.",
    "We ran out of milk, so breakfast was rather plain.",
    "The committee will announce its decision at the end of the week.",
    "A gentle breeze carried the scent of pine through the valley.",
    "Don't forget to lock the back door before you leave.",
    "The pilot welcomed everyone aboard and described the route.",
    "Several owls were hooting in the tall trees behind the barn.",
    "His handwriting was so messy that nobody could read the note.",
    "The bakery on the corner sells the best lemon cake in town.",
    "Our neighbours are repainting their house a pale shade of blue.",
    "The river flooded the lower fields after days of heavy rain.",
    "I left my umbrella on the bus again this afternoon.",
    "The astronomer pointed her telescope toward a faint distant galaxy.",
    "Every autumn the maple leaves turn red and gold.",
    "The farmer loaded the wagon with pumpkins for the market.",
    "Quiet voices drifted up from the cafe below our window.",
    "The referee blew the whistle and the crowd fell silent.",
    "She wrapped the fragile vase in newspaper and soft blankets.",
    "Birds gathered on the wire as the sun began to set.",
    "The new bridge will shorten the journey across the bay.",
    "He whistled a cheerful tune while sweeping the workshop floor.",
    "The soup needs more salt and a little black pepper.",
    "We hiked to the top of the hill and admired the view.",
    "The teacher asked the class to describe their favourite season.",
    "A sudden gust of wind blew the papers off the desk.",
    "The castle walls were covered in ivy and moss.",
    "It's hard to concentrate when the neighbours are drilling.",
    "The kettle whistled loudly and woke the cat on the sofa.",
    "Travellers waited patiently while the guard checked their tickets.",
    "The garden looks lovely after the roses have been pruned.",
    "Thunder rumbled in the distance as we packed up the picnic.",
    "The shopkeeper wrapped our sandwiches in brown paper.",
    "Nobody knew who had left the flowers on the doorstep.",
]

CORPUS_VERSION = "v1"
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
    _check_int("n_sentences", n_sentences, minimum=1, maximum=len(SENTENCES))
    _check_int("seed", seed)
    out_dir = Path(out_dir).expanduser()
    settings = _settings(n_voices, n_sentences, seed)
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
        _write_corpus(staging, settings, voice_grid(n_voices, seed), progress)
        _move_into_place(staging, out_dir, settings)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def default_corpus_dir() -> Path:
    """Cache folder of built-in corpora: ``$SPEECH_AUDIT_CACHE/synthetic`` or ``~/.cache/speech-audit/synthetic``."""
    root = os.environ.get("SPEECH_AUDIT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "speech-audit"
    return base / "synthetic"


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
        raise CorpusError(f"{name}={value}: must be at most {maximum} (the number of built-in sentences)")


def _settings(n_voices: int, n_sentences: int, seed: int) -> dict[str, object]:
    grid = [ACCENTS, MALE_VARIANTS, FEMALE_VARIANTS, PITCHES, RATES, PITCH_RANGES, PAD_SECONDS, PEAK_LEVEL]
    content = json.dumps([SENTENCES, grid]).encode("utf-8")
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


def _sentence_plan(n_voices: int, n_sentences: int, seed: int) -> list[list[int]]:
    """Sentence indices per voice: cyclic windows over a seeded order, evenly spread."""
    order = list(range(len(SENTENCES)))
    random.Random(f"speech-audit-sentences-{seed}").shuffle(order)
    plan = []
    for v in range(n_voices):
        start = (v * n_sentences) % len(order)
        plan.append([order[(start + k) % len(order)] for k in range(n_sentences)])
    return plan


def _write_corpus(folder: Path, settings: dict[str, object], voices: list[VoiceSpec], progress: bool) -> None:
    plan = _sentence_plan(len(voices), int(settings["n_sentences"]), int(settings["seed"]))
    rows = []
    with tqdm(total=sum(map(len, plan)), desc="Synthesising corpus", unit="utt", disable=not progress) as bar:
        for voice, indices in zip(voices, plan):
            (folder / "audio" / voice.speaker).mkdir(parents=True)
            for idx in indices:
                utt_id = f"{voice.speaker}_s{idx:02d}"
                rel = f"audio/{voice.speaker}/{utt_id}.wav"
                wav = synthesize(SENTENCES[idx], voice)
                write_audio(folder / rel, wav, SAMPLE_RATE)
                rows.append({
                    "path": rel, "speaker": voice.speaker, "transcript": to_transcript(SENTENCES[idx]),
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

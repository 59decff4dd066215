"""Shared fixtures: generated audio corpora (no external data) and the shared-data location."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, settings

# Tests use tiny models: one intra-op thread is faster and reproducible when the 2 cores are shared.
torch.set_num_threads(1)

# Property tests: a small, derandomised profile in `make test` (fast, reproducible in CI); `make test-all`
# selects the thorough one (HYPOTHESIS_PROFILE=thorough).
settings.register_profile("fast", max_examples=20, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


def _drop_broken_lazy_modules() -> None:
    """Remove lazy modules whose ``__file__`` cannot be read (speechbrain's stub of its optional k2 integration).

    Hypothesis scans ``sys.modules`` for constants of local code (at collection and while
    generating) and reads every module's ``__file__``; on such a stub that read raises ImportError.
    """
    for name, module in list(sys.modules.items()):
        try:
            getattr(module, "__file__", None)
        except ImportError:
            del sys.modules[name]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Before hypothesis's own collection hook scans the modules the test files imported."""
    _drop_broken_lazy_modules()


@pytest.fixture(autouse=True)
def _no_broken_lazy_modules():
    """Before and after every test: a test that imported speechbrain may have added stubs."""
    _drop_broken_lazy_modules()
    yield
    _drop_broken_lazy_modules()

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_corpus(name: str) -> Path:
    """Path of a ../shared/data corpus, skipping the test when it is absent."""
    path = SHARED_DATA / name
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"shared data {path} not present")
    return path


def voice(f0: float, formant: float, seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    """A crude voiced sound: harmonics of ``f0`` shaped by one resonance, with jitter and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f = f0 * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(f) / sr
    wav = sum(np.sin(k * phase) / k * np.exp(-((k * f0 - formant) / 600.0) ** 2) for k in range(1, 30))
    wav = wav + 0.02 * rng.standard_normal(t.size)
    return (0.5 * wav / np.max(np.abs(wav))).astype(np.float32)


def write_tone_corpus(root: Path, *, n_speakers: int = 4, n_utts: int = 6, seconds: float = 1.0) -> Path:
    """A manifest corpus of ``n_speakers`` distinct synthetic voices, ``n_utts`` clips each."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(n_speakers):
        for u in range(n_utts):
            rel = f"audio/spk{s}_{u}.wav"
            wav = voice(90 + 35 * s, 500 + 400 * s, seconds + 0.1 * u, seed=100 * s + u)
            sf.write(root / rel, wav, 16000, subtype="PCM_16")
            rows.append({"path": rel, "speaker": f"spk{s}", "transcript": "HELLO WORLD",
                         "duration_s": f"{wav.size / 16000:.3f}", "gender": "F" if s % 2 else "M",
                         "digit": str(u % 3)})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def rounded_floats(node, digits: int = 12):
    """``node`` (nested dicts and lists) with floats to ``digits`` significant digits.

    For comparing two runs' results: pystoi's ESTOI differs from run to run in the 16th digit.
    """
    if isinstance(node, dict):
        return {k: rounded_floats(v, digits) for k, v in node.items()}
    if isinstance(node, list):
        return [rounded_floats(v, digits) for v in node]
    return float(f"{node:.{digits}g}") if isinstance(node, float) else node


def sine_wav(path: Path, seconds: float = 1.0, sr: int = 16000) -> Path:
    """A real ``seconds`` long 440 Hz sine WAV (PCM_16), folders created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), sr, subtype="PCM_16")
    return path


def plot_png(path: Path) -> Path:
    """A real small matplotlib PNG, folders created."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(3, 1.5), dpi=50)
    ax.plot(np.linspace(0, 1, 50), np.sin(np.linspace(0, 6, 50)))
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


@pytest.fixture
def tone_corpus(tmp_path: Path) -> Path:
    """Folder of a small generated manifest corpus (4 speakers x 6 clips)."""
    return write_tone_corpus(tmp_path / "corpus")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep every test's store and synthetic corpus out of the user's cache."""
    monkeypatch.setenv("SPEECH_AUDIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))

"""kill -9 during extraction, attacks and report writing, then rerun: the same results as an uninterrupted run.

Each killed run is a real process that SIGKILLs itself at the chosen point (a test-only wrapper
around one function; nothing in the product knows about it). The rerun reuses the store's
finished shards, and its ``results.json`` equals an uninterrupted run's apart from timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import rounded_floats, write_tone_corpus

pytestmark = pytest.mark.slow  # seven audits in fresh processes (~100 s): `make test-all`

ROOT = Path(__file__).resolve().parents[1]

#: Keys whose values are wall-clock measurements or depend on what a process found in the cache.
VOLATILE = {"wall_seconds", "attack_seconds", "fit_seconds", "seconds", "created", "cache_hit", "shards_computed",
            "model_seconds", "audio_seconds", "argv", "invocation", "shards_per_rank", "path", "out", "cache_dir",
            "timeline"}

# Kill points: (module, attribute, which call kills the process).
KILL_POINTS = {
    "extraction": ("audit.store", "_extract_shard", 2),
    "attacks": ("attacks.speaker_id", "attack_speaker_id", 2),
    "report": ("audit.report", "render_html", 1),
}


def _args(corpus: Path, cache: Path, out: Path) -> list[str]:
    return ["run", "--model", "tiny-random-wav2vec2", "--corpus", str(corpus), "--quick", "--layers", "0,1,2",
            "--no-progress", "--cache-dir", str(cache), "--out", str(out), "--seed", "3"]


#: Utterances per store shard in these runs (small, so a kill can fall between finished shards).
SHARD_UTTS = 8


def _run(args: list[str], kill: tuple[str, str, int] | None = None, env: dict | None = None) -> int:
    """Run the CLI in a fresh process (small shards); with ``kill``, that process SIGKILLs itself at the point."""
    prelude = textwrap.dedent(f"""
        from audit.store import EmbeddingStore
        build = EmbeddingStore.build.__func__
        EmbeddingStore.build = classmethod(
            lambda cls, *a, **k: build(cls, *a, **{{**k, "max_shard_utts": {SHARD_UTTS}}}))
    """)
    if kill is not None:
        module, attr, nth = kill
        prelude += textwrap.dedent(f"""
            import dataclasses, importlib, os, signal
            mod = importlib.import_module({module!r})
            real, calls = getattr(mod, {attr!r}), []
            def killing(*a, **k):
                calls.append(1)
                if len(calls) == {nth}:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*a, **k)
            setattr(mod, {attr!r}, killing)
            if hasattr(mod, "FAMILY") and mod.FAMILY.attack is real:  # the registry entry holds the function
                import attacks
                mod.FAMILY = dataclasses.replace(mod.FAMILY, attack=killing)
                attacks.BUILTIN = tuple(mod.FAMILY if f.name == mod.FAMILY.name else f for f in attacks.BUILTIN)
        """)
    code = prelude + f"import sys\nfrom audit.cli import main\nsys.exit(main({args!r}))\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=600)
    return proc.returncode


def _stable(node):
    """``node`` without the volatile keys (timings, any ``*_seconds`` included; cache state; paths)."""
    if isinstance(node, dict):
        return {k: _stable(v) for k, v in node.items() if k not in VOLATILE and not k.endswith("_seconds")}
    if isinstance(node, list):
        return [_stable(v) for v in node]
    return node


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill9")
    corpus = write_tone_corpus(tmp / "c", n_speakers=6, n_utts=5, seconds=0.5)
    env = {"SPEECH_AUDIT_CACHE": str(tmp / "home")}
    assert _run(_args(corpus, tmp / "store", tmp / "r"), env=env) == 0
    return corpus, json.loads((tmp / "r" / "results.json").read_text()), env


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_run_killed_then_rerun_gives_the_uninterrupted_results(reference, tmp_path, point):
    corpus, expected, env = reference
    args = _args(corpus, tmp_path / "store", tmp_path / "r")
    assert _run(args, kill=KILL_POINTS[point], env=env) == -9
    finished = sorted((tmp_path / "store").glob("*/shards/*.npz"))
    if point == "extraction":
        assert len(finished) == 1  # the first shard was written before the kill
    if point == "report":
        json.loads((tmp_path / "r" / "results.json").read_text())  # complete: written atomically before the kill
        assert not (tmp_path / "r" / "report.html").exists()
    assert _run(args, env=env) == 0
    got = json.loads((tmp_path / "r" / "results.json").read_text())
    assert _stable(got) == _stable(expected)
    n_shards = -(-expected["corpus"]["n_utterances"] // SHARD_UTTS)
    assert got["store"]["shards_computed"] == (n_shards - 1 if point == "extraction" else 0)


def test_a_run_killed_in_its_jobs_resumes_the_finished_ones(reference, tmp_path):
    corpus, _, env = reference
    config = tmp_path / "jobs.toml"
    config.write_text(f'model = "tiny-random-wav2vec2"\ncorpus = "{corpus}"\nlayers = [0, 1, 2]\nseed = 3\n'
                      'attacks = ["speaker_id", "inversion"]\nworkers = 1\n'
                      '[speaker_id]\nattackers = ["logreg"]\nn_boot = 200\n'
                      '[inversion]\nlayers = ["leakiest", "last"]\nmax_epochs = 2\nn_eval = 4\nn_examples = 1\n'
                      'skip_judges = true\nn_boot = 200\n')

    def args(out: Path) -> list[str]:
        return ["run", "--config", str(config), "--no-progress", "--cache-dir", str(tmp_path / "store"),
                "--out", str(out)]

    assert _run(args(tmp_path / "ref"), env=env) == 0
    expected = json.loads((tmp_path / "ref" / "results.json").read_text())
    # SIGKILL as the second of the two inversion jobs is about to be kept: the first one is on disk
    assert _run(args(tmp_path / "r"), kill=("audit.job_cache", "atomic_save", 2), env=env) == -9
    assert len(list((tmp_path / "store" / "jobs").glob("*/*.pkl"))) == 1
    assert _run(args(tmp_path / "r"), env=env) == 0
    got = json.loads((tmp_path / "r" / "results.json").read_text())
    assert got["resumed_jobs"] == 1 and expected["resumed_jobs"] == 0
    assert not (tmp_path / "store" / "jobs").exists()
    assert rounded_floats(_stable(got["layers"])) == rounded_floats(_stable(expected["layers"]))

"""Finished jobs kept on disk: a run that dies midway resumes them, the cache refuses code, a changed input misses."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from audit.config import config_from_dict
from audit.job_cache import JobCache
from audit.pipeline import AuditPipeline
from audit.utility import UtilityScore
from tests.conftest import rounded_floats, write_tone_corpus
from tests.plugins import install_plugin


def job(families, store, corpus, run, x):
    """A stand-in job function (module level, as :func:`audit.jobs.run_jobs` needs)."""
    return x


def test_entries_round_trip_arrays_scalars_and_utility_scores(tmp_path: Path) -> None:
    cache = JobCache(tmp_path / "jobs" / "run")
    score = UtilityScore(task="ctc", metric="cer", value=0.2, ci95=[0.1, 0.3], accuracy_scale=0.8, extra={},
                         n_test=3, n_test_speakers=2, row_errors=np.array([1.0, 0.0, 2.0], np.float32),
                         row_lengths=np.array([5, 6, 7]), clusters=np.array(["a", "a", "b"]), utt_ids=["u", "v", "w"])
    value = ({"top1": np.float64(0.5), "ci95": [0.25, 0.75], "ok": np.bool_(True), "rows": np.arange(4)}, 1.5, score)
    key = cache.key(job, (1, "x"))
    assert cache.load(key) == (False, None)
    cache.save(key, value)
    hit, back = cache.load(key)
    assert hit and cache.hits_ == 1
    assert back[0]["top1"] == 0.5 and back[0]["rows"].tolist() == [0, 1, 2, 3] and back[1] == 1.5
    assert back[2].row_errors.dtype == np.float32 and back[2].clusters.tolist() == ["a", "a", "b"]
    assert back[2].value == 0.2 and back[2].utt_ids == ["u", "v", "w"]
    cache.clear()
    assert not (tmp_path / "jobs").exists()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_an_entry_that_would_run_code_is_refused_and_recomputed(tmp_path: Path) -> None:
    cache = JobCache(tmp_path / "run")
    key = cache.key(job, (1,))
    cache.root.mkdir(parents=True)
    (cache.root / f"{key}.pkl").write_bytes(pickle.dumps({"result": _Exploit()}))
    with pytest.warns(UserWarning, match="not allowed in a job cache entry"):
        assert cache.load(key) == (False, None)
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()


def test_keys_follow_the_function_the_arguments_and_the_run(tmp_path: Path) -> None:
    assert JobCache.key(job, (1,)) == JobCache.key(job, (1,)) != JobCache.key(job, (2,))
    assert JobCache.key(job, (1,)) != JobCache.key(test_keys_follow_the_function_the_arguments_and_the_run, (1,))
    roots = {JobCache.for_run(tmp_path, parts, [], None).root
             for parts in ({"seed": 0}, {"seed": 1}, {"seed": 0, "out_dir": "b"})}
    assert len(roots) == 3 and JobCache.for_run(tmp_path, {"seed": 0}, [], None).root in roots


KEYED_DEFENSE = '''
from dataclasses import dataclass

from audit.defense import Defense, DefenseFamily, DefenseSettings


@dataclass
class KeyedSettings(DefenseSettings):
    pass


class Keyed(Defense):
    def _fit(self, train):
        self.fit_done_ = True

    def _frames(self, frames, utt_id):
        return frames * 0.5


DEFENSE = DefenseFamily(name="keyed", settings=KeyedSettings, estimator=Keyed, description="halves frames")
'''


def test_the_run_key_follows_plugin_defense_sources_and_numeric_library_versions(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """A plugin defense edited, or a numeric library upgraded or removed, is another run: never a stale resume."""
    import audit.job_cache as job_cache
    from defenses import load_defenses

    root = install_plugin(tmp_path / "plugin", "keyed_defense", "speech_audit.defenses",
                          "keyed = keyed_defense:DEFENSE", {"keyed_defense": KEYED_DEFENSE})
    monkeypatch.syspath_prepend(str(root))
    assert "keyed" in load_defenses()

    def run_key() -> Path:
        return JobCache.for_run(tmp_path, {"seed": 0}, [], None).root

    first = run_key()
    assert run_key() == first
    (root / "keyed_defense.py").write_text(KEYED_DEFENSE.replace("frames * 0.5", "frames * 0.25"))
    edited = run_key()
    assert edited != first

    installed = job_cache.version
    assert set(job_cache.library_versions()) == set(job_cache.NUMERIC_LIBRARIES)
    assert job_cache.library_versions()["numpy"] == np.__version__
    monkeypatch.setattr(job_cache, "version", lambda name: "99.0" if name == "scipy" else installed(name))
    assert job_cache.library_versions()["scipy"] == "99.0" and run_key() not in (first, edited)

    def numpy_missing(name: str) -> str:
        if name == "numpy":
            raise job_cache.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(job_cache, "version", numpy_missing)
    assert job_cache.library_versions()["numpy"] == "absent" and run_key() not in (first, edited)
    monkeypatch.setattr(job_cache, "version", installed)
    assert run_key() == edited


def test_a_hit_needs_the_example_files_it_lists(tmp_path: Path) -> None:
    cache = JobCache(tmp_path / "run", out_dir=tmp_path / "out")
    key = cache.key(job, (1,))
    cache.save(key, ({"frame": {"files": ["examples/a.wav"]}}, 2.0))
    assert cache.load(key) == (False, None)  # the file is gone: the job runs again
    (tmp_path / "out" / "examples").mkdir(parents=True)
    (tmp_path / "out" / "examples" / "a.wav").write_bytes(b"RIFF")
    assert cache.load(key)[0]


def _config(tmp_path: Path, corpus: Path, out: str) -> dict:
    return {"model": "tiny-random-wav2vec2", "corpus": str(corpus), "cache_dir": str(tmp_path / "s"),
            "progress": False, "layers": [0, 1, 2], "attacks": ["speaker_id", "inversion"], "workers": 1,
            "out": str(tmp_path / out),
            "speaker_id": {"attackers": ["logreg"], "n_boot": 200},
            "inversion": {"max_epochs": 2, "n_eval": 4, "n_examples": 1, "skip_judges": True, "n_boot": 200,
                          "layers": ["leakiest", "last"]},
            "defense_attacks": ["speaker_id"], "utility": "classification:digit", "utility_probe": {"n_boot": 200},
            "defense": [{"name": "noise", "sigma": 1.0, "layers": ["leakiest"]},
                        {"name": "pca", "k": 4, "layers": ["leakiest"]}]}


def _timeless(node):
    """``node`` without timings, floats to 12 digits (:func:`tests.conftest.rounded_floats`)."""
    def drop(n):
        if isinstance(n, dict):
            return {k: drop(v) for k, v in n.items() if not k.endswith("seconds")}
        return [drop(v) for v in n] if isinstance(n, list) else n
    return rounded_floats(drop(node))


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: spawned workers, 42 s
def test_a_run_that_dies_in_its_jobs_resumes_them_and_gives_the_uninterrupted_results(tmp_path, monkeypatch, workers):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=6, n_utts=4)
    config = {**_config(tmp_path, corpus, "run"), "workers": workers}
    with pytest.warns(UserWarning, match="weakened audit"):
        reference = AuditPipeline(config_from_dict({**config, "out": str(tmp_path / "ref")})).run()
    assert reference["resumed_jobs"] == 0 and not (tmp_path / "s" / "jobs").exists()  # removed once complete

    save, saved = JobCache.save, []

    def dies_after_four_jobs(self, key, value):
        save(self, key, value)
        saved.append(key)
        if len(saved) == 4:  # 2 inversion jobs and 2 of the 3 defense parts are done
            raise RuntimeError("machine lost")

    monkeypatch.setattr(JobCache, "save", dies_after_four_jobs)
    with pytest.warns(UserWarning, match="weakened audit"), pytest.raises(RuntimeError, match="machine lost"):
        AuditPipeline(config_from_dict(config)).run()
    assert len(list((tmp_path / "s" / "jobs").glob("*/*.pkl"))) == 4
    monkeypatch.setattr(JobCache, "save", save)

    with pytest.warns(UserWarning, match="weakened audit"):
        resumed = AuditPipeline(config_from_dict(config)).run()
    assert resumed["resumed_jobs"] == 4 and not (tmp_path / "s" / "jobs").exists()
    assert _timeless([la["attacks"] for la in resumed["layers"]]) == \
        _timeless([la["attacks"] for la in reference["layers"]])
    assert _timeless(resumed["defenses"]) == _timeless(reference["defenses"])
    assert all((tmp_path / "run" / f).is_file() for f in resumed["files"])


def test_a_job_key_is_the_same_in_a_fresh_process_with_another_hash_seed(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("from audit.job_cache import JobCache; from tests.test_job_cache import job, key_args; "
            "print(hash('probe')); print(JobCache.key(job, key_args()))")
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # a seed other than this process's
    probe, key = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONHASHSEED": seed}, cwd=Path(__file__).resolve().parents[1]
                                ).stdout.split()
    assert int(probe) != hash("probe")  # the fresh process really hashes strings differently
    assert key == JobCache.key(job, key_args())


def key_args() -> tuple:
    """Arguments like a job's: a settings dataclass with a set of strings, arrays, paths."""
    from audit.splits import Split

    return (config_from_dict({"attacks": ["speaker_id"]}), {"layers": {"b", "a", "c"}, "out": Path("x")},
            Split(np.arange(3), np.arange(0), np.arange(3, 5), kind="closed-set", seed=0))

"""A real full disk: a store build and a report write on a small tmpfs end in one line, and resume once freed.

Needs permission to mount a tmpfs (root in the CI container); skipped otherwise. The other ENOSPC
paths are covered by injected write errors in tests/test_store_integrity.py and tests/test_outputs.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from audit.cli import main
from audit.extractor import build_extractor
from audit.pipeline import corpus_labels  # noqa: F401  (imports the whole pipeline once, outside the tmpfs)
from audit.store import EmbeddingStore
from audit.corpus import load_manifest
from tests.conftest import write_tone_corpus


def _mount(folder: Path, size_kib: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def _remount(folder: Path, size_kib: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(folder)], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount(folder, 64):
        pytest.skip("cannot mount a tmpfs here")
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True)


def _store_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_store_build_on_a_full_disk_is_one_line_and_resumes_when_space_is_freed(tmp_path, small_disk, capsys):
    corpus_dir = write_tone_corpus(tmp_path / "c", n_speakers=4, n_utts=6, seconds=0.6)
    corpus = load_manifest(corpus_dir)
    ext = build_extractor("tiny-random-wav2vec2")
    reference = EmbeddingStore.build(ext, corpus, cache_dir=tmp_path / "ref", progress=False)
    need_kib = _store_bytes(reference.root) // 1024
    _remount(small_disk, max(8, need_kib // 2))  # room for the shard, not for the consolidated store too
    args = ["extract", "--model", "tiny-random-wav2vec2", "--corpus", str(corpus_dir), "--no-progress",
            "--cache-dir", str(small_disk / "store")]
    capsys.readouterr()
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]
    assert len(err) == 1 and "disk full (ENOSPC)" in err[0] and str(small_disk) in err[0], err
    assert not [p for p in small_disk.rglob("*") if ".tmp" in p.name]  # no half-written files left
    _remount(small_disk, 4 * need_kib + 1024)
    assert main(args) == 0
    store = EmbeddingStore.build(ext, corpus, cache_dir=small_disk / "store", progress=False)
    for layer in range(store.num_layers):
        assert np.array_equal(store.pooled(layer), reference.pooled(layer))


def test_report_on_a_full_disk_is_one_line(tmp_path, small_disk, capsys):
    corpus_dir = write_tone_corpus(tmp_path / "c", n_speakers=4, n_utts=3, seconds=0.4)
    run = ["run", "--model", "tiny-random-wav2vec2", "--corpus", str(corpus_dir), "--quick", "--layers", "1",
           "--no-progress", "--cache-dir", str(tmp_path / "s")]
    assert main(run + ["--out", str(tmp_path / "r")]) == 0
    _remount(small_disk, 8)
    capsys.readouterr()
    assert main(["report", str(tmp_path / "r"), "--out", str(small_disk / "r")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]
    assert len(err) == 1 and "cannot write: disk full (ENOSPC)" in err[0] and str(small_disk) in err[0], err

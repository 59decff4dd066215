"""Outputs are written atomically, and a full disk while writing them is one line naming the file (exit 2)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from audit.cli import main
from tests.conftest import write_tone_corpus


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outputs")
    corpus = write_tone_corpus(tmp / "c", n_speakers=4, n_utts=3, seconds=0.4)
    assert main(["run", "--model", "tiny-random-wav2vec2", "--corpus", str(corpus), "--quick", "--layers", "1",
                 "--no-progress", "--cache-dir", str(tmp / "s"), "--out", str(tmp / "r")]) == 0
    return tmp / "r"


@pytest.mark.parametrize("target", ["report.html", "summary.md", "speaker_id_by_layer.png"])
def test_disk_full_while_writing_a_report_is_one_line_and_keeps_the_previous_files(finished, tmp_path, monkeypatch,
                                                                                   capsys, target):
    out = tmp_path / "again"
    assert main(["report", str(finished), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real_replace = os.replace

    def full_disk(src, dst):
        if os.path.basename(dst) == target:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr("audit.atomic.os.replace", full_disk)
    capsys.readouterr()
    assert main(["report", str(finished), "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" not in line]
    assert err == [f"speech-audit: error: {out / target}: cannot write: disk full (ENOSPC)"]
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after[target] == before[target]  # the previous file, never half a new one
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    json.loads((out / "results.json").read_text())

"""Weights are hashed once per unchanged file, and a changed file is hashed again."""

from __future__ import annotations

import builtins
import os

import audit.extractor
from audit.cache import HASHES_FILE, cache_root
from audit.extractor import hash_files


def test_hash_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECH_AUDIT_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\x01" * 4096)
    reads = []

    def counting_open(path, *args, **kwargs):
        reads.append(str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(audit.extractor, "open", counting_open, raising=False)
    first = hash_files([weights])
    assert hash_files([weights]) == first and reads == [str(weights)]  # the second call read nothing
    assert (cache_root() / HASHES_FILE).is_file()
    weights.write_bytes(b"\x02" * 4096)  # same size, new content and mtime
    os.utime(weights, ns=(1, 10**18))
    assert hash_files([weights]) != first and len(reads) == 2
    (cache_root() / HASHES_FILE).write_text("{not json")
    assert hash_files([weights]) == hash_files([weights])  # a corrupt cache file only costs a re-hash

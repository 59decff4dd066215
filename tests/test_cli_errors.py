"""The CLI's last guard, and the packaging facts the code relies on."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from audit import cli

ROOT = Path(__file__).resolve().parents[1]


def test_an_unexpected_exception_is_one_line_and_a_log_with_the_traceback(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SPEECH_AUDIT_CACHE", str(tmp_path))

    def broken(args, argv):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "_compare", broken)
    assert cli.main(["compare", "a", "b", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("speech-audit: error: unexpected RuntimeError: boom | second line")
    log = Path(re.search(r"traceback in (\S+)\)$", err[0]).group(1))
    text = log.read_text()
    assert log.parent == tmp_path / "logs" and "Traceback" in text and "RuntimeError: boom" in text
    assert "speech-audit compare a b" in text


def test_requires_python_covers_what_the_code_imports():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    low = tuple(int(x) for x in re.match(r">=\s*(\d+)\.(\d+)", meta["requires-python"]).groups())
    uses_tomllib = any("import tomllib" in p.read_text() for p in (ROOT / "audit").rglob("*.py"))
    assert not uses_tomllib or low >= (3, 11)  # tomllib is in the standard library from 3.11

"""Fuzzing every ``speech-audit`` entry point: it succeeds, or exits 2 with one line, never a traceback.

Hypothesis generates manifests (random columns, values, quoting, encodings, paths and ids),
configs, policies and results files. ``run`` uses the tiny random wav2vec2 so a manifest that
happens to be valid is audited in seconds. An ``unexpected`` error line (the CLI's last guard)
counts as a failure here: it means an input reached code that does not check it.
``HYPOTHESIS_PROFILE=thorough`` (``make test-all``) runs many more examples.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.cli import main
from tests.conftest import write_tone_corpus

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
WORDS = st.sampled_from(["", "a", "x y", "HELLO", "../x", "/tmp", "nan", "inf", "-1", "0", "1.5", "1e9", '"q"',
                         "a,b", "line\nbreak", "é", "spk0", "\t"])


def _cli(argv: list[str]) -> tuple[int, list[str]]:
    """Run the CLI; its exit code and the stderr lines that are not warnings."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip() and "warning:" not in ln
             and not ln.startswith(("usage:", "  ")) and "%|" not in ln]
    return code, lines


def _assert_clean(code: int, lines: list[str], what: str) -> None:
    assert code in (0, 1, 2), (what, code, lines)
    assert not any("Traceback" in ln for ln in lines), (what, lines)
    assert not any("unexpected" in ln for ln in lines), (what, lines)
    if code == 2:
        assert len([ln for ln in lines if ln.startswith("speech-audit: error:")]) <= 1, (what, lines)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    """A small valid corpus whose audio files the fuzzed manifests point at."""
    return write_tone_corpus(tmp_path_factory.mktemp("fuzz") / "c", n_speakers=4, n_utts=3, seconds=0.4)


@pytest.fixture(scope="module")
def finished_run(audio_dir, tmp_path_factory) -> Path:
    """results.json of a tiny finished audit, the seed of the results and policy fuzzers."""
    out = tmp_path_factory.mktemp("fuzzrun")
    code, lines = _cli(["run", "--model", "tiny-random-wav2vec2", "--corpus", str(audio_dir), "--quick",
                        "--layers", "0,1", "--no-progress", "--cache-dir", str(out / "store"), "--out",
                        str(out / "r")])
    assert code == 0, lines
    return out / "r" / "results.json"


AUDIO = [f"audio/spk{s}_{u}.wav" for s in range(4) for u in range(3)] + ["@ABS@/audio/spk0_0.wav"]


@st.composite
def manifests(draw, audio: list[str] = AUDIO) -> bytes:
    """A CSV manifest: random header, rows of random or plausible values, random encoding."""
    known = ["path", "speaker", "transcript", "duration_s", "utt_id", "recording", "session", "gender"]
    header = draw(st.lists(st.sampled_from(known) | TEXT, min_size=0, max_size=7))
    if draw(st.booleans()):
        header = ["path", "speaker"] + header
    rows = []
    for _ in range(draw(st.integers(0, 10))):
        row = []
        for col in header:
            if col == "path":
                row.append(draw(st.sampled_from(audio) | WORDS | TEXT))
            elif col == "speaker":
                row.append(draw(st.sampled_from(["spk0", "spk1", "spk2", "spk3"]) | WORDS))
            else:
                row.append(draw(WORDS | TEXT))
        rows.append(row)
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])))
    writer.writerow(header)
    writer.writerows(rows)
    text = buf.getvalue()
    if draw(st.booleans()):
        text = text.replace(",", draw(st.sampled_from([";", ",,", '",'])), draw(st.integers(0, 3)))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


@given(manifest=manifests())
def test_run_on_fuzzed_manifests_succeeds_or_fails_in_one_line(audio_dir, finished_run, manifest):
    with tempfile.TemporaryDirectory(dir=audio_dir.parent) as tmp:
        folder = Path(tmp) / "m"
        folder.mkdir()
        (folder / "audio").symlink_to(audio_dir / "audio")
        (folder / "manifest.csv").write_bytes(manifest.replace(b"@ABS@", str(audio_dir).encode()))
        code, lines = _cli(["run", "--model", "tiny-random-wav2vec2", "--corpus", str(folder), "--quick",
                            "--layers", "1", "--no-progress", "--cache-dir", str(Path(tmp) / "s"),
                            "--out", str(Path(tmp) / "r")])
    _assert_clean(code, lines, f"manifest {manifest!r}")


CONFIG_VALUES = st.one_of(st.integers(-3, 5), st.floats(allow_nan=False, allow_infinity=False, width=32),
                          st.booleans(), st.sampled_from(["all", "0,1", "auto", "cpu", "cuda:9", "int8", "ctc", "x"]),
                          st.lists(st.integers(-1, 4), max_size=3),
                          st.lists(st.sampled_from(["logreg", "mlp", "frame", "lda", "svm", "leakiest"]), max_size=3))
CONFIG_KEYS = ["seed", "layers", "segment", "batch_size", "device", "quantize", "utility", "defense_fraction",
               "attacks", "quick", "redact", "bogus", "defense_attacks"]


def _toml_value(value) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


@given(pairs=st.dictionaries(st.sampled_from(CONFIG_KEYS), CONFIG_VALUES, max_size=4),
       section=st.dictionaries(st.sampled_from(["attackers", "scorers", "n_boot", "test_fraction", "frame_layers",
                                                "max_epochs", "typo"]), CONFIG_VALUES, max_size=2),
       family=st.sampled_from(["speaker_id", "verification", "inversion", "nonesuch"]),
       garbage=st.sampled_from(["", "[[[", "x = ", "\x00"]))
def test_run_on_fuzzed_configs_succeeds_or_fails_in_one_line(audio_dir, finished_run, pairs, section, family,
                                                             garbage):
    text = "".join(f"{k} = {_toml_value(v)}\n" for k, v in pairs.items())
    text += f"[{family}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in section.items()) + garbage
    with tempfile.TemporaryDirectory(dir=audio_dir.parent) as tmp:
        config = Path(tmp) / "audit.toml"
        config.write_text(text, encoding="utf-8")
        code, lines = _cli(["run", "--config", str(config), "--model", "tiny-random-wav2vec2", "--corpus",
                            str(audio_dir), "--quick", "--no-progress", "--cache-dir", str(Path(tmp) / "s"),
                            "--out", str(Path(tmp) / "r")])
    _assert_clean(code, lines, f"config {text!r}")


RULE_KEYS = ["metric", "layer", "max", "min", "max_ratio_to_chance", "bound", "severity", "justification", "id",
             "defense", "typo"]
RULE_VALUES = st.one_of(st.sampled_from(["speaker_id.top1", "verification.eer", "attributes.gender.roc_auc",
                                         "inversion.frame.judges.wer", "nonesuch.x", "any", "all", "leakiest",
                                         "last", "worst", "ci_lower", "fail", "warn", "why", ""]),
                        st.integers(-2, 9), st.floats(allow_nan=True, width=32), st.booleans(),
                        st.lists(st.integers(0, 3), max_size=2))


@given(rules=st.lists(st.dictionaries(st.sampled_from(RULE_KEYS), RULE_VALUES, max_size=6), max_size=3),
       name=st.one_of(st.none(), TEXT))
def test_gate_on_fuzzed_policies_succeeds_or_fails_in_one_line(finished_run, rules, name):
    text = "" if name is None else f"name = {json.dumps(name)}\n"
    for rule in rules:
        text += "[[rule]]\n" + "".join(f"{k} = {_toml_value(v) if v == v else 'nan'}\n" for k, v in rule.items())
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.toml"
        policy.write_text(text, encoding="utf-8")
        code, lines = _cli(["gate", str(finished_run), "--policy", str(policy), "--junit", str(Path(tmp) / "j.xml")])
    _assert_clean(code, lines, f"policy {text!r}")


def _mutate(node, data, depth: int = 0):
    """A copy of a JSON tree with random keys dropped, values retyped and lists cut."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            action = data.draw(st.integers(0, 30))
            if action == 0:
                continue
            out[k] = data.draw(st.sampled_from([None, 0, -1.5, "x", [], {}])) if action == 1 else \
                _mutate(v, data, depth + 1)
        return out
    if isinstance(node, list):
        keep = data.draw(st.integers(0, len(node))) if node and data.draw(st.integers(0, 20)) == 0 else len(node)
        return [_mutate(v, data, depth + 1) for v in node[:keep]]
    return node


@given(data=st.data(), command=st.sampled_from(["report", "gate", "compare"]))
def test_report_gate_compare_on_fuzzed_results_succeed_or_fail_in_one_line(finished_run, data, command):
    original = json.loads(finished_run.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.json"
        if data.draw(st.integers(0, 9)) == 0:
            raw = finished_run.read_bytes()
            path.write_bytes(raw[:data.draw(st.integers(0, len(raw)))])
        else:
            path.write_text(json.dumps(_mutate(original, data)))
        policy = Path(__file__).resolve().parents[1] / "examples" / "policies" / "release_pooled.toml"
        argv = {"report": ["report", str(path), "--out", str(Path(tmp) / "o")],
                "gate": ["gate", str(path), "--policy", str(policy)],
                "compare": ["compare", str(finished_run), str(path), "--out", str(Path(tmp) / "o")]}[command]
        code, lines = _cli(argv)
    _assert_clean(code, lines, command)

"""Redaction from declarations: personal data is marked in the result types, not found by key names (issue #30).

A family outside ``attacks/`` declares which fields of its per-layer result hold an id, a
transcript and a recording; ``--redact`` hashes, removes and leaves them out with no edit to
``audit/``. The plugin test failed on the code before the change, which redacted by a fixed
list of key names (``speaker``, ``utt_id``, ``transcript``, inversion's example files) and let
the plugin's id, transcript and recording through into the redacted report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attacks import load_families
from audit.family import AttackFamily
from audit.personal import KINDS, PersonalField
from audit.report import write_report
from audit.report.redact import hash_id, redact_examples, redact_results
from audit.results import SCHEMA_VERSION, Table

SALT = "test-salt"
WHO, SAID = "Zed-take1", "MY BANK PIN IS 4711"
VOICE, CLONE = f"echo/{WHO}_voice.wav", f"echo/{WHO}_clone.wav"

#: A plugin family: its per-layer result lists clips, each with whose voice (an id), what was said
#: (a transcript), the recording (personal) and the attack's clone of it (the finding, kept).
ECHO = AttackFamily(name="echo", settings=object, split=None, attack=None, table=lambda results: Table("Echo", []),
                    personal=(PersonalField("clips.*.who", "speaker_id"), PersonalField("clips.*.said", "transcript"),
                              PersonalField("clips.*.voice", "audio_file")))


def echo_results(**extra) -> dict:
    """A run with one layer holding only the plugin's result, listing the recording and the clone."""
    clip = {"who": WHO, "said": SAID, "voice": VOICE, "clone": CLONE, "score": 0.9}
    layer = {"index": 0, "name": "layer0", "dim": 8, "attacks": {"echo": {"clips": [clip], "note": WHO}}}
    return {"schema_version": SCHEMA_VERSION, "config": {"attacks": ["echo"]}, "model": {"spec": "m", "num_layers": 1},
            "corpus": {"spec": "c"}, "layers": [layer], "summary": {}, "files": [VOICE, CLONE], **extra}


def run_folder(root: Path) -> Path:
    (root / "echo").mkdir(parents=True)
    for k, file in enumerate((VOICE, CLONE)):
        (root / file).write_bytes(b"RIFF" + bytes([k]) * 64)
    return root


def test_a_plugin_familys_declared_id_transcript_and_recording_are_redacted_with_no_edit_to_audit(tmp_path):
    registry = {**load_families(), "echo": ECHO}
    source = run_folder(tmp_path / "run")
    out = tmp_path / "redacted"
    written = write_report(echo_results(), out, registry, redact=True, source=source, salt=SALT)
    clip = written["layers"][0]["attacks"]["echo"]["clips"][0]
    tag = hash_id(WHO, SALT)
    assert clip["who"] == tag  # the declared id, hashed
    assert "said" not in clip  # the declared transcript, removed
    assert "voice" not in clip and VOICE not in written["files"]  # the declared recording, not listed...
    assert not (out / VOICE).exists() and not any("voice" in p.name for p in out.rglob("*"))  # ...nor copied
    assert clip["clone"] == f"echo/{tag}_clone.wav" and (out / clip["clone"]).is_file()  # kept, id in its name hashed
    assert written["layers"][0]["attacks"]["echo"]["note"] == tag  # the declared id's value, hashed where else it is
    assert clip["score"] == 0.9
    for path in out.rglob("*"):
        data = path.read_bytes() if path.is_file() else b""
        assert b"Zed" not in data and SAID.encode() not in data and "Zed" not in path.name, path
    assert json.loads((out / "results.json").read_text())["report_mode"]["mode"] == "redacted"
    # in place, the run folder loses the recording itself
    write_report(echo_results(), source, registry, redact=True, salt=SALT)
    assert not (source / VOICE).exists() and (source / f"echo/{tag}_clone.wav").is_file()


def test_a_family_the_registry_does_not_know_is_left_out_with_its_files(tmp_path):
    """Undeclared means unknown: its results and files do not reach the redacted report."""
    results = echo_results()
    with pytest.warns(UserWarning, match="unregistered families \\['echo'\\]"):
        names = redact_examples(results, SALT, load_families())
        redacted = redact_results(results, SALT, names, load_families())
    assert names == {VOICE: None, CLONE: None} and redacted["files"] == []
    assert "left out of the redacted report" in redacted["layers"][0]["attacks"]["echo"]["skipped"]
    assert WHO not in json.dumps(redacted)


def test_the_built_in_declarations_redact_inversion_examples_run_fields_and_defense_scenarios():
    """Inversion's declarations give today's redaction; the run's own fields are declared in the redaction module."""
    ex = {"layer": 3, "utt_id": "utt_7", "speaker": "Ann", "transcript": "HELLO ANN",
          "files": {k: f"examples/layer3_utt_7_{k}.{'png' if k == 'mels' else 'wav'}"
                    for k in ("original", "vocoder_copy", "reconstruction", "mels")}}
    frame = {"examples": [ex], "files": list(ex["files"].values()),
             "content": {"wer_reconstruction": 0.4, "hypotheses_reconstruction": ["HELO AN"],
                         "hypotheses_original": ["HELLO ANN"]}}
    results = {"layers": [{"index": 3, "attacks": {"inversion": {"frame": frame}}}],
               "defenses": [{"scenarios": {"semi_informed": {"inversion": {"frame": json.loads(json.dumps(frame))}},
                                           "ignorant": {"not_applicable": "dimension changed"}},
                             "utility": {"extra": {"wer": 0.2, "examples": [{"reference": "HELLO ANN"}]}}}],
               "splits": {"speaker_id": {"dropped_speakers": ["Bob", None]}}, "skipped_audio": [{"utt_id": "utt_9"}],
               "files": list(ex["files"].values())}
    names = redact_examples(results, SALT, load_families())
    redacted = redact_results(results, SALT, names, load_families())
    tag = hash_id("utt_7", SALT)
    kept = {"reconstruction": f"examples/layer3_{tag}_reconstruction.wav", "mels": f"examples/layer3_{tag}_mels.png"}
    for entry in (redacted["layers"][0]["attacks"], redacted["defenses"][0]["scenarios"]["semi_informed"]):
        red = entry["inversion"]["frame"]
        assert red["examples"] == [{"layer": 3, "utt_id": tag, "speaker": hash_id("Ann", SALT), "files": kept}]
        assert red["files"] == list(kept.values()) and red["content"] == {"wer_reconstruction": 0.4}
    assert redacted["files"] == sorted(kept.values())
    assert redacted["splits"]["speaker_id"]["dropped_speakers"] == [hash_id("Bob", SALT), None]
    assert redacted["skipped_audio"] == [{"utt_id": hash_id("utt_9", SALT)}]
    assert redacted["defenses"][0]["utility"]["extra"] == {"wer": 0.2}
    assert redacted["defenses"][0]["scenarios"]["ignorant"] == {"not_applicable": "dimension changed"}
    assert "HEL" not in json.dumps(redacted) and "Ann" not in json.dumps(redacted)


def test_a_personal_field_names_a_known_kind():
    assert set(KINDS) == {"speaker_id", "utterance_id", "transcript", "audio_file"}
    assert PersonalField("frame.examples.*.utt_id", "utterance_id").matches("frame.examples.0.utt_id")
    assert not PersonalField("frame.examples.*.utt_id", "utterance_id").matches("frame.examples.utt_id")
    with pytest.raises(ValueError, match="kind='email'"):
        PersonalField("clips.*.mail", "email")
    with pytest.raises(ValueError, match="pattern='clips..who'"):
        PersonalField("clips..who", "speaker_id")

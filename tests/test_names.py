"""File names built from utterance and speaker ids never leave the run folder and never collide."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.config import config_from_dict
from audit.names import safe_filename
from audit.pipeline import AuditPipeline
from tests.conftest import write_tone_corpus


@given(st.text(min_size=0, max_size=100))
def test_a_safe_filename_is_one_component_that_stays_in_its_folder(text):
    name = safe_filename(text)
    assert name and "/" not in name and "\\" not in name and "\0" not in name and not name.startswith(".")
    root = Path("/run")
    assert (root / name).parent == root and ".." not in Path(name).parts


@given(st.text(max_size=30), st.text(max_size=30))
def test_distinct_ids_get_distinct_file_names(a, b):
    if a != b:
        assert safe_filename(a) != safe_filename(b)


def test_hostile_ids_write_inside_the_run_folder_only(tmp_path):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=4, n_utts=4)
    rows = list(csv.DictReader(open(corpus / "manifest.csv", newline="")))
    hostile = ["../../escaped", "a/b", "a_b", "..", "/etc/passwd", ".hidden", "x\\..\\y"]
    for i, row in enumerate(rows):
        row["utt_id"] = f"{hostile[i % len(hostile)]}{i // len(hostile) or ''}"
        row["speaker"] = f"../spk/{row['speaker']}"
    with open(corpus / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "runs" / "r"
    cfg = config_from_dict({"model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(out),
                            "cache_dir": str(tmp_path / "s"), "progress": False, "layers": [1],
                            "attacks": ["speaker_id", "inversion"], "speaker_id": {"attackers": ["logreg"],
                                                                                   "n_boot": 200},
                            "inversion": {"max_epochs": 1, "n_eval": 8, "n_examples": 8, "skip_judges": True,
                                          "n_boot": 200}})
    with pytest.warns(UserWarning):
        results = AuditPipeline(cfg).run()
    examples = results["layers"][0]["attacks"]["inversion"]["frame"]["examples"]
    files = [f for ex in examples for f in ex["files"].values()]
    assert len(examples) >= 4 and len(set(files)) == len(files)  # no two ids share a file
    for f in files:
        assert (out / f).resolve().is_relative_to(out.resolve()) and (out / f).is_file()
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(out)
               and not p.is_relative_to(tmp_path / "c") and not p.is_relative_to(tmp_path / "s")]
    assert outside == []
    assert not list(tmp_path.parent.glob("escaped*")) and not (tmp_path / "runs" / "escaped").exists()

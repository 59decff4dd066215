"""A run's report end to end: escaping of manifest text, redaction, re-rendering, risk ratings, the browser.

One small audit (tiny random wav2vec2, inversion included) of a corpus whose manifest holds hostile
text: a ``<script>`` in every transcript and in a speaker id.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from attacks import load_families
from audit.cli import main
from audit.report.build import risk_ratings
from tests.conftest import write_tone_corpus

SCRIPT = "<script>alert('pwn')</script>"
SPEAKERS = [f"Alice{SCRIPT}7731", "Bob7732", "Carol7733", "Dave7734", "Erin7735", "Frank7736"]
TRANSCRIPT = f"{SCRIPT} HELLO WORLD"


def hostile_corpus(root: Path) -> Path:
    """A tone corpus whose speaker ids, utterance ids and transcripts carry markup and recognisable names."""
    write_tone_corpus(root, n_speakers=len(SPEAKERS), n_utts=10)
    with open(root / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        s, u = row["path"].split("spk")[1].split(".")[0].split("_")
        row["speaker"] = SPEAKERS[int(s)]
        row["utt_id"] = f"utt{SPEAKERS[int(s)][:5]}{7731 + int(s)}-{u}"
        row["transcript"] = TRANSCRIPT
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """The report folder of one small audit with inversion examples, gated by a policy that fails."""
    root = tmp_path_factory.mktemp("report")
    corpus = hostile_corpus(root / "corpus")
    config = root / "audit.toml"
    config.write_text(f'model = "tiny-random-wav2vec2"\ncorpus = "{corpus}"\nout = "{root / "run"}"\n'
                      f'cache_dir = "{root / "store"}"\nlayers = [0, 1]\n'
                      'attacks = ["speaker_id", "verification", "inversion"]\n'
                      '[speaker_id]\nattackers = ["logreg"]\nn_boot = 200\n'
                      '[verification]\nscorers = ["lda"]\nn_boot = 200\n'
                      '[inversion]\nmax_epochs = 2\nn_eval = 4\nn_examples = 2\nskip_judges = true\nn_boot = 200\n')
    policy = root / "policy.toml"
    policy.write_text('[[rule]]\nid = "reid"\nmetric = "speaker_id.top1"\nmax_ratio_to_chance = 1.0\n'
                      'justification = "planted: distinct synthetic voices are far above chance"\n\n'
                      '[[rule]]\nmetric = "verification.eer"\nmax = 0.999\njustification = "holds unless every trial '
                      'is misjudged"\n')
    with pytest.warns(UserWarning):
        code = main(["run", "--config", str(config), "--policy", str(policy), "--no-progress"])
    assert code == 1  # the planted leak breaks the fail rule
    return root / "run"


def test_run_writes_every_report_file(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    for name in ("report.html", "summary.md", "junit.xml", "results.json"):
        assert (run_dir / name).stat().st_size > 500, name
    assert results["verdict"]["status"] == "fail" and results["verdict"]["rules"][0]["name"] == "rule 1 ('reid')"
    assert results["report_mode"]["mode"] == "full" and results["invocation"]["argv"][:2] == ["speech-audit", "run"]
    html = (run_dir / "report.html").read_text()
    assert html.index('id="verdict"') < html.index('id="risk"') < html.index('id="threat-model"')
    assert html.count("<audio") >= 6 and "data:audio/wav;base64," in html
    assert (run_dir / "report.html").stat().st_size < 5_000_000
    assert len((run_dir / "summary.md").read_text()) < 65_536  # GitHub's limit for a pull-request comment


def test_training_curves_name_the_decoders_that_ran_out_of_epochs(run_dir):
    """The config caps the decoders at 2 epochs: the report's training figure must say they hit that cap."""
    results = json.loads((run_dir / "results.json").read_text())
    capped = [la["index"] for la in results["layers"] if not la["attacks"]["inversion"]["frame"]["converged"]]
    assert capped and (run_dir / "training_curves.png").stat().st_size > 1000
    html = (run_dir / "report.html").read_text()
    for index in capped:
        assert f"L{index} inversion decoder (best epoch" in html.split("Stopped at their epoch cap")[1]
    assert "val_loss 1: " in html  # the budget table reads the decoder's curve on held-out data


def test_manifest_text_is_escaped_in_html_and_markdown(run_dir):
    html = (run_dir / "report.html").read_text()
    summary = (run_dir / "summary.md").read_text()
    assert "&lt;script&gt;alert(&#x27;pwn&#x27;)&lt;/script&gt; HELLO WORLD" in html
    assert "&lt;script&gt;alert('pwn')&lt;/script&gt; HELLO WORLD" in summary
    for text in (html, summary):
        assert SCRIPT not in text and "<script" not in text


def test_redacted_report_holds_no_original_audio_transcript_or_raw_id(run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    out = tmp_path / "redacted"
    # into a new folder, and in place (the run folder itself loses its originals)
    assert main(["report", str(copy / "results.json"), "--out", str(out), "--redact"]) == 1
    assert main(["report", str(copy / "results.json"), "--redact"]) == 1
    capsys.readouterr()
    for folder in (out, copy):
        results = json.loads((folder / "results.json").read_text())
        assert results["report_mode"]["mode"] == "redacted"
        assert "Report mode: redacted" in (folder / "report.html").read_text() or \
            "redacted" in (folder / "report.html").read_text()
        names = [p.name for p in folder.rglob("*")]
        assert not any("original" in n or "vocoder_copy" in n for n in names), names
        assert sum(n.endswith("_reconstruction.wav") for n in names) == 4
        forbidden = [s.encode() for s in ["HELLO WORLD", str(tmp_path.parent), *[sp[:5] for sp in SPEAKERS],
                                          *SPEAKERS]]
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(f in data for f in forbidden), (path, [f for f in forbidden if f in data])


def test_report_rerenders_from_results_alone(run_dir, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["report", str(run_dir / "results.json"), "--out", str(out)]) == 1
    before, after = (json.loads((d / "results.json").read_text()) for d in (run_dir, out))
    assert before["layers"] == after["layers"] and before["verdict"] == after["verdict"]
    wavs = sorted(p.name for p in (out / "examples").glob("*.wav"))
    assert wavs == sorted(p.name for p in (run_dir / "examples").glob("*.wav")) and len(wavs) == 12
    assert (out / "report.html").read_text().count("<audio") == (run_dir / "report.html").read_text().count("<audio")


def test_a_still_learning_headline_is_said_in_every_format(run_dir, tmp_path, capsys):
    results = json.loads((run_dir / "results.json").read_text())
    label = "identity (speaker-ID top-1)"
    results["leakiest"][label]["still_learning"] = {"metric": "top1", "fractions": [0.5, 1.0], "values": [0.6, 0.85],
                                                    "gain": 0.25, "margin": 0.05}
    (tmp_path / "results.json").write_text(json.dumps(results))
    main(["report", str(tmp_path / "results.json"), "--out", str(tmp_path / "out")])
    words = "top1 60.0% → 85.0% from 50% to 100% of its training data), so an attacker with more data would read more"
    assert words in (tmp_path / "out" / "summary.md").read_text()
    assert words in (tmp_path / "out" / "report.html").read_text()


def test_gate_out_rerenders_the_report_with_a_new_verdict(run_dir, tmp_path, capsys):
    passing = tmp_path / "pass.toml"
    # the run's budgets are cut to keep the test fast: a weakening this policy allows by name, or the pass reads WARN
    passing.write_text('allow_weakened = ["budget"]\n[[rule]]\nmetric = "verification.eer"\nmax = 0.999\n'
                       'justification = "holds unless every trial is misjudged"\n')
    out = tmp_path / "gated"
    assert main(["gate", str(run_dir), "--policy", str(passing), "--out", str(out), "--junit",
                 str(tmp_path / "j.xml")]) == 0
    assert "Gate verdict: PASS" in (out / "report.html").read_text()
    assert json.loads((out / "results.json").read_text())["verdict"]["exit_code"] == 0
    assert len(list((out / "examples").glob("*.wav"))) == 12


def _with_speaker_id(results: dict, top1: float, ci: list) -> dict:
    out = json.loads(json.dumps(results))
    for la in out["layers"]:
        sid = la["attacks"]["speaker_id"]
        sid["top1"], sid["ci95"], sid["selection_ci95"] = top1, ci, ci
    return out


def test_risk_ratings_read_planted_leaks_high_and_noise_low(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    families = load_families()
    ratings = {r.threat: r for r in risk_ratings(results, families)}
    assert ratings["attribute inference"].level == "not measured"  # not selected in this run
    assert "'attributes' was not selected" in ratings["attribute inference"].reason
    assert ratings["reconstruction"].level in ("high", "medium", "low") and "STOI" in ratings["reconstruction"].reason
    chance = results["layers"][0]["attacks"]["speaker_id"]["chance"]
    planted = {r.threat: r for r in risk_ratings(_with_speaker_id(results, 1.0, [0.95, 1.0]), families)}
    noise = {r.threat: r for r in risk_ratings(_with_speaker_id(results, chance, [0.0, 1.5 * chance]), families)}
    middle = {r.threat: r for r in risk_ratings(_with_speaker_id(results, 0.4, [0.35, 0.45]), families)}
    assert planted["re-identification"].level == "high" and "100.0%" in planted["re-identification"].reason
    assert noise["re-identification"].level == "low" and middle["re-identification"].level == "medium"
    assert [r.threat for r in risk_ratings(_with_speaker_id(results, 1.0, [0.95, 1.0]), families)][0] \
        == "re-identification"  # worst first


def test_pipeline_report_in_a_real_browser(run_dir, tmp_path):
    from tests.test_browser import open_in_chromium

    shot = Path(os.environ.get("SPEECH_AUDIT_ARTIFACTS") or tmp_path) / "pipeline_report.png"
    seen = open_in_chromium(run_dir / "report.html", shot)
    assert {"verdict", "risk", "leakage", "examples"} <= set(seen["sections"])
    assert any(w > 0 for w in seen["img_natural_widths"])
    assert seen["audio_durations"] and all(d > 0 for d in seen["audio_durations"]), seen
    assert not seen["severe"], seen["severe"]
    assert any("FAIL" in c for c in seen["status_cells"])  # the verdict
    assert sum(any(w in c for w in ("HIGH", "MEDIUM", "LOW", "NOT MEASURED")) for c in seen["status_cells"]) == 4
    assert shot.stat().st_size > 10_000


def test_reconstruction_rating_is_relative_to_the_judges_wer_on_originals():
    from attacks.inversion import rate_reconstruction

    def results(wer: float, ci: list, original: float) -> dict:
        frame = {"content": {"wer_reconstruction": wer, "wer_reconstruction_ci95": ci, "wer_original": original},
                 "speaker": {"top1": 0.2, "top1_ci95": [0.05, 0.4], "chance": 0.125}, "signal": {}}
        return {"layers": [{"index": 1, "name": "layer1", "attacks": {"inversion": {"frame": frame}}}]}

    # 40% WER when the judge misses 34% of the originals: nearly everything said is recovered
    assert rate_reconstruction(results(0.40, [0.25, 0.56], 0.34)).level == "high"
    # the same WER when the judge reads originals perfectly: the CI spans the high band (25%) and the medium one (56%)
    assert rate_reconstruction(results(0.40, [0.25, 0.56], 0.0)).words == "inconclusive (medium to high)"
    # nearly every word lost, but the speaker judge's CI reaches above twice chance: not cleared
    assert rate_reconstruction(results(0.97, [0.93, 1.0], 0.05)).words == "inconclusive (low to medium)"

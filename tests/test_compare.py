"""``speech-audit compare``: runs of different models, depths and corpora side by side, refusals."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from attacks import load_families
from audit.compare import CompareError, ci_agreement, compare_runs, flatten_config, load_runs
from audit.errors import SpeechAuditError
from audit.report.document import Callout, Figure, ReportDocument
from audit.results import Table
from audit.summary import headline_measures, leakiest

#: The built-in families' headline measures (what a run's ``leakiest`` reads).
HEADLINES = headline_measures(load_families())

REPORTS = Path(__file__).resolve().parents[1] / "reports"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ci(value: float, half: float, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    return [max(lo, value - half), min(hi, value + half)]


def _layer(index: int, top1: float, eer: float, auc: float, r2: float, n_speakers: int) -> dict:
    """One layer's attacks as a run writes them (strongest attacker's figures, CIs, chance)."""
    return {"index": index, "name": "embed" if index == 0 else f"layer{index}", "dim": 768,
            "attacks": {
                "speaker_id": {"top1": top1, "ci95": _ci(top1, 0.04), "chance": 1 / n_speakers, "attacker": "logreg",
                               "n_attackers_compared": 2, "selection_ci95": _ci(top1, 0.06), "skipped": None},
                "verification": {"eer": eer, "ci95": _ci(eer, 0.03), "chance": 0.5, "attacker": "lda",
                                 "n_attackers_compared": 2, "selection_ci95": _ci(eer, 0.05), "skipped": None},
                "attributes": {
                    "gender": {"roc_auc": auc, "auc_ci95": _ci(auc, 0.05), "accuracy": auc, "ci95": _ci(auc, 0.05),
                               "chance": 0.5, "attacker": "logreg", "skipped": None},
                    "gender_cca": {"cca": 0.5, "ci95": [0.4, 0.6], "chance": 0.0, "skipped": None},
                    "speech_rate": {"r2": r2, "ci95": _ci(r2, 0.1, -1.0), "chance": 0.0, "attacker": "ridge",
                                    "skipped": None}}}}


def make_results(*, model: str = "tiny-model", top1: list[float] | None = None, corpus: str = "synthetic",
                 n_speakers: int = 10, schema: str = "2.1", defenses: list[dict] | None = None) -> dict:
    """A minimal but realistic results dict: one layer per ``top1`` value (2-5 layers), headlines, provenance."""
    top1 = top1 or [0.9, 0.8, 0.5]
    layers = [_layer(i, t, eer=0.3 * (1 - t) + 0.01, auc=0.6 + 0.3 * t, r2=0.2 + 0.1 * i, n_speakers=n_speakers)
              for i, t in enumerate(top1)]
    results = {
        "schema_version": schema, "tool": {"name": "speech-audit", "version": "0.1.0"},
        "created": "2026-12-01T10:00:00", "wall_seconds": 12.5,
        "config": {"model": model, "corpus": corpus, "seed": 0, "out": f"reports/{model}",
                   "attacks": ["speaker_id", "verification", "attributes"],
                   "speaker_id": {"attackers": ["logreg", "mlp"], "test_fraction": 0.3}},
        "environment": {"python": "3.11.7", "torch": "2.9.1", "transformers": "5.23.0"},
        "model": {"spec": model, "num_layers": len(layers), "layer_names": [la["name"] for la in layers],
                  "fingerprint": hashlib.sha256(model.encode()).hexdigest()},
        "corpus": {"spec": corpus, "description": f"{corpus} ({n_speakers * 20} utterances, {n_speakers} speakers)",
                   "n_speakers": n_speakers, "n_utterances": n_speakers * 20, "filters": [],
                   "fingerprint": hashlib.sha256(f"{corpus}/{n_speakers}".encode()).hexdigest()},
        "layers": layers, "leakiest": leakiest(layers, HEADLINES),
    }
    if defenses is not None:
        results["defenses"] = defenses
    return results


def write_run(folder: Path, results: dict) -> Path:
    """``results`` as ``folder/results.json``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return folder


def _table(doc: ReportDocument, section_id: str, title_part: str) -> Table:
    section = doc.section(section_id)
    assert section is not None, f"no section {section_id}"
    return next(b for b in section.blocks if isinstance(b, Table) and title_part in b.title)


def _figure(doc: ReportDocument, section_id: str) -> Figure:
    return next(b for b in doc.section(section_id).blocks if isinstance(b, Figure))


@pytest.fixture
def two_models(tmp_path: Path) -> tuple[ReportDocument, Path]:
    """A 3-layer and a 5-layer model on the same corpus, compared into ``tmp_path/cmp``."""
    a = write_run(tmp_path / "small", make_results(model="tiny-model", top1=[0.9, 0.8, 0.5]))
    b = write_run(tmp_path / "big", make_results(model="org/big-model", top1=[0.6, 0.7, 0.95, 0.97, 0.4]))
    out = tmp_path / "cmp"
    return compare_runs([a, b / "results.json"], out), out


def test_two_models_of_different_depth_compare_into_markdown_html_and_plots(two_models):
    doc, out = two_models
    md = (out / "compare.md").read_text(encoding="utf-8")
    html = (out / "compare.html").read_text(encoding="utf-8")
    for label in ("tiny-model on synthetic", "org/big-model on synthetic"):
        assert label in md and label in html
    for name in ("compare_speaker_id_top1.png", "compare_verification_eer.png",
                 "compare_attr_gender_roc_auc.png", "compare_attr_speech_rate_r2.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert name in md
    runs = _table(doc, "runs", "Runs")
    assert [row[0] for row in runs.rows] == ["tiny-model on synthetic", "org/big-model on synthetic"]
    assert [row[3] for row in runs.rows] == ["3 (0-2)", "5 (0-4)"]
    assert "90.0%" in md and "97.0%" in md and "90.0%" in html and "97.0%" in html
    overview = next(b for b in doc.section("overview").blocks if hasattr(b, "items")).items
    assert overview[0].startswith("speaker-ID top-1 (higher = leakier): tiny-model on synthetic 90.0%")
    assert "Leakiest: org/big-model on synthetic, but its CI overlaps" in overview[0]


def test_per_measure_tables_hold_both_runs_values_and_blanks_past_the_shorter_model(two_models):
    doc, _ = two_models
    headline = _table(doc, "measure-speaker_id_top1", "leakiest layer")
    assert headline.columns[1:] == ["tiny-model on synthetic", "org/big-model on synthetic"]
    rows = {row[0]: row[1:] for row in headline.rows}
    assert rows["leakiest value"] == ["90.0%", "97.0%"]
    assert rows["layer"] == ["0 (embed)", "3 (layer3)"]
    assert rows["chance"] == ["10.0%", "10.0%"]
    assert rows["picked from"][0].startswith("best of 6")
    per_layer = _table(doc, "measure-speaker_id_top1", "per layer")
    assert [row[0] for row in per_layer.rows] == ["0 (embed)", "1 (layer1)", "2 (layer2)", "3 (layer3)", "4 (layer4)"]
    assert per_layer.rows[0][1:] == ["90.0% [86.0, 94.0]", "60.0% [56.0, 64.0]"]
    assert per_layer.rows[4][1:] == ["", "40.0% [36.0, 44.0]"]
    eer = _table(doc, "measure-verification_eer", "per layer")
    assert eer.rows[4][1] == "" and eer.rows[4][2].endswith("]")
    gender = _table(doc, "measure-attr_gender_roc_auc", "leakiest layer")
    assert {row[0]: row[1:] for row in gender.rows}["leakiest value"] == ["0.870", "0.891"]
    assert doc.section("measure-attr_speech_rate_r2") is not None
    assert doc.section("measure-attr_gender_cca_cca") is None


def test_config_differences_list_the_model_and_hide_output_paths(two_models):
    doc, _ = two_models
    diff = _table(doc, "differences", "Configuration keys that differ")
    rows = {row[0]: row[1:] for row in diff.rows}
    assert rows == {"config.model": ["tiny-model", "org/big-model"]}
    provenance = {row[0]: row[1:] for row in _table(doc, "differences", "Model, corpus and software").rows}
    assert provenance["model spec"] == ["tiny-model", "org/big-model", "yes"]
    assert provenance["corpus fingerprint"][-1] == "no"
    assert not any(isinstance(b, Callout) for b in doc.section("differences").blocks)


def test_figures_share_the_chance_line_and_say_in_words_which_run_leaks_more(two_models):
    doc, _ = two_models
    fig = _figure(doc, "measure-speaker_id_top1")
    assert "chance 10.0%, shared" in fig.caption
    assert "tiny-model on synthetic (layers 0-2) is leakiest at layer 0 with 90.0%" in fig.alt
    assert "org/big-model on synthetic (layers 0-4) is leakiest at layer 3 with 97.0%" in fig.alt
    assert "tiny-model on synthetic at layer(s) 0-1; org/big-model on synthetic at layer(s) 2" in fig.alt
    for section in doc.sections:
        for block in section.blocks:
            if isinstance(block, Figure):
                assert len(block.alt) > 80 and "<" not in block.alt


def test_different_corpora_warn_and_give_each_chance(tmp_path: Path):
    a = write_run(tmp_path / "a", make_results(corpus="synthetic", n_speakers=10))
    b = write_run(tmp_path / "b", make_results(corpus="../data/other", n_speakers=40))
    doc = compare_runs([a, b], tmp_path / "cmp")
    warning = next(b for b in doc.section("differences").blocks if isinstance(b, Callout))
    assert warning.kind == "warning" and "different corpora" in warning.title
    assert any("10.0%" in item and "2.5%" in item for item in warning.items)
    fig = _figure(doc, "measure-speaker_id_top1")
    assert "Chance differs" in fig.caption and "10.0%" in fig.caption and "2.5%" in fig.caption
    assert "chance 50.0%, shared" in _figure(doc, "measure-verification_eer").caption
    assert "tiny-model on other" in (tmp_path / "cmp" / "compare.md").read_text(encoding="utf-8")


def test_runs_of_different_minor_schema_versions_are_compared_with_a_note(tmp_path: Path):
    old = make_results(model="old-model", schema="2.0")
    del old["leakiest"]  # a 2.0 run predates some keys: the comparison recomputes or leaves them blank
    a = write_run(tmp_path / "old", old)
    b = write_run(tmp_path / "new", make_results(model="new-model", schema="2.7"))
    doc = compare_runs([a, b], tmp_path / "cmp")
    note = next(block for block in doc.section("differences").blocks
                if isinstance(block, Callout) and "schema versions" in block.title)
    assert note.kind == "info"
    assert "old-model on synthetic: schema 2.0" in note.items and "new-model on synthetic: schema 2.7" in note.items
    md = (tmp_path / "cmp" / "compare.md").read_text(encoding="utf-8")
    assert "different schema versions" in md and "90.0%" in md
    same = compare_runs([b, write_run(tmp_path / "new2", make_results(model="other", schema="2.7"))], tmp_path / "c2")
    assert not any(isinstance(block, Callout) and "schema versions" in block.title
                   for block in same.section("differences").blocks)


def test_a_different_schema_major_version_is_refused_naming_the_file(tmp_path: Path):
    a = write_run(tmp_path / "old", make_results(schema="1.0"))
    b = write_run(tmp_path / "new", make_results(schema="2.7"))
    with pytest.raises(SpeechAuditError) as err:
        compare_runs([a, b], tmp_path / "cmp")
    message = str(err.value)
    assert str(a / "results.json") in message and "1.0" in message and "\n" not in message
    assert not (tmp_path / "cmp").exists()


def test_truncated_results_file_is_refused_naming_it(tmp_path: Path):
    a = write_run(tmp_path / "a", make_results())
    broken = tmp_path / "b" / "results.json"
    broken.parent.mkdir()
    broken.write_text(json.dumps(make_results())[:500], encoding="utf-8")
    with pytest.raises(SpeechAuditError, match="not a complete JSON") as err:
        compare_runs([a, broken.parent], tmp_path / "cmp")
    assert str(broken) in str(err.value)


def test_a_single_run_is_refused(tmp_path: Path):
    a = write_run(tmp_path / "a", make_results())
    with pytest.raises(CompareError, match="at least 2 runs"):
        compare_runs([a], tmp_path / "cmp")


def test_labels_fall_back_to_folder_names_and_stay_unique(tmp_path: Path):
    same = make_results()
    a = write_run(tmp_path / "x" / "run", same)
    b = write_run(tmp_path / "y" / "run", same)
    c = write_run(tmp_path / "leace", same)
    doc = compare_runs([a, b, c], tmp_path / "cmp")
    assert [row[0] for row in _table(doc, "runs", "Runs").rows] == ["run (1)", "run (2)", "leace"]
    assert "No configuration key differs" in (tmp_path / "cmp" / "compare.md").read_text(encoding="utf-8")


def _defense(name: str, params: dict, layer: int, top1: float, retained: float | None) -> dict:
    return {"name": name, "params": params, "layer": layer, "status": "ok",
            "strongest": {"top1": {"value": top1, "ci95": _ci(top1, 0.05), "chance": 0.1}},
            "utility": {"task": "ctc", "metric": "cer", "value": 0.5, "retained": retained,
                        "retained_ci95": None if retained is None else _ci(retained, 0.05, 0, 2)}}


def test_defense_settings_table_gives_each_runs_top1_and_retained_utility(tmp_path: Path):
    defenses = [_defense("none", {}, 0, 0.9, 1.0), _defense("noise", {"sigma": 2}, 0, 0.4, 0.8),
                {"name": "pca", "params": {"k": 8}, "layer": 0, "status": "failed", "reason": "k above dimension"}]
    a = write_run(tmp_path / "plain", make_results(model="m1"))
    b = write_run(tmp_path / "defended", make_results(model="m2", defenses=defenses))
    doc = compare_runs([a, b], tmp_path / "cmp")
    table = _table(doc, "defenses", "Defense settings")
    rows = {(row[0], row[1]): row[2:] for row in table.rows}
    assert rows[("none", "0")] == ["", "top-1 90.0% [85.0, 95.0]; retained 1 (reference)"]
    assert rows[("noise sigma=2", "0")] == ["", "top-1 40.0% [35.0, 45.0]; retained 0.800 [0.750, 0.850]"]
    assert rows[("pca k=8", "0")] == ["", "failed: k above dimension"]
    assert any("no defenses were run" in note for note in table.notes)


def test_ci_agreement_asks_whether_b_lies_in_as_ci_and_never_counts_a_gap_as_agreement(tmp_path: Path, capsys):
    """The check behind the device benchmark: same audit on two devices, figure by figure, known answers."""
    from benchmarks.device_audit import agreement_counts, print_agreement

    base = make_results(top1=[0.9, 0.8, 0.5], defenses=[_defense("noise", {"sigma": 1}, 0, 0.4, 0.8)])
    base["layers"][1]["attacks"]["inversion"] = {"frame": {"content": {"wer_reconstruction": 0.4,
                                                                       "wer_reconstruction_ci95": [0.3, 0.5]}}}
    other = json.loads(json.dumps(base))
    other["layers"][0]["attacks"]["speaker_id"].update(top1=0.5, ci95=[0.45, 0.55])  # apart from [0.86, 0.94]
    other["layers"][2]["attacks"]["speaker_id"].update(top1=0.58, ci95=[0.54, 0.62])  # CIs touch, 0.58 > 0.54
    other["layers"][0]["attacks"]["attributes"]["gender"]["auc_ci95"] = None  # same value, no CI
    other["layers"][1]["attacks"]["inversion"]["frame"]["content"].update(wer_reconstruction=0.45,
                                                                          wer_reconstruction_ci95=[0.35, 0.55])
    del other["layers"][2]["attacks"]["verification"]
    paths = [write_run(tmp_path / "cpu", base), write_run(tmp_path / "cuda", other)]
    rows = {(r.what, r.where): r for r in ci_agreement(*load_runs(paths))}
    assert rows[("speaker-ID top-1", "layer 0")].verdict == "NO"
    touching = rows[("speaker-ID top-1", "layer 2")]
    assert touching.compared and not touching.agrees and touching.verdict == "NO"  # overlapping CIs are not enough
    same = rows[("speaker-ID top-1", "layer 1")]
    assert same.agrees and same.a == same.b == (0.8, pytest.approx([0.76, 0.84]))
    wer = rows[("inversion: ASR judge's WER on the reconstructions", "layer 1")]
    assert wer.agrees and wer.b == (0.45, [0.35, 0.55]) and wer.text(wer.b) == "45.0% [35.0, 55.0]"
    lacking = rows[("verification EER", "layer 2")]
    assert not lacking.measured_by_both and not lacking.agrees and lacking.b == (None, None)
    assert lacking.text(lacking.b) == "-" and lacking.verdict == "not compared: only one run"
    no_ci = rows[("gender AUC", "layer 0")]
    assert no_ci.a[0] == no_ci.b[0] and not no_ci.compared and not no_ci.agrees
    assert no_ci.verdict == "not compared: no CI"
    assert rows[("defense: strongest speaker-ID top-1", "noise sigma=1 at layer 0")].agrees
    utility = rows[("defense: utility (ctc, cer)", "noise sigma=1 at layer 0")]
    assert utility.a == (0.5, None) and utility.verdict == "not compared: no CI"
    assert agreement_counts(list(rows.values())) == {"agree": 10, "differ": 2, "not_compared": 3,
                                                     "one_run_only": 1, "identical": 9}
    print_agreement(paths, ["cpu float32", "cuda float32"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == ("  10 of 12 compared figures agree (cuda float32 value inside cpu float32 95% CI; 9 "
                           "identical), 2 differ; 3 not compared (1 measured by one run only, the rest without a CI)")


def test_flatten_config_gives_dotted_keys_and_one_key_per_table_in_a_list():
    flat = flatten_config({"seed": 0, "speaker_id": {"attackers": ["logreg"], "n_boot": 10}, "empty": {},
                           "defense": [{"name": "noise", "params": {"sigma": 2}}]})
    assert flat == {"seed": "0", "speaker_id.attackers": '["logreg"]', "speaker_id.n_boot": "10", "empty": "{}",
                    "defense[0]": '{"name": "noise", "params": {"sigma": 2}}'}


def test_markup_in_names_is_text_not_markup(tmp_path: Path):
    a = write_run(tmp_path / "a", make_results(model="<script>alert(1)</script>"))
    b = write_run(tmp_path / "b", make_results(model="plain"))
    compare_runs([a, b], tmp_path / "cmp")
    assert "<script>alert" not in (tmp_path / "cmp" / "compare.html").read_text(encoding="utf-8")
    assert "<script>alert" not in (tmp_path / "cmp" / "compare.md").read_text(encoding="utf-8")


def test_cli_compare_writes_both_formats_and_refuses_in_one_line(tmp_path, capsys):
    from audit.cli import main

    a = write_run(tmp_path / "a", make_results(model="whisper-tiny.en", top1=[0.9, 0.8, 0.5, 0.4, 0.3]))
    b = write_run(tmp_path / "b", make_results(model="ge2e", top1=[0.7, 0.6, 0.5, 0.4]))
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    assert (out / "compare.html").stat().st_size > 1000 and (out / "compare.md").stat().st_size > 500
    assert main(["compare", str(a), "--out", str(tmp_path / "one")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 2 runs" in err[0]


def test_one_corpus_in_two_folders_is_one_corpus_by_its_listing(tmp_path: Path):
    a_res, b_res = make_results(model="a"), make_results(model="b")
    b_res["corpus"]["fingerprint"] = "f" * 64  # the store's key: the copy's paths and mtimes differ
    for res in (a_res, b_res):
        res["corpus"]["listing_fingerprint"] = "1" * 64
    doc = compare_runs([write_run(tmp_path / "a", a_res), write_run(tmp_path / "b", b_res)], tmp_path / "cmp")
    assert not any(isinstance(b, Callout) and "different corpora" in b.title for b in doc.section("differences").blocks)
    provenance = {row[0]: row[1:] for row in _table(doc, "differences", "Model, corpus and software").rows}
    assert provenance["corpus fingerprint"][-1] == "yes" and provenance["corpus listing fingerprint"][-1] == "no"
    b_res["corpus"]["listing_fingerprint"] = "2" * 64
    doc = compare_runs([write_run(tmp_path / "a", a_res), write_run(tmp_path / "b2", b_res)], tmp_path / "cmp2")
    warning = next(b for b in doc.section("differences").blocks if isinstance(b, Callout))
    assert "different corpora" in warning.title and any("listing fingerprint 222222222222" in i for i in warning.items)


def test_a_weakened_run_is_named_with_its_weakenings_and_warns_against_a_full_one(tmp_path: Path, recwarn):
    full = write_run(tmp_path / "full", make_results(model="full-model"))
    weak_results = make_results(model="quick-model")
    weak_results["weakened"] = [{"kind": "quick", "text": "--quick: every family's reduced budget", "affects": ["*"]},
                                "speaker_id.n_boot=200: below the default budget 1000"]  # an older run's plain line
    weak = write_run(tmp_path / "weak", weak_results)
    with pytest.warns(UserWarning, match="differences between them may come from the weakening") as caught:
        doc = compare_runs([full, weak], tmp_path / "cmp")
    message = next(str(w.message) for w in caught if "weakening" in str(w.message))
    assert "\n" not in message and "quick-model on synthetic (2)" in message and "full run(s) full-model" in message
    runs = _table(doc, "runs", "Runs")
    assert [row[-1] for row in runs.rows] == ["no", "yes (2)"] and runs.columns[-1] == "weakened"
    callout = next(b for b in doc.section("differences").blocks if isinstance(b, Callout) and "Weakened" in b.title)
    assert callout.kind == "warning" and callout.items == [
        "quick-model on synthetic: weakened: [quick] --quick: every family's reduced budget",
        "quick-model on synthetic: weakened: [unknown] speaker_id.n_boot=200: below the default budget 1000",
        "full-model on synthetic: full audit, no weakening recorded"]
    for name in ("compare.md", "compare.html"):
        text = (tmp_path / "cmp" / name).read_text(encoding="utf-8")
        assert re.search(r"\\?\[quick\\?\] --quick: every family", text), name  # Markdown escapes brackets
        assert re.search(r"\\?\[unknown\\?\] speaker\\?_id\.n\\?_boot=200: below the default budget 1000", text), name
        assert "full audit, no weakening recorded" in text, name

    recwarn.clear()
    alike = write_run(tmp_path / "weak2", {**weak_results, "model": {**weak_results["model"], "spec": "other"}})
    doc = compare_runs([weak, alike], tmp_path / "cmp2")
    assert not [w for w in recwarn if "weakening" in str(w.message)]  # weakened alike: nothing to warn about
    callout = next(b for b in doc.section("differences").blocks if isinstance(b, Callout) and "Weakened" in b.title)
    assert "same weakenings" in callout.title and len(callout.items) == 4
    recwarn.clear()
    compare_runs([full, write_run(tmp_path / "full2", make_results(model="m2"))], tmp_path / "cmp3")
    assert not [w for w in recwarn if "weakening" in str(w.message)]

"""End-to-end audit on a generated corpus, config validation and the CLI's error handling."""

from __future__ import annotations

import json

import pytest

from audit.cli import main
from audit.config import config_from_dict, load_config
from audit.errors import ConfigError, CorpusError
from audit.pipeline import AuditPipeline
from tests.conftest import write_tone_corpus


def test_run_writes_results_and_summary(tmp_path):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=4, n_utts=8)
    out = tmp_path / "report"
    cfg = config_from_dict({"model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(out),
                            "cache_dir": str(tmp_path / "store"), "progress": False,
                            "speaker_id": {"attackers": ["logreg"], "n_boot": 200},
                            "verification": {"frame_max_epochs": 3, "n_boot": 200}})
    results = AuditPipeline(cfg).run()
    saved = json.loads((out / "results.json").read_text())
    assert saved["schema_version"] == results["schema_version"]
    assert saved["model"]["spec"] == "tiny-random-wav2vec2" and saved["corpus"]["n_speakers"] == 4
    assert len(saved["layers"]) == 3
    for layer in saved["layers"]:
        sid = layer["attacks"]["speaker_id"]
        assert {"top1", "ci95", "chance", "n_speakers", "n_test"} <= set(sid)
        assert sid["ci95"][0] <= sid["top1"] <= sid["ci95"][1] and sid["chance"] == 0.25
        assert layer["dim"] == 32
        assert set(layer["attack_seconds"]) == {"speaker_id", "verification", "attributes"}
        ver = layer["attacks"]["verification"]
        assert 0 <= ver["eer"] <= 1 and ver["ci95"][0] <= ver["eer"] <= ver["ci95"][1]
        assert {"lda", "plda", "frame"} <= set(ver["scorers"])
        # the headline is the worst case for privacy: the lowest test EER of all scorers
        assert ver["eer"] == min(r["eer"] for r in ver["scorers"].values() if r.get("eer") is not None)
        assert ver["validation_pick"] in {"lda", "plda"}
        attrs = layer["attacks"]["attributes"]
        assert {"gender", "gender_cca", "speech_rate", "speech_rate_cca"} <= set(attrs)
        assert all(r.get("skipped") or r.get("budget") for r in attrs.values())
    # distinct synthetic voices are identified far above chance by some layer
    assert max(la["attacks"]["speaker_id"]["top1"] for la in saved["layers"]) > 0.6
    summary = (out / "summary.md").read_text()
    assert "| layer |" in summary and "Threat model" in summary and "chance" in summary
    for name in ("speaker_id_by_layer.png", "verification_eer_by_layer.png", "speaker_id_learning_curves.png"):
        assert (out / name).stat().st_size > 1000, name
    assert any(f.startswith("map_most_leaky_layer") for f in saved["files"])
    assert "Speaker verification per layer" in summary and "Leakiest layer per measure" in summary
    assert (out / "report.html").stat().st_size > 10_000 and "Risk per threat" in summary
    # the strongest attacker's learning curve is printed next to its score, from the results
    sid0 = saved["layers"][0]["attacks"]["speaker_id"]
    curve0 = " / ".join(f"{100 * c['top1']:.0f}" for c in sid0["learning_curve"])
    assert "its top-1 at 25/50/100% data" in summary and f"| {curve0} |" in summary
    assert all("n_train_speakers" in c for c in saved["layers"][0]["attacks"]["verification"]["learning_curve"])
    assert "weakened" in saved and saved["weakened"]  # logreg-only is a weakening setting
    assert saved["splits"]["verification"]["kind"] == "speaker-disjoint"
    assert saved["splits"]["speaker_id"]["group_by"] == "recording"
    # the run's headline says how many attackers x layers it was picked from
    assert saved["summary"]["n_compared"] == 3 and "3 layers" in saved["summary"]["picked_from"]


def test_quick_is_warned_and_reported(tmp_path):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=3, n_utts=5)
    cfg = config_from_dict({"model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(tmp_path / "r"),
                            "cache_dir": str(tmp_path / "s"), "quick": True, "layers": [1], "progress": False,
                            "attacks": ["speaker_id", "attributes"]})
    with pytest.warns(UserWarning, match="weakened audit"):
        results = AuditPipeline(cfg).run()
    assert [la["index"] for la in results["layers"]] == [1]
    assert any(w["kind"] == "quick" and "--quick" in w["text"] for w in results["weakened"])
    assert {"kind": "family_not_run", "text": "attack family 'verification' not run",
            "affects": ["verification"]} in results["weakened"]
    assert "Weakened audit" in (tmp_path / "r" / "summary.md").read_text()


def test_verification_only_run_reports_and_maps_by_eer(tmp_path):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=6, n_utts=4)
    out = tmp_path / "r"
    cfg = config_from_dict({"model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(out),
                            "cache_dir": str(tmp_path / "s"), "progress": False, "attacks": ["verification"],
                            "verification": {"scorers": ["lda"], "n_boot": 200}})
    with pytest.warns(UserWarning, match="weakened audit"):
        results = AuditPipeline(cfg).run()
    assert results["summary"]["measure"] == "verification_eer"
    eers = [la["attacks"]["verification"]["eer"] for la in results["layers"]]
    assert results["summary"]["leakiest_eer"] == min(eers)
    summary = (out / "summary.md").read_text()
    assert "Speaker identification per layer" not in summary and "linked to the same or different person" in summary
    assert any(f.startswith("map_most_leaky_layer") for f in results["files"])


def test_impossible_family_is_named_before_extraction(tmp_path):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=3, n_utts=4)
    cache = tmp_path / "s"
    cfg = config_from_dict({"model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(tmp_path / "r"),
                            "cache_dir": str(cache), "quick": True, "progress": False, "attacks": ["verification"]})
    with pytest.raises(CorpusError, match="too small for the chosen attack families: verification.*--segment"):
        AuditPipeline(cfg).run()
    assert not cache.exists()  # refused before any extraction
    cfg = config_from_dict({"model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(tmp_path / "r"),
                            "cache_dir": str(cache), "quick": True, "progress": False})
    with pytest.warns(UserWarning, match="'verification' cannot run on this corpus"):
        results = AuditPipeline(cfg).run()
    assert "speaker-disjoint split impossible" in results["families_not_measurable"]["verification"]
    assert any(w["kind"] == "family_not_measurable" and w["text"].startswith("attack family 'verification' not "
                                                                              "measurable") for w in results["weakened"])
    assert "verification" not in results["layers"][0]["attacks"]
    assert "Not measurable on this corpus" in (tmp_path / "r" / "summary.md").read_text()


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "audit.toml"
    path.write_text('model = "ge2e"\nbogus = 1\n')
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        load_config(path)
    path.write_text('model = "ge2e"\n[speaker_id]\ntest_fraction = 1.5\n')
    with pytest.raises(ConfigError, match=r"speaker_id.test_fraction=1.5"):
        load_config(path)
    path.write_text('seed = "zero"\n')
    with pytest.raises(ConfigError, match="seed: expected int"):
        load_config(path)
    path.write_text('layers = "0,x"\n')
    with pytest.raises(ConfigError, match="layers="):
        load_config(path)
    path.write_text('[speaker_id]\nattackers = ["svm"]\n')
    with pytest.raises(ConfigError, match="unknown attacker 'svm'"):
        load_config(path)
    path.write_text('attacks = []\n')
    with pytest.raises(ConfigError, match="attacks: empty"):
        load_config(path)
    path.write_text('attacks = ["speaker_id", "gossip"]\n')
    with pytest.raises(ConfigError, match="unknown attack family 'gossip'"):
        load_config(path)
    path.write_text('corpus = "synthetic"\nwhere = ["subset=test-other"]\nlayers = [0, 2]\nsegment = 3\n')
    cfg = load_config(path)
    assert cfg.layers == [0, 2] and cfg.segment == 3.0


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    code = main(["run", "--model", "no-such-model", "--corpus", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("speech-audit: error:") and err.count("\n") == 1


def test_cli_flags_override_config(tmp_path, capsys):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=3, n_utts=4)
    cfg_path = tmp_path / "a.toml"
    cfg_path.write_text(f'model = "tiny-random-wav2vec2"\ncorpus = "{corpus}"\nlayers = [0]\n'
                        f'cache_dir = "{tmp_path / "s"}"\nattacks = ["speaker_id"]\n[speaker_id]\nattackers = ["logreg"]\nn_boot = 200\n')
    assert main(["run", "--config", str(cfg_path), "--layers", "2", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [la["index"] for la in saved["layers"]] == [2] and saved["config"]["layers"] == [2]
    out = capsys.readouterr().out
    assert "best of 1 attackers x layers" in out
    rating = next(r for r in saved["risks"] if r["threat"] == "re-identification")
    assert f"risk: re-identification {rating['words'].upper()}" in out  # the rating, as the report words it


def test_inversion_family_writes_listenable_examples(tmp_path):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=4, n_utts=5)
    out = tmp_path / "r"
    cfg = config_from_dict({"model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(out),
                            "cache_dir": str(tmp_path / "s"), "progress": False, "layers": [1],
                            "attacks": ["speaker_id", "inversion"],
                            "speaker_id": {"attackers": ["logreg"], "n_boot": 200},
                            "inversion": {"max_epochs": 2, "n_eval": 4, "n_examples": 1, "skip_judges": True,
                                          "n_boot": 200}})
    with pytest.warns(UserWarning, match="skip_judges"):
        results = AuditPipeline(cfg).run()
    inv = results["layers"][0]["attacks"]["inversion"]
    assert results["splits"]["inversion"]["kind"] == "speaker-disjoint"
    assert inv["voice_profile"]["lsd_db"] > 0 and inv["voice_profile"]["budget"]
    frame = inv["frame"]
    assert frame["mel"]["logmel_cd_db"] > 0 and frame["signal"]["mcd_db"] > 0 and -1 <= frame["signal"]["stoi"] <= 1
    assert frame["vocoder_copy_signal"]["mcd_db"] < frame["signal"]["mcd_db"]
    assert frame["judges"].startswith("skipped")
    wavs = [f for f in frame["files"] if f.endswith(".wav")]
    assert len(wavs) == 3 and all((out / f).stat().st_size > 1000 for f in wavs)
    assert "Inversion per layer" in (out / "summary.md").read_text()


def test_inversion_layers_run_after_the_others_on_the_selected_layers(tmp_path):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=4, n_utts=5)
    cfg = config_from_dict({"model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(tmp_path / "r"),
                            "cache_dir": str(tmp_path / "s"), "progress": False, "layers": [0, 1, 2],
                            "attacks": ["speaker_id", "inversion"],
                            "speaker_id": {"attackers": ["logreg"], "n_boot": 200},
                            "inversion": {"max_epochs": 2, "n_eval": 4, "n_examples": 0, "skip_judges": True,
                                          "n_boot": 200, "layers": ["leakiest", "last"]}})
    with pytest.warns(UserWarning, match="skip_judges"):
        results = AuditPipeline(cfg).run()
    chosen = {results["summary"]["leakiest_layer"], 2}
    for la in results["layers"]:
        inv = la["attacks"]["inversion"]
        if la["index"] in chosen:
            assert inv["frame"]["signal"]["mcd_db"] > 0 and "inversion" in la["attack_seconds"]
        else:
            assert inv["skipped"].startswith("layer not selected") and "inversion" not in la["attack_seconds"]


def test_frame_layers_run_the_frame_attackers_on_the_named_layers_only(tmp_path):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=6, n_utts=4)
    frame = {"frame_max_epochs": 1, "frame_channels": 16, "frame_layers": [0]}
    base = {"model": "tiny-random-wav2vec2", "corpus": str(corpus), "cache_dir": str(tmp_path / "s"),
            "progress": False, "layers": [0, 1, 2], "attacks": ["speaker_id", "verification"]}
    cfg = config_from_dict({**base, "out": str(tmp_path / "r"),
                            "speaker_id": {"attackers": ["logreg", "frame"], "n_boot": 200, **frame},
                            "verification": {"scorers": ["lda", "frame"], "n_boot": 200, **frame}})
    with pytest.warns(UserWarning, match="weakened audit"):
        results = AuditPipeline(cfg).run()
    for la in results["layers"]:
        sid = la["attacks"]["speaker_id"]["attackers"]
        ver = la["attacks"]["verification"]["scorers"]
        if la["index"] == 0:
            assert sid["frame"]["top1"] is not None and ver["frame"]["eer"] is not None
        else:
            for family, entry in (("speaker_id", sid["frame"]), ("verification", ver["frame"])):
                assert entry["skipped"] == (f"frame attacker not run on this layer ({family}.frame_layers = [0]: "
                                            "layers 0)")
    pooled_only = config_from_dict({**base, "out": str(tmp_path / "r2"),
                                    "speaker_id": {"attackers": ["logreg"], "n_boot": 200},
                                    "verification": {"scorers": ["lda"], "n_boot": 200}})
    with pytest.warns(UserWarning, match="weakened audit"):
        reference = AuditPipeline(pooled_only).run()
    # the pooled attackers' numbers are the same whether or not the family reran with the frame attacker
    for la, ref in zip(results["layers"], reference["layers"]):
        assert la["attacks"]["speaker_id"]["attackers"]["logreg"]["top1"] == ref["attacks"]["speaker_id"]["top1"]
        assert la["attacks"]["verification"]["scorers"]["lda"]["eer"] == ref["attacks"]["verification"]["eer"]


def test_frame_layers_are_validated():
    with pytest.raises(ConfigError, match=r"speaker_id\.frame_layers: 'first' is not a layer index"):
        config_from_dict({"speaker_id": {"frame_layers": ["first"]}}).validate()
    with pytest.raises(ConfigError, match=r"verification\.frame_layers=\[\]"):
        config_from_dict({"verification": {"frame_layers": []}}).validate()


def test_jobs_over_two_worker_processes_give_the_in_process_results(tmp_path):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=6, n_utts=4)
    base = {"model": "tiny-random-wav2vec2", "corpus": str(corpus), "cache_dir": str(tmp_path / "s"),
            "progress": False, "layers": [0, 1, 2], "attacks": ["speaker_id", "inversion"],
            "speaker_id": {"attackers": ["logreg", "frame"], "n_boot": 200, "frame_max_epochs": 1,
                           "frame_channels": 16, "frame_layers": ["leakiest", "last"]},
            "inversion": {"max_epochs": 2, "n_eval": 4, "n_examples": 1, "skip_judges": True, "n_boot": 200,
                          "layers": ["leakiest", "last"]},
            "defense_attacks": ["speaker_id"], "utility": "classification:digit", "utility_probe": {"n_boot": 200},
            "defense": [{"name": "noise", "sigma": 1.0, "layers": ["leakiest"]},
                        {"name": "pca", "k": 4, "layers": ["leakiest"]}]}
    runs = {}
    for workers in (1, 2):
        cfg = config_from_dict({**base, "workers": workers, "out": str(tmp_path / f"r{workers}")})
        with pytest.warns(UserWarning, match="weakened audit"):
            runs[workers] = AuditPipeline(cfg).run()
    def same(a, b, path=""):
        """Equal, timings aside; floats to 1e-9 (a worker sums on one BLAS thread, in another order)."""
        if isinstance(a, dict):
            keys = {k for k in a if not k.endswith("seconds")}
            assert keys == {k for k in b if not k.endswith("seconds")}, path
            for k in keys:
                same(a[k], b[k], f"{path}.{k}")
        elif isinstance(a, list):
            assert len(a) == len(b), path
            for k, (x, y) in enumerate(zip(a, b)):
                same(x, y, f"{path}[{k}]")
        elif isinstance(a, float):
            assert b == pytest.approx(a, rel=1e-9, abs=1e-12), path
        else:
            assert a == b, path

    same([la["attacks"] for la in runs[1]["layers"]], [la["attacks"] for la in runs[2]["layers"]])
    # the defense comparison's jobs too: each setting's ignorant and semi-informed parts met the same defended data
    same(runs[1]["defenses"], runs[2]["defenses"])
    assert [e["name"] for e in runs[2]["defenses"]] == ["none", "noise", "pca"]
    assert all("scenario_note" not in e for e in runs[2]["defenses"])
    assert set(runs[2]["defenses"][1]["scenarios"]) == {"ignorant", "lazy_informed", "semi_informed"}
    chosen = {runs[1]["summary"]["leakiest_layer"], 2}
    for la in runs[2]["layers"]:
        ran = la["attacks"]["speaker_id"]["attackers"]["frame"].get("top1") is not None
        assert ran == (la["index"] in chosen) and ("skipped" not in la["attacks"]["inversion"]) == ran
    # where the time went: the phases in order, and every pooled job once, on a worker (on this process with one);
    # the second pass and the defense comparison share one queue
    pooled = "second pass and defense comparison"
    names = ["checks and setup", "store", "first pass", pooled, "figures"]
    leaky = runs[1]["summary"]["leakiest_layer"]
    for workers, run in runs.items():
        timeline = run["timeline"]
        assert [ph["name"] for ph in timeline["phases"]] == names
        assert all(a["end"] <= b["start"] + 1e-3 for a, b in zip(timeline["phases"], timeline["phases"][1:]))
        assert {j["phase"] for j in timeline["jobs"]} == {pooled}
        assert sorted(j["job"] for j in timeline["jobs"]) == sorted(
            [f"{family} layer {i}" for family in ("speaker_id", "inversion") for i in chosen]
            + [f"defense layer {leaky}: {name}" for name in ("noise sigma=1.0", "pca k=4", "undefended attackers")])
        where = {j["worker"] for j in timeline["jobs"]}
        assert where == {"main"} if workers == 1 else where <= {0, 1}
        assert (timeline["pooled_phases"] == []) == (workers == 1)
    (ph,) = runs[2]["timeline"]["pooled_phases"]
    assert ph["workers"] == 2 and ph["phase"] == pooled
    for busy, idle in zip(ph["busy_seconds"], ph["idle_seconds"]):
        assert busy + idle == pytest.approx(ph["wall_seconds"], abs=0.01)
    html = (tmp_path / "r2" / "report.html").read_text(encoding="utf-8")
    assert "wall time per phase (s): checks and setup" in html and f"{pooled}: 2 worker processes, " in html
    listing = runs[2]["corpus"]["listing_fingerprint"]
    assert listing == runs[1]["corpus"]["listing_fingerprint"] and f"listing fingerprint {listing[:16]}" in html

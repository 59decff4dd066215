"""The defense comparison end to end on a generated corpus: partition, scenarios, utility, failures, output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attacks.speaker_id import LogisticSpeakerID
from audit.config import config_from_dict
from audit.curves import epoch_capped
from audit.defense_runner import _utility_entry, defended_layers, strongest
from audit.defense_tables import defense_table, pareto_front, privacy_utility_points
from audit.errors import ConfigError
from audit.pipeline import AuditPipeline
from tests.conftest import write_tone_corpus


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("defenses")
    corpus = write_tone_corpus(tmp / "c", n_speakers=8, n_utts=6, seconds=0.5)
    out = tmp / "r"
    cfg = config_from_dict({
        "model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(out), "cache_dir": str(tmp / "s"),
        "progress": False, "layers": [1], "attacks": ["speaker_id", "verification"],
        "speaker_id": {"attackers": ["logreg"], "n_boot": 200},
        "verification": {"scorers": ["lda"], "n_boot": 200},
        "utility": "classification:digit", "utility_probe": {"n_boot": 200},
        "defense": [{"name": "noise", "sweep": {"sigma": [0, 3]}, "layers": [1]},
                    {"name": "pca", "k": 4, "layers": [1]},
                    {"name": "adversarial", "lambda": 0.0, "epochs": 5, "layers": [1]},
                    {"name": "adversarial", "lr": 1e9, "epochs": 2, "layers": [1]}],
    })
    fits = []
    original = LogisticSpeakerID.fit

    def counted(self, train):
        fits.append(train.fingerprint())
        return original(self, train)

    with pytest.MonkeyPatch.context() as patch, pytest.warns(UserWarning):
        patch.setattr(LogisticSpeakerID, "fit", counted)
        results = AuditPipeline(cfg).run()
    results["_logreg_fits"] = fits
    return results, out


def test_attackers_trained_on_undefended_embeddings_are_fitted_once_per_layer(comparison):
    """The ignorant scenario of every setting reuses the reference's attackers (same rows, same seed)."""
    results, _ = comparison
    fits = results["_logreg_fits"]
    assert len(fits) == len(set(fits)), "an attacker was refitted on the same training data"
    retrained = sum(e["status"] == "ok" for e in results["defenses"][1:])
    # the audit's layer, the reference, and one retrained (semi-informed) attacker per working setting
    assert len(fits) == 1 + 1 + retrained
    for entry in results["defenses"][1:]:
        if entry["status"] == "ok" and "top1" in entry["scenarios"]["ignorant"].get("speaker_id", {}):
            assert entry["scenarios"]["ignorant"]["speaker_id"]["budget"]["n_train"] == \
                results["defenses"][0]["scenarios"]["semi_informed"]["speaker_id"]["budget"]["n_train"]


def test_reference_and_every_setting_are_recorded(comparison):
    results, out = comparison
    entries = json.loads((out / "results.json").read_text())["defenses"]
    assert [(e["name"], e["params"]) for e in entries] == [
        ("none", {}), ("noise", {"sigma": 0}), ("noise", {"sigma": 3}), ("pca", {"k": 4}),
        ("adversarial", {"lambda": 0.0, "epochs": 5}), ("adversarial", {"lr": 1e9, "epochs": 2})]
    plan = results["defense_plan"]
    assert plan["speakers_disjoint"] and plan["defense_partition"]["n_speakers"] == 4
    assert plan["evaluation_partition"]["n_speakers"] == 4
    for e in entries:
        assert e["layer"] == 1


def test_sigma_zero_noise_leaves_leakage_and_utility_unchanged(comparison):
    entries = comparison[0]["defenses"]
    none, zero = entries[0], entries[1]
    assert zero["status"] == "ok"
    ref_top1 = none["scenarios"]["semi_informed"]["speaker_id"]["top1"]
    for scenario in ("ignorant", "semi_informed"):
        assert zero["scenarios"][scenario]["speaker_id"]["top1"] == pytest.approx(ref_top1)
    assert zero["utility"]["value"] == pytest.approx(none["utility"]["value"])
    lo, hi = zero["utility"]["retained_ci95"]
    assert lo < 1.0 < hi or lo <= 1.0 <= hi and hi > lo
    u = zero["utility"]
    assert u["ci_unit"] == "speaker" and 0 < u["utility_chance"] < 1
    if u["undefended"] > u["utility_chance"]:
        assert u["retained_above_chance"] == pytest.approx(1.0) and none["utility"]["retained_above_chance"] == 1.0
    else:
        assert u["retained_above_chance"] is None and "no utility above chance" in u["retained_above_chance_reason"]


def test_lambda_zero_keeps_leakage_and_utility_within_the_ci(comparison):
    none, adv = comparison[0]["defenses"][0], comparison[0]["defenses"][4]
    assert adv["status"] == "ok" and adv["training_adversary"]["chance"] == pytest.approx(0.25)
    ref = none["scenarios"]["semi_informed"]["speaker_id"]
    lo, hi = ref["ci95"]
    assert lo <= adv["scenarios"]["semi_informed"]["speaker_id"]["top1"] <= hi
    ulo, uhi = none["utility"]["ci95"]
    assert ulo <= adv["utility"]["value"] <= uhi
    assert len(adv["fit"]["loss_history"]) == 5


def test_scenarios_strongest_and_dimension_changes(comparison):
    entries = comparison[0]["defenses"]
    noisy, pca = entries[2], entries[3]
    assert set(noisy["scenarios"]) == {"ignorant", "lazy_informed", "semi_informed"}
    assert set(noisy["scenarios"]["lazy_informed"]) == {"verification"}  # only families with enrolment
    best = noisy["strongest"]
    tops = [s["speaker_id"]["top1"] for s in noisy["scenarios"].values() if "speaker_id" in s]
    assert best["top1"]["value"] == max(tops) and best["top1"]["chance"] == pytest.approx(0.25)
    assert best["top1"]["ci95"][0] < best["top1"]["ci95"][1]
    source = max((s["speaker_id"] for s in noisy["scenarios"].values() if "speaker_id" in s), key=lambda r: r["top1"])
    assert "epoch_capped" in best["top1"] and best["top1"]["epoch_capped"] == epoch_capped(source)
    assert "not_applicable" in pca["scenarios"]["ignorant"] and pca["dims"]["frames"] == 4
    assert pca["strongest"]["top1"]["scenario"] == "semi_informed"


def test_a_diverging_setting_is_failed_with_its_reason_and_the_rest_complete(comparison):
    results, out = comparison
    failed = results["defenses"][-1]
    assert failed["status"] == "failed" and "diverged" in failed["reason"]
    assert "utility" not in failed and "strongest" not in failed
    summary = (out / "summary.md").read_text()
    assert "Defenses compared" in summary and "failed: " in summary and "Pareto front" in summary
    assert (out / "pareto_layer1.png").stat().st_size > 1000


def test_pareto_front_keeps_only_undominated_settings():
    pts = [{"label": "a", "leak": 0.9, "retained": 1.0}, {"label": "b", "leak": 0.5, "retained": 0.9},
           {"label": "c", "leak": 0.6, "retained": 0.8}, {"label": "d", "leak": 0.2, "retained": 0.3}]
    assert [p["label"] for p in pareto_front(pts)] == ["d", "b", "a"]


def test_pareto_front_uses_utility_above_chance_when_every_point_has_it():
    """A setting that keeps 0.6 of the raw utility but nothing above chance no longer dominates one that keeps 0.2."""
    pts = [{"label": "a", "leak": 0.9, "retained": 1.0, "retained_above_chance": 1.0},
           {"label": "b", "leak": 0.5, "retained": 0.6, "retained_above_chance": 0.0},
           {"label": "c", "leak": 0.5, "retained": 0.55, "retained_above_chance": 0.2}]
    assert [p["label"] for p in pareto_front(pts)] == ["c", "a"]
    raw_only = [{k: v for k, v in p.items() if k != "retained_above_chance"} for p in pts]
    assert [p["label"] for p in pareto_front(raw_only)] == ["b", "a"]
    mixed = [pts[0], {**pts[1], "retained_above_chance": None}, pts[2]]  # one scale for all: the raw one
    assert [p["label"] for p in pareto_front(mixed)] == ["b", "a"]


def _class_score(hits: np.ndarray, labels: np.ndarray):
    from audit.utility import UtilityScore

    n = hits.size
    return UtilityScore("classification:label", "accuracy", float(hits.mean()), [0.0, 1.0], float(hits.mean()), {},
                        n, 5, 1 - hits, np.ones(n, dtype=int), np.array([f"s{i % 5}" for i in range(n)]),
                        [f"u{i}" for i in range(n)], row_labels=labels, n_boot=200, seed=3)


def test_utility_entry_reports_retained_above_chance_and_the_table_shows_it():
    labels = np.array(["a", "b"] * 20)
    ref = _class_score(np.r_[np.ones(36, dtype=int), np.zeros(4, dtype=int)], labels)  # 0.9, chance 0.5
    defended = _class_score(np.r_[np.ones(20, dtype=int), np.zeros(20, dtype=int)], labels)  # 0.5: at chance
    entry = _utility_entry(defended, ref, 0.5 / 0.9, [0.45, 0.65])
    assert entry["utility_chance"] == 0.5 and entry["retained_above_chance"] == pytest.approx(0.0)
    low, high = entry["retained_above_chance_ci95"]
    assert low <= 0.0 <= high and high > low and entry["retained_above_chance_reason"] is None
    assert entry["retained"] == pytest.approx(0.5556, abs=1e-4)
    reference = _utility_entry(ref, ref, 1.0, None)
    assert reference["retained_above_chance"] == 1.0 and reference["retained_above_chance_ci95"] is None
    at_chance = _utility_entry(defended, defended, 1.0, None)
    assert at_chance["retained_above_chance"] is None and "no utility above chance" in \
        at_chance["retained_above_chance_reason"]
    json.dumps(entry)
    top1 = {"top1": {"value": 0.5, "ci95": [0.4, 0.6], "chance": 0.25}}
    results = {"defenses": [{"name": "none", "params": {}, "layer": 1, "status": "ok", "strongest": top1,
                             "utility": reference},
                            {"name": "noise", "params": {"sigma": 1}, "layer": 1, "status": "ok", "strongest": top1,
                             "utility": entry}]}
    table = defense_table(results)
    kept = {row[1]: row[table.columns.index("retained (95% CI)")] for row in table.rows}
    assert kept["none"] == "1 (reference)"
    assert kept["noise sigma=1"].startswith("0.556 [0.450, 0.650]; above chance 0.000 [")
    assert kept["noise sigma=1"].endswith("(chance 0.500)")
    unbounded = {**entry, "retained_above_chance_ci95": None}
    results["defenses"].append({**results["defenses"][1], "params": {"sigma": 2}, "utility": unbounded})
    kept = {row[1]: row[table.columns.index("retained (95% CI)")] for row in defense_table(results).rows}
    assert "above chance 0.000 [CI unbounded] (chance 0.500)" in kept["noise sigma=2"]
    results["defenses"].pop()
    points = privacy_utility_points(results["defenses"], 1)
    assert [p["retained_above_chance"] for p in points] == [1.0, pytest.approx(0.0)]


def test_strongest_picks_the_highest_top1_and_the_lowest_eer_across_scenarios():
    scen = {"ignorant": {"speaker_id": {"top1": 0.3, "ci95": [0.2, 0.4], "chance": 0.1},
                         "verification": {"eer": 0.2, "ci95": [0.1, 0.3]}},
            "semi_informed": {"speaker_id": {"top1": 0.7, "ci95": [0.6, 0.8], "chance": 0.1},
                              "verification": {"eer": 0.3, "ci95": [0.2, 0.4]}}}
    best = strongest(scen)
    assert best["top1"]["scenario"] == "semi_informed" and best["eer"]["scenario"] == "ignorant"
    assert best["top1"]["n_scenarios"] == 2


def test_defended_layers_resolves_names_once_each():
    assert defended_layers(["leakiest", "last", 2, 4], leakiest=4, last=5) == [4, 5, 2]
    with pytest.raises(ConfigError, match="leakiest"):
        defended_layers(["leakiest"], leakiest=None, last=3)
    assert np.all(np.diff(defended_layers([0, 1], None, 1)) > 0)


@pytest.mark.parametrize("first_guess", [0, None])
def test_a_comparison_queued_on_the_first_passs_leakiest_layer_moves_with_the_headline(tmp_path, monkeypatch,
                                                                                      first_guess):
    """Queued with the second pass on the first pass's leakiest layer; run again where the final headline lands."""
    import audit.pipeline as pipeline

    corpus = write_tone_corpus(tmp_path / "c", n_speakers=8, n_utts=4, seconds=0.5)
    cfg = config_from_dict({
        "model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(tmp_path / "r"),
        "cache_dir": str(tmp_path / "s"), "progress": False, "layers": [0, 1], "attacks": ["speaker_id"],
        "speaker_id": {"attackers": ["logreg"], "n_boot": 200}, "utility": "classification:digit",
        "utility_probe": {"n_boot": 200}, "defense": [{"name": "noise", "sigma": 1.0, "layers": ["leakiest"]}]})
    real, calls = pipeline.headline, []

    def moved(layers):  # the first pass says layer `first_guess` (None: no figure), the final headline layer 1
        out = dict(real(layers))
        out["leakiest_layer"] = first_guess if not calls else 1
        calls.append(out["leakiest_layer"])
        return out

    monkeypatch.setattr(pipeline, "headline", moved)
    results = AuditPipeline(cfg).run()
    assert [e["layer"] for e in results["defenses"]] == [1, 1] and calls[:2] == [first_guess, 1]
    phases = [ph["name"] for ph in results["timeline"]["phases"]]
    assert "defense comparison at the final leakiest layer" in phases
    queued = {j["job"] for j in results["timeline"]["jobs"] if j["phase"] == "second pass and defense comparison"}
    rerun = {j["job"] for j in results["timeline"]["jobs"] if j["phase"] == phases[phases.index(
        "defense comparison at the final leakiest layer")]}
    assert rerun == {"defense layer 1: undefended attackers", "defense layer 1: noise sigma=1.0"}
    assert queued == ({"defense layer 0: undefended attackers", "defense layer 0: noise sigma=1.0"}
                      if first_guess == 0 else set())


def _frame_probe(train, test, settings, ctx) -> dict:
    """A frame-level attacker trained undefended: nearest speaker centroid of mean frames (reads test frames)."""
    dim = train.checked_frames(0).shape[1]
    means = np.stack([train.checked_frames(i).mean(0) for i in range(len(train))])
    speakers = np.unique(train.speakers)
    centroids = np.stack([means[train.speakers == s].mean(0) for s in speakers])
    test_means = np.stack([test.checked_frames(i, dim).mean(0) for i in range(len(test))])
    guess = speakers[np.argmin(((test_means[:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    _FRAME_PROBE_SEEN.append(test)
    return {"top1": float(np.mean(guess == test.speakers)), "ci95": [0.0, 1.0], "chance": 1 / speakers.size,
            "pooled_dim": int(test.pooled.shape[1])}


_FRAME_PROBE_SEEN: list = []


def test_kmeans_keeps_the_ignorant_scenario_for_attackers_that_read_frames():
    """k-means keeps (T, D) frames but pools a k-bin histogram: undefended frame attackers still read its frames."""
    from types import SimpleNamespace

    from audit.defense_runner import _LayerComparison
    from audit.family import AttackFamily, RunContext
    from audit.splits import Split
    from defenses import kmeans, pca
    from tests.test_defenses import DIM, N_SPEAKERS, N_UTTS, planted_set

    view = planted_set()
    rows = np.arange(len(view))
    test = rows % N_UTTS >= N_UTTS // 2
    split = Split(train=rows[~test], val=rows[:0], test=rows[test], kind="closed-set", seed=0)
    family = AttackFamily(name="frame_probe", settings=dict, split=None, attack=_frame_probe, table=None)
    plan = SimpleNamespace(splits={"frame_probe": split}, eval_rows=rows, fit_rows=rows, task=None)
    cfg = SimpleNamespace(defense_scenarios=["ignorant", "lazy_informed", "semi_informed"], seed=0, progress=False,
                          settings=lambda name: {})
    comparison = _LayerComparison(plan, cfg, {"frame_probe": family}, view, RunContext(seed=0).layer(1, 50.0))
    _FRAME_PROBE_SEEN.clear()
    out = comparison.undefended_trained(kmeans.DEFENSE, {"k": 8}, kmeans.KMeansSettings(k=8))
    result = out["scenarios"]["ignorant"]["frame_probe"]
    assert "not_applicable" not in out["scenarios"]["ignorant"] and result["top1"] > 1 / N_SPEAKERS
    assert result["pooled_dim"] == 2 * DIM and "pooled mean+std as the store pools" in result["defended_input"]
    seen = _FRAME_PROBE_SEEN[0]
    centers = comparison._fit_defense(kmeans.DEFENSE, {"k": 8}, kmeans.KMeansSettings(k=8))[0].kmeans_.cluster_centers_
    first = seen.frames(0)
    assert first.shape[1] == DIM and np.allclose(first, centers[np.argmin(((first[:, None] - centers) ** 2).sum(-1), 1)])
    assert np.allclose(seen.pooled[0], np.concatenate([first.mean(0), first.std(0)]), atol=1e-5)
    assert out["scenarios"]["lazy_informed"] == {}  # no family with enrolment: lazy-informed has nothing to run
    reduced = comparison.undefended_trained(pca.DEFENSE, {"k": 4}, pca.PcaSettings(k=4))
    assert "not_applicable" in reduced["scenarios"]["ignorant"]  # 16 -> 4 per frame: nothing reads it

"""The still-learning and epoch-cap judges of attackers, and where the report, defense table and gate say so."""

from __future__ import annotations

import numpy as np
import pytest

from attacks import load_families
from attacks.speaker_id import LogisticSpeakerID
from audit.curves import STILL_LEARNING_GAIN, epoch_capped, still_learning
from audit.defense_tables import defense_table
from audit.embeddings import EmbeddingSet
from audit.report.build import _leakiest_bullets
from audit.results import fmt_still_learning
from audit.summary import headline_measures, leakiest

#: The built-in families' headline measures (what a run's ``leakiest`` reads).
HEADLINES = headline_measures(load_families())


def curve(metric: str, *values: float) -> dict:
    return {"learning_curve": [{"fraction": f, metric: v} for f, v in zip((0.25, 0.5, 1.0), values)]}


def test_rising_top1_is_still_learning_and_flat_is_not() -> None:
    verdict = still_learning(curve("top1", 0.30, 0.60, 0.85))
    assert verdict == {"metric": "top1", "fractions": [0.5, 1.0], "values": [0.60, 0.85],
                       "gain": pytest.approx(0.25), "margin": STILL_LEARNING_GAIN}
    assert still_learning(curve("top1", 0.30, 0.90, 0.93)) is None
    assert still_learning(curve("top1", 0.30, 0.90, 0.80)) is None  # falling: not learning
    assert fmt_still_learning(verdict) == "top1 60.0% → 85.0% from 50% to 100% of its training data"


def test_eer_counts_as_learning_when_it_falls() -> None:
    rows = [{"fraction": 1.0, "n_train_speakers": 12, "eer": 0.02},
            {"fraction": 0.5, "n_train_speakers": 6, "eer": 0.20}]
    verdict = still_learning({"learning_curve": rows})  # unsorted rows are put in fraction order
    assert verdict["metric"] == "eer" and verdict["values"] == [0.20, 0.02] and verdict["gain"] == pytest.approx(0.18)
    assert still_learning(curve("eer", 0.30, 0.10, 0.30)) is None


def test_curves_that_cannot_be_judged_give_none() -> None:
    assert still_learning({"learning_curve": [{"epoch": 1, "val_loss": 1.0}, {"epoch": 2, "val_loss": 0.1}]}) is None
    assert still_learning({"learning_curve": [{"fraction": 1.0, "top1": 0.9}]}) is None
    assert still_learning({"learning_curve": []}) is None and still_learning(None) is None
    assert still_learning(curve("r2", 0.1, 0.5, 0.8), margin=0.5) is None


def planted(n_speakers: int, n_utts: int, dim: int, signal: float) -> tuple[EmbeddingSet, EmbeddingSet]:
    """Gaussian speaker centres of scale ``signal`` in unit noise; 4 utterances per speaker held out."""
    rng = np.random.default_rng(0)
    speakers = np.repeat([f"s{i:02d}" for i in range(n_speakers)], n_utts)
    X = rng.standard_normal((speakers.size, dim)) + np.repeat(signal * rng.standard_normal((n_speakers, dim)),
                                                              n_utts, axis=0)
    data = EmbeddingSet(X.astype(np.float32), speakers, [f"u{i}" for i in range(speakers.size)])
    test = np.concatenate([np.flatnonzero(speakers == s)[:4] for s in np.unique(speakers)])
    return data.subset(np.setdiff1d(np.arange(speakers.size), test)), data.subset(test)


def test_a_data_starved_attacker_is_flagged_and_a_saturated_one_is_not() -> None:
    # 20 speakers x 8 training rows in 200 dims: logistic regression gains a lot from every row
    starved = LogisticSpeakerID(n_boot=50).fit(planted(20, 12, 200, 0.25)[0])
    result = starved.evaluate(planted(20, 12, 200, 0.25)[1]).to_dict()
    verdict = still_learning(result)
    assert verdict is not None and verdict["values"][1] == result["top1"]
    # well separated speakers: 100% from a quarter of the data on
    easy_train, easy_test = planted(8, 12, 16, 3.0)
    assert still_learning(LogisticSpeakerID(n_boot=50).fit(easy_train).evaluate(easy_test).to_dict()) is None


def test_headlines_carry_the_verdict_and_the_defense_table_says_so() -> None:
    rising = {"top1": 0.85, "ci95": [0.7, 0.95], "chance": 0.1, "attacker": "logreg",
              **curve("top1", 0.30, 0.60, 0.85)}
    layers = [{"index": 1, "name": "layer1", "attacks": {"speaker_id": rising}}]
    assert leakiest(layers, HEADLINES)["identity (speaker-ID top-1)"]["still_learning"]["values"] == [0.60, 0.85]
    flat = {**rising, **curve("top1", 0.80, 0.85, 0.85)}
    assert leakiest([{**layers[0], "attacks": {"speaker_id": flat}}], HEADLINES)["identity (speaker-ID top-1)"][
        "still_learning"] is None

    def entry(name: str, verdict: dict | None) -> dict:
        top1 = {"value": 0.85, "ci95": [0.7, 0.95], "chance": 0.1, "attacker": "logreg",
                "scenario": "semi_informed", "still_learning": verdict}
        return {"name": name, "params": {}, "layer": 1, "status": "ok", "strongest": {"top1": top1},
                "scenarios": {}, "wall_seconds": 1.0}

    table = defense_table({"defenses": [entry("noise", still_learning(rising)), entry("leace", None)]})
    cells = {row[1]: row[2] for row in table.rows}
    assert cells["noise"].endswith("(still learning)") and "still learning" not in cells["leace"]
    note = next(n for n in table.notes if n.startswith("Still learning"))
    assert "layer 1 noise: speaker-ID (logreg, semi), top1 60.0% → 85.0%" in note and "leace" not in note


def test_a_utility_probe_stopped_by_its_cap_is_flagged_in_the_defense_table() -> None:
    def entry(name: str, converged: bool) -> dict:
        utility = {"metric": "cer", "value": 0.2, "ci95": [0.1, 0.3], "retained": 0.9, "retained_ci95": [0.8, 1.0],
                   "budget": {"epochs": 30, "best_epoch": 30 if not converged else 12, "converged": converged}}
        return {"name": name, "params": {}, "layer": 1, "status": "ok", "strongest": {}, "scenarios": {},
                "utility": utility, "wall_seconds": 1.0}

    table = defense_table({"defenses": [entry("noise", False), entry("leace", True)]})
    cells = {row[1]: row[6] for row in table.rows}
    assert cells["noise"].endswith("(probe at its training cap)") and "cap" not in cells["leace"]
    note = next(n for n in table.notes if n.startswith("Utility probe at its training cap"))
    assert "layer 1 noise (best epoch 30 of 30)" in note and "leace" not in note


def test_only_networks_that_ran_out_of_epochs_read_as_capped() -> None:
    frame = {"attacker": "frame-ecapa", "budget": {"epochs": 20, "max_epochs": 20, "best_epoch": 17}}
    assert epoch_capped({**frame, "converged": False}) == {"epochs": 20, "best_epoch": 17}
    # the patience ran out on the last allowed epoch: an early stop, not a cap
    assert epoch_capped({**frame, "converged": True}) is None
    # pooled attackers: closed-form or solver-based, their "converged" is about the data curve
    assert epoch_capped({"attacker": "logreg", "converged": False, "budget": {"C": 1.0, "max_iter": 500}}) is None
    assert epoch_capped({"attacker": "mlp", "converged": False, "budget": {"epochs": 15}}) is None
    # frame verification: the encoder's own early stop decides, not the scorer's curve-aware flag
    verifier = {"attacker": "frame-ecapa+cosine", "converged": False,
                "budget": {"encoder": {"epochs": 19, "best_epoch": 13, "converged": True}}}
    assert epoch_capped(verifier) is None
    verifier["budget"]["encoder"]["converged"] = False
    assert epoch_capped(verifier) == {"epochs": 19, "best_epoch": 13}


def test_a_defense_judged_by_a_capped_attacker_says_so() -> None:
    capped = {"attacker": "frame-ecapa", "top1": 0.9, "converged": False,
              "budget": {"epochs": 20, "max_epochs": 20, "best_epoch": 20}}
    logreg = {"attacker": "logreg", "top1": 0.5, "converged": True, "budget": {"C": 1.0}}

    def entry(name: str, top1: dict, attackers: dict) -> dict:
        return {"name": name, "params": {}, "layer": 1, "status": "ok", "wall_seconds": 1.0,
                "strongest": {"top1": {"value": top1["top1"], "ci95": [0.4, 0.95], "chance": 0.1,
                                       "attacker": top1["attacker"], "scenario": "semi_informed",
                                       "still_learning": None, "epoch_capped": epoch_capped(top1)}},
                "scenarios": {"semi_informed": {"speaker_id": {**top1, "attackers": attackers}}}}

    table = defense_table({"defenses": [entry("noise", capped, {"frame": capped, "logreg": logreg}),
                                        entry("leace", logreg, {"logreg": logreg, "frame": capped}),
                                        entry("pca", logreg, {"logreg": logreg})]})
    cells = {row[1]: row[2] for row in table.rows}
    assert cells["noise"].endswith("(epoch cap)") and "cap" not in cells["leace"] + cells["pca"]
    note = next(n for n in table.notes if n.startswith("Attacker at its epoch cap"))
    # a capped attacker that is not the strongest is named too: trained longer, it might have been
    assert "layer 1 noise: speaker_id frame-ecapa [semi] (best epoch 20 of 20)" in note
    assert "layer 1 leace: speaker_id frame-ecapa [semi]" in note and "pca" not in note


def test_a_headline_from_a_capped_network_says_so() -> None:
    frame = {"top1": 0.9, "ci95": [0.8, 0.95], "chance": 0.1, "attacker": "frame-ecapa", "converged": False,
             "budget": {"epochs": 20, "max_epochs": 20, "best_epoch": 18}}
    layers = [{"index": 1, "name": "layer1", "attacks": {"speaker_id": frame}}]
    found = leakiest(layers, HEADLINES)["identity (speaker-ID top-1)"]
    assert found["epoch_capped"] == {"epochs": 20, "best_epoch": 18}
    (bullet,) = _leakiest_bullets({"leakiest": {"identity (speaker-ID top-1)": found}})
    assert bullet.endswith("frame-ecapa stopped at its epoch cap (best epoch 18 of 20), so one trained longer "
                           "might read more")
    early = leakiest([{**layers[0], "attacks": {"speaker_id": {**frame, "converged": True}}}],
                     HEADLINES)
    assert early["identity (speaker-ID top-1)"]["epoch_capped"] is None

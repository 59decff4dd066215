"""The headline is the worst case of many attackers x layers: on pure noise its CI must still cover chance.

A planted leak must read near 100% (with a CI that is not zero-width), and embeddings with no
speaker signal must read chance: the selection-adjusted CI of the picked headline covers
chance in at least 95% of seeds.
"""

from __future__ import annotations

import numpy as np
import pytest

from attacks import load_families
from attacks.speaker_id import SpeakerIDSettings, attack_speaker_id, split_speaker_id
from attacks.verification import VerificationSettings, attack_verification, split_verification
from audit.embeddings import EmbeddingSet
from audit.family import RunContext
from audit.summary import headline, headline_measures, leakiest

#: The built-in families' headline measures (what a run's ``leakiest`` reads).
HEADLINES = headline_measures(load_families())

N_LAYERS = 3


def layer_sets(seed: int, *, leak: float = 0.0, n_speakers: int = 10, n_utts: int = 6, dim: int = 16,
               frames: bool = False) -> list[EmbeddingSet]:
    """``N_LAYERS`` sets of noise embeddings; ``leak`` adds a per-speaker offset of that size."""
    rng = np.random.default_rng(seed)
    speakers = np.repeat([f"s{i:02d}" for i in range(n_speakers)], n_utts)
    sets = []
    for _ in range(N_LAYERS):
        centres = rng.standard_normal((n_speakers, dim)) * leak
        X = rng.standard_normal((speakers.size, dim)) + np.repeat(centres, n_utts, axis=0)
        seqs = [rng.standard_normal((40, 8)).astype(np.float32) for _ in range(speakers.size)] if frames else None
        sets.append(EmbeddingSet(X.astype(np.float32), speakers, [f"u{i}" for i in range(speakers.size)],
                                 frame_source=seqs.__getitem__ if frames else None))
    return sets


def audit_layers(sets: list[EmbeddingSet], seed: int, sid: SpeakerIDSettings,
                 ver: VerificationSettings | None = None) -> list[dict]:
    """Every attacker on every layer with the pipeline's splits and run context."""
    run = RunContext(seed=seed, n_layers=len(sets))
    out = []
    for index, view in enumerate(sets):
        ctx = run.layer(index, 50.0)
        split = split_speaker_id(view, sid, seed)
        attacks = {"speaker_id": attack_speaker_id(view.subset(split.train), view.subset(split.test), sid, ctx)}
        if ver is not None:
            vsplit = split_verification(view, ver, seed)
            attacks["verification"] = attack_verification(view.subset(vsplit.train), view.subset(vsplit.test),
                                                          ver, ctx)
        out.append({"index": index, "name": f"layer{index}", "attacks": attacks})
    return out


def test_planted_leak_reads_near_100_percent_with_a_ci_that_is_not_zero_width():
    sid = SpeakerIDSettings(attackers=["logreg"], n_boot=200)
    layers = audit_layers(layer_sets(0, leak=4.0), 0, sid)
    top = headline(layers)
    assert top["leakiest_top1"] >= 0.95
    low, high = top["leakiest_ci95"]
    assert low < high and low < top["leakiest_top1"] <= high
    # the selection-adjusted CI is wider still, and says how many figures it was picked from
    assert top["leakiest_selection_ci95"][0] <= low and top["n_compared"] == N_LAYERS


def null_coverage(sid: SpeakerIDSettings, ver: VerificationSettings, *, frames: bool,
                  seeds: range = range(20)) -> tuple[int, int]:
    """Seeds whose picked speaker-ID and verification headlines' selection CIs cover chance."""
    covered_sid = covered_ver = 0
    for seed in seeds:
        layers = audit_layers(layer_sets(seed, frames=frames), seed, sid, ver)
        top = headline(layers)
        assert top["n_compared"] == len(sid.attackers) * N_LAYERS
        lo, hi = top["leakiest_selection_ci95"]
        covered_sid += lo <= top["chance"] <= hi
        eer = leakiest(layers, HEADLINES)["identity (verification EER)"]
        assert eer["n_compared"] == len(ver.scorers) * N_LAYERS
        lo, hi = eer["selection_ci95"]
        covered_ver += lo <= 0.5 <= hi
    print(f"null coverage over {len(seeds)} seeds: speaker ID {covered_sid}, verification {covered_ver}")
    return covered_sid, covered_ver


def test_null_headline_ci_covers_chance_in_95_percent_of_seeds():
    sid = SpeakerIDSettings(attackers=["logreg"], n_boot=200)
    ver = VerificationSettings(scorers=["lda", "plda"], n_boot=200)
    assert min(null_coverage(sid, ver, frames=False)) >= 19


@pytest.mark.slow
def test_null_headline_of_every_attacker_covers_chance():
    sid = SpeakerIDSettings(attackers=["logreg", "mlp", "frame"], n_boot=200, frame_max_epochs=3, frame_channels=16)
    ver = VerificationSettings(scorers=["lda", "plda", "frame"], n_boot=200, frame_max_epochs=3, frame_channels=16)
    assert min(null_coverage(sid, ver, frames=True)) >= 19

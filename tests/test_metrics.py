"""Tests for audit.metrics: hand-computed cases and equality with speechbrain/sklearn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
    top_k_accuracy_score,
)
from speechbrain.utils.metric_stats import EER, minDCF

from audit.metrics import (
    DegenerateBootstrap,
    bootstrap_ci,
    leakage_ci,
    proportion_ci,
    chance_topk,
    eer,
    linkability,
    min_dcf,
    regression_scores,
    roc_auc,
    topk_accuracy,
)

# 3 target vs 3 non-target scores, worked by hand below.
POS3 = np.array([0.2, 0.6, 0.9])
NEG3 = np.array([0.1, 0.4, 0.7])


def _random_trials(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unequal-size score sets; even seeds have many ties (within and across sets)."""
    rng = np.random.default_rng(seed)
    n_pos, n_neg = int(rng.integers(5, 60)), int(rng.integers(5, 150))
    dtype = np.float32 if seed % 3 == 0 else np.float64
    if seed % 2 == 0:
        pos = rng.integers(0, 7, n_pos).astype(dtype)
        neg = rng.integers(0, 5, n_neg).astype(dtype)
    else:
        pos = np.round(rng.normal(1.0, 1.0, n_pos), 1).astype(dtype)
        neg = rng.normal(0.0, 1.0, n_neg).astype(dtype)
    return pos, neg


# ---------------------------------------------------------------- EER / minDCF


def test_eer_hand_example():
    # thresholds 0.1 .15 .2 .3 .4 .5 .6 .65 .7 .8 .9
    # FRR=#pos<=t/3:  0  0  1  1  1  1  2  2  2  2  3   (in thirds)
    # FAR=#neg>t/3:   2  2  2  2  1  1  1  1  0  0  0
    # first |FAR-FRR| = 0 at t=0.4 -> EER = (1/3 + 1/3) / 2
    value, threshold = eer(POS3, NEG3)
    assert value == pytest.approx(1 / 3, abs=1e-7)  # rates are float32 as in speechbrain
    assert threshold == 0.4


def test_min_dcf_hand_example():
    # p_target=0.01: C = 0.01 FRR + 0.99 FAR; FAR=0 first at t=0.7 with FRR=2/3
    value, threshold = min_dcf(POS3, NEG3)
    assert value == pytest.approx(0.01 * 2 / 3, rel=1e-6)
    assert threshold == 0.7
    # p_target=0.5: C = (FRR + FAR)/2 = 1/3 at t=.1,.15,.4,.5,.7,.8 -> first is 0.1
    value, threshold = min_dcf(POS3, NEG3, p_target=0.5)
    assert value == pytest.approx(1 / 3, rel=1e-6)
    assert threshold == 0.1
    # costs scale the terms: c_fa=10 -> C = 0.01 FRR + 9.9 FAR, min 0.01 * 2/3 at 0.7
    assert min_dcf(POS3, NEG3, c_fa=10.0) == pytest.approx((0.01 * 2 / 3, 0.7), rel=1e-6)


def test_eer_separated_and_identical():
    pos = np.array([0.6, 0.7, 0.8, 0.5])
    neg = np.array([0.4, 0.3, 0.2, 0.1])
    assert eer(pos, neg) == (0.0, 0.4)
    assert min_dcf(pos, neg) == (0.0, 0.4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=2000)
    assert eer(x, x)[0] == pytest.approx(0.5, abs=1e-3)
    assert eer(x, rng.normal(size=2000))[0] == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("seed", range(12))
def test_eer_min_dcf_equal_speechbrain(seed):
    pos, neg = _random_trials(seed)
    tp, tn = torch.from_numpy(pos), torch.from_numpy(neg)
    assert eer(pos, neg) == EER(tp, tn)  # bit-for-bit, ties included
    for p_target, c_miss, c_fa in [(0.01, 1.0, 1.0), (0.05, 10.0, 1.0), (0.5, 1.0, 3.0)]:
        ours = min_dcf(pos, neg, p_target=p_target, c_miss=c_miss, c_fa=c_fa)
        ref = minDCF(tp, tn, c_miss=c_miss, c_fa=c_fa, p_target=p_target)
        assert ours == ref


def test_eer_speechbrain_adjacent_floats():
    # consecutive float32 values: some midpoints round onto a neighbour
    v = [np.float32(1.0)]
    for _ in range(5):
        v.append(np.nextafter(v[-1], np.float32(2.0)))
    v = np.array(v, dtype=np.float32)
    rng = np.random.default_rng(1)
    for _ in range(5):
        pos, neg = rng.choice(v, 9), rng.choice(v, 13)
        tp, tn = torch.from_numpy(pos), torch.from_numpy(neg)
        assert eer(pos, neg) == EER(tp, tn)
        assert min_dcf(pos, neg, p_target=0.3) == minDCF(tp, tn, p_target=0.3)


@pytest.mark.parametrize(
    "pos, neg, expected",
    [
        # |FAR-FRR| = 2/3 at t=0 and t=0.5; float32 rounding makes speechbrain keep 0.5
        ([0.0], [0.0, 0.0, 1.0], ((float(np.float32(1 / 3)) + 1.0) / 2, 0.5)),
        # |FAR-FRR| = 0.8 at t=0, .5, 1, 1.5; the float64 argmin of the float32
        # rates would pick t=1 (EER 0.6), speechbrain's scan keeps t=0 (EER 0.4)
        ([1.0], [0.0, 1.0, 1.0, 1.0, 2.0], (float(np.float32(0.8)) / 2, 0.0)),
    ],
)
def test_eer_float32_tie_break_as_speechbrain(pos, neg, expected):
    pos, neg = np.array(pos), np.array(neg)
    assert eer(pos, neg) == expected == EER(torch.from_numpy(pos), torch.from_numpy(neg))


def test_eer_accepts_tensors_and_lists():
    pos = torch.tensor([0.6, 0.7], dtype=torch.float64)
    assert eer(pos, [0.1, 0.65]) == eer(np.array([0.6, 0.7]), np.array([0.1, 0.65]))
    # float32 input keeps float32 thresholds, as speechbrain
    assert eer(pos.float(), [0.1, 0.65]) == EER(pos.float(), torch.tensor([0.1, 0.65]))


@pytest.mark.parametrize(
    "pos, neg, match",
    [
        (np.array([]), np.array([0.1]), "positive_scores must not be empty"),
        (np.array([0.1]), np.array([]), "negative_scores must not be empty"),
        (np.array([0.1, np.nan]), np.array([0.1]), r"positive_scores\[1\]=.*nan"),
        (np.array([0.1]), np.array([np.inf]), "negative_scores must be finite"),
        (np.ones((2, 2)), np.array([0.1]), r"1-D, got shape \(2, 2\)"),
    ],
)
def test_eer_min_dcf_reject_bad_scores(pos, neg, match):
    with pytest.raises(ValueError, match=match):
        eer(pos, neg)
    with pytest.raises(ValueError, match=match):
        min_dcf(pos, neg)


def test_min_dcf_rejects_bad_costs():
    with pytest.raises(ValueError, match="p_target=1.5"):
        min_dcf(POS3, NEG3, p_target=1.5)
    with pytest.raises(ValueError, match="c_miss=-1"):
        min_dcf(POS3, NEG3, c_miss=-1)


# ---------------------------------------------------------------- linkability


def test_linkability_separated_and_identical():
    mated, nonmated = np.linspace(0.7, 1.0, 50), np.linspace(0.0, 0.3, 50)
    d_sys, extra = linkability(mated, nonmated)
    assert d_sys == pytest.approx(1.0, abs=1e-12)
    assert extra["n_bins"] == 5 and extra["bin_edges"].shape == (6,)
    assert extra["D"].shape == (5,) and set(np.unique(extra["D"])) <= {0.0, 1.0}
    # same scores on both sides: LR = 1 in every non-empty bin -> D = 0
    x = np.random.default_rng(0).normal(size=3000)
    d_sys, extra = linkability(x, x.copy())
    assert d_sys == 0.0 and np.all(extra["D"] == 0.0)
    assert extra["n_bins"] == 100
    # two samples of one distribution: only histogram noise
    rng = np.random.default_rng(1)
    assert linkability(rng.normal(size=5000), rng.normal(size=5000))[0] < 0.1


def test_linkability_hand_example():
    # 2 bins [0, .5) [.5, 1]: mated mass (.25, .75), non-mated (.75, .25)
    # LR = (1/3, 3) -> D = (0, 2*3/4 - 1 = .5) -> D_sys = .75 * .5
    mated, nonmated = np.array([0.0, 1.0, 1.0, 1.0]), np.array([0.0, 0.0, 0.0, 1.0])
    d_sys, extra = linkability(mated, nonmated, n_bins=2)
    assert d_sys == pytest.approx(0.375)
    np.testing.assert_allclose(extra["D"], [0.0, 0.5])
    np.testing.assert_allclose(extra["bin_edges"], [0.0, 0.5, 1.0])
    # reference-code trapz over bin centres: densities (.5, 1.5) -> .5 * (0 + .75) / 2
    assert linkability(mated, nonmated, n_bins=2, integration="trapz")[0] == pytest.approx(0.1875)
    # omega = 3: omega*LR = (1, 9) -> D = (0, 0.8) -> D_sys = .6
    assert linkability(mated, nonmated, n_bins=2, omega=3.0)[0] == pytest.approx(0.6)


def test_linkability_empty_bins():
    # middle bin empty for both (0/0 -> D = 0); top bin mated only (D = 1)
    mated = np.array([0.0, 2.9, 3.0])
    nonmated = np.array([0.0, 0.1])
    d_sys, extra = linkability(mated, nonmated, n_bins=3)
    np.testing.assert_array_equal(extra["D"], [0.0, 0.0, 1.0])
    assert d_sys == pytest.approx(2 / 3)
    assert np.isfinite(extra["D"]).all()


def _reference_trapz(mated, nonmated, omega=1.0):
    """Transcription of the VoicePrivacy / Maouche reference formula."""
    n_bins = min(int(len(mated) / 10), 100)
    edges = np.linspace(min(mated.min(), nonmated.min()), max(mated.max(), nonmated.max()), n_bins + 1)
    centers = (edges[1:] + edges[:-1]) / 2
    y1 = np.histogram(mated, bins=edges, density=True)[0]
    y2 = np.histogram(nonmated, bins=edges, density=True)[0]
    lr = np.divide(y1, y2, out=np.ones_like(y1), where=y2 != 0)
    d = 2 * (omega * lr / (1 + omega * lr)) - 1
    d[omega * lr <= 1] = 0
    d[(y2 == 0) & (y1 != 0)] = 1
    f = d * y1
    return float(np.sum((centers[1:] - centers[:-1]) * (f[1:] + f[:-1]) / 2)), d


@pytest.mark.parametrize("seed", range(4))
def test_linkability_trapz_matches_reference(seed):
    rng = np.random.default_rng(seed)
    mated = rng.normal(1.0, 1.0, int(rng.integers(30, 2000)))
    nonmated = rng.normal(0.0, 1.0, int(rng.integers(30, 3000)))
    ref, ref_d = _reference_trapz(mated, nonmated)
    d_sys, extra = linkability(mated, nonmated, integration="trapz")
    assert d_sys == pytest.approx(ref, rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(extra["D"], ref_d)
    # the bin-weighted sum differs only by half the two end-bin terms
    f = extra["D"] * extra["p_mated"] * np.diff(extra["bin_edges"])
    assert linkability(mated, nonmated)[0] == pytest.approx(d_sys + (f[0] + f[-1]) / 2)


def test_linkability_validation():
    with pytest.raises(ValueError, match="n_mated=9"):
        linkability(np.arange(9.0), np.arange(20.0))
    with pytest.raises(ValueError, match="omega=0"):
        linkability(np.arange(20.0), np.arange(20.0), omega=0)
    with pytest.raises(ValueError, match="n_bins=0"):
        linkability(np.arange(20.0), np.arange(20.0), n_bins=0)
    with pytest.raises(ValueError, match=r"mated_scores\[0\]=.*nan"):
        linkability(np.r_[np.nan, np.arange(20.0)], np.arange(20.0))
    with pytest.raises(ValueError, match="integration='simpson'"):
        linkability(np.arange(20.0), np.arange(20.0), integration="simpson")
    assert linkability(np.ones(20), np.ones(30))[0] == 0.0  # degenerate range


# ---------------------------------------------------------------- bootstrap


def test_proportion_ci_covers_true_mean_and_is_deterministic():
    rng = np.random.default_rng(0)
    p, n = 0.3, 20000
    correct = rng.random(n) < p
    rows = np.arange(n)  # every row its own cluster
    ((low, high),) = proportion_ci(correct, rows, seed=1)
    acc = correct.mean()
    assert low < acc < high
    half_width = 1.96 * np.sqrt(p * (1 - p) / n)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert abs(acc - p) < 2 * half_width
    assert proportion_ci(correct, rows, seed=1) == [(low, high)]
    # coverage of the true mean over 300 independent Bernoulli samples ~ 95%
    covered = 0
    for rep in range(300):
        sample = rng.random(2000) < p
        ((lo, hi),) = proportion_ci(sample, np.arange(2000), n_boot=200, seed=rep)
        covered += lo <= p <= hi
    assert 0.90 <= covered / 300 <= 0.99


def test_leakage_ci_is_never_zero_width_even_with_two_test_speakers():
    values = np.array([0.2, 0.4, 0.9, 0.7])  # a non-proportion statistic, two rows per speaker
    spk = np.array([0, 0, 1, 1])

    def mean(counts: np.ndarray) -> float:
        return float(np.average(values, weights=counts[spk]))

    # two speakers that every resample must both draw, or one speaker per stratum: one resample only
    with pytest.raises(DegenerateBootstrap, match="2 test speakers can be resampled in only one way"):
        leakage_ci(mean, 2, n_boot=100)
    with pytest.raises(DegenerateBootstrap, match="in 2 strata"):
        leakage_ci(mean, 2, strata=np.array(["F", "M"]), n_boot=100)
    # a proportion keeps its exact binomial floor instead
    ((low, high),) = leakage_ci(mean, 2, binomial=(2, 4), n_boot=100)
    assert low < 0.5 < high
    # three speakers resample in many ways: a real interval
    spk3 = np.array([0, 0, 1, 1, 2, 2])
    vals3 = np.array([0.2, 0.4, 0.9, 0.7, 0.5, 0.6])
    ((low, high),) = leakage_ci(lambda c: float(np.average(vals3, weights=c[spk3])), 3, n_boot=200)
    assert low < high


def test_bootstrap_ci_coverage():
    rng = np.random.default_rng(5)
    covered = 0
    for rep in range(100):
        x = rng.random(400) < 0.6
        low, high = bootstrap_ci(lambda a: a.mean(axis=1), x, n_boot=400, seed=rep, vectorized=True)
        covered += low <= 0.6 <= high
    assert 0.88 <= covered / 100 <= 1.0


def test_bootstrap_ci_paired_and_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 1.0, 3000)
    y = x + rng.normal(0.0, 0.1, 3000)
    low, high = bootstrap_ci(np.mean, x, n_boot=300)
    assert low < 2.0 < high
    assert bootstrap_ci(np.mean, x, n_boot=300) == (low, high)
    assert bootstrap_ci(np.mean, x, n_boot=300, seed=1) != (low, high)
    # rows resampled jointly: mean(y - x) stays near 0.0 with a narrow CI
    d_low, d_high = bootstrap_ci(lambda a, b: np.mean(b - a), x, y, n_boot=300)
    assert d_low < 0.0 < d_high and d_high - d_low < 0.02
    # vectorized stat gives the same resamples
    v = bootstrap_ci(lambda a: a.mean(axis=1), x, n_boot=300, vectorized=True)
    assert v == pytest.approx((low, high), rel=1e-12)


def test_bootstrap_validation():
    with pytest.raises(ValueError, match="same length"):
        bootstrap_ci(np.mean, np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="must not be empty"):
        bootstrap_ci(np.mean, np.ones(0))
    with pytest.raises(ValueError, match="alpha=1.5"):
        bootstrap_ci(np.mean, np.ones(3), alpha=1.5)
    with pytest.raises(ValueError, match="n_boot=0"):
        bootstrap_ci(np.mean, np.ones(3), n_boot=0)
    with pytest.raises(ValueError, match=r"hits\[1\]=2"):
        proportion_ci(np.array([1, 2, 0]), np.arange(3))
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci(lambda a: np.nan, np.ones(3), n_boot=5)


# ---------------------------------------------------------------- classification


def test_topk_accuracy_hand_and_sklearn_with_ties():
    s = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.3, 0.3, 0.3]])
    assert topk_accuracy(s, np.array([1, 2, 2]), k=1).tolist() == [True, False, True]
    assert topk_accuracy(s, np.array([2, 2, 0]), k=2).tolist() == [True, False, False]
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(300, 10)).astype(float)  # many ties
    labels = rng.integers(0, 10, size=300)
    for k in (1, 3, 5):
        hits = topk_accuracy(scores, labels, k)
        assert hits.dtype == bool and hits.shape == (300,)
        ref = top_k_accuracy_score(labels, scores, k=k, labels=np.arange(10))
        assert hits.mean() == pytest.approx(ref, abs=1e-15)


def test_topk_validation_and_chance():
    s = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"labels\[1\]=3"):
        topk_accuracy(s, np.array([0, 3]), 1)
    with pytest.raises(ValueError, match="k=4"):
        topk_accuracy(s, np.array([0, 1]), 4)
    with pytest.raises(ValueError, match=r"labels shape \(3,\)"):
        topk_accuracy(s, np.array([0, 1, 2]), 1)
    with pytest.raises(ValueError, match="finite"):
        topk_accuracy(np.array([[np.nan, 0.0]]), np.array([0]), 1)
    assert chance_topk(40, 1) == 1 / 40
    assert chance_topk(40, 5) == 0.125
    with pytest.raises(ValueError, match="k=41"):
        chance_topk(40, 41)


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 500
    labels = rng.random(n) < 0.3
    scores = np.round(rng.normal(size=n) + labels, 1)  # ties
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(scores, labels.astype(int)) == roc_auc(scores, labels)


def test_roc_auc_hand_and_validation():
    assert roc_auc(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0, 0, 1, 1])) == 0.875
    assert roc_auc(np.array([1.0, 2.0]), np.array([0, 1])) == 1.0
    assert roc_auc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5
    with pytest.raises(ValueError, match="n_neg=0"):
        roc_auc(np.array([1.0, 2.0]), np.array([1, 1]))
    with pytest.raises(ValueError, match="same length"):
        roc_auc(np.array([1.0, 2.0]), np.array([1]))


# ---------------------------------------------------------------- regression


def test_regression_scores_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.normal(10.0, 2.0, 400)
    pred = y + rng.normal(0.0, 1.0, 400)
    r = regression_scores(y, pred, train_mean=9.5)
    assert set(r) == {"mse", "mae", "r2", "baseline_mse"}
    assert r["mse"] == pytest.approx(mean_squared_error(y, pred), rel=1e-12)
    assert r["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-12)
    assert r["r2"] == pytest.approx(r2_score(y, pred), rel=1e-12)
    assert r["baseline_mse"] == pytest.approx(mean_squared_error(y, np.full(400, 9.5)), rel=1e-12)
    # constant target: sklearn's force_finite convention
    assert regression_scores(np.ones(3), np.ones(3), train_mean=0.0)["r2"] == 1.0
    assert regression_scores(np.ones(3), np.zeros(3), train_mean=0.0)["r2"] == 0.0


def test_regression_scores_validation():
    with pytest.raises(ValueError, match="same length"):
        regression_scores(np.ones(3), np.ones(2), train_mean=0.0)
    with pytest.raises(ValueError, match="train_mean=nan"):
        regression_scores(np.ones(3), np.ones(3), train_mean=float("nan"))
    with pytest.raises(ValueError, match=r"y_pred\[0\]=.*nan"):
        regression_scores(np.ones(3), np.array([np.nan, 1.0, 1.0]), train_mean=0.0)
    with pytest.raises(TypeError):
        regression_scores(np.ones(3), np.ones(3), 0.0)  # train_mean is keyword-only

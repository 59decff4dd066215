"""Defenses on small synthetic sets: erasure of a planted speaker direction, and each defense's contract."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import defenses
from audit.defense import DefenseContext, DefenseFailed, meanstd_pool
from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError
from audit.estimators import NotFittedError
from defenses import inlp, kmeans, leace, meanvar, noise, pca

N_SPEAKERS, N_UTTS, N_FRAMES, DIM = 8, 12, 20, 16
CHANCE = 1.0 / N_SPEAKERS
MODULES = {"leace": leace, "inlp": inlp, "noise": noise, "pca": pca, "meanvar": meanvar, "kmeans": kmeans}


def planted_set(seed: int = 0, offset: float = 3.0) -> EmbeddingSet:
    """Speakers whose frames carry a speaker-specific offset plus unit noise (nothing else tells them apart)."""
    rng = np.random.default_rng(seed)
    offsets = offset * rng.standard_normal((N_SPEAKERS, DIM)) / np.sqrt(DIM)
    frames, speakers, utt_ids = [], [], []
    for s in range(N_SPEAKERS):
        for u in range(N_UTTS):
            frames.append((offsets[s] + rng.standard_normal((N_FRAMES + u % 3, DIM))).astype(np.float32))
            speakers.append(f"spk{s}")
            utt_ids.append(f"spk{s}-utt{u}")
    return EmbeddingSet(np.stack([meanstd_pool(f) for f in frames]), np.array(speakers), utt_ids,
                        frame_source=lambda i: frames[i],
                        transcripts=np.array([f"text {i}" for i in range(len(frames))], dtype=object))


def fitted(name: str, view: EmbeddingSet, seed: int = 0, **settings) -> object:
    family = MODULES[name].DEFENSE
    return family.build(family.settings(**settings), DefenseContext(seed=seed)).fit(view)


def pooled_attack(view: EmbeddingSet) -> float:
    """Cross-validated logistic-regression speaker ID on pooled vectors (each utterance predicted once, held out)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    pred = cross_val_predict(model, view.pooled, view.speakers, cv=StratifiedKFold(4, shuffle=True, random_state=0))
    return float(np.mean(pred == view.speakers))


def frame_attack(view: EmbeddingSet) -> tuple[float, int]:
    """Logistic-regression speaker ID on single frames, utterances held out; accuracy and frames scored."""
    x = np.concatenate([view.frames(i) for i in range(len(view))])
    y = np.concatenate([[view.speakers[i]] * view.frames(i).shape[0] for i in range(len(view))])
    groups = np.concatenate([[i] * view.frames(i).shape[0] for i in range(len(view))])
    pred = cross_val_predict(LogisticRegression(max_iter=2000), x, y, groups=groups, cv=GroupKFold(4))
    return float(np.mean(pred == y)), int(y.size)


def chance_bound(n: int) -> float:
    """Accuracy an attacker at chance exceeds with probability 0.1% over ``n`` independent predictions."""
    return float(binom.ppf(0.999, n, CHANCE) / n)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Small dense problems: extra BLAS/OpenMP threads only add contention on a shared machine."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def planted() -> EmbeddingSet:
    return planted_set()


def test_planted_direction_is_readable_before_any_defense(planted):
    assert pooled_attack(planted) >= 0.95
    assert frame_attack(planted)[0] >= 0.6


@pytest.mark.parametrize("name", ["leace", "inlp"])
def test_linear_erasure_brings_pooled_attacker_to_chance(planted, name):
    defended = fitted(name, planted).transform(planted)
    # 96 predictions at chance 1/8: the 99.9% binomial quantile is ~0.23, far below the ~100% before.
    assert pooled_attack(defended) <= chance_bound(len(planted))


@pytest.mark.parametrize("name", ["leace", "inlp"])
def test_linear_erasure_brings_frame_attacker_to_chance(planted, name):
    accuracy, n = frame_attack(fitted(name, planted).transform(planted))
    # ~2000 frame predictions: the binomial bound is chance + ~0.02 (before: ~85%).
    assert accuracy <= chance_bound(n)


def test_leace_reports_erased_ranks(planted):
    report = fitted("leace", planted).report()
    assert report["n_classes"] == N_SPEAKERS
    assert 1 <= report["frame_rank_erased"] <= N_SPEAKERS - 1
    assert report["pooled_rank_erased"] is not None
    assert fitted("leace", planted, pooled=False).report()["pooled_rank_erased"] is None


def test_inlp_projection_is_orthogonal_and_stops_at_chance(planted):
    defense = fitted("inlp", planted)
    basis = defense.frame_basis_
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-8)
    once = defense.transform(planted).frames(0)
    # Idempotent (projecting again changes nothing) and nothing left along the removed directions.
    np.testing.assert_allclose(inlp.project_out(once.astype(np.float64), basis), once, atol=1e-5)
    assert np.abs(once @ basis).max() < 1e-4
    report = defense.report()["frames"]
    assert 1 <= report["iterations"] < 10 and report["rank_removed"] <= DIM
    assert report["heldout_accuracy"][0] > 0.6 and report["heldout_accuracy"][-1] <= report["chance"] + 0.02
    assert "pooled" in defense.report()


def test_noise_sigma_zero_is_identity(planted):
    defended = fitted("noise", planted, sigma=0.0).transform(planted)
    for i in range(len(planted)):
        assert np.array_equal(defended.frames(i), planted.frames(i))
    np.testing.assert_array_equal(defended.pooled, planted.pooled)


def test_noise_is_deterministic_per_utterance_and_scaled_to_train_std(planted):
    defense = fitted("noise", planted, sigma=0.5)
    first, second = defense.transform(planted), defense.transform(planted.subset([3, 0]))
    np.testing.assert_array_equal(first.frames(0), second.frames(1))
    np.testing.assert_array_equal(first.frames(3), second.frames(0))
    added = np.concatenate([first.frames(i) - planted.frames(i) for i in range(len(planted))])
    train_std = np.concatenate([planted.frames(i) for i in range(len(planted))]).std(0)
    np.testing.assert_allclose(added.std(0), 0.5 * train_std, rtol=0.06)
    other_seed = fitted("noise", planted, seed=1, sigma=0.5).transform(planted)
    assert not np.array_equal(other_seed.frames(0), first.frames(0))


def test_pca_dims_and_infeasible_k(planted):
    defended = fitted("pca", planted, k=4).transform(planted)
    assert defended.frames(0).shape == (planted.frames(0).shape[0], 4)
    assert defended.pooled.shape == (len(planted), 8)
    assert 0 < fitted("pca", planted, k=4).report()["explained_variance"] <= 1
    with pytest.raises(DefenseFailed, match=r"k=17.*D=16"):
        fitted("pca", planted, k=DIM + 1)


def test_meanvar_normalises_each_utterance(planted):
    defended = fitted("meanvar", planted).transform(planted)
    for i in range(len(planted)):
        f = defended.frames(i)
        np.testing.assert_allclose(f.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(f.std(0), 1, atol=1e-3)


def test_kmeans_units(planted):
    defense = fitted("kmeans", planted, k=10)
    defended = defense.transform(planted)
    assert defended.pooled.shape == (len(planted), 10)
    np.testing.assert_allclose(defended.pooled.sum(1), 1, atol=1e-6)
    centers = defense.kmeans_.cluster_centers_
    f = defended.frames(0)
    assert f.shape == planted.frames(0).shape
    assert all(np.any(np.all(np.isclose(row, centers), axis=1)) for row in f)
    counts = np.bincount(defense.kmeans_.predict(planted.frames(0)), minlength=10)
    np.testing.assert_allclose(defended.pooled[0], counts / counts.sum(), atol=1e-6)
    with pytest.raises(DefenseFailed, match="k=5000"):
        fitted("kmeans", planted, k=5000)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_contract(planted, name):
    module = MODULES[name]
    family = module.DEFENSE
    assert family.name == name and family.description
    settings = family.settings()
    settings.validate(f"defense.{name}.")
    defense = family.build(settings, DefenseContext(seed=0))
    with pytest.raises(NotFittedError):
        defense.transform(planted)
    train, test = planted.subset(np.arange(0, len(planted), 2)), planted.subset(np.arange(1, len(planted), 2))
    small = {"pca": {"k": 4}, "kmeans": {"k": 8}}.get(name, {})
    defense = family.build(family.settings(**small), DefenseContext(seed=0)).fit(train)
    out = defense.transform(test)
    assert len(out) == len(test) and out.pooled.dtype == np.float32
    assert np.array_equal(out.speakers, test.speakers) and out.utt_ids == test.utt_ids
    assert np.array_equal(out.transcripts, test.transcripts)
    assert out.frames(0).dtype == np.float32 and out.frames(0).shape[0] == test.frames(0).shape[0]
    assert isinstance(defense.report(), dict) and defense.fit_info_["n_utterances"] == len(train)
    assert set(family.sweepable) <= set(vars(settings))


def test_registry_reaches_every_defense():
    registry = defenses.load_defenses()
    for name, module in MODULES.items():
        assert registry[name] is module.DEFENSE


@pytest.mark.parametrize("name, key, value", [
    ("noise", "sigma", -1.0), ("pca", "k", 0), ("kmeans", "k", 1), ("leace", "frames_per_utt", 0),
    ("inlp", "frames_per_utt", 0), ("inlp", "n_iterations", 0), ("inlp", "stop_margin", -0.1),
    ("meanvar", "eps", 0.0), ("leace", "pooled", "yes"), ("noise", "frames_per_utt", 0),
])
def test_settings_validation_names_the_key(name, key, value):
    settings = MODULES[name].DEFENSE.settings(**{key: value})
    with pytest.raises(ConfigError) as caught:
        settings.validate(f"defense.{name}.")
    assert str(caught.value).startswith(f"defense.{name}.{key}={value!r}: ")

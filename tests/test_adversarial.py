"""Adversarial regularization: gradient reversal, identity at lambda = 0, hiding at strong lambda, failures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from audit.defense import DefenseContext, DefenseFailed, DefenseFamily
from audit.embeddings import EmbeddingSet
from audit.errors import ConfigError
from audit.metrics import clopper_pearson
from audit.splits import utterance_split
from audit.utility import UtilityTask
from defenses import adversarial
from defenses.adversarial import (AdversarialDefense, AdversarialSettings, GradientReversal, PrivacyEncoder,
                                  grad_reverse)

WORDS = ("yes", "no", "up", "down", "left", "right", "seven", "one")
CTC = UtilityTask("ctc")
#: A small, quick budget for the tiny sets below (~0.5 s a fit).
FAST = {"hidden": 64, "epochs": 30}


def planted_set(*, signal: float, n_speakers: int = 6, n_utts: int = 8, n_frames: int = 30, dim: int = 16,
                seed: int = 0) -> EmbeddingSet:
    """Frames ``noise + signal * offset_speaker`` with transcripts and a two-class ``digit`` column."""
    rng = np.random.default_rng(seed)
    offsets = rng.standard_normal((n_speakers, dim))
    seqs, speakers, texts, digits = [], [], [], []
    for s in range(n_speakers):
        for u in range(n_utts):
            x = rng.standard_normal((n_frames + int(rng.integers(0, 6)), dim)) + signal * offsets[s]
            seqs.append(x.astype(np.float32))
            speakers.append(f"spk{s}")
            texts.append(" ".join(rng.choice(WORDS, 2)))
            digits.append(str(u % 2))
    pooled = np.stack([np.concatenate([x.mean(0), x.std(0)]) for x in seqs]).astype(np.float32)
    return EmbeddingSet(pooled, np.array(speakers), [f"utt{i}" for i in range(len(seqs))],
                        {"digit": np.array(digits, dtype=object)}, seqs.__getitem__,
                        transcripts=np.array(texts, dtype=object))


def fit(data: EmbeddingSet, *, utility: UtilityTask | None = CTC, seed: int = 0, **settings) -> AdversarialDefense:
    return AdversarialDefense(AdversarialSettings(**{**FAST, **settings}),
                              DefenseContext(seed=seed, utility=utility)).fit(data)


@pytest.fixture(scope="module")
def planted() -> EmbeddingSet:
    return planted_set(signal=0.3)


@pytest.fixture(scope="module")
def fitted(planted) -> AdversarialDefense:
    return fit(planted, epochs=5)


# ---------------------------------------------------------------------------- gradient reversal


@pytest.mark.parametrize("lam", [0.0, 0.7, 3.0])
def test_gradient_reversal_flips_and_scales_the_gradient(lam):
    rng = np.random.default_rng(0)
    x0 = torch.from_numpy(rng.standard_normal(7))
    w = torch.from_numpy(rng.standard_normal(7))
    x = x0.clone().requires_grad_(True)
    y = grad_reverse(x, lam)
    assert torch.equal(y.detach(), x0)  # identity forward
    (w * y).sum().backward()
    torch.testing.assert_close(x.grad, -lam * w)
    # Against a central finite difference of the un-reversed loss (w * x).sum().
    h = 1e-6
    fd = torch.stack([((w * (x0 + h * e)).sum() - (w * (x0 - h * e)).sum()) / (2 * h) for e in torch.eye(7)])
    torch.testing.assert_close(x.grad, -lam * fd, atol=1e-6, rtol=1e-6)
    # Module form, inside a longer chain.
    x.grad = None
    (w * GradientReversal(lam)(torch.tanh(x))).sum().backward()
    torch.testing.assert_close(x.grad, -lam * w * (1 - torch.tanh(x0) ** 2))


def test_untrained_encoder_is_the_identity():
    rng = np.random.default_rng(1)
    x = (3 + 2 * rng.standard_normal((40, 16))).astype(np.float32)
    enc = PrivacyEncoder(x.mean(0), x.std(0), hidden=8)
    with torch.no_grad():
        z = enc(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(z, x, rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------- behaviour


def pooled_attack_accuracy(train: EmbeddingSet, test: EmbeddingSet) -> tuple[float, int, int]:
    """Logistic-regression speaker ID on pooled vectors: accuracy, hits, n."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train.pooled, train.speakers)
    hits = int(np.sum(model.predict(test.pooled) == test.speakers))
    return hits / len(test), hits, len(test)


def test_lambda_zero_keeps_pooled_speaker_accuracy():
    data = planted_set(signal=0.12, n_utts=12, seed=3)
    split = utterance_split(data.speakers, test_fraction=0.5, seed=0)
    train, test = data.subset(split.train), data.subset(split.test)
    defense = fit(train, lambda_=0.0)
    before, hits, n = pooled_attack_accuracy(train, test)
    after, _, _ = pooled_attack_accuracy(defense.transform(train), defense.transform(test))
    low, high = clopper_pearson(hits, n)
    assert before > 2 / data.n_speakers  # the planted signal is found, but not perfectly
    assert low <= after <= high, (before, after, (low, high))


@pytest.mark.parametrize("updates", ["alternating", "reversal"])
def test_strong_lambda_lowers_the_training_adversarys_heldout_accuracy(updates):
    # The adversarial game oscillates (the encoder fools the adversary, which then re-learns), so a
    # single run's final held-out accuracy on 12 utterances is coarse: average three seeded sets.
    plain, strong = [], []
    for seed in range(3):
        data = planted_set(signal=0.3, seed=seed)
        a = fit(data, lambda_=0.0, updates=updates, seed=seed).report()["training_adversary"]
        b = fit(data, lambda_=5.0, updates=updates, seed=seed).report()["training_adversary"]
        assert a["n_heldout"] == b["n_heldout"] == 12
        plain.append(a["heldout_accuracy"])
        strong.append(b["heldout_accuracy"])
    assert np.mean(plain) >= 0.75, plain
    assert np.mean(strong) <= np.mean(plain) - 0.3, (plain, strong)


def test_classification_utility_head(planted):
    defense = fit(planted, utility=UtilityTask("classification", "digit"), epochs=3, updates="alternating",
                  adversary_steps=2)
    report = defense.report()
    assert report["utility_heldout"]["loss_name"] == "cross_entropy"
    assert np.isfinite(report["final_utility_loss"])


def test_transform_keeps_the_layout(planted, fitted):
    out = fitted.transform(planted)
    assert out.pooled.shape == planted.pooled.shape and out.pooled.dtype == np.float32
    for i in (0, len(planted) - 1):
        f = out.frames(i)
        assert f.shape == planted.frames(i).shape and f.dtype == np.float32
        np.testing.assert_allclose(out.pooled[i], np.concatenate([f.mean(0), f.std(0)]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.speakers, planted.speakers)
    assert list(out.transcripts) == list(planted.transcripts)


def test_history_and_report(fitted):
    assert [h["epoch"] for h in fitted.history_] == [1, 2, 3, 4, 5]
    for row in fitted.history_:
        assert set(row) == {"epoch", "utility_loss", "adversary_loss", "adversary_train_accuracy"}
        assert all(np.isfinite(v) for v in row.values())
        assert 0.0 <= row["adversary_train_accuracy"] <= 1.0
    report = fitted.report()
    adv = report["training_adversary"]
    assert set(adv) == {"heldout_accuracy", "train_accuracy", "chance", "n_speakers", "n_heldout"}
    assert adv["n_speakers"] == 6 and adv["chance"] == pytest.approx(1 / 6)
    assert 0 < adv["n_heldout"] < 48 and 0.0 <= adv["heldout_accuracy"] <= 1.0
    assert report["updates"] == "reversal"
    assert report["final_utility_loss"] == fitted.history_[-1]["utility_loss"]
    assert report["utility_heldout"]["loss_name"] == "ctc" and np.isfinite(report["utility_heldout"]["loss"])
    assert fitted.fit_info_["n_speakers"] == 6


def test_fit_is_seeded(planted):
    a = fit(planted, epochs=2, seed=4)
    b = fit(planted, epochs=2, seed=4)
    assert a.history_ == b.history_
    np.testing.assert_array_equal(a.transform(planted).pooled, b.transform(planted).pooled)


def test_no_heldout_when_val_fraction_is_zero(planted):
    adv = fit(planted, epochs=1, val_fraction=0.0).report()["training_adversary"]
    assert adv["n_heldout"] == 0 and adv["heldout_accuracy"] is None


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize("warmup", [adversarial.WARMUP_EPOCHS, 0])
@pytest.mark.parametrize("updates", ["reversal", "alternating"])
def test_divergence_raises_with_the_reason(planted, monkeypatch, warmup, updates):
    monkeypatch.setattr(adversarial, "WARMUP_EPOCHS", warmup)  # 0: diverge in the joint training itself
    with pytest.raises(DefenseFailed, match=r"^training diverged: non-finite loss at epoch \d+"):
        fit(planted, lr=1e6, lambda_=50.0, updates=updates)


def test_non_finite_frames_raise(planted):
    seqs = [planted.frames(i).copy() for i in range(len(planted))]
    seqs[3][2, 5] = np.nan
    bad = dataclasses.replace(planted, frame_source=seqs.__getitem__)
    with pytest.raises(DefenseFailed, match="non-finite input frames.*utt3"):
        fit(bad, epochs=1)


def test_missing_utility_task_raises(planted):
    with pytest.raises(DefenseFailed, match="needs a utility task"):
        fit(planted, utility=None, epochs=1)


def test_pooled_only_set_raises(planted):
    with pytest.raises(DefenseFailed, match="frame-level"):
        fit(planted.with_pooled(planted.pooled), epochs=1)


@pytest.mark.parametrize("key, value", [("lambda_", -1.0), ("lambda_", float("inf")), ("updates", "both"),
                                        ("hidden", 0), ("epochs", 0), ("batch_size", 0), ("lr", 0.0),
                                        ("adversary_steps", 0), ("val_fraction", 1.0), ("val_fraction", -0.1)])
def test_settings_validation_names_the_key(key, value):
    name = "lambda" if key == "lambda_" else key
    with pytest.raises(ConfigError, match=rf"^defense\.adversarial\.{name}={value!r}".replace("(", r"\(")):
        AdversarialSettings(**{key: value}).validate("defense.adversarial.")


def test_defaults_validate_and_registry_entry():
    AdversarialSettings().validate("x.")
    family = adversarial.DEFENSE
    assert isinstance(family, DefenseFamily) and family.name == "adversarial"
    assert family.settings is AdversarialSettings and family.estimator is AdversarialDefense
    assert family.sweepable == ("lambda",)
    assert AdversarialSettings.KEY_ALIASES == {"lambda": "lambda_"}
    assert isinstance(family.build(AdversarialSettings(), DefenseContext()), AdversarialDefense)

"""The family registry: plugins through an entry point, settings from TOML, honest weakening flags."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from attacks import load_families
from attacks.attributes import AttributeSettings, split_attributes
from attacks.inversion import eval_rows
from audit.config import AuditConfig, config_from_dict
from audit.errors import ConfigError
from audit.pipeline import AuditPipeline
from tests.conftest import write_tone_corpus
from tests.plugins import install_plugin

PLUGIN = '''
"""A researcher's own attack family: mean distance of test vectors to the training centroid."""
from dataclasses import dataclass

import numpy as np

from audit.family import AttackFamily, FamilySettings
from audit.results import Table
from audit.splits import speaker_disjoint_split


@dataclass
class CentroidSettings(FamilySettings):
    BUDGET = ("scale",)
    QUICK = {"scale": 0.5}
    scale: float = 1.0

    def validate(self, prefix):
        if self.scale <= 0:
            from audit.errors import ConfigError
            raise ConfigError(f"{prefix}scale={self.scale!r}: must be > 0")


def split(labels, settings, seed):
    return speaker_disjoint_split(labels.speakers, test_fraction=0.5, seed=seed)


def attack(train, test, settings, ctx):
    centre = train.pooled.mean(0)
    return {"distance": float(settings.scale * np.linalg.norm(test.pooled - centre, axis=1).mean()),
            "n_train": len(train), "n_test": len(test), "layer": ctx.index}


def table(results):
    t = Table("Centroid distance", ["layer", "distance"])
    for la in results["layers"]:
        r = la["attacks"].get("centroid")
        if r:
            t.rows.append([str(la["index"]), f"{r['distance']:.3f}"])
    return t


FAMILY = AttackFamily(name="centroid", settings=CentroidSettings, split=split, attack=attack, table=table,
                      default=False)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Install a tiny plugin package with a ``speech_audit.attacks`` entry point on ``sys.path``."""
    root = install_plugin(tmp_path / "plugin", "centroid_family", "speech_audit.attacks",
                          "centroid = centroid_family:FAMILY", {"centroid_family": textwrap.dedent(PLUGIN)})
    monkeypatch.syspath_prepend(str(root))
    return root


def test_a_plugin_family_registers_through_the_entry_point_and_runs(plugin, tmp_path):
    assert "centroid" in load_families() and "centroid" not in AuditConfig().attacks  # default=False
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=4, n_utts=4)
    out = tmp_path / "r"
    cfg = config_from_dict({"model": "tiny-random-wav2vec2", "corpus": str(corpus), "out": str(out),
                            "cache_dir": str(tmp_path / "s"), "progress": False, "layers": [0],
                            "attacks": ["centroid"], "centroid": {"scale": 2.0}})
    with pytest.warns(UserWarning, match="'speaker_id' not run"):
        results = AuditPipeline(cfg).run()
    res = results["layers"][0]["attacks"]["centroid"]
    assert res["distance"] > 0 and res["n_train"] + res["n_test"] == 16 and res["layer"] == 0
    assert json.loads((out / "results.json").read_text())["config"]["centroid"] == {"scale": 2.0}
    assert "## Centroid distance" in (out / "summary.md").read_text()
    with pytest.raises(ConfigError, match="centroid.scale=-1"):
        config_from_dict({"centroid": {"scale": -1}})
    with pytest.raises(ConfigError, match="unknown key 'centroid.bogus'"):
        config_from_dict({"centroid": {"bogus": 1}})


def test_a_broken_plugin_is_named(tmp_path, monkeypatch):
    root = install_plugin(tmp_path / "broken", "broken", "speech_audit.attacks", "broken = no_such_module:FAMILY")
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(ConfigError, match="attack plugin 'broken'.*failed to load"):
        load_families()


def test_the_default_audit_is_not_flagged_as_weakened():
    assert AuditConfig().validate().weakening_settings() == []


@pytest.mark.parametrize("section, settings, expected", [
    ("speaker_id", {"frame_channels": 64}, "speaker_id.frame_channels=64: below the default budget 128"),
    ("speaker_id", {"attackers": ["logreg"]}, "speaker_id.attackers=['logreg']: leaves out mlp, frame"),
    ("verification", {"n_boot": 200}, "verification.n_boot=200: below the default budget 1000"),
    ("inversion", {"max_train_utts": 100}, "inversion.max_train_utts=100: below the default budget 400"),
    ("inversion", {"skip_judges": True}, "inversion.skip_judges"),
])
def test_real_weakenings_are_flagged(section, settings, expected):
    attacks = ["speaker_id", "verification", "attributes"] + (["inversion"] if section == "inversion" else [])
    cfg = config_from_dict({"attacks": attacks, section: settings})
    assert any(w.startswith(expected) for w in cfg.weakening_settings()), cfg.weakening_settings()


def test_quick_and_user_skipped_families_are_flagged_without_mutating_the_config():
    cfg = config_from_dict({"quick": True, "attacks": ["speaker_id", "attributes"]})
    weak = cfg.weakening_settings()
    assert weak[0].startswith("--quick") and "attack family 'verification' not run" in weak
    with pytest.warns(UserWarning, match="weakened audit"):
        effective = cfg.effective()
    assert effective.settings("speaker_id").attackers == ["logreg"]
    assert cfg.settings("speaker_id").attackers == ["logreg", "mlp", "frame"]  # the user's config is untouched


def test_attribute_split_uses_every_non_test_speaker_for_training():
    from audit.embeddings import EmbeddingSet

    speakers = np.repeat([f"s{i}" for i in range(20)], 3)
    gender = np.array(["F" if int(s[1:]) % 2 else "M" for s in speakers], dtype=object)
    labels = EmbeddingSet(np.zeros((60, 0)), speakers, [str(i) for i in range(60)], {"gender": gender})
    split = split_attributes(labels, AttributeSettings(), seed=0)
    assert split.val.size == 0 and split.train.size + split.test.size == 60
    assert not set(speakers[split.train]) & set(speakers[split.test])


def test_inversion_judges_get_two_utterances_of_each_evaluated_speaker_on_many_speakers():
    speakers = np.repeat([f"s{i:03d}" for i in range(40)], 3)
    rows = eval_rows(speakers, 16, seed=0)
    counts = np.unique(speakers[rows], return_counts=True)[1]
    assert rows.size == 16 and counts.min() >= 2 and counts.size == 8
    # one utterance per speaker: spread over the speakers (the speaker judge records why it cannot link)
    single = eval_rows(np.array([f"s{i}" for i in range(30)]), 16, seed=0)
    assert single.size == 16

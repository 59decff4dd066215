"""``[[defense]]`` tables and the defense options: each bad value is a ConfigError naming its key, before extraction."""

from __future__ import annotations

import pytest

from audit.config import config_from_dict
from audit.errors import ConfigError
from audit.pipeline import AuditPipeline
from tests.conftest import write_tone_corpus
from tests.plugins import install_plugin


def _cfg(**extra):
    return config_from_dict({"progress": False, **extra})


def test_sweep_expands_to_one_setting_per_value_and_aliases_map():
    cfg = _cfg(defense=[{"name": "noise", "sweep": {"sigma": [0, 0.5, 2]}, "layers": ["leakiest", "last", 2]},
                        {"name": "adversarial", "updates": "alternating", "sweep": {"lambda": [0, 1]}}])
    noise, adv = cfg.defenses
    assert [p["sigma"] for p in noise.grid()] == [0, 0.5, 2] and noise.layers == ["leakiest", "last", 2]
    assert adv.grid() == [{"updates": "alternating", "lambda": 0}, {"updates": "alternating", "lambda": 1}]
    assert adv.layers == ["leakiest"]
    assert cfg.weakening_settings() == []
    assert cfg.to_dict()["defense"][0]["sweep"] == {"sigma": [0, 0.5, 2]}


@pytest.mark.parametrize("table, key", [
    ({"name": "blur"}, "defense[0].name"),
    ({"name": "noise", "sigmaa": 1.0}, "defense[0].sigmaa"),
    ({"name": "noise", "sweep": {"sigma": [0, -1]}}, "sigma"),
    ({"name": "noise", "sweep": {"sigma": []}}, "defense[0].sweep.sigma"),
    ({"name": "pca", "sweep": {"k": [0]}}, "k"),
    ({"name": "leace", "sweep": {"k": [1]}}, "defense[0].sweep.k"),
    ({"name": "adversarial", "lambda": -1.0}, "lambda"),
    ({"name": "noise", "layers": ["middle"]}, "defense[0].layers"),
    ({"name": "noise", "sigma": 1.0, "sweep": {"sigma": [1.0]}}, "defense[0].sigma"),
])
def test_bad_defense_tables_name_the_key(table, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        _cfg(defense=[table])


def test_bad_defense_options_name_the_key():
    for extra, key in (({"utility": "asr"}, "utility"), ({"defense_fraction": 1.5}, "defense_fraction"),
                       ({"defense_fit_on": "users"}, "defense_fit_on"),
                       ({"defense_scenarios": ["ignorant"]}, "defense_scenarios"),
                       ({"attacks": ["speaker_id"], "defense_attacks": ["verification"]}, "defense_attacks"),
                       ({"defense_attacks": []}, "defense_attacks"),
                       ({"utility_probe": {"test_fraction": 2.0}}, "utility_probe.test_fraction")):
        with pytest.raises(ConfigError, match=key):
            _cfg(defense=[{"name": "noise"}], **extra)


def test_defense_attacks_limit_the_families_that_attack_the_defenses_and_weaken(tmp_path):
    from audit.defense_runner import plan_defenses
    from audit.pipeline import corpus_labels, prepare_corpus

    corpus = write_tone_corpus(tmp_path / "c", n_speakers=8, n_utts=4)
    cfg = _cfg(corpus=str(corpus), attacks=["speaker_id", "verification"], defense_attacks=["speaker_id"],
               utility="none",
               defense=[{"name": "noise"}])
    assert "defense_attacks: attack family 'verification' does not attack the defenses" in cfg.weakening_settings()
    plan = plan_defenses(cfg, cfg.registry(), corpus_labels(prepare_corpus(cfg)))
    assert list(plan.splits) == ["speaker_id"]


def test_fitting_on_the_evaluated_speakers_is_flagged_as_weakening():
    cfg = _cfg(defense=[{"name": "leace"}], defense_fit_on="evaluated", defense_scenarios=["semi_informed"])
    weak = cfg.weakening_settings()
    assert any("defense_fit_on='evaluated'" in w for w in weak)
    assert any("'ignorant' not run" in w for w in weak)


def _no_extraction(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the config error was raised")

    monkeypatch.setattr("audit.pipeline.build_extractor", refuse)


@pytest.mark.parametrize("extra, key", [
    ({"utility": "classification:colour"}, "utility"),
    ({"utility": "ctc"}, "utility"),  # every transcript is the same sentence: no held-out sentences remain
    ({"defense_fraction": 0.1}, "defense_fraction"),
])
def test_unsupported_utility_or_tiny_partition_fails_before_extraction(tmp_path, monkeypatch, extra, key):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=4, n_utts=4, seconds=0.3)
    _no_extraction(monkeypatch)
    cfg = _cfg(model="tiny-random-wav2vec2", corpus=str(corpus), out=str(tmp_path / "r"),
               cache_dir=str(tmp_path / "s"), attacks=["speaker_id"], defense=[{"name": "noise"}], **extra)
    with pytest.raises(ConfigError, match=key):
        AuditPipeline(cfg).run()


DEFENSE_PLUGIN = '''
from dataclasses import dataclass

from audit.defense import Defense, DefenseFamily, DefenseSettings
from audit.family import check_range


@dataclass
class ScaleSettings(DefenseSettings):
    factor: float = 0.5

    def validate(self, prefix):
        check_range(prefix, "factor", self.factor, 0)


class Scale(Defense):
    def _fit(self, train):
        self.factor_ = self.settings.factor

    def _frames(self, frames, utt_id):
        return frames * self.factor_


DEFENSE = DefenseFamily(name="scale", settings=ScaleSettings, estimator=Scale, description="scales frames",
                        sweepable=("factor",))
'''


def test_a_plugin_defense_registers_through_the_entry_point_and_runs(tmp_path, monkeypatch):
    root = install_plugin(tmp_path / "plugin", "scale_defense", "speech_audit.defenses",
                          "scale = scale_defense:DEFENSE", {"scale_defense": DEFENSE_PLUGIN})
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(ConfigError, match=r"defense\[0\]\.sweep .*factor=-1"):
        _cfg(defense=[{"name": "scale", "sweep": {"factor": [1, -1]}}])
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=8, n_utts=4, seconds=0.3)
    cfg = _cfg(model="tiny-random-wav2vec2", corpus=str(corpus), out=str(tmp_path / "r"),
               cache_dir=str(tmp_path / "s"), layers=[0], attacks=["speaker_id"], utility="none",
               speaker_id={"attackers": ["logreg"], "n_boot": 200},
               defense=[{"name": "scale", "sweep": {"factor": [2.0]}, "layers": [0]}])
    with pytest.warns(UserWarning):
        results = AuditPipeline(cfg).run()
    scaled = results["defenses"][1]
    assert scaled["name"] == "scale" and scaled["status"] == "ok" and scaled["params"] == {"factor": 2.0}
    assert scaled["strongest"]["top1"]["value"] >= 0 and scaled["utility"] is None


def test_a_smaller_utility_probe_budget_is_flagged_when_defenses_run():
    weak = _cfg(defense=[{"name": "noise"}], utility_probe={"ctc_epochs": 5}).weakening_settings()
    assert weak == ["utility_probe.ctc_epochs=5: below the default budget 30"]
    assert _cfg(utility_probe={"ctc_epochs": 5}).weakening_settings() == []


def test_a_defense_layer_the_model_lacks_fails_before_extraction(tmp_path, monkeypatch):
    corpus = write_tone_corpus(tmp_path / "c", n_speakers=8, n_utts=4, seconds=0.3)

    def refuse(*args, **kwargs):
        raise AssertionError("the store was built before the layer error was raised")

    monkeypatch.setattr("audit.pipeline.EmbeddingStore.build", refuse)
    cfg = _cfg(model="tiny-random-wav2vec2", corpus=str(corpus), out=str(tmp_path / "r"),
               cache_dir=str(tmp_path / "s"), attacks=["speaker_id"], utility="none",
               defense=[{"name": "noise", "layers": [1, 9]}])
    with pytest.raises(ConfigError, match=r"defense\[0\]\.layers: \[9\] out of range"):
        AuditPipeline(cfg).run()

"""The release gate: policies validated by rule, verdicts judged on the CI bound worst for privacy, exit codes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from junitparser import JUnitXml

from attacks import load_families
from audit.cli import main
from audit.gate import PolicyError, evaluate, load_policy
from audit.results import SCHEMA_VERSION

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "policies"


def layer(index: int, top1: float, ci: list, chance: float = 0.1, eer: float = 0.05, eer_ci=(0.02, 0.09)) -> dict:
    """One layer's results: speaker ID, verification and gender inference."""
    return {"index": index, "name": f"layer{index}", "dim": 8, "attacks": {
        "speaker_id": {"top1": top1, "ci95": list(ci), "chance": chance, "attacker": "logreg",
                       "attackers": {"logreg": {"top1": top1, "ci95": list(ci), "chance": chance}}},
        "verification": {"eer": eer, "ci95": list(eer_ci), "chance": 0.5, "attacker": "lda"},
        "attributes": {"gender": {"roc_auc": 0.55, "auc_ci95": [0.45, 0.65], "accuracy": 0.5, "ci95": [0.4, 0.6],
                                  "chance": 0.5}}}}


def results_with(layers: list[dict], **extra) -> dict:
    return {"schema_version": SCHEMA_VERSION, "config": {"attacks": ["speaker_id", "verification", "attributes"]},
            "model": {"spec": "m", "num_layers": len(layers)}, "corpus": {"spec": "c"}, "layers": layers,
            "summary": {"leakiest_layer": max(layers, key=lambda la: la["attacks"]["speaker_id"]["top1"])["index"]},
            **extra}


def policy(tmp_path: Path, *rules: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(f"[[rule]]\n{r}\njustification = \"test\"\n" for r in rules))
    return path


REID = 'metric = "speaker_id.top1"\nmax_ratio_to_chance = 2.0'


def test_planted_leak_fails_and_chance_level_passes(tmp_path):
    pol = load_policy(policy(tmp_path, REID), load_families())
    leak = evaluate(pol, results_with([layer(0, 0.12, [0.05, 0.2]), layer(1, 1.0, [0.97, 1.0])]))
    assert leak.status == "fail" and leak.exit_code == 1
    assert "layer 1" in leak.outcomes[0].message and "1 of 2 break it" in leak.outcomes[0].message
    noise = evaluate(pol, results_with([layer(0, 0.1, [0.05, 0.16]), layer(1, 0.11, [0.06, 0.18])]))
    assert noise.status == "pass" and noise.exit_code == 0


def test_a_rule_judged_on_a_still_learning_attacker_says_so(tmp_path):
    pol = load_policy(policy(tmp_path, REID), load_families())
    rising, flat = layer(0, 0.15, [0.12, 0.18]), layer(0, 0.15, [0.12, 0.18])
    for la, values in ((rising, (0.05, 0.08, 0.15)), (flat, (0.1, 0.14, 0.15))):
        la["attacks"]["speaker_id"]["learning_curve"] = [{"fraction": f, "top1": v}
                                                         for f, v in zip((0.25, 0.5, 1.0), values)]
    learning = evaluate(pol, results_with([rising])).outcomes[0]
    # the figure may understate leakage, so the pass is downgraded
    assert learning.status == "warn" and learning.measurements[0].still_learning["values"] == [0.08, 0.15]
    assert "still learning (top1 8.0% → 15.0% from 50% to 100% of its training data)" in learning.message
    assert "PASS downgraded to WARN" in learning.message
    settled = evaluate(pol, results_with([flat])).outcomes[0]
    assert settled.status == "pass" and "still learning" not in settled.message
    assert settled.to_dict()["measurements"][0]["still_learning"] is None


def test_a_rule_judged_on_an_attacker_stopped_at_its_epoch_cap_says_so(tmp_path):
    pol = load_policy(policy(tmp_path, REID), load_families())
    capped, early = layer(0, 0.15, [0.12, 0.18]), layer(0, 0.15, [0.12, 0.18])
    for la, converged in ((capped, False), (early, True)):
        la["attacks"]["speaker_id"].update(attacker="frame-ecapa", converged=converged,
                                           budget={"epochs": 20, "max_epochs": 20, "best_epoch": 19})
    outcome = evaluate(pol, results_with([capped])).outcomes[0]
    assert outcome.status == "warn" and outcome.measurements[0].epoch_capped == {"epochs": 20, "best_epoch": 19}
    assert "stopped at its epoch cap (best epoch 19 of 20): one trained longer might read more" in outcome.message
    settled = evaluate(pol, results_with([early])).outcomes[0]
    assert "epoch cap" not in settled.message and settled.to_dict()["measurements"][0]["epoch_capped"] is None


def test_worst_bound_is_the_ci_upper_for_a_max_rule_and_lenient_bounds_are_marked(tmp_path):
    # value 0.15 is under 2x chance (0.2), but the CI's upper bound 0.3 is not: the worst case fails
    res = results_with([layer(0, 0.15, [0.05, 0.3])])
    assert evaluate(load_policy(policy(tmp_path, REID), load_families()), res).status == "fail"
    with pytest.warns(UserWarning, match="lenient"):
        lenient = load_policy(policy(tmp_path, REID + '\nbound = "value"', name="l.toml"), load_families())
    outcome = evaluate(lenient, res).outcomes[0]
    assert outcome.status == "pass" and "lenient" in outcome.message and outcome.rule.lenient


def test_min_rule_on_eer_uses_the_lower_bound(tmp_path):
    pol = load_policy(policy(tmp_path, 'metric = "verification.eer"\nmin = 0.3'), load_families())
    ok = results_with([layer(0, 0.1, [0.05, 0.15], eer=0.45, eer_ci=(0.35, 0.5))])
    near = results_with([layer(0, 0.1, [0.05, 0.15], eer=0.35, eer_ci=(0.25, 0.45))])
    assert evaluate(pol, ok).status == "pass" and evaluate(pol, near).status == "fail"


def test_layer_selectors(tmp_path):
    res = results_with([layer(0, 1.0, [0.9, 1.0]), layer(1, 0.1, [0.05, 0.15]), layer(2, 0.1, [0.05, 0.15])])
    judge = {sel: evaluate(load_policy(policy(tmp_path, REID + f"\nlayer = {sel}", name=f"{i}.toml"),
                                       load_families()), res).status
             for i, sel in enumerate(['"every"', '"at_least_one"', '"leakiest"', '"last"', "0", "1"])}
    assert judge == {'"every"': "fail", '"at_least_one"': "pass", '"leakiest"': "fail", '"last"': "pass", "0": "fail",
                     "1": "pass"}


def test_warn_rule_passes_with_exit_0_and_missing_metric_is_an_error_even_for_warn(tmp_path):
    res = results_with([layer(0, 1.0, [0.9, 1.0])])
    warn = load_policy(policy(tmp_path, REID + '\nseverity = "warn"'), load_families())
    assert evaluate(warn, res).status == "warn" and evaluate(warn, res).exit_code == 0
    missing = load_policy(policy(tmp_path, 'metric = "inversion.frame.signal.stoi"\nmax = 0.5\nseverity = "warn"',
                                 name="m.toml"), load_families())
    verdict = evaluate(missing, res)
    assert verdict.exit_code == 2 and "'inversion' was not run" in verdict.outcomes[0].message
    skipped = results_with([layer(0, 1.0, [0.9, 1.0])])
    skipped["layers"][0]["attacks"]["speaker_id"] = {"skipped": "too few speakers"}
    verdict = evaluate(load_policy(policy(tmp_path, REID, name="s.toml"), load_families()), skipped)
    assert verdict.exit_code == 2 and "too few speakers" in verdict.outcomes[0].message


def test_defense_rules_read_the_strongest_scenario_per_setting(tmp_path):
    entry = {"name": "noise", "params": {"sigma": 1.0}, "layer": 0, "status": "ok",
             "strongest": {"top1": {"value": 0.5, "ci95": [0.4, 0.6], "chance": 0.1}},
             "utility": {"retained": 0.9, "retained_ci95": [0.85, 0.95]}}
    res = results_with([layer(0, 1.0, [0.9, 1.0])], defenses=[
        {**entry, "name": "none", "params": {}}, entry,
        {**entry, "params": {"sigma": 4.0}, "strongest": {"top1": {"value": 0.12, "ci95": [0.08, 0.18],
                                                                   "chance": 0.1}}}])
    rule = 'metric = "defenses.strongest.top1"\ndefense = "noise"\nmax_ratio_to_chance = 2.0'
    assert evaluate(load_policy(policy(tmp_path, rule + '\nlayer = "every"'), load_families()), res).status == "fail"
    assert evaluate(load_policy(policy(tmp_path, rule + '\nlayer = "at_least_one"', name="a.toml"), load_families()),
                    res).status == "pass"
    kept = 'metric = "defenses.utility.retained"\ndefense = "noise"\nmin = 0.8'
    assert evaluate(load_policy(policy(tmp_path, kept, name="k.toml"), load_families()), res).status == "pass"
    # the strongest figure's stored still-learning verdict reaches the rule's message
    verdict = {"metric": "top1", "fractions": [0.5, 1.0], "values": [0.05, 0.12], "gain": 0.07, "margin": 0.05}
    res["defenses"][2]["strongest"]["top1"]["still_learning"] = verdict
    outcome = evaluate(load_policy(policy(tmp_path, rule + '\nlayer = "at_least_one"', name="b.toml"), load_families()),
                       res).outcomes[0]
    assert outcome.status == "warn" and "sigma=4.0" in outcome.message
    assert "still learning (top1 5.0%" in outcome.message


@pytest.mark.parametrize("rule, message", [
    ('metric = "speaker_id.top1"\nmaximum = 2', "unknown key 'maximum'"),
    ('metric = "speaker_id.top9"\nmax = 0.2', "unknown metric of speaker_id"),
    ('metric = "voice_clone.top1"\nmax = 0.2', "unknown family 'voice_clone'"),
    ('metric = "speaker_id.top1"\nmax = 0.2\nlayer = "first"', "layer='first'"),
    ('metric = "speaker_id.top1"\nmax = 0.2\nlayer = -1', "layer=-1"),
    ('metric = "verification.eer"\nmax_ratio_to_chance = 2', "max_ratio_to_chance"),
    ('metric = "speaker_id.top1"\nmax = 0.2\nmin = 0.1', "exactly one of"),
    ('metric = "speaker_id.top1"\nmax = 0.2\nseverity = "info"', "severity='info'"),
    ('metric = "verification.linkability"\nmax = 0.2\nbound = "ci_upper"', "has no CI"),
    ('metric = "defenses.strongest.top1"\nmax = 0.2\ndefense = "vaccine"', "unknown defense"),
])
def test_bad_rules_are_named(tmp_path, rule, message):
    path = tmp_path / "bad.toml"
    path.write_text(f'[[rule]]\nmetric = "speaker_id.top1"\nmax = 0.5\njustification = "ok"\n\n'
                    f"[[rule]]\n{rule}\njustification = \"x\"\n")
    from defenses import load_defenses

    with pytest.raises(PolicyError, match="rule 2") as err:
        load_policy(path, load_families(), set(load_defenses()))
    assert message in str(err.value) and "bad.toml" in str(err.value)


def test_policy_file_errors(tmp_path):
    (tmp_path / "empty.toml").write_text('name = "nothing"\n')
    (tmp_path / "broken.toml").write_text("[[rule]\nmetric = ")
    (tmp_path / "nojust.toml").write_text('[[rule]]\nmetric = "speaker_id.top1"\nmax = 0.5\n')
    for name, message in (("empty.toml", r"no \[\[rule\]\]"), ("broken.toml", "not a valid TOML"),
                          ("nojust.toml", "justification"), ("absent.toml", "cannot read")):
        with pytest.raises(PolicyError, match=message):
            load_policy(tmp_path / name, load_families())


def test_example_policies_load():
    for path in sorted(EXAMPLES.glob("*.toml")):
        pol = load_policy(path, load_families())
        assert pol.rules and all(len(r.justification) > 40 for r in pol.rules), path


def _write(tmp_path: Path, res: dict) -> Path:
    (tmp_path / "run").mkdir(exist_ok=True)
    path = tmp_path / "run" / "results.json"
    path.write_text(json.dumps(res))
    return path


def test_cli_gate_exit_codes_and_junit(tmp_path, capsys):
    res = results_with([layer(0, 1.0, [0.9, 1.0]), layer(1, 0.1, [0.05, 0.15])])
    path = _write(tmp_path, res)
    passing = policy(tmp_path, REID + '\nlayer = "last"', 'metric = "verification.eer"\nmax = 0.5', name="ok.toml")
    failing = policy(tmp_path, REID, 'metric = "verification.eer"\nmax = 0.5',
                     'metric = "attributes.gender.roc_auc"\nmax = 0.5\nseverity = "warn"', name="no.toml")
    assert main(["gate", str(path), "--policy", str(passing)]) == 0
    junit = tmp_path / "junit.xml"
    assert main(["gate", str(path), "--policy", str(failing), "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert "gate FAIL" in out and "FAIL rule 1" in out and "WARN rule 3" in out
    xml = JUnitXml.fromfile(str(junit))
    assert (xml.tests, xml.failures, xml.errors) == (3, 1, 0)
    failure = next(r for suite in xml for case in suite for r in case.result)
    assert "2x chance" in failure.message and "justification: test" in failure.text
    missing = policy(tmp_path, 'metric = "inversion.frame.signal.stoi"\nmax = 0.5', name="missing.toml")
    assert main(["gate", str(path), "--policy", str(missing), "--junit", str(junit)]) == 2
    xml = JUnitXml.fromfile(str(junit))
    assert (xml.tests, xml.failures, xml.errors) == (1, 0, 1)


def test_cli_gate_refuses_bad_results_in_one_line(tmp_path, capsys):
    pol = policy(tmp_path, REID)
    good = results_with([layer(0, 1.0, [0.9, 1.0])])
    cases = {"other-schema": {**good, "schema_version": "1.0"}, "truncated": None, "not-results": {"a": 1}}
    for name, content in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(good)[:200] if content is None else json.dumps(content))
        assert main(["gate", str(path), "--policy", str(pol)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{name}.json" in err, err
    assert main(["gate", str(tmp_path / "none.json"), "--policy", str(pol)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_run_checks_the_policy_before_extraction(tmp_path, capsys):
    from tests.conftest import write_tone_corpus

    corpus = write_tone_corpus(tmp_path / "c", n_speakers=4, n_utts=4)
    store = tmp_path / "store"
    base = ["run", "--model", "tiny-random-wav2vec2", "--corpus", str(corpus), "--cache-dir", str(store),
            "--out", str(tmp_path / "r"), "--no-progress"]
    for rule, message in (('metric = "inversion.frame.signal.stoi"\nmax = 0.5', "not in this run's attacks"),
                          (REID + "\nlayer = 7", "layer=7: the model has layers 0..2"),
                          ('metric = "defenses.strongest.top1"\nmax = 0.5', "compares no defenses"),
                          ('metric = "speaker_id.top1"\nmax = "low"', "must be a finite number")):
        pol = policy(tmp_path, rule, name="run.toml")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main([*base, "--policy", str(pol)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "run.toml" in err[0], err
    assert not store.exists() or not any(store.rglob("*.npy"))  # nothing was extracted


def test_incomplete_results_are_refused_in_one_line_when_rendered(tmp_path, capsys):
    # enough to gate, not enough to draw the speaker-ID table (no top-5, no macro-F1)
    path = _write(tmp_path, results_with([layer(0, 1.0, [0.9, 1.0]), layer(1, 0.1, [0.05, 0.15])]))
    for argv in (["gate", str(path), "--policy", str(policy(tmp_path, REID)), "--out", str(tmp_path / "g")],
                 ["report", str(path), "--out", str(tmp_path / "plain")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and "speaker_id table" in err[0], err


def test_junit_into_a_new_folder_and_an_unwritable_one(tmp_path, capsys):
    path = _write(tmp_path, results_with([layer(0, 1.0, [0.9, 1.0])]))
    pol = policy(tmp_path, REID)
    assert main(["gate", str(path), "--policy", str(pol), "--junit", str(tmp_path / "ci" / "out" / "j.xml")]) == 1
    assert (tmp_path / "ci" / "out" / "j.xml").is_file()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["gate", str(path), "--policy", str(pol), "--junit", str(blocker / "j.xml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--junit" in err[0] and "cannot write" in err[0]

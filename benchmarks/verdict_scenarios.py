"""The verdict scenarios of issue #30, one line each, judged by whichever speech-audit is importable.

Run it against two trees to see what a change to the verdict layer does (nothing is asserted here;
tests/test_verdicts.py asserts the current answers):

    PYTHONPATH=OLD_TREE .venv/bin/python benchmarks/verdict_scenarios.py
    .venv/bin/python benchmarks/verdict_scenarios.py
"""
import tempfile, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from attacks import load_families
from attacks.inversion import rate_reconstruction
from attacks.speaker_id import rate_reidentification
from audit.gate import evaluate, load_policy, PolicyError
from audit.results import SCHEMA_VERSION

def inv(wer, ci, orig, top1=None, tci=None):
    frame = {"content": {"wer_reconstruction": wer, "wer_reconstruction_ci95": ci, "wer_original": orig},
             "signal": {"stoi": 0.5, "stoi_ci95": [0.45, 0.55]}}
    if top1 is not None:
        frame["speaker"] = {"top1": top1, "top1_ci95": tci, "chance": 0.125}
    return {"layers": [{"index": 1, "name": "l1", "attacks": {"inversion": {"frame": frame}}}]}

def layer(i, top1, ci, chance=0.1, eer=0.05, eer_ci=(0.02, 0.09), auc=0.55, auc_ci=(0.45, 0.65), auc_chance=0.5):
    return {"index": i, "name": f"l{i}", "attacks": {
        "speaker_id": {"top1": top1, "ci95": list(ci), "chance": chance, "attacker": "logreg"},
        "verification": {"eer": eer, "ci95": list(eer_ci), "chance": 0.5, "attacker": "lda"},
        "attributes": {"gender": {"roc_auc": auc, "auc_ci95": list(auc_ci), "chance": auc_chance, "accuracy": 0.5,
                                  "ci95": [0.4, 0.6]}}}}

def res(layers, **kw):
    return {"schema_version": SCHEMA_VERSION, "config": {"attacks": ["speaker_id", "verification", "attributes"]},
            "model": {"num_layers": len(layers)}, "corpus": {}, "layers": layers,
            "summary": {"leakiest_layer": max(layers, key=lambda l: l["attacks"]["speaker_id"]["top1"])["index"]}, **kw}

tmp = Path(tempfile.mkdtemp())
def gate(rule, results, head=""):
    p = tmp / "p.toml"
    p.write_text(head + "[[rule]]\n" + rule + '\njustification = "x"\n')
    try:
        v = evaluate(load_policy(p, load_families()), results)
        return f"{v.status} (exit {v.exit_code})"
    except PolicyError as e:
        return "refused: " + str(e).split(": ", 2)[-1][:90]
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[:80]}"

def words(r):
    return getattr(r, "words", r.level)
REID = 'metric = "speaker_id.top1"\nmax_ratio_to_chance = 2.0'
print("1a default inversion WER 44.6 [29.1,59.8]:", words(rate_reconstruction(inv(0.446, [0.291, 0.598], 0.34))))
print("1b short clips WER 75 [43.8,106.2], top1 31.2% [9,53]:", words(rate_reconstruction(inv(0.75, [0.438, 1.062], 0.375, 0.312, [0.09, 0.53]))))
print("1c small corpus top1 60% [15,95]:", words(rate_reidentification({"layers": [layer(0, 0.6, [0.15, 0.95])]})))
print("2  quick-weakened audit, top1 at chance:", gate(REID, res([layer(0, 0.1, [0.05, 0.15])], weakened=["--quick: reduced attacker budgets"])))
strong = {"name": "noise", "params": {}, "layer": 0, "status": "ok",
          "scenarios": {"ignorant": {"speaker_id": {"skipped": True, "reason": "ValueError"}},
                        "semi_informed": {"speaker_id": {"top1": 0.15, "ci95": [0.1, 0.18], "chance": 0.1}}}}
from audit.defense_runner import strongest
strong["strongest"] = strongest(strong["scenarios"])
print("3  defense with a failed scenario:", gate('metric = "defenses.strongest.top1"\nmax_ratio_to_chance = 2.0', res([layer(0, 0.1, [0.05, 0.15])], defenses=[strong])))
print("4a max = 2 on top-1:", gate('metric = "speaker_id.top1"\nmax = 2', res([layer(0, 0.1, [0.05, 0.15])])))
print("4b chance 0.6, 2x chance ratio:", gate(REID, res([layer(0, 0.1, [0.05, 0.15], chance=0.6)])))
print("5  AUC 0.62 [.58,.66], class chance 0.8, ratio 1.2:", gate('metric = "attributes.gender.roc_auc"\nmax_ratio_to_chance = 1.2', res([layer(0, 0.1, [0.05, 0.15], auc=0.62, auc_ci=(0.58, 0.66), auc_chance=0.8)])))
print("6  layer = 'all':", gate(REID + '\nlayer = "all"', res([layer(0, 1.0, [0.9, 1.0]), layer(1, 0.12, [0.08, 0.18])])))
print("7  utility.value min 0.5 (task CER):", gate('metric = "defenses.utility.value"\nmin = 0.5', res([layer(0, 0.1, [0.05, 0.15])], defenses=[{"name": "noise", "params": {}, "layer": 0, "status": "ok", "strongest": {}, "utility": {"metric": "cer", "value": 0.7, "ci95": [0.6, 0.8]}}])))
la = layer(0, 0.15, [0.12, 0.18]); la["attacks"]["speaker_id"].update(converged=False, budget={"epochs": 20, "max_epochs": 20, "best_epoch": 20})
print("9  pass on an epoch-capped attacker:", gate(REID, res([la])))
lk = res([layer(0, 0.9, [0.8, 0.95], eer=0.45, eer_ci=(0.42, 0.48)), layer(1, 0.2, [0.1, 0.3], eer=0.1, eer_ci=(0.05, 0.15))])
print("10 EER min 0.4 at leakiest (layer 1 leaks by EER):", gate('metric = "verification.eer"\nmin = 0.4\nlayer = "leakiest"', lk))
nc = layer(0, 0.1, [0.05, 0.15]); del nc["attacks"]["speaker_id"]["ci95"]
print("11 top-1 without CI under worst:", gate(REID, res([nc])))
print("11b min_dcf_norm, worst bound:", gate('metric = "verification.min_dcf_norm"\nmax = 0.5', res([layer(0, 0.1, [0.05, 0.15])])))

"""Build the report document once from a run's results; every renderer draws this one document.

The order is what a reviewer needs first: the gate's verdict (when a policy was given), a risk
rating per threat with the number behind it, notices that limit the audit, then the threat
model, per-layer leakage, listenable reconstructions, the defense comparison, methodology and
what it takes to reproduce the run. Each family's table and risk rating come from its registry
entry; nothing here names a family's result keys except through it.
"""

from __future__ import annotations

import json
from typing import Any

from audit.defense_tables import defense_table
from audit.family import AttackFamily
from audit.gate import measure_for, verdict_table
from audit.weakening import weakening_lines
from audit.report.document import (AudioClip, AudioExample, Bullets, Callout, Code, Figure, Paragraph,
                                   ReportDocument, Section)
from audit.results import (ResultsError, RiskRating, rating_sort_key, Table, attack_results, fmt_ci, fmt_num, fmt_pct,
                           fmt_still_learning, is_ok)

#: Attacker scenarios of the threat model, in plain words (VoicePrivacy's names).
SCENARIO_WORDS = (
    ("ignorant", "the attacker trained on undefended embeddings and applies that model to defended ones "
                 "(and enrols speakers on undefended speech)"),
    ("lazy-informed", "the attacker knows a defense is applied: enrolment and trials are defended, but the scorer "
                      "was trained on undefended embeddings"),
    ("semi-informed", "the attacker retrains every model on defended embeddings of its own side corpus: the strongest "
                      "of the three, and the one a defense is judged by"),
)
LABEL_KIND = {"original": "original recording", "vocoder_copy": "vocoder copy (original mel -> vocoder)",
              "reconstruction": "reconstruction from the embeddings"}


def risk_ratings(results: dict, registry: dict[str, AttackFamily]) -> list[RiskRating]:
    """One rating per threat of the registry, worst first; threats not run or not measurable say so."""
    ran = set((results.get("config") or {}).get("attacks") or [])
    not_measurable = results.get("families_not_measurable") or {}
    ratings = []
    for name, family in registry.items():
        if not family.threat:
            continue
        if name in not_measurable:
            ratings.append(RiskRating(family.threat, "not measured", f"not measurable on this corpus: "
                                                                     f"{not_measurable[name]}"))
        elif name not in ran or family.risk is None:
            ratings.append(RiskRating(family.threat, "not measured",
                                      f"not tested in this run (attack family {name!r} was not selected; add it to "
                                      "the config's attacks)"))
        else:
            ratings.append(family.risk(results))
    return sorted(ratings, key=RiskRating.sort_key)


def _number_cell(r: dict, registry: dict[str, AttackFamily]) -> str:
    if r.get("value") is None:
        return "n/a"
    measure = measure_for(r.get("metric", ""), registry)
    show = measure.show if measure else (lambda x: fmt_num(x))
    ci = measure.show_ci(r.get("ci95")) if measure else fmt_ci(r.get("ci95"), 1, ".2f")
    chance = "" if r.get("chance") is None else f", chance {show(r['chance'])}"
    where = "" if r.get("layer") is None else f" at layer {r['layer']}"
    return f"{r['metric']} {show(r['value'])} {ci}{chance}{where}"


def risk_table(risks: list[dict], registry: dict[str, AttackFamily] | None = None) -> Table:
    """The stored risk ratings (``results["risks"]``) as a table; the rating words are the status column."""
    table = Table("Rating per threat (worst first)", ["threat", "rating", "number behind it (95% CI, chance)", "why"],
                  status_column=1)
    for r in sorted(risks, key=rating_sort_key):
        table.rows.append([r["threat"], str(r.get("words") or r["level"]).upper(), _number_cell(r, registry or {}),
                           r["reason"]])
    table.notes.append(
        "Each layer's figure is rated by both ends of its 95% CI (the hull of the attacker's own interval and, where "
        "the figure was picked from several attackers or layers, the Bonferroni-adjusted one): the bound worst for "
        "privacy gives the worst band the data allow, the bound best for privacy the best. A threat is LOW only when "
        "even the worst-case bound lies in the low band, and HIGH only when even the best-case bound lies in the "
        "high band; a CI spanning bands reads INCONCLUSIVE (best to worst) and is ordered by its worst band. The "
        "worst layer is shown; each family states its bands in the reason, with any caveat (an attacker still "
        "learning, a network at its epoch cap). 'not measured' is not a low risk: that threat was not tested.")
    return table


def _verdict_section(results: dict) -> Section:
    verdict = results.get("verdict")
    if not verdict:
        return Section("verdict", "Verdict", [Paragraph(
            "No release policy was given, so no rule was judged. Gate this run with "
            "'speech-audit gate results.json --policy POLICY.toml' (examples in examples/policies/).",
            lead="No gate.")])
    c = verdict["counts"]
    word = {"pass": "PASS", "warn": "PASS WITH WARNINGS", "fail": "FAIL", "error": "ERROR"}[verdict["status"]]
    text = (f"{c['fail']} of {len(verdict['rules'])} rules failed, {c['error']} could not be judged (metric not "
            f"computed), {c['warn']} warned, {c['pass']} passed; exit code {verdict['exit_code']}.")
    return Section("verdict", "Verdict", [Paragraph(text, lead=f"{word}."), verdict_table(verdict)])


def _notices(results: dict) -> Section:
    blocks: list = []
    mode = (results.get("report_mode") or {}).get("mode", "full")
    if mode == "redacted":
        blocks.append(Callout("info", "Redacted report", [
            "original audio, its vocoder copies and transcripts are left out; speaker and utterance ids are salted "
            "hashes (the salt is not stored); absolute paths are cut to their last component",
            "reconstructions from the embeddings are kept: they are the finding, and may still carry what was said "
            "and who said it (see the reconstruction risk)"]))
    else:
        blocks.append(Callout("warning", "This report holds personal data", [
            "original recordings, transcripts and speaker ids of the audited corpus; hand on a copy made with "
            "--redact"]))
    if results.get("weakened"):
        blocks.append(Callout("warning", "Weakened audit: these settings make the attackers weaker than a full audit, "
                                         "so leakage may be underestimated (each named by the kind a policy's "
                                         "allow_weakened may list)", weakening_lines(results)))
    if (results.get("environment") or {}).get("trust_remote_code"):
        blocks.append(Callout("warning", "trust_remote_code was set", [
            "models that ship code (speechbrain hyperparams.yaml tags, Hugging Face auto_map) were allowed to run it "
            "during this audit"]))
    if results.get("skipped_audio"):
        skipped = results["skipped_audio"]
        blocks.append(Callout("warning", f"Left out for bad audio (--skip-bad-audio): {len(skipped)} utterances",
                              [f"{b.get('utt_id')}: {b.get('reason')}" for b in skipped]))
    if results.get("families_not_measurable"):
        blocks.append(Callout("warning", "Not measurable on this corpus: these threats were not tested",
                              [f"{n}: {r}" for n, r in results["families_not_measurable"].items()]))
    return Section("notices", "Notices", blocks)


def _threat_section(results: dict) -> Section:
    blocks: list = [Paragraph(results.get("threat_model") or "The threat model was not recorded in these results.")]
    if results.get("defenses"):
        blocks.append(Paragraph("Defenses are attacked under three attacker scenarios, weakest to strongest:"))
        blocks.append(Bullets([f"{name}: {words}" for name, words in SCENARIO_WORDS]))
    return Section("threat-model", "Threat model", blocks)


def _leakiest_bullets(results: dict) -> list[str]:
    items = []
    for label, v in (results.get("leakiest") or {}).items():
        # the measure's declared unit (results before schema 2.11 carry none: their two rates are named)
        is_rate = v["unit"] in ("proportion", "rate") if "unit" in v else v["metric"] in ("top1", "eer")
        value = fmt_pct(v["value"]) if is_rate else fmt_num(v["value"])
        ci = fmt_ci(v["ci95"]) if is_rate else fmt_ci(v["ci95"], 1, ".2f")
        chance = "" if v.get("chance") is None else \
            f", chance {fmt_pct(v['chance']) if is_rate else fmt_num(v['chance'], '.2f')}"
        sel = f", selection-adjusted CI {fmt_ci(v['selection_ci95'])}" if v.get("selection_ci95") else ""
        learning = (f"; still learning ({v.get('attacker')}: {fmt_still_learning(v['still_learning'])}), so "
                    "an attacker with more data would read more" if v.get("still_learning") else "")
        cap = v.get("epoch_capped")
        capped = (f"; {v.get('attacker')} stopped at its epoch cap (best epoch {cap['best_epoch']} of "
                  f"{cap['epochs']}), so one trained longer might read more" if cap else "")
        items.append(f"{label}: layer {v['layer']} ({v['name']}): {value} {ci}{chance}; picked from "
                     f"{v['n_compared']} attackers x layers{sel}{learning}{capped}")
    return items


#: Keys of ``results["summary"]`` the "what it means" sentence reads (per headline measure).
MEANING_KEYS = ("leakiest_layer", "leakiest_ci95", "leakiest_selection_ci95", "picked_from", "least_leaky_layer")


def _meaning(results: dict) -> Paragraph | None:
    s = results.get("summary") or {}
    metric = "eer" if s.get("measure") == "verification_eer" else "top1"
    needed = MEANING_KEYS + (f"leakiest_{metric}", f"least_leaky_{metric}") + (("chance",) if metric == "top1" else ())
    if not all(k in s for k in needed):
        return None
    if s.get("measure") == "verification_eer":
        return Paragraph(f"with a projection learned on other people, two utterances of unseen speakers from layer "
                         f"{s['leakiest_layer']} are linked to the same or different person with an EER of "
                         f"{fmt_pct(s['leakiest_eer'])} (95% CI {fmt_ci(s['leakiest_ci95'])}; {s['picked_from']}: "
                         f"{fmt_ci(s['leakiest_selection_ci95'])}; 50% = unlinkable). The least leaky layer "
                         f"({s['least_leaky_layer']}) gives {fmt_pct(s['least_leaky_eer'])}.", lead="What it means:")
    ratio = s["leakiest_top1"] / s["chance"] if s["chance"] else float("nan")
    return Paragraph(f"an attacker with a few labelled utterances per speaker names the speaker of a new utterance "
                     f"from layer {s['leakiest_layer']} {fmt_pct(s['leakiest_top1'])} of the time (95% CI "
                     f"{fmt_ci(s['leakiest_ci95'])}; {s['picked_from']}: {fmt_ci(s['leakiest_selection_ci95'])}), "
                     f"{ratio:.1f}x chance ({fmt_pct(s['chance'])}). The least leaky layer ({s['least_leaky_layer']}) "
                     f"still gives {fmt_pct(s['least_leaky_top1'])}. Any layer whose CI lies above chance identifies "
                     "speakers: treat its embeddings as personal data.", lead="What it means:")


def family_table(family: AttackFamily, results: dict) -> Table:
    """The family's report table; results too incomplete to draw it are a :class:`ResultsError` naming both."""
    try:
        return family.table(results)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise ResultsError(f"results are incomplete for the {family.name} table ({type(err).__name__}: {err})") \
            from None


def _leakage_section(results: dict, registry: dict[str, AttackFamily], figures: list[Figure]) -> Section:
    blocks: list = []
    leaks = _leakiest_bullets(results)
    if leaks:
        blocks += [Paragraph("Leakiest layer per measure (the worst case for privacy):"), Bullets(leaks)]
    meaning = _meaning(results)
    if meaning:
        blocks.append(meaning)
    for family in registry.values():
        table = family_table(family, results)
        if table.rows:
            blocks.append(table)
    blocks += [f for f in figures if f.topic in ("leakage", "maps")]
    return Section("leakage", "Leakage per layer", blocks)


def _examples_section(results: dict) -> Section:
    blocks: list = []
    for la in results["layers"]:
        frame = ((la.get("attacks") or {}).get("inversion") or {}).get("frame")
        if not is_ok(frame):
            continue
        for ex in frame.get("examples") or []:
            files = ex.get("files") or {}
            clips = [AudioClip(LABEL_KIND.get(kind, kind), file) for kind, file in files.items() if kind != "mels"]
            mel = Figure(files["mels"], f"Log-mel spectrograms at layer {ex.get('layer')}: the original utterance "
                                        "above, the decoder's reconstruction from the embeddings below.",
                         "Original (top) vs reconstructed (bottom) log-mel.", topic="examples") \
                if files.get("mels") else None
            note = f"Transcript: {ex['transcript']}" if ex.get("transcript") else ""
            blocks.append(AudioExample(f"Layer {ex.get('layer')}, utterance {ex.get('utt_id')} "
                                       f"(speaker {ex.get('speaker')})", clips, mel, note))
    if not blocks:
        blocks.append(Paragraph("No inversion examples: the inversion family was not run, or wrote no examples, so "
                                "there is nothing to listen to. Add 'inversion' to the config's attacks."))
    else:
        blocks.insert(0, Paragraph("A decoder trained on other people's speech turns the audited layer back into a "
                                   "log-mel spectrogram, and a vocoder into audio. The vocoder copy is the original "
                                   "mel through the same vocoder: the vocoder's own loss, for comparison."))
    return Section("examples", "Reconstructions you can listen to", blocks)


def _defense_section(results: dict, figures: list[Figure],
                     registry: dict[str, AttackFamily] | None = None) -> Section | None:
    table = defense_table(results, registry)
    if table is None:
        return None
    return Section("defenses", "Defenses compared", [table] + [f for f in figures if f.topic == "defenses"])


def _budget_rows(results: dict, registry: dict[str, AttackFamily]) -> Table:
    table = Table("Attacker budgets and learning curves", ["layer", "family", "attacker", "budget",
                                                           "learning curve", "converged"])
    for la in results["layers"]:
        for name in registry:
            for res in attack_results((la.get("attacks") or {}).get(name)):
                table.rows.append([str(la["index"]), name, str(res.get("attacker")), _budget_cell(res.get("budget")),
                                   _curve_cell(res.get("learning_curve")), str(res.get("converged"))])
    table.notes.append("Budget: training data and the hyper-parameters chosen on validation data (never the test "
                       "split). Learning curve: the attacker's figure at growing fractions of its training data (or "
                       "per epoch); a flat end means more data would not help the attacker.")
    return table


def _budget_cell(budget: Any) -> str:
    if not isinstance(budget, dict):
        return ""
    items = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in budget.items()
             if isinstance(v, (int, float, str)) and not isinstance(v, bool) and len(str(v)) <= 40]
    return ", ".join(items[:8])


def _curve_cell(curve: Any) -> str:
    if not isinstance(curve, list) or not curve:
        return "n/a"
    skip = {"fraction", "epoch", "n_train_speakers", "n_train"}
    numeric = [k for k in curve[0] if k not in skip and isinstance(curve[0][k], (int, float))]
    # A per-epoch curve is judged on held-out data: its validation metric, not the training loss.
    metric = next((k for k in numeric if k.startswith("val_")), numeric[0] if numeric else None)
    if metric is None:
        return "n/a"
    pts = curve if len(curve) <= 5 else curve[:2] + curve[-2:]
    at = "fraction" if "fraction" in curve[0] else "epoch"
    cells = [f"{p.get(at)}: {p[metric]:.3g}" for p in pts if isinstance(p.get(metric), (int, float))]
    return f"{metric} " + (" / ".join(cells) if len(curve) <= 5 else f"{cells[0]} / {cells[1]} ... {cells[2]} / "
                                                                      f"{cells[3]} ({len(curve)} {at}s)")


def _methodology(results: dict, registry: dict[str, AttackFamily], figures: list[Figure]) -> Section:
    s = results.get("summary") or {}
    defs = [f"{name}: {family.description}" for name, family in registry.items() if family.description]
    defs += ["Speaker ID: top-1/top-5 accuracy with a 95% CI (speaker-clustered bootstrap widened to the exact "
             "Clopper-Pearson interval); chance = 1/N speakers.",
             "Verification: EER as in speechbrain, minDCF (p_target 0.01), linkability D_sys; 50% EER = unlinkable.",
             "Attributes: gender accuracy and ROC AUC; speech rate in characters per voiced second, R²; linear CCA.",
             "Inversion: MCD (pysptk mel-cepstrum, order 24, alpha 0.42, c0 excluded, no DTW), LSD, STOI, judge "
             "ASR WER on reconstructions next to the originals, speaker-judge EER and top-1."]
    splits = [f"{name}: {sp['kind']}, grouped by {sp.get('group_by', 'speaker')}, seed {sp['seed']}: "
              f"{sp['n_train']} train / {sp['n_test']} test utterances"
              + (f"; {len(sp['dropped_speakers'])} speakers dropped (cannot be split)" if sp.get("dropped_speakers")
                 else "")
              + (f"; {len(sp['same_recording_speakers'])} speakers with one recording split inside it"
                 if sp.get("same_recording_speakers") else "")
              for name, sp in (results.get("splits") or {}).items()]
    selection = []
    if s:
        selection.append(f"The headline is {s['picked_from']} ({s['n_compared']} comparisons, "
                         f"{s['n_layers_compared']} layers); every attacker's hyper-parameters are chosen on "
                         "validation data, never on the test split.")
    blocks: list = [Paragraph("Metric definitions:"), Bullets(defs), Paragraph("Splits (made from labels before any "
                                                                              "model work, shared by every layer):"),
                    Bullets(splits or ["none recorded"]), Paragraph(f"Seed: {results['config'].get('seed')}.")]
    blocks += [Paragraph(t) for t in selection]
    blocks.append(_budget_rows(results, registry))
    blocks += [f for f in figures if f.topic == "methodology"]
    return Section("methodology", "Methodology", blocks, in_summary=False)


def _reproducibility(results: dict) -> Section:
    model, corpus = results["model"], results["corpus"]
    env, store = results.get("environment") or {}, results.get("store") or {}
    tool = results.get("tool") or {}
    items = [f"speech-audit {tool.get('version', '?')}, results schema {results['schema_version']}, "
             f"created {results.get('created', '?')}",
             f"model: {model.get('spec')} ({model.get('num_layers')} layers, {model.get('precision', 'float32')} on "
             f"{model.get('device', 'cpu')}), fingerprint {str(model.get('fingerprint'))[:16]}",
             f"corpus: {corpus.get('description', corpus.get('spec'))} ({corpus.get('n_utterances')} utterances, "
             f"{corpus.get('n_speakers')} speakers, {corpus.get('n_recordings', '?')} recordings, "
             f"{corpus.get('n_sessions', '?')} sessions), fingerprint {str(corpus.get('fingerprint'))[:16]}"
             + (f", listing fingerprint {str(corpus['listing_fingerprint'])[:16]}"
                if corpus.get("listing_fingerprint") else ""),
             "environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
             f"embeddings store: {store.get('path')} (cache hit: {store.get('cache_hit')})",
             f"wall time: {results.get('wall_seconds', 0):.1f} s (store {store.get('wall_seconds', 0):.1f} s)"]
    argv = (results.get("invocation") or {}).get("argv")
    if argv:
        items.append("command line: " + " ".join(argv))
    per_family: dict[str, list[float]] = {}
    for la in results["layers"]:
        for name, sec in (la.get("attack_seconds") or {}).items():
            per_family.setdefault(name, []).append(sec)
    if per_family:
        items.append("attack wall time per layer (s): " + "; ".join(
            f"{name} " + " / ".join(f"{v:.0f}" for v in secs) for name, secs in per_family.items()))
    if results.get("defenses"):
        total = sum(e.get("wall_seconds") or 0 for e in results["defenses"])
        items.append(f"defense comparison: {len(results['defenses'])} settings x layers, {total:.0f} s")
    timeline = results.get("timeline") or {}
    if timeline.get("phases"):
        items.append("wall time per phase (s): " + "; ".join(f"{ph['name']} {ph['seconds']:.0f}"
                                                              for ph in timeline["phases"]))
    for ph in timeline.get("pooled_phases") or []:
        items.append(f"{ph['phase']}: {ph['workers']} worker processes, {100 * (ph['utilisation'] or 0):.0f}% busy "
                     "(idle s: " + " / ".join(f"{i:.0f}" for i in ph["idle_seconds"]) + ")")
    return Section("reproducibility", "Reproducibility", [Bullets(items)])


def _config_section(results: dict) -> Section:
    return Section("config", "Configuration of this run",
                   [Paragraph("Every setting, defaults included, as recorded in results.json:"),
                    Code(json.dumps(results["config"], indent=2, sort_keys=True), "json")], in_summary=False)


def _files_section(results: dict) -> Section:
    return Section("files", "Files", [Bullets(sorted(results.get("files", [])))], in_summary=True)


def build_document(results: dict, registry: dict[str, AttackFamily], figures: list[Figure]) -> ReportDocument:
    """The report document of one run (``results["risks"]`` and ``results["verdict"]`` already judged)."""
    model, corpus = results["model"], results["corpus"]
    mode = (results.get("report_mode") or {}).get("mode", "full")
    risks = results.get("risks") or [r.to_dict() for r in risk_ratings(results, registry)]
    sections = [_verdict_section(results), Section("risk", "Risk per threat", [risk_table(risks, registry)]),
                _notices(results), _threat_section(results), _leakage_section(results, registry, figures),
                _examples_section(results)]
    defenses = _defense_section(results, figures, registry)
    if defenses is not None:
        sections.append(defenses)
    sections += [_methodology(results, registry, figures), _reproducibility(results), _config_section(results),
                 _files_section(results)]
    return ReportDocument(title=f"speech-audit report: {model.get('spec', '?')} on {corpus.get('spec', '?')}",
                          subtitle=f"{corpus.get('description', '')}; created {results.get('created', '?')}",
                          mode=mode, sections=sections)


__all__ = ["build_document", "risk_ratings", "risk_table"]

"""The defense comparison as format-neutral tables, built once from ``results["defenses"]``.

Nothing here measures: every cell is read from the results, so the Markdown summary, the plots
and any other renderer show the same figures. :func:`pareto_front` decides which settings no
other setting beats on both privacy (the strongest attacker's top-1, lower is better) and
retained utility (higher is better).
"""

from __future__ import annotations

from audit.curves import STILL_LEARNING_GAIN, epoch_capped
from audit.measures import Measure, strongest_figure
from audit.results import (Table, attack_results, fmt_ci, fmt_num, fmt_pct, fmt_still_learning,
                           is_ok)
from audit.summary import headline_measures, measure_instances

#: Measures of a ``defenses`` entry a gate rule may name (``defenses.<pattern>``): the strongest
#: scenario's attacker and the utility kept. Utility measures are named by task (``cer``, ``wer``,
#: ``accuracy``), so each has a direction; a run whose task measured another reads "not computed".
DEFENSE_METRICS = (
    Measure("strongest.top1", True, label="strongest scenario's speaker-ID top-1",
            description="strongest scenario's speaker-ID top-1 on defended embeddings"),
    Measure("strongest.eer", False, chance=0.5, label="strongest scenario's verification EER",
            description="strongest scenario's verification EER on defended embeddings"),
    Measure("utility.retained", None, higher_is_better=True, ci="retained_ci95", chance=None, unit="ratio",
            high=None, description="utility kept: defended / undefended on an accuracy scale"),
    Measure("utility.retained_above_chance", None, higher_is_better=True, ci="retained_above_chance_ci95",
            chance=None, unit="ratio", low=None, high=None,
            description="utility kept above chance: (defended - b) / (undefended - b), b the task's chance level"),
    Measure("utility.cer", None, higher_is_better=False, chance=None, unit="rate", high=None,
            description="the CTC probe's character error rate on defended embeddings"),
    Measure("utility.wer", None, higher_is_better=False, chance=None, unit="rate", high=None,
            description="word error rate on defended embeddings (CTC probe)"),
    Measure("utility.accuracy", None, higher_is_better=True, chance="chance",
            description="the classification probe's accuracy on defended embeddings"),
)

#: Utility measures named by task, and where an entry's utility holds each.
_UTILITY_TASK_METRICS = ("cer", "wer", "accuracy")


def defense_view(entry: dict) -> dict:
    """A defense entry as gate rules read it: its utility's task metrics under their own names.

    ``utility.cer`` is the utility's value when the task measured CER (its ``extra`` holds the
    WER of a CTC probe); a metric the run's task did not measure is absent, so a rule on it reads
    "not computed".
    """
    u = entry.get("utility")
    if not isinstance(u, dict):
        return entry
    view = dict(u)
    for name in _UTILITY_TASK_METRICS:
        extra = u.get("extra") or {}
        if u.get("metric") == name:
            view[name] = {"value": u.get("value"), "ci95": u.get("ci95"),
                          "chance": u.get("utility_chance") if name == "accuracy" else None}
        elif isinstance(extra, dict) and name in extra:
            view[name] = {"value": extra[name], "ci95": extra.get(f"{name}_ci95")}
        else:
            view[name] = {"skipped": f"the run's utility task measured {u.get('metric')}, not {name}"}
    return {**entry, "utility": view}


SCENARIO_SHORT = {"ignorant": "ign", "lazy_informed": "lazy", "semi_informed": "semi"}


def setting_label(entry: dict) -> str:
    """``name`` plus its parameters, e.g. ``noise sigma=0.5`` (``none`` for the undefended reference)."""
    params = " ".join(f"{k}={v}" for k, v in sorted(entry.get("params", {}).items()))
    return f"{entry['name']} {params}".strip()


def _declared_columns(entries: list[dict], families: dict) -> list[tuple[str, str, str, Measure]]:
    """(title, family, path, measure) of each declared headline measure with a defense column that a setting measured."""
    # every scenario of every setting, laid out as layers so the measure's instances are found as on a layer
    scenarios = [{"index": 0, "attacks": scenario} for e in entries
                 for scenario in (e.get("scenarios") or {}).values() if isinstance(scenario, dict)]
    return [(measure.title_for(family, key, path), family, path, measure)
            for family, measure in headline_measures(families) if measure.defense_column
            for key, path in measure_instances(scenarios, family, measure)]


def _leak_cell(leak: dict | None, measure: Measure | None = None) -> str:
    if not leak:
        return "n/a"
    missing = leak.get("missing_scenarios") or {}
    gone = (" MISSING " + ", ".join(f"[{SCENARIO_SHORT.get(k, k)}: {v}]" for k, v in missing.items())) if missing else ""
    if leak.get("value") is None:
        return f"not measured:{gone}"
    show, show_ci = (measure.show, measure.show_ci) if measure else (fmt_pct, fmt_ci)
    return (f"{show(leak['value'])} {show_ci(leak.get('ci95'))} "
            f"[{SCENARIO_SHORT.get(leak.get('scenario'), leak.get('scenario'))}]"
            + (" (still learning)" if leak.get("still_learning") else "")
            + (" (epoch cap)" if leak.get("epoch_capped") else "")
            + (f" (attacker failed: {', '.join(leak['failed_attackers'])})" if leak.get("failed_attackers") else "")
            + gone)


def _family(entry: dict, scenario: str, family: str) -> dict | None:
    attacks = (entry.get("scenarios") or {}).get(scenario) or {}
    result = attacks.get(family) if isinstance(attacks, dict) else None
    return result if is_ok(result) else None


def _attribute_cell(entry: dict) -> str:
    attrs = _family(entry, "semi_informed", "attributes") or {}
    cells = [f"{key} {fmt_pct(res['accuracy'])}" for key, res in attrs.items()
             if isinstance(res, dict) and is_ok(res) and res.get("accuracy") is not None]
    return ", ".join(cells) or "n/a"


def _inversion_cell(entry: dict) -> str:
    inv = _family(entry, "semi_informed", "inversion") or {}
    frame = inv.get("frame") if isinstance(inv, dict) else None
    if not is_ok(frame):
        return "n/a"
    sig, content, spk = frame.get("signal", {}), frame.get("content"), frame.get("speaker")
    parts = [f"MCD {fmt_num(sig.get('mcd_db'), '.2f')} dB", f"STOI {fmt_num(sig.get('stoi'), '.2f')}"]
    if isinstance(content, dict):
        parts.append(f"WER {fmt_pct(content.get('wer_reconstruction'))}")
    if isinstance(spk, dict):
        parts.append(f"judge EER {fmt_pct(spk.get('eer'))}")
    return ", ".join(parts)


def _capped_attackers(entry: dict) -> list[str]:
    """Every attacker of ``entry``'s scenarios whose network stopped at its epoch cap, in words."""
    found = []
    for scenario, attacks in (entry.get("scenarios") or {}).items():
        for family, node in (attacks.items() if isinstance(attacks, dict) else ()):
            for result in attack_results(node):
                cap = epoch_capped(result)
                if cap:
                    found.append(f"{family} {result.get('attacker')} [{SCENARIO_SHORT.get(scenario, scenario)}] "
                                 f"(best epoch {cap['best_epoch']} of {cap['epochs']})")
    return found


def _probe_capped(entry: dict) -> dict | None:
    """The utility probe's budget when its training hit its cap (epochs or solver iterations), else None."""
    budget = (entry.get("utility") or {}).get("budget") or {}
    return budget if budget.get("converged") is False else None


def _utility_cell(entry: dict) -> tuple[str, str]:
    """The utility cell (the probe's metric and CI) and the retained cell.

    The retained cell gives the raw ratio defended / undefended and, next to it, the share of
    the utility above chance retained with the chance level it subtracts (``n/a`` when the
    undefended probe is not above chance; ``[CI unbounded]`` when the undefended score's
    Clopper-Pearson lower bound is at or below chance), so a defense that leaves a classifier at its
    majority-class rate cannot pass for one that keeps half its utility.
    """
    u = entry.get("utility")
    if not u:
        return "n/a", "n/a"
    declared = next((m for m in DEFENSE_METRICS if m.pattern == f"utility.{u.get('metric')}"), None)
    show, show_ci = (declared.show, declared.show_ci) if declared else (fmt_num, lambda ci: fmt_ci(ci, 1, ".3f"))
    value = f"{u['metric']} {show(u['value'])} {show_ci(u.get('ci95'))}"
    if "wer" in (u.get("extra") or {}):
        value += f"; wer {fmt_pct(u['extra']['wer'])}"
    if _probe_capped(entry):
        value += " (probe at its training cap)"
    if entry["name"] == "none":
        return value, "1 (reference)"
    kept = (f"{fmt_num(u.get('retained'), '.3f')} {fmt_ci(u.get('retained_ci95'), 1, '.3f')}".strip()
            if u.get("retained") is not None else "n/a")
    if "retained_above_chance" in u:
        above, ci = u["retained_above_chance"], u.get("retained_above_chance_ci95")
        kept += ("; above chance n/a" if above is None else
                 f"; above chance {fmt_num(above, '.3f')} {fmt_ci(ci, 1, '.3f') if ci else '[CI unbounded]'}")
        if u.get("utility_chance") is not None:
            kept += f" (chance {fmt_num(u['utility_chance'], '.3f')})"
    return value, kept


def _adversary_cell(entry: dict) -> str:
    adv = entry.get("training_adversary")
    if not adv:
        return ""
    return (f"{fmt_pct(adv.get('heldout_accuracy'))} held-out (chance {fmt_pct(adv.get('chance'))}, "
            f"{adv.get('n_speakers')} owner speakers)")


def privacy_utility_points(entries: list[dict], layer: int) -> list[dict]:
    """One point per measured setting of ``layer``: the strongest attacker's top-1 and retained utility.

    Each point has the raw ``retained`` (and CI) and, where the results hold it,
    ``retained_above_chance`` (and CI; 1 for the reference, None where the undefended probe is
    not above chance).
    """
    points = []
    for e in entries:
        if e.get("layer") != layer or e.get("status") != "ok":
            continue
        top1 = (e.get("strongest") or {}).get("top1")
        u = e.get("utility") or {}
        kept = 1.0 if e["name"] == "none" and u else u.get("retained")
        if top1 is None or top1.get("value") is None or kept is None:
            continue
        point = {"label": setting_label(e), "leak": top1["value"], "leak_ci95": top1.get("ci95"),
                 "chance": top1.get("chance"), "retained": kept, "retained_ci95": u.get("retained_ci95")}
        if "retained_above_chance" in u:
            point["retained_above_chance"] = u["retained_above_chance"]
            point["retained_above_chance_ci95"] = u.get("retained_above_chance_ci95")
        points.append(point)
    return points


def pareto_front(points: list[dict]) -> list[dict]:
    """Points no other point beats on both axes (lower leak, higher retained), by increasing leak.

    Utility is ``retained_above_chance`` when every point has it (not None), else the raw
    ``retained`` for all: one scale for every point, and the above-chance form whenever it
    exists, so a setting that leaves the probe at chance does not count as keeping utility.
    """
    above = bool(points) and all(p.get("retained_above_chance") is not None for p in points)
    key = "retained_above_chance" if above else "retained"
    front = [p for p in points
             if not any((q["leak"] <= p["leak"] and q[key] >= p[key])
                        and (q["leak"] < p["leak"] or q[key] > p[key]) for q in points)]
    return sorted(front, key=lambda p: p["leak"])


def defense_table(results: dict, families: dict | None = None) -> Table | None:
    """One row per (layer, defense setting): privacy under the strongest scenario, utility kept, wall time.

    ``families`` (the attack registry) adds a column per declared headline measure with a
    ``defense_column`` (a plugin family's), holding its strongest scenario's figure.
    """
    entries = results.get("defenses")
    if not entries:
        return None
    plan = results.get("defense_plan") or {}
    declared = _declared_columns(entries, families or {})
    table = Table("Defenses compared (fitted on the owner's speakers, attacked on the evaluated speakers)",
                  ["layer", "defense", "speaker-ID top-1 (95% CI) [scenario]", "verification EER (95% CI) [scenario]",
                   "attributes (retrained)", "reconstruction (retrained)"]
                  + [f"{title} (95% CI) [scenario]" for title, _, _, _ in declared]
                  + ["utility (95% CI)", "retained (95% CI)", "training adversary", "fit s", "wall s"])
    for e in entries:
        label = setting_label(e)
        if e.get("status") != "ok":
            table.rows.append([str(e["layer"]), label, f"failed: {e.get('reason', '?')}"] + [""] * (7 + len(declared))
                              + [fmt_num(e.get("wall_seconds"), ".0f")])
            continue
        best = e.get("strongest") or {}
        value, kept = _utility_cell(e)
        mine = [_leak_cell(strongest_figure(e.get("scenarios") or {}, family, path, measure), measure)
                for _, family, path, measure in declared]
        table.rows.append([str(e["layer"]), label, _leak_cell(best.get("top1")), _leak_cell(best.get("eer")),
                           _attribute_cell(e), _inversion_cell(e), *mine, value, kept, _adversary_cell(e),
                           fmt_num((e.get("fit") or {}).get("seconds"), ".0f"), fmt_num(e.get("wall_seconds"), ".0f")])
    table.notes += _notes(results, entries, plan)
    return table


def _notes(results: dict, entries: list[dict], plan: dict) -> list[str]:
    notes = []
    d, ev = plan.get("defense_partition", {}), plan.get("evaluation_partition", {})
    fit_on = ("the evaluated speakers themselves (flatters the defense)" if plan.get("fit_on") == "evaluated"
              else f"a defense partition of {d.get('n_speakers')} speakers ({d.get('n_utterances')} utterances), "
                   "disjoint from the evaluated speakers")
    notes.append(f"Each defense is fitted on {fit_on}; attacks and the utility probe run on the "
                 f"{ev.get('n_speakers')} evaluated speakers ({ev.get('n_utterances')} utterances) with the attack "
                 "suite's own splits and budgets.")
    notes.append("A defense is judged by its strongest scenario: the privacy columns give the strongest of the "
                 "attacker scenarios run, and a scenario whose attack failed or was skipped is marked MISSING (the "
                 "lost scenario may have held the strongest attacker, so the gate reads that figure as missing). "
                 "Scenarios: ign = ignorant (trained on "
                 "undefended embeddings, tested on defended ones; verification enrols on undefended speech), lazy = "
                 "lazy-informed (verification scorer trained undefended, enrolment and trials defended), semi = "
                 "semi-informed (every attacker retrained on defended embeddings). Attribute and reconstruction "
                 "columns are the semi-informed (retrained) attackers.")
    if plan.get("utility_note"):
        notes.append(plan["utility_note"] + ".")
    elif plan.get("utility_task"):
        notes.append(f"Utility: {plan['utility_task']} probe retrained on each setting's defended embeddings of "
                     "utility-train speakers, scored on held-out speakers; retained = defended / undefended on an "
                     "accuracy scale (1 - CER for the ASR probe), paired bootstrap CI over test speakers however few "
                     "(never over recordings; widened to at least the exact binomial interval); above chance = "
                     "(defended - b) / (undefended - b), b the task's chance level (the majority class for a "
                     "classifier, 0 on the accuracy scale for CER), which the Pareto front uses.")
    for name, reason in (plan.get("families_not_measurable") or {}).items():
        notes.append(f"Not measurable on the evaluated speakers: {name}: {reason}.")
    for layer in sorted({e["layer"] for e in entries}):
        front = pareto_front(privacy_utility_points(entries, layer))
        if front:
            notes.append(f"Layer {layer}: the Pareto front (no other setting has both lower speaker-ID top-1 and "
                         f"higher retained utility) is " + "; ".join(
                             f"{p['label']} (top-1 {fmt_pct(p['leak'])}, retained {fmt_num(p['retained'], '.2f')})"
                             for p in front) + ".")
    learning = [f"layer {e['layer']} {setting_label(e)}: {what} ({leak.get('attacker')}, "
                f"{SCENARIO_SHORT.get(leak.get('scenario'), leak.get('scenario'))}), "
                f"{fmt_still_learning(leak['still_learning'])}"
                for e in entries for what, leak in (("speaker-ID", (e.get("strongest") or {}).get("top1")),
                                                    ("verification", (e.get("strongest") or {}).get("eer")))
                if leak and leak.get("still_learning")]
    if learning:
        notes.append("Still learning: the strongest attacker's figure moved by more than "
                     f"{100 * STILL_LEARNING_GAIN:.0f} points towards leakage from half to all of its training "
                     "data, so an attacker with more data would read more leakage than the row shows (a defense "
                     "then protects less than it seems to): " + "; ".join(learning) + ".")
    at_cap = []
    for e in entries:
        found = _capped_attackers(e) if e.get("status") == "ok" else []
        if found:
            at_cap.append(f"layer {e['layer']} {setting_label(e)}: " + ", ".join(found))
    if at_cap:
        notes.append("Attacker at its epoch cap: its network ran its last allowed epoch (frame_max_epochs for the "
                     "frame attackers, max_epochs for an inversion decoder) instead of stopping early, so it may "
                     "still have been improving. Where it gives the row's figure (marked 'epoch cap'), the row may "
                     "understate leakage; where it does not, trained longer it might have beaten the row's "
                     "attacker: "
                     + "; ".join(at_cap) + ".")
    capped = []
    for e in entries:
        budget = _probe_capped(e)
        if budget:
            capped.append(f"layer {e['layer']} {setting_label(e)}" + (
                f" (best epoch {budget['best_epoch']} of {budget['epochs']})" if "best_epoch" in budget else ""))
    if capped:
        notes.append("Utility probe at its training cap: it stopped at its limit (utility_probe.ctc_epochs for the "
                     "ctc probe, the solver's iterations for a classifier), not by its early stop, so it may still "
                     "have been improving; its figure, and the share retained built on it, may understate what "
                     "the embeddings support: " + "; ".join(capped) + ".")
    disagree = [e for e in entries if e.get("training_adversary") and (e.get("strongest") or {}).get("top1")]
    for e in disagree:
        adv, top1 = e["training_adversary"], e["strongest"]["top1"]
        notes.append(f"Layer {e['layer']}, {setting_label(e)}: the training adversary reads "
                     f"{fmt_pct(adv.get('heldout_accuracy'))} on held-out utterances of the owner's speakers (chance "
                     f"{fmt_pct(adv.get('chance'))}); a retrained attacker reads {fmt_pct(top1['value'])} "
                     f"{fmt_ci(top1.get('ci95'))} on the evaluated speakers (chance {fmt_pct(top1.get('chance'))}).")
    return notes


__all__ = ["DEFENSE_METRICS", "defense_table", "pareto_front", "privacy_utility_points", "setting_label"]

"""Render a run's results: ``results.json``, a readable ``summary.md`` and per-layer plots.

Everything here reads the results dict; no metric is recomputed. Each family's table comes
from its registry entry (``AttackFamily.table``) as a format-neutral :class:`Table`, and
:func:`markdown_table` draws it; text that came from users' manifests is escaped.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from audit import plots
from audit.defense_tables import defense_table, pareto_front, privacy_utility_points
from audit.family import AttackFamily
from audit.results import Table, fmt_ci, fmt_num, fmt_pct, is_ok, layer_attack


def _cell(text: str) -> str:
    """A Markdown table cell: pipes and HTML special characters escaped, newlines flattened."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> list[str]:
    """Markdown lines of a :class:`Table`: a heading, the grid, then its notes (empty when it has no rows)."""
    if not table.columns or not table.rows:
        return []
    lines = [f"## {_cell(table.title)}", "", "| " + " | ".join(_cell(c) for c in table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    return lines + [""] + [_cell(n) for n in table.notes] + ([""] if table.notes else [])


def summary_markdown(results: dict, registry: dict[str, AttackFamily]) -> str:
    """The human-readable report a reviewer reads first."""
    corpus, model = results["corpus"], results["model"]
    lines = [f"# speech-audit report: {_cell(model['spec'])} on {_cell(corpus['spec'])}", ""]
    if results.get("weakened"):
        lines += ["> **Weakened audit.** These settings make the attackers weaker than a full audit; "
                  "leakage may be underestimated:"]
        lines += [f"> - {w}" for w in results["weakened"]] + [""]
    if results.get("families_not_measurable"):
        lines += ["> **Not measurable on this corpus** (these threats were not tested, so no figure below covers "
                  "them):"]
        lines += [f"> - {_cell(n)}: {_cell(r)}" for n, r in results["families_not_measurable"].items()] + [""]
    lines += ["## Threat model", "", results["threat_model"], ""]
    leaks = results.get("leakiest", {})
    if leaks:
        lines += ["## Leakiest layers", ""]
        for label, v in leaks.items():
            is_rate = v["metric"] in ("top1", "eer")
            value = fmt_pct(v["value"]) if is_rate else fmt_num(v["value"])
            ci = fmt_ci(v["ci95"]) if is_rate else fmt_ci(v["ci95"], 1, ".2f")
            chance = f", chance {fmt_pct(v['chance']) if is_rate else fmt_num(v['chance'], '.2f')}" if v.get("chance") is not None else ""
            sel = (f"; picked from {v['n_compared']} attackers x layers, selection-adjusted CI "
                   f"{fmt_ci(v['selection_ci95'])}" if v.get("selection_ci95") else
                   f"; picked from {v['n_compared']} attackers x layers")
            lines.append(f"- **{label}**: layer {v['layer']} ({_cell(v['name'])}): {value} {ci}{chance}{sel}")
        lines.append("")
    s = results.get("summary", {})
    if s.get("measure") == "verification_eer":
        lines += [f"**What it means:** with a projection learned on other people, two utterances of unseen speakers "
                  f"from layer {s['leakiest_layer']} are linked to the same or different person with an EER of "
                  f"{fmt_pct(s['leakiest_eer'])} (95% CI {fmt_ci(s['leakiest_ci95'])}; {s['picked_from']}: "
                  f"{fmt_ci(s['leakiest_selection_ci95'])}; 50% = unlinkable). The least leaky "
                  f"layer ({s['least_leaky_layer']}) gives {fmt_pct(s['least_leaky_eer'])}.", ""]
    elif s:
        ratio = s["leakiest_top1"] / s["chance"] if s["chance"] else float("nan")
        lines += [f"**What it means:** an attacker with a few labelled utterances per speaker names the speaker of "
                  f"a new utterance from layer {s['leakiest_layer']} {fmt_pct(s['leakiest_top1'])} of the time "
                  f"(95% CI {fmt_ci(s['leakiest_ci95'])}; {s['picked_from']}: {fmt_ci(s['leakiest_selection_ci95'])}), "
                  f"{ratio:.1f}x chance ({fmt_pct(s['chance'])}). "
                  f"The least leaky layer ({s['least_leaky_layer']}) still gives {fmt_pct(s['least_leaky_top1'])}. "
                  "Any layer whose CI lies above chance identifies speakers: treat its embeddings as personal data.",
                  ""]
    for family in registry.values():
        lines += markdown_table(family.table(results))
    defenses = defense_table(results)
    if defenses is not None:
        lines += markdown_table(defenses)
    lines += _settings_lines(results)
    files = sorted(p for p in results.get("files", []))
    if files:
        lines += ["## Files", ""] + [f"- `{f}`" for f in files] + [""]
    return "\n".join(lines)


def _settings_lines(results: dict) -> list[str]:
    model, corpus = results["model"], results["corpus"]
    lines = ["## Settings (to reproduce)", "",
             f"- model: `{_cell(model['spec'])}` ({model['num_layers']} layers, fingerprint `{model['fingerprint'][:16]}`)",
             f"- corpus: {_cell(corpus['description'])} ({corpus.get('n_recordings', '?')} recordings, "
             f"{corpus.get('n_sessions', '?')} sessions)"]
    for name, split in (results.get("splits") or {}).items():
        lines.append(f"- {name} split: {split['kind']}, grouped by {split.get('group_by', 'speaker')}, seed "
                     f"{split['seed']}: {split['n_train']} train / {split['n_test']} test utterances" +
                     (f"; speakers dropped (cannot be split): {len(split['dropped_speakers'])}"
                      if split.get("dropped_speakers") else "") +
                     (f"; {len(split['same_recording_speakers'])} speakers with a single recording split inside it"
                      if split.get("same_recording_speakers") else ""))
    lines += ["- top-1/top-5 accuracy with a 95% CI (speaker-clustered bootstrap widened to the exact Clopper-Pearson "
              "interval); chance = 1/N speakers; the headline per layer is the attacker with the highest test top-1 "
              "(worst case for privacy), and the run's headline the leakiest layer, with a CI adjusted for the number "
              "of attackers x layers it was picked from; every attacker's hyper-parameters are chosen on validation "
              "data, never on the test split",
              "- every attacker's training budget, learning curve (25/50/100% of its training data) and convergence "
              "are in `results.json`",
              f"- embeddings store: `{results['store']['path']}` (cache hit: {results['store']['cache_hit']})",
              f"- environment: torch {results['environment']['torch']}, transformers "
              f"{results['environment']['transformers']}, python {results['environment']['python']}",
              f"- wall time: {results.get('wall_seconds', 0):.1f} s (store {results['store'].get('wall_seconds', 0):.1f} s)"]
    per_family: dict[str, list[float]] = {}
    for la in results["layers"]:
        for name, sec in (la.get("attack_seconds") or {}).items():
            per_family.setdefault(name, []).append(sec)
    if per_family:
        lines.append("- attack wall time per layer (s): " + "; ".join(
            f"{name} " + " / ".join(f"{v:.0f}" for v in secs) for name, secs in per_family.items()))
    return lines + [""]


def _series(results: dict, path: tuple, metric: str, ci_key: str = "ci95") -> dict:
    vals, lo, hi = [], [], []
    for la in results["layers"]:
        r = layer_attack(la, *path)
        good = is_ok(r) and r.get(metric) is not None
        vals.append(r[metric] if good else None)
        ci = r.get(ci_key) if good else None
        lo.append(ci[0] if ci else None)
        hi.append(ci[1] if ci else None)
    return {"values": vals, "lo": lo, "hi": hi}


def write_plots(results: dict, out: Path) -> list[str]:
    """Metric-vs-layer curves, learning curves and score histograms; returns the file names."""
    layers = [la["index"] for la in results["layers"]]
    names = [la["name"] for la in results["layers"]]
    spec = results["model"]["spec"]
    written = []

    def has(series: dict) -> bool:
        return any(v is not None for v in series["values"])

    sid = _series(results, ("speaker_id",), "top1")
    if has(sid):
        chance = next(layer_attack(la, "speaker_id")["chance"] for la in results["layers"] if is_ok(layer_attack(la, "speaker_id")))
        per_attacker = {f"{n}": _series(results, ("speaker_id", "attackers", n), "top1")
                        for n in (layer_attack(results["layers"][0], "speaker_id") or {}).get("attackers", {})}
        per_attacker = {k: {**v, "lo": None, "hi": None} for k, v in per_attacker.items() if has(v)}
        plots.layer_curves(out / "speaker_id_by_layer.png", layers, names, {"strongest": sid, **per_attacker},
                           ylabel="speaker-ID top-1", title=f"{spec}: closed-set speaker identification",
                           chance=chance, ylim=(0, 1.02))
        written.append("speaker_id_by_layer.png")
    ver = _series(results, ("verification",), "eer")
    if has(ver):
        scorers = {n: _series(results, ("verification", "scorers", n), "eer")
                   for n in (layer_attack(results["layers"][0], "verification") or {}).get("scorers", {})}
        series = {"strongest": ver, **{n: {**v, "lo": None, "hi": None} for n, v in scorers.items() if has(v)}}
        plots.layer_curves(out / "verification_eer_by_layer.png", layers, names, series, ylabel="EER",
                           title=f"{spec}: open-set verification (lower = leakier)", chance=0.5, ylim=(0, 0.55))
        written.append("verification_eer_by_layer.png")
        best = min((la for la in results["layers"] if is_ok(layer_attack(la, "verification"))),
                   key=lambda la: layer_attack(la, "verification")["eer"])
        hist = layer_attack(best, "verification").get("histogram")
        if hist:
            plots.score_histogram(out / "verification_scores_leakiest.png", hist,
                                  title=f"layer {best['index']} ({best['name']}): target vs non-target scores")
            written.append("verification_scores_leakiest.png")
    attr_series = {}
    for la in results["layers"]:
        for key, res in (la.get("attacks", {}).get("attributes") or {}).items():
            if is_ok(res) and not key.endswith("_cca"):
                metric, ci = ("roc_auc", "auc_ci95") if "roc_auc" in res else ("r2", "ci95")
                attr_series.setdefault(f"{key} {'AUC' if metric == 'roc_auc' else 'R²'}",
                                       _series(results, ("attributes", key), metric, ci))
                attr_series.setdefault(f"{key} CCA", {**_series(results, ("attributes", f"{key}_cca"), "cca"),
                                                      "lo": None, "hi": None})
    attr_series = {k: v for k, v in attr_series.items() if has(v)}
    if attr_series:
        plots.layer_curves(out / "attributes_by_layer.png", layers, names, attr_series, ylabel="AUC / R² / CCA",
                           title=f"{spec}: attribute inference on unseen speakers")
        written.append("attributes_by_layer.png")
    curves = {}
    for la in results["layers"]:
        for n, r in ((layer_attack(la, "speaker_id") or {}).get("attackers") or {}).items():
            if is_ok(r) and r.get("learning_curve"):
                curves[f"L{la['index']} {n}"] = r["learning_curve"]
    if curves:
        plots.learning_curves(out / "speaker_id_learning_curves.png", curves, metric="top1",
                              title="speaker-ID attackers: top-1 vs training data (flat = converged)")
        written.append("speaker_id_learning_curves.png")
    for layer in sorted({e["layer"] for e in results.get("defenses") or []}):
        points = privacy_utility_points(results["defenses"], layer)
        if points:
            name = f"pareto_layer{layer}.png"
            plots.pareto_plot(out / name, points, pareto_front(points),
                              title=f"{spec} layer {layer}: privacy vs utility per defense setting")
            written.append(name)
    return written


def write_report(results: dict, out: Path, registry: dict[str, AttackFamily]) -> None:
    """Write ``results.json``, ``summary.md`` and plots into ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    results["files"] = sorted(set(results.get("files", [])) | set(write_plots(results, out)))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "summary.md").write_text(summary_markdown(results, registry))

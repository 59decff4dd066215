"""The report's plots, drawn from results alone, each with alt text that states what it shows.

Nothing here measures: :func:`write_figures` reads ``results`` and writes PNGs through
:mod:`audit.plots`; a re-render from ``results.json`` draws the same plots. Figures the
pipeline made from embeddings (t-SNE maps) are listed in ``results["figures"]`` and reused.
"""

from __future__ import annotations

from pathlib import Path

from audit import plots
from audit.curves import STILL_LEARNING_GAIN, epoch_capped, still_learning
from audit.defense_tables import pareto_front, privacy_utility_points
from audit.report.document import Figure
from audit.results import fmt_pct, is_ok, layer_attack
from audit.summary import headline_measures, measure_instances


def series(results: dict, path: tuple, metric: str, ci_key: str = "ci95") -> dict:
    """``{"values", "lo", "hi"}`` of ``metric`` at ``path`` over the layers (None where skipped)."""
    vals, lo, hi = [], [], []
    for la in results["layers"]:
        r = layer_attack(la, *path)
        good = is_ok(r) and r.get(metric) is not None
        vals.append(r[metric] if good else None)
        ci = r.get(ci_key) if good else None
        lo.append(ci[0] if ci else None)
        hi.append(ci[1] if ci else None)
    return {"values": vals, "lo": lo, "hi": hi}


def _has(s: dict) -> bool:
    return any(v is not None for v in s["values"])


def _span(results: dict, s: dict, fmt=fmt_pct) -> str:
    """``from 66.7% (layer 4) to 100.0% (layer 1)`` for a series."""
    pts = [(v, la["index"]) for v, la in zip(s["values"], results["layers"]) if v is not None]
    lo, hi = min(pts), max(pts)
    return f"from {fmt(lo[0])} (layer {lo[1]}) to {fmt(hi[0])} (layer {hi[1]})"


def _num(x: float) -> str:
    return f"{x:.2f}"


def _identity_figures(results: dict, out: Path, spec: str, layers: list, names: list) -> list[Figure]:
    figures = []
    sid = series(results, ("speaker_id",), "top1")
    if _has(sid):
        chance = next(layer_attack(la, "speaker_id")["chance"] for la in results["layers"]
                      if is_ok(layer_attack(la, "speaker_id")))
        first = layer_attack(results["layers"][0], "speaker_id") or {}
        per = {n: series(results, ("speaker_id", "attackers", n), "top1") for n in first.get("attackers", {})}
        per = {k: {**v, "lo": None, "hi": None} for k, v in per.items() if _has(v)}
        plots.layer_curves(out / "speaker_id_by_layer.png", layers, names, {"strongest": sid, **per},
                           ylabel="speaker-ID top-1", title=f"{spec}: closed-set speaker identification",
                           chance=chance, ylim=(0, 1.02))
        figures.append(Figure("speaker_id_by_layer.png",
                              f"Line plot of closed-set speaker-ID top-1 accuracy per layer: the strongest attacker "
                              f"goes {_span(results, sid)}, with its 95% CI as a shaded band; one line per attacker "
                              f"({', '.join(per) or 'none'}); chance {fmt_pct(chance)} dashed.",
                              "Speaker identification per layer (strongest attacker, 95% CI band, chance dashed)."))
    ver = series(results, ("verification",), "eer")
    if _has(ver):
        first = layer_attack(results["layers"][0], "verification") or {}
        scorers = {n: series(results, ("verification", "scorers", n), "eer") for n in first.get("scorers", {})}
        lines = {"strongest": ver, **{n: {**v, "lo": None, "hi": None} for n, v in scorers.items() if _has(v)}}
        plots.layer_curves(out / "verification_eer_by_layer.png", layers, names, lines, ylabel="EER",
                           title=f"{spec}: open-set verification (lower = leakier)", chance=0.5, ylim=(0, 0.55))
        figures.append(Figure("verification_eer_by_layer.png",
                              f"Line plot of open-set verification EER per layer (lower means more linkable): the "
                              f"strongest scorer goes {_span(results, ver)}, 95% CI shaded; 50% (unlinkable) dashed.",
                              "Verification EER per layer (strongest scorer, 95% CI band)."))
        best = min((la for la in results["layers"] if is_ok(layer_attack(la, "verification"))),
                   key=lambda la: layer_attack(la, "verification")["eer"])
        hist = layer_attack(best, "verification").get("histogram")
        if hist:
            plots.score_histogram(out / "verification_scores_leakiest.png", hist,
                                  title=f"layer {best['index']} ({best['name']}): target vs non-target scores")
            figures.append(Figure("verification_scores_leakiest.png",
                                  f"Histograms of verification scores at layer {best['index']}: same-speaker "
                                  "(target) against different-speaker (non-target) trials; the less they overlap, "
                                  "the easier the linkage.", "Score distributions at the most linkable layer."))
    return figures


def _attribute_figure(results: dict, out: Path, spec: str, layers: list, names: list) -> list[Figure]:
    lines = {}
    for la in results["layers"]:
        for key, res in (la.get("attacks", {}).get("attributes") or {}).items():
            if is_ok(res) and not key.endswith("_cca"):
                metric, ci = ("roc_auc", "auc_ci95") if "roc_auc" in res else ("r2", "ci95")
                lines.setdefault(f"{key} {'AUC' if metric == 'roc_auc' else 'R²'}",
                                 series(results, ("attributes", key), metric, ci))
                lines.setdefault(f"{key} CCA", {**series(results, ("attributes", f"{key}_cca"), "cca"),
                                                "lo": None, "hi": None})
    lines = {k: v for k, v in lines.items() if _has(v)}
    if not lines:
        return []
    plots.layer_curves(out / "attributes_by_layer.png", layers, names, lines, ylabel="AUC / R² / CCA",
                       title=f"{spec}: attribute inference on unseen speakers")
    spans = "; ".join(f"{k} {_span(results, v, _num)}" for k, v in lines.items())
    return [Figure("attributes_by_layer.png",
                   f"Line plot of attribute inference on unseen speakers per layer: {spans}; "
                   "CI bands shaded for AUC and R².", "Attribute inference per layer (95% CI bands).")]


def _learning_figure(results: dict, out: Path) -> list[Figure]:
    curves, rising = {}, []
    for la in results["layers"]:
        for n, r in ((layer_attack(la, "speaker_id") or {}).get("attackers") or {}).items():
            if is_ok(r) and r.get("learning_curve"):
                curves[f"L{la['index']} {n}"] = r["learning_curve"]
                if still_learning(r):
                    rising.append(f"L{la['index']} {n}")
    if not curves:
        return []
    gain = f"{100 * STILL_LEARNING_GAIN:.0f}"
    plots.learning_curves(out / "speaker_id_learning_curves.png", curves, metric="top1",
                          title="speaker-ID attackers: top-1 vs training data (flat = converged)")
    return [Figure("speaker_id_learning_curves.png",
                   f"Learning curves of {len(curves)} speaker-ID attackers (layer x attacker): top-1 against the "
                   "fraction of training data (25, 50, 100%). "
                   + (f"Still rising by more than {gain} points at full data: {', '.join(rising)}." if rising else
                      f"None rises by more than {gain} points from half to all the data (converged)."),
                   "Attacker learning curves: a flat end means more data would not help the attacker.",
                   topic="methodology")]


# Networks an audit trains epoch by epoch, each early-stopped on validation data: panel title, y label,
# the per-epoch metric, and where the result sits under a layer's ``attacks``.
_TRAINED_NETWORKS = (
    ("inversion decoders", "validation loss (lower is closer)", "val_loss", ("inversion", "frame")),
    ("frame speaker-ID networks", "validation top-1", "val_top1", ("speaker_id", "attackers", "frame")),
    ("frame verification encoders", "validation top-1 (training speakers)", "val_top1",
     ("verification", "scorers", "frame")),
)


def _epoch_record(path: tuple, result: dict) -> dict:
    """Per-epoch rows, best epoch and whether one trained network stopped early, from its result alone."""
    budget = result.get("budget") or {}
    net = (budget.get("encoder") or {}) if path[0] == "verification" else budget
    rows = result.get("learning_curve") if path[0] == "inversion" else net.get("history")
    return {"rows": rows or [], "best_epoch": net.get("best_epoch"), "stopped": epoch_capped(result) is None}


def _training_figure(results: dict, out: Path) -> list[Figure]:
    """Validation curves per epoch of every network the audit trained: the evidence behind ``converged``."""
    panels, early, capped = [], [], []
    for title, ylabel, metric, path in _TRAINED_NETWORKS:
        lines = {}
        for la in results["layers"]:
            result = layer_attack(la, *path)
            if not is_ok(result):
                continue
            rec = _epoch_record(path, result)
            rows = [r for r in rec["rows"] if isinstance(r.get(metric), (int, float)) and "epoch" in r]
            if not rows:
                continue
            name = f"L{la['index']} {title[:-1]}"
            said = f"{name} (best epoch {rec['best_epoch']} of {len(rows)})"
            (early if rec["stopped"] else capped).append(said)
            lines[f"L{la['index']}" + ("" if rec["stopped"] else " (epoch cap)")] = {
                "epochs": [r["epoch"] for r in rows], "values": [r[metric] for r in rows],
                "best_epoch": rec["best_epoch"]}
        if lines:
            panels.append({"title": title, "ylabel": ylabel, "lines": lines})
    if not panels:
        return []
    plots.epoch_curves(out / "training_curves.png", panels,
                       title="networks trained by the audit: validation per epoch (circle = weights kept)")
    alt = (f"Line plots of the validation metric per training epoch of {len(early) + len(capped)} networks "
           f"({', '.join(p['title'] for p in panels)}), the kept epoch circled. "
           + (f"Stopped early, validation no longer improving: {', '.join(early)}. " if early else "")
           + (f"Stopped at their epoch cap, so more epochs might make them stronger: {', '.join(capped)}."
              if capped else "None stopped at its epoch cap."))
    return [Figure("training_curves.png", alt.strip(),
                   "Training curves: a network that stopped at its epoch cap may be understated.",
                   topic="methodology")]


def _pareto_figures(results: dict, out: Path, spec: str) -> list[Figure]:
    figures = []
    for layer in sorted({e["layer"] for e in results.get("defenses") or []}):
        points = privacy_utility_points(results["defenses"], layer)
        if not points:
            continue
        name = f"pareto_layer{layer}.png"
        front = pareto_front(points)
        plots.pareto_plot(out / name, points, front,
                          title=f"{spec} layer {layer}: privacy vs utility per defense setting")
        figures.append(Figure(name, f"Scatter plot for layer {layer}: retained utility against the strongest "
                                    f"attacker's speaker-ID top-1 for {len(points)} defense settings, each labelled; "
                                    "the Pareto front is " + ", ".join(p["label"] for p in front) + ".",
                              f"Privacy vs utility at layer {layer} (Pareto front drawn).", topic="defenses"))
    return figures


def _declared_figures(results: dict, out: Path, spec: str, layers: list, names: list,
                      families: dict) -> list[Figure]:
    """One per-layer plot per declared headline measure that no built-in figure draws (``plot=True``)."""
    figures = []
    for family, measure in headline_measures(families):
        if not measure.plot:
            continue
        for key, path in measure_instances(results["layers"], family, measure):
            parts = path.split(".")
            line = series(results, (family, *parts[:-1]), parts[-1], measure.ci or "ci95")
            if not _has(line):
                continue
            title, slug = measure.title_for(family, key, path), measure.slug_for(family, key, path)
            chance = next((measure.chance_of(layer_attack(la, family, *parts[:-1]) or {}) for la in results["layers"]
                           if is_ok(layer_attack(la, family))), None)
            plots.layer_curves(out / f"{slug}_by_layer.png", layers, names, {title: line}, ylabel=title,
                               title=f"{spec}: {title} ({'higher' if measure.worse_is_higher else 'lower'} = leakier)",
                               chance=chance, ylim=measure.ylim)
            show = measure.show
            figures.append(Figure(f"{slug}_by_layer.png",
                                  f"Line plot of {title} per layer with its 95% CI band: {_span(results, line, show)}.",
                                  f"{title} per layer (95% CI band)."))
    return figures


def write_figures(results: dict, out: Path, families: dict | None = None) -> list[Figure]:
    """Draw every plot the results support into ``out``; returns them with alt text and topic.

    ``families`` (the attack registry) adds a per-layer plot for each declared headline measure
    that no built-in figure draws, so a plugin family's figure is drawn with no edit here.
    """
    layers = [la["index"] for la in results["layers"]]
    names = [la["name"] for la in results["layers"]]
    spec = results["model"].get("spec", "?")
    return (_identity_figures(results, out, spec, layers, names) + _attribute_figure(results, out, spec, layers, names)
            + _declared_figures(results, out, spec, layers, names, families or {})
            + _learning_figure(results, out) + _training_figure(results, out) + _pareto_figures(results, out, spec))


__all__ = ["series", "write_figures"]

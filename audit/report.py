"""Render a run's results: ``results.json``, a readable ``summary.md`` and per-layer plots.

Everything here reads the results dict; no metric is recomputed.
"""

from __future__ import annotations

import json
from pathlib import Path

from audit import plots


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ci(ci: list | None, scale: float = 100.0, fmt: str = ".1f") -> str:
    return "" if not ci or ci[0] is None else f"[{scale * ci[0]:{fmt}}, {scale * ci[1]:{fmt}}]"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else f"{x:{fmt}}"


def _attack(layer: dict, *path: str) -> dict | None:
    node = layer.get("attacks", {})
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _ok(result: dict | None) -> bool:
    return bool(result) and not result.get("skipped")


def _skip_cell(result: dict | None) -> str:
    return "not run" if not result else f"skipped: {result['skipped']}"


def curve_cell(result: dict, metric: str) -> str:
    """The learning curve as ``a / b / c`` (percent at 25/50/100% of the data); a flat end means more data would not help."""
    curve = [c for c in result.get("learning_curve") or [] if c.get(metric) is not None]
    return " / ".join(f"{100 * c[metric]:.0f}" for c in curve) if curve else "n/a"


def speaker_id_table(results: dict) -> list[str]:
    """Markdown rows: one per layer with the strongest closed-set attacker's top-1 and CI."""
    rows = ["| layer | name | dim | top-1 (95% CI) | top-5 | chance | macro-F1 | strongest attacker | "
            "its top-1 at 25/50/100% data | all attackers (top-1) |",
            "|---:|---|---:|---|---:|---:|---:|---|---|---|"]
    for la in results["layers"]:
        sid = _attack(la, "speaker_id")
        if not _ok(sid):
            rows.append(f"| {la['index']} | {la['name']} | {la['dim']} | {_skip_cell(sid)} | | | | | | |")
            continue
        others = ", ".join(f"{n} {_pct(r.get('top1'))}" if not r.get("skipped") else f"{n} skipped"
                           for n, r in sid.get("attackers", {}).items())
        rows.append(f"| {la['index']} | {la['name']} | {la['dim']} | {_pct(sid['top1'])} {_ci(sid['ci95'])} | "
                    f"{_pct(sid['top5'])} | {_pct(sid['chance'])} | {sid['macro_f1']:.3f} | {sid['attacker']} | "
                    f"{curve_cell(sid, 'top1')} | {others} |")
    return rows


def verification_table(results: dict) -> list[str]:
    """Markdown rows: EER with CI, minDCF and linkability of the strongest scorer, plus every scorer's EER."""
    rows = ["| layer | name | EER (95% CI) | minDCF (p=0.01) | D_sys | strongest scorer | its EER at 25/50/100% of "
            "training speakers | all scorers (EER) |",
            "|---:|---|---|---:|---:|---|---|---|"]
    for la in results["layers"]:
        ver = _attack(la, "verification")
        if not _ok(ver):
            rows.append(f"| {la['index']} | {la['name']} | {_skip_cell(ver)} | | | | | |")
            continue
        others = ", ".join(f"{n} {_pct(r.get('eer'))}" if _ok(r) else f"{n} skipped"
                           for n, r in ver.get("scorers", {}).items())
        rows.append(f"| {la['index']} | {la['name']} | {_pct(ver['eer'])} {_ci(ver['ci95'])} | "
                    f"{_num(ver.get('min_dcf_norm'))} | {_num(ver.get('linkability'))} | {ver['attacker']} | "
                    f"{curve_cell(ver, 'eer')} | {others} |")
    return rows


def attribute_table(results: dict) -> list[str]:
    """Markdown rows: per attribute, the inference metric with CI and the CCA."""
    names = []
    for la in results["layers"]:
        for key in (la.get("attacks", {}).get("attributes") or {}):
            if not key.endswith("_cca") and key not in names:
                names.append(key)
    if not names:
        return []
    head = "| layer | name | " + " | ".join(f"{n}: metric (95% CI) | {n}: CCA" for n in names) + " |"
    rows = [head, "|---:|---|" + "---|---:|" * len(names)]
    for la in results["layers"]:
        cells = []
        for n in names:
            res = _attack(la, "attributes", n)
            cca = _attack(la, "attributes", f"{n}_cca")
            if not _ok(res):
                cells.append(_skip_cell(res))
            elif "roc_auc" in res:
                cells.append(f"AUC {_num(res['roc_auc'])} {_ci(res.get('auc_ci95'), 1, '.2f')}, "
                             f"acc {_pct(res['accuracy'])} (chance {_pct(res['chance'])})")
            else:
                cells.append(f"R² {_num(res['r2'])} {_ci(res.get('ci95'), 1, '.2f')}, MAE {_num(res['mae'], '.2f')} "
                             f"({res['attacker']})")
            cells.append(_num(cca["cca"]) if _ok(cca) else "n/a")
        rows.append(f"| {la['index']} | {la['name']} | " + " | ".join(cells) + " |")
    return rows


def inversion_table(results: dict) -> list[str]:
    """Markdown rows: decoder inversion per layer (signal, judges) plus the vocoder-copy reference row."""
    rows = ["| layer | name | MCD dB | LSD dB | STOI | judge WER (originals) | speaker-judge EER | linked top-1 | voice-profile LSD dB (baseline) |",
            "|---:|---|---:|---:|---:|---|---:|---:|---|"]
    copy = None
    lines = []
    for la in results["layers"]:
        inv = _attack(la, "inversion")
        if not inv:
            continue
        prof = inv.get("voice_profile") or {}
        prof_cell = (f"{_num(prof.get('lsd_db'), '.2f')} ({_num(prof.get('baseline_lsd_db'), '.2f')})"
                     if _ok(prof) else _skip_cell(prof))
        fr = inv.get("frame")
        if not _ok(fr):
            rows.append(f"| {la['index']} | {la['name']} | {_skip_cell(fr)} | | | | | | {prof_cell} |")
            continue
        sig, content, spk = fr.get("signal", {}), fr.get("content"), fr.get("speaker")
        wer_cell = (f"{_pct(content['wer_reconstruction'])} ({_pct(content['wer_original'])})"
                    if isinstance(content, dict) else str(content or "n/a"))
        rows.append(f"| {la['index']} | {la['name']} | {_num(sig.get('mcd_db'), '.2f')} | {_num(sig.get('lsd_db'), '.2f')} | "
                    f"{_num(sig.get('stoi'), '.3f')} | {wer_cell} | "
                    f"{_pct(spk.get('eer')) if isinstance(spk, dict) else 'n/a'} | "
                    f"{_pct(spk.get('top1')) if isinstance(spk, dict) else 'n/a'} | {prof_cell} |")
        copy = copy or fr
        if isinstance(content, dict) and isinstance(spk, dict):
            lines.append(f"- layer {la['index']}: reconstructions give judge WER {_pct(content['wer_reconstruction'])} "
                         f"vs {_pct(content['wer_original'])} on the originals, and the speaker judge links them to the "
                         f"right speaker {_pct(spk['top1'])} of the time (chance {_pct(spk.get('chance'))}).")
    if copy is not None:
        vs, vc = copy.get("vocoder_copy_signal", {}), copy.get("vocoder_copy_content")
        wer_cell = (f"{_pct(vc['wer_reconstruction'])} ({_pct(vc['wer_original'])})" if isinstance(vc, dict) else "n/a")
        rows.append(f"| copy | original mel -> vocoder | {_num(vs.get('mcd_db'), '.2f')} | {_num(vs.get('lsd_db'), '.2f')} | "
                    f"{_num(vs.get('stoi'), '.3f')} | {wer_cell} | | | |")
    return rows + [""] + lines if len(rows) > 2 else []


def leakiest(results: dict) -> dict:
    """Leakiest layer per measure: speaker-ID top-1, verification EER, and each attribute."""
    out = {}
    measures = {"identity (speaker-ID top-1)": (("speaker_id",), "top1", max),
                "identity (verification EER)": (("verification",), "eer", min)}
    for la in results["layers"]:
        for key, res in (la.get("attacks", {}).get("attributes") or {}).items():
            if _ok(res) and not key.endswith("_cca"):
                metric = "roc_auc" if "roc_auc" in res else "r2"
                measures[f"{key} ({'AUC' if metric == 'roc_auc' else 'R²'})"] = (("attributes", key), metric, max)
    for label, (path, metric, pick) in measures.items():
        scored = [(r[metric], la) for la in results["layers"]
                  if _ok(r := _attack(la, *path)) and r.get(metric) is not None]
        if scored:
            value, la = pick(scored, key=lambda t: t[0])
            res = _attack(la, *path)
            out[label] = {"layer": la["index"], "name": la["name"], "metric": metric, "value": value,
                          "ci95": res.get("auc_ci95") if metric == "roc_auc" else res.get("ci95"),
                          "chance": res.get("chance")}
    return out


def summary_markdown(results: dict) -> str:
    """The human-readable report a reviewer reads first."""
    corpus, model = results["corpus"], results["model"]
    lines = [f"# speech-audit report: {model['spec']} on {corpus['spec']}", ""]
    if results.get("weakened"):
        lines += ["> **Weakened audit.** These settings make the attackers weaker than a full audit; "
                  "leakage may be underestimated:"]
        lines += [f"> - {w}" for w in results["weakened"]] + [""]
    lines += ["## Threat model", "", results["threat_model"], ""]
    leaks = results.get("leakiest", {})
    if leaks:
        lines += ["## Leakiest layers", ""]
        for label, v in leaks.items():
            is_rate = v["metric"] in ("top1", "eer")
            value = _pct(v["value"]) if is_rate else _num(v["value"])
            ci = _ci(v["ci95"]) if is_rate else _ci(v["ci95"], 1, ".2f")
            chance = f", chance {_pct(v['chance']) if is_rate else _num(v['chance'], '.2f')}" if v.get("chance") is not None else ""
            lines.append(f"- **{label}**: layer {v['layer']} ({v['name']}): {value} {ci}{chance}")
        lines.append("")
    s = results.get("summary", {})
    if s.get("measure") == "verification_eer":
        lines += [f"**What it means:** with a projection learned on other people, two utterances of unseen speakers "
                  f"from layer {s['leakiest_layer']} are linked to the same or different person with an EER of "
                  f"{_pct(s['leakiest_eer'])} (95% CI {_ci(s['leakiest_ci95'])}; 50% = unlinkable). The least leaky "
                  f"layer ({s['least_leaky_layer']}) gives {_pct(s['least_leaky_eer'])}.", ""]
    elif s:
        ratio = s["leakiest_top1"] / s["chance"] if s["chance"] else float("nan")
        lines += [f"**What it means:** an attacker with a few labelled utterances per speaker names the speaker of "
                  f"a new utterance from layer {s['leakiest_layer']} {_pct(s['leakiest_top1'])} of the time "
                  f"(95% CI {_ci(s['leakiest_ci95'])}), {ratio:.1f}x chance ({_pct(s['chance'])}). "
                  f"The least leaky layer ({s['least_leaky_layer']}) still gives {_pct(s['least_leaky_top1'])}. "
                  "Any layer whose CI lies above chance identifies speakers: treat its embeddings as personal data.",
                  ""]
    if any(_attack(la, "speaker_id") for la in results["layers"]):
        lines += ["## Speaker identification per layer (closed set)", ""] + speaker_id_table(results) + [""]
    if any(_attack(la, "verification") for la in results["layers"]):
        lines += ["## Speaker verification per layer (open set, unseen speakers)", ""]
        lines += verification_table(results) + [""]
        lines += ["EER as in speechbrain (threshold sweep over scores and midpoints); minDCF normalised, "
                  "p_target = 0.01, C_miss = C_fa = 1; D_sys = global linkability (Gomez-Barrero et al.), "
                  "0 = unlinkable, 1 = fully linkable. CIs resample test speakers.", ""]
    attr = attribute_table(results)
    if attr:
        lines += ["## Attribute inference per layer (unseen speakers)", ""] + attr + [""]
        lines += ["Gender: logistic regression, accuracy and ROC AUC; speech rate = alphanumeric characters of the "
                  "transcript / duration, regressed by an MLP or ridge regression (whichever predicts validation speakers "
                  "better; named in the cell), R² against predicting the training mean; CCA = "
                  "test-set canonical correlation of a linear projection (PCA-reduced layer) with the attribute.",
                  ""]
    inv = inversion_table(results)
    if inv:
        lines += ["## Inversion per layer (decoder -> log-mel -> Griffin-Lim, unseen speakers)", ""] + inv + [""]
        lines += ["MCD: plain mel-cepstral distortion in dB, cepstra 1..24 (c0 excluded) from the 80-bin log-mel by "
                  "orthonormal DCT, frame-aligned (no DTW); LSD: log-spectral distance in dB; STOI via pystoi; judge "
                  "WER: Whisper tiny.en with one normalisation for references and hypotheses; speaker judge: GE2E "
                  "cosine to each speaker's enrolment (the utterance itself left out). The `copy` row runs the "
                  "original mel through the same vocoder: the vocoder's own loss, separate from the decoder's.", ""]
    lines += _settings_lines(results)
    files = sorted(p for p in results.get("files", []))
    if files:
        lines += ["## Files", ""] + [f"- `{f}`" for f in files] + [""]
    return "\n".join(lines)


def _settings_lines(results: dict) -> list[str]:
    model, corpus = results["model"], results["corpus"]
    split = (_attack(results["layers"][0], "speaker_id") or {}).get("split", {})
    lines = ["## Settings (to reproduce)", "",
             f"- model: `{model['spec']}` ({model['num_layers']} layers, fingerprint `{model['fingerprint'][:16]}`)",
             f"- corpus: {corpus['description']}"]
    if split:
        lines.append(f"- speaker-ID split: {split['kind']}-level, seed {split['seed']}: {split['n_train']} train / "
                     f"{split['n_test']} test utterances" +
                     (f"; speakers dropped (too few utterances): {len(split['dropped_speakers'])}"
                      if split.get("dropped_speakers") else ""))
    lines += ["- top-1/top-5 accuracy with a 95% percentile bootstrap CI over test utterances; chance = 1/N speakers;"
              " the headline per layer is the attacker with the highest test top-1 (worst case for privacy); every"
              " attacker's hyper-parameters are chosen on validation data, never on the test split",
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
        r = _attack(la, *path)
        good = _ok(r) and r.get(metric) is not None
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
        chance = next(_attack(la, "speaker_id")["chance"] for la in results["layers"] if _ok(_attack(la, "speaker_id")))
        per_attacker = {f"{n}": _series(results, ("speaker_id", "attackers", n), "top1")
                        for n in (_attack(results["layers"][0], "speaker_id") or {}).get("attackers", {})}
        per_attacker = {k: {**v, "lo": None, "hi": None} for k, v in per_attacker.items() if has(v)}
        plots.layer_curves(out / "speaker_id_by_layer.png", layers, names, {"strongest": sid, **per_attacker},
                           ylabel="speaker-ID top-1", title=f"{spec}: closed-set speaker identification",
                           chance=chance, ylim=(0, 1.02))
        written.append("speaker_id_by_layer.png")
    ver = _series(results, ("verification",), "eer")
    if has(ver):
        scorers = {n: _series(results, ("verification", "scorers", n), "eer")
                   for n in (_attack(results["layers"][0], "verification") or {}).get("scorers", {})}
        series = {"strongest": ver, **{n: {**v, "lo": None, "hi": None} for n, v in scorers.items() if has(v)}}
        plots.layer_curves(out / "verification_eer_by_layer.png", layers, names, series, ylabel="EER",
                           title=f"{spec}: open-set verification (lower = leakier)", chance=0.5, ylim=(0, 0.55))
        written.append("verification_eer_by_layer.png")
        best = min((la for la in results["layers"] if _ok(_attack(la, "verification"))),
                   key=lambda la: _attack(la, "verification")["eer"])
        hist = _attack(best, "verification").get("histogram")
        if hist:
            plots.score_histogram(out / "verification_scores_leakiest.png", hist,
                                  title=f"layer {best['index']} ({best['name']}): target vs non-target scores")
            written.append("verification_scores_leakiest.png")
    attr_series = {}
    for la in results["layers"]:
        for key, res in (la.get("attacks", {}).get("attributes") or {}).items():
            if _ok(res) and not key.endswith("_cca"):
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
        for n, r in ((_attack(la, "speaker_id") or {}).get("attackers") or {}).items():
            if _ok(r) and r.get("learning_curve"):
                curves[f"L{la['index']} {n}"] = r["learning_curve"]
    if curves:
        plots.learning_curves(out / "speaker_id_learning_curves.png", curves, metric="top1",
                              title="speaker-ID attackers: top-1 vs training data (flat = converged)")
        written.append("speaker_id_learning_curves.png")
    return written


def write_report(results: dict, out: Path) -> None:
    """Write ``results.json``, ``summary.md`` and plots into ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    results["leakiest"] = leakiest(results)
    results["files"] = sorted(set(results.get("files", [])) | set(write_plots(results, out)))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "summary.md").write_text(summary_markdown(results))

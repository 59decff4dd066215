"""Render a run's results: ``results.json``, a readable ``summary.md`` and per-layer plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ci(ci: list | None) -> str:
    return "" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def speaker_id_table(results: dict) -> list[str]:
    """Markdown rows: one per layer with the strongest closed-set attacker's top-1 and CI."""
    rows = ["| layer | name | dim | top-1 (95% CI) | top-5 | chance | macro-F1 | strongest attacker |",
            "|---:|---|---:|---|---:|---:|---:|---|"]
    for la in results["layers"]:
        sid = la["attacks"]["speaker_id"]
        if sid.get("skipped"):
            rows.append(f"| {la['index']} | {la['name']} | {la['dim']} | skipped: {sid['skipped']} | | | | |")
            continue
        rows.append(f"| {la['index']} | {la['name']} | {la['dim']} | {_pct(sid['top1'])} {_ci(sid['ci95'])} | "
                    f"{_pct(sid['top5'])} | {_pct(sid['chance'])} | {sid['macro_f1']:.3f} | {sid['attacker']} |")
    return rows


def summary_markdown(results: dict) -> str:
    """The human-readable report a reviewer reads first."""
    s = results.get("summary", {})
    corpus, model = results["corpus"], results["model"]
    lines = [f"# speech-audit report: {model['spec']} on {corpus['spec']}", ""]
    if results.get("weakened"):
        lines += ["> **Weakened audit.** These settings make the attackers weaker than a full audit; "
                  "leakage may be underestimated:"]
        lines += [f"> - {w}" for w in results["weakened"]] + [""]
    lines += ["## Threat model", "", results["threat_model"], ""]
    lines += ["## Speaker identification per layer (closed set)", ""]
    lines += speaker_id_table(results) + [""]
    if s:
        ratio = s["leakiest_top1"] / s["chance"] if s["chance"] else float("nan")
        lines += [f"**What it means:** an attacker with a few labelled utterances per speaker names the speaker of "
                  f"a new utterance from layer {s['leakiest_layer']} {_pct(s['leakiest_top1'])} of the time "
                  f"(95% CI {_ci(s['leakiest_ci95'])}), {ratio:.1f}x chance ({_pct(s['chance'])}). "
                  f"The least leaky layer ({s['least_leaky_layer']}) still gives {_pct(s['least_leaky_top1'])}. "
                  "Any layer whose CI lies above chance identifies speakers: treat its embeddings as personal data.",
                  ""]
    split = results["layers"][0]["attacks"]["speaker_id"]["split"]
    lines += ["## Settings", "",
              f"- model: `{model['spec']}` ({model['num_layers']} layers, fingerprint `{model['fingerprint'][:16]}`)",
              f"- corpus: {corpus['description']}",
              f"- split: {split['kind']}-level, seed {split['seed']}: {split['n_train']} train / {split['n_test']} test "
              f"utterances" + (f"; speakers dropped (too few utterances): {len(split['dropped_speakers'])}"
                               if split["dropped_speakers"] else ""),
              "- metric: top-1/top-5 accuracy, 95% percentile bootstrap CI over test utterances; chance = 1/N speakers;"
              " the strongest attacker per layer is chosen by validation accuracy, never on the test split",
              f"- embeddings store: `{results['store']['path']}` (cache hit: {results['store']['cache_hit']})",
              f"- environment: torch {results['environment']['torch']}, transformers "
              f"{results['environment']['transformers']}, python {results['environment']['python']}",
              f"- wall time: {results.get('wall_seconds', 0):.1f} s", ""]
    lines += ["Files: `results.json` (all numbers, schema " + results["schema_version"] + "), "
              "`speaker_id_by_layer.png` (top-1 per layer with CI band).", ""]
    return "\n".join(lines)


def plot_speaker_id(results: dict, path: Path) -> None:
    """Top-1 accuracy per layer with its 95% CI band and the chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [la for la in results["layers"] if not la["attacks"]["speaker_id"].get("skipped")]
    if not rows:
        return
    x = np.array([la["index"] for la in rows])
    sid = [la["attacks"]["speaker_id"] for la in rows]
    top1 = np.array([r["top1"] for r in sid])
    lo = np.array([r["ci95"][0] for r in sid])
    hi = np.array([r["ci95"][1] for r in sid])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.fill_between(x, lo, hi, alpha=0.25, label="95% CI")
    ax.plot(x, top1, "o-", label="top-1 (strongest attacker)")
    ax.axhline(sid[0]["chance"], color="gray", ls="--", label="chance")
    ax.set_xticks(x, [f"{la['index']}\n{la['name']}" for la in rows], fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("speaker-ID top-1 accuracy")
    ax.set_title(f"{results['model']['spec']}: speaker identity per layer", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(results: dict, out: Path) -> None:
    """Write ``results.json``, ``summary.md`` and plots into ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "summary.md").write_text(summary_markdown(results))
    plot_speaker_id(results, out / "speaker_id_by_layer.png")

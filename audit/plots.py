"""Plots a reviewer looks at: metric-vs-layer curves with CI bands, embedding maps, score histograms, training curves.

Every function takes plain numbers (from ``results.json`` or arrays) and writes one PNG; none
recomputes a metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from audit.atomic import write_output


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Save ``fig`` atomically as ``path`` (format from its suffix); a write failure is one line naming it."""
    path = Path(path)
    write_output(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))


def layer_curves(path: Path, layers: Sequence[int], names: Sequence[str], series: dict[str, dict],
                 *, ylabel: str, title: str, chance: float | None = None, ylim: tuple | None = None) -> Path:
    """Metric vs layer, one line per series with an optional CI band.

    ``series`` maps a label to ``{"values": [...], "lo": [...] | None, "hi": [...] | None}``;
    None values (skipped layers) leave gaps.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    x = np.asarray(layers, dtype=float)
    for label, s in series.items():
        y = np.array([np.nan if v is None else v for v in s["values"]], dtype=float)
        line, = ax.plot(x, y, "o-", label=label, ms=4)
        if s.get("lo") is not None and s.get("hi") is not None:
            lo = np.array([np.nan if v is None else v for v in s["lo"]], dtype=float)
            hi = np.array([np.nan if v is None else v for v in s["hi"]], dtype=float)
            ax.fill_between(x, lo, hi, alpha=0.2, color=line.get_color())
    if chance is not None:
        ax.axhline(chance, color="gray", ls="--", lw=1, label="chance")
    ax.set_xticks(x, [f"{i}\n{n}" for i, n in zip(layers, names)], fontsize=7)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def pareto_plot(path: Path, points: Sequence[dict], front: Sequence[dict], *, title: str) -> Path:
    """Retained utility against the strongest attacker's speaker-ID top-1, one marker per setting.

    Each point is ``{"label", "leak", "leak_ci95", "retained", "retained_ci95", "chance"}``; the
    Pareto ``front`` is drawn as a line, chance as a dashed vertical line. Labels sit next to
    the markers, so nothing is told by colour alone.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.4), dpi=120)
    for p in points:
        xerr = yerr = None
        if p.get("leak_ci95"):
            xerr = [[p["leak"] - p["leak_ci95"][0]], [p["leak_ci95"][1] - p["leak"]]]
        if p.get("retained_ci95"):
            yerr = [[p["retained"] - p["retained_ci95"][0]], [p["retained_ci95"][1] - p["retained"]]]
        on_front = any(p is q for q in front)
        ax.errorbar([p["leak"]], [p["retained"]], xerr=xerr, yerr=yerr, fmt="o" if on_front else "s", ms=5,
                    capsize=2, lw=0.8, color="C0" if on_front else "C7")
        ax.annotate(p["label"], (p["leak"], p["retained"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if front:
        ax.plot([p["leak"] for p in front], [p["retained"] for p in front], "-", color="C0", lw=1.2,
                label="Pareto front (circles)")
    chance = next((p["chance"] for p in points if p.get("chance") is not None), None)
    if chance is not None:
        ax.axvline(chance, color="gray", ls="--", lw=1, label=f"chance top-1 ({chance:.1%})")
    ax.set_xlabel("speaker-ID top-1 of the strongest attacker (lower = more private)")
    ax.set_ylabel("retained utility (defended / undefended)")
    ax.set_xlim(left=0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def embedding_map(path: Path, X: np.ndarray, colour_by: dict[str, np.ndarray], *, title: str,
                  method: str = "tsne", seed: int = 0) -> Path:
    """2-D map of pooled embeddings (PCA to 50 dims, then t-SNE or PCA), one panel per colouring.

    Categorical panels with at most 12 classes get a legend, except ``speaker`` (ids are personal data).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    plt = _pyplot()
    Z = StandardScaler().fit_transform(X)
    Z = PCA(n_components=min(50, Z.shape[1], Z.shape[0] - 1), random_state=seed).fit_transform(Z)
    if method == "tsne" and Z.shape[0] > 10:
        Z = TSNE(n_components=2, perplexity=min(30.0, (Z.shape[0] - 1) / 3), init="pca",
                 random_state=seed).fit_transform(Z)
    else:
        Z = Z[:, :2]
    fig, axes = plt.subplots(1, len(colour_by), figsize=(4.2 * len(colour_by), 3.8), dpi=110, squeeze=False)
    for ax, (name, labels) in zip(axes[0], colour_by.items()):
        labels = np.asarray(labels, dtype=object)
        known = np.array([v is not None for v in labels])
        if known.any() and all(isinstance(v, (int, float)) for v in labels[known]):
            sc = ax.scatter(Z[known, 0], Z[known, 1], c=labels[known].astype(float), s=8, cmap="viridis")
            fig.colorbar(sc, ax=ax, fraction=0.046)
        else:
            cats = sorted({str(v) for v in labels[known]})
            cmap = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
            for k, c in enumerate(cats):
                m = np.array([str(v) == c for v in labels])
                ax.scatter(Z[m, 0], Z[m, 1], s=8, color=cmap(k % cmap.N), label=c if len(cats) <= 12 else None)
            # Speaker ids are personal data and say nothing a reviewer needs: the clusters are the finding.
            if len(cats) <= 12 and name != "speaker":
                ax.legend(fontsize=6, markerscale=1.5, loc="best")
        ax.set_title(f"coloured by {name}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def score_histogram(path: Path, hist: dict, *, title: str) -> Path:
    """Target vs non-target score histograms (``bin_edges``, ``target``, ``nontarget`` counts)."""
    plt = _pyplot()
    edges = np.asarray(hist["bin_edges"], dtype=float)
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for key, colour in (("nontarget", "tab:red"), ("target", "tab:green")):
        counts = np.asarray(hist[key], dtype=float)
        density = counts / max(counts.sum(), 1) / width
        ax.bar(centres, density, width=width, alpha=0.5, color=colour, label=key)
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def learning_curves(path: Path, curves: dict[str, list[dict]], *, metric: str, title: str) -> Path:
    """Metric vs training fraction, one line per attacker/layer label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for label, rows in curves.items():
        if rows:
            ax.plot([r["fraction"] for r in rows], [r[metric] for r in rows], "o-", ms=3, label=label)
    ax.set_xlabel("fraction of training data")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def epoch_curves(path: Path, panels: Sequence[dict], *, title: str) -> Path:
    """Validation metric per training epoch, one panel per kind of network, each kept epoch circled.

    ``panels`` holds ``{"title", "ylabel", "lines"}``; ``lines`` maps a label to
    ``{"epochs": [...], "values": [...], "best_epoch": int | None}``.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), dpi=120, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, line in panel["lines"].items():
            drawn, = ax.plot(line["epochs"], line["values"], "-", lw=1.2, label=label)
            if line.get("best_epoch") in line["epochs"]:
                y = line["values"][line["epochs"].index(line["best_epoch"])]
                ax.plot([line["best_epoch"]], [y], "o", ms=6, mfc="none", color=drawn.get_color())
        ax.set_xlabel("epoch")
        ax.set_ylabel(panel["ylabel"])
        ax.set_title(panel["title"], fontsize=8)
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def mel_comparison(path: Path, true_mel: np.ndarray, pred_mel: np.ndarray, *, title: str) -> Path:
    """Original and reconstructed log-mel spectrograms (``(T, n_mels)``) one above the other."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(7, 4.2), dpi=110, sharex=True)
    lo, hi = float(np.percentile(true_mel, 1)), float(true_mel.max())
    for ax, mel, label in ((axes[0], true_mel, "original"), (axes[1], pred_mel, "reconstruction")):
        im = ax.imshow(mel.T, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma")
        ax.set_ylabel(f"{label}\nmel bin", fontsize=8)
    axes[1].set_xlabel("frame")
    fig.colorbar(im, ax=axes, fraction=0.03, label="ln mel")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
    plt.close(fig)
    return path

"""The run's headline figures, computed once from per-layer results (the report only renders them).

Every headline is the worst case for privacy (the leakiest layer, its strongest attacker) and
says how many attackers x layers it was picked from; its ``selection_ci95`` is the interval
at level ``1 - 0.05 / m`` for those ``m`` comparisons (Bonferroni), so picking the maximum of
many noisy figures does not make chance look like leakage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from audit.measures import Bands, Figure, Measure, Rating, rate, read_figure
from audit.results import RiskRating, is_ok, layer_attack

#: (label, path into a layer's attacks, metric, "max" if higher is leakier else "min").
IDENTITY_MEASURES = (("identity (speaker-ID top-1)", ("speaker_id",), "top1", "max"),
                     ("identity (verification EER)", ("verification",), "eer", "min"))


def _scored(layers: list[dict], path: tuple[str, ...], metric: str) -> list[tuple[float, dict, dict]]:
    return [(r[metric], la, r) for la in layers
            if is_ok(r := layer_attack(la, *path)) and r.get(metric) is not None]


def headline_measures(families: dict[str, Any]) -> list[tuple[str, Measure]]:
    """(family, measure) of every declared measure with a ``headline`` label, in registry order."""
    return [(name, m) for name, family in families.items() for m in getattr(family, "metrics", ()) if m.headline]


def measure_instances(layers: list[dict], family: str, measure: Measure) -> list[tuple[str, str]]:
    """(key, path) of each instance of ``measure``'s pattern found in ``family``'s results, first seen first.

    A pattern's ``*`` matches one key of the family's result (an attribute's name), so an
    attribute measured only on some corpora is headlined only there.
    """
    if "*" not in measure.pattern:
        return [("", measure.pattern)] if layers else []
    found: list[tuple[str, str]] = []
    head, _, tail = measure.pattern.partition("*")
    for la in layers:
        node = layer_attack(la, family)
        if not isinstance(node, dict):
            continue
        holder = node
        for part in head.strip(".").split(".") if head.strip(".") else []:
            holder = holder.get(part) if isinstance(holder, dict) else None
        for key, value in (holder.items() if isinstance(holder, dict) else ()):
            path = f"{head}{key}{tail}"
            if is_ok(value) and isinstance(value, dict) and value.get(tail.strip(".")) is not None \
                    and measure.matches(path) and (key, path) not in found:
                found.append((key, path))
    return found


def leakiest(layers: list[dict], measures: list[tuple[str, Measure]]) -> dict[str, dict[str, Any]]:
    """Leakiest layer per declared headline measure (:func:`headline_measures`): identity, attributes, plugins.

    Each entry is keyed by the measure's ``headline`` label (``{key}`` filled in for a ``*``
    pattern) and holds ``layer``, ``name``, ``metric``, ``unit`` (the measure's), ``value``, ``ci95`` (the attacker's own),
    ``selection_ci95`` (valid for the pick, where the family computed one), ``chance`` (the
    measure's: a constant such as AUC's 0.5, or the key it names), ``attacker``, ``n_compared``
    (attackers x layers the value was picked from), ``still_learning`` and ``epoch_capped``
    (:mod:`audit.curves`: None unless the attacker behind the value may understate leakage).
    """
    out: dict[str, dict[str, Any]] = {}
    for family, measure in measures:
        for key, path in measure_instances(layers, family, measure):
            scored = []
            for la in layers:
                node = layer_attack(la, family)
                if not is_ok(node):
                    continue
                fig = read_figure(node, path, measure, f"layer {la['index']}")
                if fig.value is not None:
                    scored.append((fig, la, fig.source))
            if not scored:
                continue
            pick = max if measure.higher_is_leakier else min
            fig, la, res = pick(scored, key=lambda t: t[0].value)
            per_layer = res.get("n_attackers_compared", 1)
            out[measure.headline.format(key=key)] = {
                "layer": la["index"], "name": la["name"], "metric": path.split(".")[-1], "unit": measure.unit,
                "value": fig.value,
                "ci95": res.get(measure.ci) if measure.ci else None, "selection_ci95": res.get("selection_ci95"),
                "chance": fig.chance, "attacker": res.get("attacker"), "n_compared": int(per_layer * len(scored)),
                "n_layers_compared": len(scored), "still_learning": fig.still_learning,
                "epoch_capped": fig.epoch_capped}
    return out


def headline(layers: list[dict]) -> dict[str, Any]:
    """Most and least leaky layer by speaker-ID top-1, or by verification EER when speaker ID was not run."""
    for label, path, metric, pick in IDENTITY_MEASURES:
        scored = _scored(layers, path, metric)
        if not scored:
            continue
        leaky = (max if pick == "max" else min)(scored, key=lambda t: t[0])
        least = (min if pick == "max" else max)(scored, key=lambda t: t[0])
        value, la, res = leaky
        name = "top1" if metric == "top1" else "eer"
        return {"measure": f"{path[0]}_{metric}", "leakiest_layer": la["index"], f"leakiest_{name}": value,
                "leakiest_ci95": res["ci95"], "leakiest_selection_ci95": res.get("selection_ci95") or res["ci95"],
                "leakiest_attacker": res["attacker"], "chance": res["chance"],
                "n_compared": int(res.get("n_attackers_compared", 1) * len(scored)),
                "n_layers_compared": len(scored), "least_leaky_layer": least[1]["index"],
                f"least_leaky_{name}": least[0],
                "picked_from": (f"the {'highest' if pick == 'max' else 'lowest'} of "
                                f"{res.get('n_attackers_compared', 1)} attackers x {len(scored)} layers; "
                                "selection CI Bonferroni-adjusted for that many comparisons")}
    return {}


def worst_rating(ratings: list[RiskRating]) -> RiskRating | None:
    """The rating a reviewer must read first: worst band of the privacy-worst bound, then the narrower claim."""
    return min(ratings, key=RiskRating.sort_key) if ratings else None


def layer_figures(layers: list[dict], path: tuple[str, ...], metric: str, measure: Measure) -> list[Figure]:
    """``measure`` read on every layer whose ``path`` result ran (``where`` = ``layer <i>``); missing ones left out."""
    figures = []
    for la in layers:
        node = layer_attack(la, *path)
        if not is_ok(node):
            continue
        fig = read_figure(node, metric, measure, f"layer {la['index']}")
        if fig.value is not None:
            figures.append(fig)
    return figures


def rating_reason(evidence: str, bands: str, rating: Rating, caveats: list[str]) -> str:
    """A rating's reason: the evidence, the bands it was judged by, why it is inconclusive, and every caveat."""
    reason = f"{evidence}; bands: {bands}"
    if rating.level == "inconclusive":
        reason += (f"; inconclusive: the CI spans {rating.best} to {rating.worst}, so it can be neither cleared nor "
                   "confirmed: more data needed")
    return "".join([reason, *(f"; {caveat}" for caveat in caveats)])


def rate_figure(threat: str, metric: str, fig: Figure, rating: Rating, evidence: str, bands: Bands,
                layer: int | None = None) -> RiskRating:
    """A :class:`RiskRating` from one rated figure: the evidence sentence, the bands, the caveats, the verdict's basis."""
    reason = rating_reason(evidence, bands.describe(bool(fig.measure.higher_is_leakier), fig.measure.show), rating,
                           fig.caveats)
    return RiskRating(threat, rating.level, reason, metric, fig.value, fig.interval, fig.chance, layer,
                      worst=rating.worst, best=rating.best, caveats=list(fig.caveats))


def rate_layers(threat: str, metric: str, figures: list[Figure], evidence: Callable[[Figure], str],
                bands: Bands | None = None) -> RiskRating | None:
    """Rate every layer's figure by the bound worst for privacy and keep the worst (None: no figure).

    Every layer is rated, not only the one with the leakiest value: a layer with a lower value but
    a wider CI can reach further into the high band, and a rating must not read safer than that.
    Ties go to the leakier value.
    """
    rated = []
    for fig in figures:
        b = bands or fig.measure.bands
        r = rate(fig, b)
        if r is None or b is None:
            continue
        sign = -1.0 if fig.measure.higher_is_leakier else 1.0
        layer = int(fig.where.split()[-1]) if fig.where.startswith("layer ") else None
        rated.append((r.sort_key(), sign * fig.value, rate_figure(threat, metric, fig, r, evidence(fig), b, layer)))
    if not rated:
        return None
    return min(rated, key=lambda t: (t[0], t[1]))[2]


def layer_risk(threat: str, family: str, measure: Measure,
               evidence: Callable[[Figure], str]) -> Callable[[dict], RiskRating]:
    """A family's ``risk`` entry as a declaration: every layer's ``measure`` rated by its bands, the worst kept.

    ``evidence`` words one figure for the reason; a run where no layer has the figure reads
    ``not measured``, never low.
    """
    def rate_threat(results: dict) -> RiskRating:
        figures = layer_figures(results["layers"], (family,), measure.pattern, measure)
        rating = rate_layers(threat, f"{family}.{measure.pattern}", figures, evidence)
        return rating or RiskRating(threat, "not measured", f"no layer has a {measure.label or measure.pattern} figure")

    return rate_threat


__all__ = ["IDENTITY_MEASURES", "headline", "headline_measures", "layer_figures", "layer_risk", "leakiest",
           "measure_instances", "rate_figure", "rate_layers", "rating_reason", "worst_rating"]

"""A measure declared once, read into a figure, and rated by the bound worst for privacy.

A family (or the defense comparison) declares each number it produces as a :class:`Measure`:
where it lies below the family's per-layer result, which way is leakier (or, for utility, better),
its unit and range, where its CI and chance level are, and, for leakage measures that rate a
threat, the :class:`Bands` that say what counts as high, medium or low risk. Readers never
re-derive that meaning:

* :func:`read_figure` reads one measure at one place into a :class:`Figure` (value, CI, chance,
  attacker, caveats, or why it is missing);
* :func:`rate` turns a figure into a :class:`Band` pair: the band of the CI bound worst for
  privacy and the band of the bound best for it. Equal: the threat is in that band; different:
  it is *inconclusive* between them, ordered by its worst band. A rating is therefore ``low``
  only when even the worst-case bound lies in the low band.

The selection-adjusted (Bonferroni) interval of a figure picked from several attackers or layers
is wider than the attacker's own. :func:`rate` rates the hull of both: the adjusted lower bound
can support a claim of leakage, and the adjusted upper bound can only make clearing harder, so
neither interval can make a figure read safer than the other would.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from audit.curves import epoch_capped, still_learning

#: Units a measure may declare: ``proportion`` (shown as percent, in [0, 1]), ``rate`` (an error
#: rate shown as percent, may exceed 1: WER, CER), ``db``, ``score`` (a plain number: AUC, R²,
#: CCA, minDCF) and ``ratio`` (utility kept).
UNITS = ("proportion", "rate", "db", "score", "ratio")

#: Risk bands, worst first (``not measured`` is not a low risk: nothing was tested).
BANDS = ("high", "medium", "low")


@dataclass(frozen=True)
class Bands:
    """A leakage measure's risk bands: the value from which a figure is ``high``, then ``medium`` risk.

    Thresholds are on the measure's own scale and direction: for a measure where higher is
    leakier, ``high`` when value >= ``high`` (``>`` unless ``high_inclusive``), ``medium`` when
    value > ``medium`` (``>=`` with ``medium_inclusive``); for one where lower is leakier (EER,
    WER), the same with the comparisons reversed. ``medium_times_chance`` reads ``medium`` as a
    multiple of the figure's chance level (2.0: "above twice chance").
    """

    high: float
    medium: float
    high_inclusive: bool = True
    medium_inclusive: bool = False
    medium_times_chance: bool = False

    def describe(self, higher_is_leakier: bool, fmt: Any = str) -> str:
        """The bands in words, e.g. ``high >= 50%, medium > 2x chance``."""
        hi_op = (">=" if self.high_inclusive else ">") if higher_is_leakier else ("<=" if self.high_inclusive else "<")
        md_op = (">=" if self.medium_inclusive else ">") if higher_is_leakier else ("<=" if self.medium_inclusive else "<")
        medium = f"{self.medium:g}x chance" if self.medium_times_chance else fmt(self.medium)
        return f"high {hi_op} {fmt(self.high)}, medium {md_op} {medium}, low otherwise"

    def band(self, x: float, higher_is_leakier: bool, chance: float | None = None) -> str | None:
        """The band of one number (None when ``medium`` needs a chance level and there is none)."""
        medium = self.medium
        if self.medium_times_chance:
            if chance is None or not math.isfinite(chance):
                return None
            medium = self.medium * chance
        sign = 1.0 if higher_is_leakier else -1.0
        v, h, m = sign * x, sign * self.high, sign * medium
        if v > h or (self.high_inclusive and v == h):
            return "high"
        if v > m or (self.medium_inclusive and v == m):
            return "medium"
        return "low"


@dataclass(frozen=True)
class Measure:
    """One number a family (or the defense comparison) reports, declared once.

    ``pattern`` is a dotted path below the family's per-layer result (``top1``,
    ``attackers.*.top1``; ``*`` matches one key). ``higher_is_leakier`` is True when a higher
    value means more leakage, False when lower does (EER, WER of a reconstruction), None for a
    utility measure, whose ``higher_is_better`` says its direction instead. ``ci`` names the key
    beside the value holding its 95% CI; ``chance`` names the key holding its chance level, or is
    the chance level itself when it does not depend on the data (AUC: 0.5), or None. ``low`` and
    ``high`` bound the values the measure can take (None: unbounded), so a gate threshold outside
    them, or one the measure can never break, is refused. ``bands`` rate a threat from it.
    ``headline`` (empty: none) is the label of the run's leakiest-layer headline for this measure
    (``results["leakiest"]``), ``{key}`` standing for what a ``*`` in the pattern matched; such a
    measure is also compared across runs (``compare``), under ``label`` as its title, ``slug`` in
    its file names (default: the family and path) and ``ylim`` as its plot's y range; with ``plot``
    the report draws it per layer (``<slug>_by_layer.png``; built-in measures whose own figure
    already draws them say ``plot=False``), and with ``defense_column`` the defense table gives it
    a column holding its strongest scenario's figure (built-in ones with their own column say False).
    """

    pattern: str
    higher_is_leakier: bool | None
    ci: str | None = "ci95"
    chance: str | float | None = "chance"
    description: str = ""
    unit: str = "proportion"
    low: float | None = 0.0
    high: float | None = 1.0
    higher_is_better: bool | None = None
    label: str = ""
    bands: Bands | None = None
    headline: str = ""
    slug: str = ""
    ylim: tuple[float, float] | None = None
    plot: bool = True
    defense_column: bool = True

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"measure {self.pattern!r}: unit={self.unit!r} (known: {', '.join(UNITS)})")
        if (self.higher_is_leakier is None) == (self.higher_is_better is None):
            raise ValueError(f"measure {self.pattern!r}: declare exactly one of higher_is_leakier (leakage) and "
                             "higher_is_better (utility)")

    def matches(self, path: str) -> bool:
        """True when the dotted ``path`` is an instance of this measure's pattern."""
        want, got = self.pattern.split("."), path.split(".")
        return len(want) == len(got) and all(w in ("*", g) for w, g in zip(want, got))

    @property
    def is_leakage(self) -> bool:
        """True for a leakage measure (it has a direction towards leakage)."""
        return self.higher_is_leakier is not None

    @property
    def percent(self) -> bool:
        """True when the measure is shown as a percentage (proportions and error rates)."""
        return self.unit in ("proportion", "rate")

    @property
    def worse_is_higher(self) -> bool:
        """True when a higher value is worse for the side a gate protects (more leakage, or less utility)."""
        return bool(self.higher_is_leakier) if self.is_leakage else not self.higher_is_better

    def title_for(self, family: str, key: str, path: str) -> str:
        """The measure's title where its ``*`` matched ``key`` (its label, else the family and path)."""
        return (self.label or f"{family} {path}").format(key=key)

    def slug_for(self, family: str, key: str, path: str) -> str:
        """A file-name-safe name for the measure where its ``*`` matched ``key`` (its slug, else family and path)."""
        raw = (self.slug or f"{family}_{path}").format(key=key).lower()
        return re.sub(r"[^a-z0-9]+", "_", raw).strip("_")

    def chance_of(self, holder: dict) -> float | None:
        """The chance level beside a value: the declared constant, or the value of the declared key."""
        if self.chance is None:
            return None
        if isinstance(self.chance, (int, float)):
            return float(self.chance)
        value = holder.get(self.chance) if isinstance(holder, dict) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def in_range(self, x: float) -> bool:
        """True when ``x`` is a value the measure can take."""
        return (self.low is None or x >= self.low) and (self.high is None or x <= self.high)

    def range_text(self) -> str:
        """The range in words, e.g. ``[0, 1]`` or ``>= 0``."""
        if self.low is None and self.high is None:
            return "unbounded"
        if self.high is None:
            return f">= {self.low:g}"
        if self.low is None:
            return f"<= {self.high:g}"
        return f"[{self.low:g}, {self.high:g}]"

    def show(self, x: float | None) -> str:
        """One value in the measure's unit (``12.3%``, ``4.21 dB``, ``0.913``)."""
        if x is None:
            return "n/a"
        if self.percent:
            return f"{100 * x:.1f}%"
        if self.unit == "db":
            return f"{x:.2f} dB"
        return f"{x:.3f}"

    def show_ci(self, ci: list | None) -> str:
        """A CI in the measure's unit, empty when absent."""
        if not ci or ci[0] is None or ci[1] is None:
            return ""
        if self.percent:
            return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
        return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


#: The name earlier versions gave :class:`Measure` (plugins written for them keep working).
MetricSpec = Measure


@dataclass
class Figure:
    """One measure read at one place: the number, its evidence and its caveats, or why it is missing.

    ``ci95`` is the attacker's own interval, ``selection_ci95`` the one valid for a pick from
    ``n_compared`` attackers x layers (None: not picked, or not computed). ``caveats`` say in words
    why the figure may understate leakage (an attacker still learning, a network at its epoch
    cap, a solver at its iteration cap); ``missing`` is why there is no number ("" when there is).
    """

    measure: Measure
    where: str = ""
    value: float | None = None
    ci95: list | None = None
    selection_ci95: list | None = None
    chance: float | None = None
    attacker: str | None = None
    n_compared: int | None = None
    still_learning: dict | None = None
    epoch_capped: dict | None = None
    caveats: list[str] = field(default_factory=list)
    missing: str = ""
    #: The result dict the value was read from (its CI, chance and attacker sit beside it); None when missing.
    source: dict | None = field(default=None, repr=False)

    @property
    def interval(self) -> list[float] | None:
        """The hull of the attacker's own CI and the selection-adjusted one (None without a CI)."""
        cis = [c for c in (self.ci95, self.selection_ci95) if _is_ci(c)]
        if not cis:
            return None
        return [min(c[0] for c in cis), max(c[1] for c in cis)]


def _is_ci(ci: Any) -> bool:
    return (isinstance(ci, (list, tuple)) and len(ci) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in ci)
            and ci[0] <= ci[1])


def caveats_of(holder: dict) -> tuple[dict | None, dict | None, list[str]]:
    """Still-learning and epoch-cap verdicts of the attacker behind a value, and every caveat in words.

    A defense's strongest figure carries its verdicts; a layer's attack result carries the curve
    and budget they are judged from; a budget with ``converged: False`` and no epochs is a solver
    stopped at its iteration cap.
    """
    learning = holder.get("still_learning") if "still_learning" in holder else still_learning(holder)
    capped = holder.get("epoch_capped") if "epoch_capped" in holder else epoch_capped(holder)
    words = []
    if learning:
        words.append(f"the attacker there was still learning ({fmt_still_learning(learning)}): one with more data "
                     "would read more leakage")
    if capped:
        words.append(f"the attacker there stopped at its epoch cap (best epoch {capped.get('best_epoch')} of "
                     f"{capped.get('epochs')}): one trained longer might read more leakage")
    failed = holder.get("failed_attackers")
    if isinstance(failed, dict) and failed:
        words.append(f"attacker(s) {', '.join(sorted(failed))} failed, so the figure is the strongest of the others "
                     "and the lost one might have read more leakage")
    budget = holder.get("budget") if isinstance(holder.get("budget"), dict) else {}
    if not capped and budget.get("converged") is False and "epochs" not in budget:
        words.append("solver stopped at its iteration cap: the figure may understate what it can learn")
    return learning, capped, words


def fmt_still_learning(verdict: dict) -> str:
    """An :func:`audit.curves.still_learning` verdict in words.

    E.g. ``top1 73.6% → 84.7% from 50% to 100% of its training data``.
    """
    lo, hi = verdict["values"]
    rate_like = verdict["metric"] in ("top1", "eer", "accuracy")
    show = (lambda x: f"{100 * x:.1f}%") if rate_like else (lambda x: f"{x:.2f}")
    f0, f1 = verdict["fractions"]
    return f"{verdict['metric']} {show(lo)} → {show(hi)} from {100 * f0:.0f}% to {100 * f1:.0f}% of its training data"


def read_figure(node: Any, path: str, measure: Measure, where: str = "") -> Figure:
    """``measure`` read at the dotted ``path`` below ``node`` (a family's per-layer result or a defense entry).

    A value that is absent, not a finite number, or outside the measure's range is missing, with
    the reason: an out-of-range number is as untrustworthy as none.
    """
    fig = Figure(measure, where)
    keys = path.split(".")
    parent = node
    for key in keys[:-1]:
        parent = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(parent, dict):
        fig.missing = "not computed" if parent is None else f"not computed ({parent})"
        return fig
    if parent.get("skipped"):
        reason = parent.get("reason") if parent.get("skipped") is True else parent["skipped"]
        fig.missing = f"skipped: {reason}"
        return fig
    leaf = parent.get(keys[-1])
    if isinstance(leaf, dict) and leaf.get("skipped"):
        fig.missing = f"not computed: {leaf['skipped']}"
        return fig
    holder = leaf if isinstance(leaf, dict) else parent
    value = leaf.get("value") if isinstance(leaf, dict) else leaf
    if isinstance(holder.get("missing_scenarios"), dict) and holder["missing_scenarios"]:
        gone = "; ".join(f"{k}: {v}" for k, v in holder["missing_scenarios"].items())
        fig.missing = f"scenario missing, so the strongest attacker is unknown ({gone})"
        return fig
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fig.missing = "not computed" if value is None else f"not a number ({value!r})"
        return fig
    if not measure.in_range(float(value)):
        fig.missing = f"out of range ({value!r} not in {measure.range_text()})"
        return fig
    fig.value = float(value)
    fig.source = holder
    ci = holder.get(measure.ci) if measure.ci else None
    fig.ci95 = list(ci) if _is_ci(ci) else None
    sel = holder.get("selection_ci95") if measure.ci == "ci95" else None
    fig.selection_ci95 = list(sel) if _is_ci(sel) else None
    fig.chance = measure.chance_of(holder)
    fig.attacker = holder.get("attacker")
    n = holder.get("n_comparisons") or holder.get("n_attackers_compared")
    fig.n_compared = int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None
    fig.still_learning, fig.epoch_capped, fig.caveats = caveats_of(holder)
    return fig


def strongest_figure(scenarios: dict, family: str, path: str, measure: Measure) -> dict | None:
    """The leakiest of a defense's attacker scenarios for one measure (a defense is judged by its strongest).

    ``scenarios`` maps a scenario (``ignorant``, ``lazy_informed``, ``semi_informed``) to its
    families' results. Returns ``value``, ``ci95``, ``chance``, ``attacker``, ``still_learning``,
    ``epoch_capped`` (and ``failed_attackers`` when one failed) of the leakiest scenario, its
    ``scenario`` and ``n_scenarios``; a scenario whose attack ran but has no figure (failed,
    skipped) is listed under ``missing_scenarios`` (scenario -> reason), as it may have held the
    strongest attacker, and every verdict reads such a figure as missing (``value`` None when no
    scenario measured it). A scenario the family takes no part in, or that cannot apply to the
    defense (``not_applicable``), is not missing. None when no scenario ran the family.
    """
    found, missing = [], {}
    for name, attacks in scenarios.items():
        if not isinstance(attacks, dict) or "not_applicable" in attacks or family not in attacks:
            continue
        result = attacks[family]
        fig = read_figure(result, path, measure, name) if isinstance(result, dict) else Figure(measure, name)
        if fig.value is None:
            missing[name] = fig.missing or "not run"
            continue
        holder = fig.source
        leak = {"value": fig.value, "ci95": holder.get(measure.ci) if measure.ci else None,
                "chance": holder.get("chance") if isinstance(measure.chance, str) else measure.chance,
                "attacker": holder.get("attacker"), "still_learning": fig.still_learning,
                "epoch_capped": fig.epoch_capped}
        if holder.get("failed_attackers"):
            leak["failed_attackers"] = holder["failed_attackers"]
        found.append((name, leak))
    if not found and not missing:
        return None
    if found:
        pick = max if measure.higher_is_leakier else min
        name, leak = pick(found, key=lambda item: item[1]["value"])
        best = {**leak, "scenario": name, "n_scenarios": len(found)}
    else:
        best = {"value": None, "scenario": None, "n_scenarios": 0}
    if missing:
        best["missing_scenarios"] = missing
    return best


@dataclass(frozen=True)
class Rating:
    """A figure's risk: the band of the bound worst for privacy, and of the bound best for it."""

    worst: str
    best: str

    @property
    def level(self) -> str:
        """``high``, ``medium``, ``low``, or ``inconclusive`` when the CI spans bands."""
        return self.worst if self.worst == self.best else "inconclusive"

    @property
    def words(self) -> str:
        """E.g. ``high`` or ``inconclusive (low to high)``."""
        return self.level if self.worst == self.best else f"inconclusive ({self.best} to {self.worst})"

    def sort_key(self) -> tuple[int, int]:
        """Worst band first, then the narrower claim (a sure ``high`` before ``inconclusive (low to high)``)."""
        return BANDS.index(self.worst), BANDS.index(self.best)


def combine(ratings: list[Rating]) -> Rating:
    """The rating of a threat met when any of several figures is met (the worst of each bound)."""
    return Rating(min((r.worst for r in ratings), key=BANDS.index), min((r.best for r in ratings), key=BANDS.index))


def rate(fig: Figure, bands: Bands | None = None) -> Rating | None:
    """The bands of ``fig``'s CI bounds (see the module docstring); None when it has no number or no bands.

    Without a CI the figure is rated as if its interval reached the whole range: it can support
    no claim either way, so it reads ``inconclusive (low to high)``.
    """
    bands = bands or fig.measure.bands
    leakier = fig.measure.higher_is_leakier
    if bands is None or fig.value is None or leakier is None:
        return None
    interval = fig.interval
    if interval is None:
        return Rating("high", "low")
    lo, hi = interval
    worst_x, best_x = (hi, lo) if leakier else (lo, hi)
    worst = bands.band(worst_x, leakier, fig.chance)
    best = bands.band(best_x, leakier, fig.chance)
    if worst is None or best is None:
        return Rating("high", "low")
    return Rating(worst, best)


__all__ = ["BANDS", "Bands", "Figure", "Measure", "MetricSpec", "Rating", "UNITS", "caveats_of", "combine",
           "fmt_still_learning", "rate", "read_figure", "strongest_figure"]

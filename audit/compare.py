"""Side-by-side comparison of audit runs: ``speech-audit compare RUN_A RUN_B [...] --out DIR``.

Every figure is read from the runs' ``results.json``; nothing is measured again. The runs may
differ in model (and number of layers), corpus, defenses or tool version: the comparison says
what differs, warns when the corpora differ (chance levels then differ and figures are not
directly comparable), says which runs were weakened (``results["weakened"]``, read through
:mod:`audit.weakening`) and warns when the runs are not weakened alike, and lays each measure
out with one column and one curve per run.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from audit import plots
from audit.atomic import output_dir, write_output_text
from audit.defense_tables import setting_label
from audit.errors import SpeechAuditError
from audit.report.document import Bullets, Callout, Figure, Paragraph, ReportDocument, Section
from audit.report.html import render_html
from audit.report.markdown import render_markdown
from audit.results import Table, fmt_ci, fmt_num, fmt_pct, is_ok, layer_attack, load_results
from audit.summary import headline_measures, leakiest, measure_instances
from audit.weakening import weakening_lines

#: Config keys that only say where and how the report was written; they change no figure.
NOT_COMPARED = ("out", "progress", "cache_dir")
#: Provenance rows of the "what differs" section: (row label, top-level key, sub-key).
PROVENANCE = (("model spec", "model", "spec"), ("model fingerprint", "model", "fingerprint"),
              ("corpus spec", "corpus", "spec"), ("corpus fingerprint", "corpus", "fingerprint"),
              ("corpus listing fingerprint", "corpus", "listing_fingerprint"),
              ("speech-audit version", "tool", "version"), ("python", "environment", "python"),
              ("torch", "environment", "torch"), ("transformers", "environment", "transformers"))
NOT_SET = "(not set)"


class CompareError(SpeechAuditError):
    """The runs cannot be compared (fewer than two)."""


@dataclass(frozen=True)
class Run:
    """One loaded run: its label in tables and plots, the results file it came from, its results."""

    label: str
    file: Path
    results: dict

    @property
    def leakiest(self) -> dict:
        """The run's leakiest-layer headlines (recomputed from its layers if the file has none)."""
        if self.results.get("leakiest"):
            return self.results["leakiest"]
        from attacks import load_families  # a results file without headlines: the built-in declarations

        return leakiest(self.results["layers"], headline_measures(load_families()))

    def layer(self, index: int) -> dict | None:
        """The run's layer entry with ``index`` (None when the run did not audit it)."""
        return next((la for la in self.results["layers"] if la.get("index") == index), None)

    @property
    def weakened(self) -> list[str]:
        """The run's recorded weakenings, one line each (``[kind] text``); empty for a full audit."""
        return weakening_lines(self.results)


@dataclass(frozen=True)
class Measure:
    """A leakage figure compared across runs: where it sits in a layer's attacks and how to read it."""

    slug: str
    title: str
    leakiest_key: str
    path: tuple[str, ...]
    metric: str
    ci_key: str
    percent: bool
    higher_is_leakier: bool
    ylim: tuple[float, float] | None = None

    @property
    def direction(self) -> str:
        """``higher = leakier`` or ``lower = leakier``."""
        return "higher = leakier" if self.higher_is_leakier else "lower = leakier"

    @property
    def heading(self) -> str:
        """The section title: the measure's title, capitalised unless it starts with a user's attribute name."""
        return self.title if self.path[0] == "attributes" else self.title[:1].upper() + self.title[1:]

    def value(self, x: float | None) -> str:
        """The figure as text (percent for proportions, 3 decimals otherwise)."""
        return _value_text(x, self.percent)

    def ci(self, ci: list | None) -> str:
        """A CI as text on the same scale as :meth:`value`."""
        return _ci_text(ci, self.percent)

    def leakier(self, a: float, b: float) -> bool:
        """True when ``a`` leaks more than ``b``."""
        return a > b if self.higher_is_leakier else a < b


def _value_text(x: float | None, percent: bool) -> str:
    return fmt_pct(x) if percent else fmt_num(x)


def _ci_text(ci: list | None, percent: bool) -> str:
    return fmt_ci(ci) if percent else fmt_ci(ci, 1.0, ".3f")


def compare_runs(runs: Sequence[str | Path], out: Path) -> ReportDocument:
    """Compare audit runs (run folders or ``results.json`` paths) and write the comparison into ``out``.

    Writes ``compare.md``, ``compare.html`` and one overlaid per-layer PNG per measure; returns
    the document. Raises :class:`CompareError` for fewer than two runs, and
    :class:`~audit.results.ResultsError` naming a file that cannot be read (or of another schema
    major version).
    """
    loaded = load_runs(runs)
    if (message := weakening_warning(loaded)) is not None:
        warnings.warn(message, stacklevel=2)
    out = output_dir(Path(out))
    measures = find_measures(loaded)
    figures = {m.slug: _figure(loaded, m, out) for m in measures}
    doc = comparison_document(loaded, measures, figures)
    write_output_text(out / "compare.md", render_markdown(doc, summary_only=False))
    write_output_text(out / "compare.html", render_html(doc, out))
    return doc


def load_runs(runs: Sequence[str | Path]) -> list[Run]:
    """Each run's results, checked: at least two, each with a unique label.

    :func:`~audit.results.load_results` already refuses a schema major version other than this
    tool's; minor versions only add keys, so runs of different minor versions are compared (the
    comparison says so, and a figure an older run did not record is blank for it).
    """
    if len(runs) < 2:
        named = ", ".join(str(r) for r in runs) or "none"
        raise CompareError(f"compare needs at least 2 runs (got {len(runs)}: {named})")
    files = [_results_file(Path(r)) for r in runs]
    results = [load_results(f) for f in files]
    return [Run(label, f, r) for label, f, r in zip(_labels(files, results), files, results)]


def weakening_warning(runs: list[Run]) -> str | None:
    """One line when the runs are not weakened alike (a weakened run against a full one), else None."""
    if len({tuple(run.weakened) for run in runs}) < 2:
        return None
    weak = [f"{run.label} ({len(run.weakened)})" for run in runs if run.weakened]
    full = [run.label for run in runs if not run.weakened]
    against = f"against full run(s) {', '.join(full)}" if full else "each weakened differently"
    text = (f"compare: weakened run(s) {', '.join(weak)} {against}: differences between them may come from the "
            "weakening, not from the model, corpus or defenses")
    return " ".join(text.splitlines())


def _results_file(path: Path) -> Path:
    """A run folder's results.json, or the path itself when it names a file."""
    return path / "results.json" if path.is_dir() else path


def _short(spec: object) -> str:
    """A spec for a label: the last part of a local path, an HF id or keyword as it is."""
    text = str(spec or "?").rstrip("/")
    return (Path(text).name or text) if text.startswith((".", "/", "~")) else text


def _labels(files: list[Path], results: list[dict]) -> list[str]:
    """Unique labels: ``model on corpus``, the folder name where that repeats, numbered if still equal."""
    base = [f"{_short(r['model'].get('spec'))} on {_short(r['corpus'].get('spec'))}" for r in results]
    named = [(f.parent.name or str(f.parent)) if base.count(b) > 1 else b for f, b in zip(files, base)]
    labels = []
    for i, label in enumerate(named):
        labels.append(f"{label} ({named[:i + 1].count(label)})" if named.count(label) > 1 else label)
    return labels


def find_measures(runs: list[Run], families: dict | None = None) -> list[Measure]:
    """The declared headline measures any run has a value for (speaker-ID top-1, verification EER, each
    attribute's AUC or R², a plugin family's), in registry order, each instance of a ``*`` pattern apart.

    ``families`` is the attack registry whose declarations are read (default: the installed one).
    """
    if families is None:
        from attacks import load_families  # reading a finished run: the installed families' declarations

        families = load_families()
    layers = [la for run in runs for la in run.results["layers"]]
    measures: list[Measure] = []
    slugs: set[str] = set()
    for family, declared in headline_measures(families):
        for key, path in measure_instances(layers, family, declared):
            slug = _unique_slug(declared.slug_for(family, key, path), slugs)
            slugs.add(slug)
            parts = path.split(".")
            measures.append(Measure(slug, declared.title_for(family, key, path),
                                    declared.headline.format(key=key), (family, *parts[:-1]), parts[-1],
                                    declared.ci or "ci95", declared.percent, bool(declared.higher_is_leakier),
                                    declared.ylim))
    return [m for m in measures if any(_points(run, m) for run in runs)]


def _unique_slug(slug: str, taken: set[str]) -> str:
    """``slug``, numbered when already taken."""
    n, candidate = 1, slug
    while candidate in taken:
        n += 1
        candidate = f"{slug}_{n}"
    return candidate


def _points(run: Run, measure: Measure) -> dict[int, tuple[float, list | None]]:
    """Layer index -> (value, CI) where the run measured ``measure``."""
    points = {}
    for la in run.results["layers"]:
        res = layer_attack(la, *measure.path)
        if isinstance(res, dict) and is_ok(res) and res.get(measure.metric) is not None:
            points[la["index"]] = (res[measure.metric], res.get(measure.ci_key))
    return points


def _chance(run: Run, measure: Measure) -> float | None:
    """The run's chance level for ``measure`` (from its headline, else from the first layer that has one)."""
    entry = run.leakiest.get(measure.leakiest_key) or {}
    if entry.get("chance") is not None:
        return entry["chance"]
    for la in run.results["layers"]:
        res = layer_attack(la, *measure.path)
        if isinstance(res, dict) and is_ok(res) and res.get("chance") is not None:
            return res["chance"]
    return None


def _shared_chance(runs: list[Run], measure: Measure) -> tuple[float | None, list[str]]:
    """The chance level when every run has the same one, else None; plus each run's chance as text."""
    chances = [(run.label, _chance(run, measure)) for run in runs]
    known = [c for _, c in chances if c is not None]
    each = [f"{label} {measure.value(c)}" for label, c in chances if c is not None]
    same = bool(known) and all(math.isclose(c, known[0], rel_tol=1e-9, abs_tol=1e-12) for c in known)
    return (known[0] if same else None), each


def comparison_document(runs: list[Run], measures: list[Measure], figures: dict[str, Figure | None]) -> ReportDocument:
    """The comparison as a report document (figures already written, by measure slug)."""
    sections = [_runs_section(runs), _differences_section(runs, measures), _overview_section(runs, measures)]
    sections += [_measure_section(runs, m, figures.get(m.slug)) for m in measures]
    if any(run.results.get("defenses") for run in runs):
        sections.append(_defense_section(runs))
    return ReportDocument(title="Privacy audit comparison", subtitle=" vs ".join(run.label for run in runs),
                          mode="full", sections=sections)


def _runs_section(runs: list[Run]) -> Section:
    """The runs compared, one row each, with the label used everywhere else."""
    columns = ["run", "folder", "model", "layers", "corpus", "speakers / utterances", "defense settings",
               "tool version", "schema", "created", "wall seconds", "weakened"]
    table = Table("Runs compared", columns, [_run_row(run) for run in runs],
                  notes=["layers: the layers audited (of the model's total where fewer were audited).",
                         "weakened: how many weakenings the run recorded (listed under 'Where the runs differ'); "
                         "no: a full audit."])
    text = (f"{len(runs)} runs compared. Every figure below is read from each run's results.json; "
            "one column (and one curve) per run, labelled as in this table.")
    return Section("runs", "Runs", [Paragraph(text), table])


def _run_row(run: Run) -> list[str]:
    """One run's row of the runs table."""
    r = run.results
    model, corpus = r["model"], r["corpus"]
    indices = [la["index"] for la in r["layers"]]
    layers = f"{len(indices)} ({_index_list(indices)})" if indices else "0"
    if model.get("num_layers") not in (None, len(indices)):
        layers += f" of {model['num_layers']}"
    filters = corpus.get("filters") or []
    corpus_text = str(corpus.get("spec", "?")) + (f" where {', '.join(map(str, filters))}" if filters else "")
    wall = r.get("wall_seconds")
    return [run.label, str(run.file.parent), str(model.get("spec", "?")), layers, corpus_text,
            f"{corpus.get('n_speakers', '?')} / {corpus.get('n_utterances', '?')}",
            str(len(r.get("defenses") or [])), str((r.get("tool") or {}).get("version", "?")),
            str(r["schema_version"]), str(r.get("created", "")), fmt_num(wall, ".0f") if wall is not None else "",
            f"yes ({len(run.weakened)})" if run.weakened else "no"]


def _index_list(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 4]`` -> ``0-2, 4``."""
    spans: list[list[int]] = []
    for i in sorted(set(indices)):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _differences_section(runs: list[Run], measures: list[Measure]) -> Section:
    """What differs: the corpus warning, model/corpus/software provenance, config keys."""
    blocks: list = []
    for callout in (_weakening_callout(runs), _corpus_callout(runs, measures), _schema_callout(runs)):
        if callout:
            blocks.append(callout)
    provenance = _provenance_table(runs)
    diff = _config_table(runs)
    differing = [row[0] for row in provenance.rows if row[-1] == "yes"]
    summary = f"{len(diff.rows)} configuration key(s) differ"
    summary += f"; so do: {', '.join(differing)}." if differing else "; model, corpus and software are the same."
    blocks += [Paragraph(summary, lead="What differs:"), provenance]
    blocks.append(diff if diff.rows else Paragraph("No configuration key differs between the runs."))
    return Section("differences", "Where the runs differ", blocks)


def _provenance_value(run: Run, top: str, key: str) -> str:
    """``results[top][key]`` as text (fingerprints shortened)."""
    value = (run.results.get(top) or {}).get(key)
    if value is None:
        return NOT_SET
    text = str(value)
    return text[:12] if key.endswith("fingerprint") else text


def _provenance_table(runs: list[Run]) -> Table:
    """Model, corpus and software versions of each run, and whether they differ."""
    rows = []
    for label, top, key in PROVENANCE:
        values = [_provenance_value(run, top, key) for run in runs]
        rows.append([label, *values, "yes" if len(set(values)) > 1 else "no"])
    return Table("Model, corpus and software", ["what", *(run.label for run in runs), "differs"], rows,
                 notes=["Fingerprints are shortened to their first 12 hex digits. Equal model fingerprints mean the "
                        "same weights. The corpus fingerprint keys the embedding store, so it also hashes each file's "
                        "path and modification time: a copy of the corpus in another folder differs. The corpus "
                        "listing fingerprint hashes what the audit reads (utterance ids, speakers, transcripts, "
                        "spans, recording grouping, attributes and file sizes), not where the files are: equal "
                        "listings are one corpus."])


def flatten_config(node: object, prefix: str = "") -> dict[str, str]:
    """A config as dotted keys -> text; a list of tables gives one key per entry (``defense[0]``)."""
    if isinstance(node, dict):
        if not node:
            return {prefix: "{}"} if prefix else {}
        flat: dict[str, str] = {}
        for key, value in node.items():
            flat.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(node, list) and any(isinstance(v, dict) for v in node):
        return {f"{prefix}[{i}]": _config_text(v) for i, v in enumerate(node)}
    return {prefix: _config_text(node)}


def _config_text(value: object) -> str:
    """A config value as text: strings as they are, everything else as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _config_table(runs: list[Run]) -> Table:
    """The dotted config keys whose values differ between runs, one column per run."""
    flats = [flatten_config(run.results.get("config") or {}) for run in runs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    rows = []
    for key in keys:
        if re.split(r"[.\[]", key)[0] in NOT_COMPARED:
            continue
        values = [flat.get(key, NOT_SET) for flat in flats]
        if len(set(values)) > 1:
            rows.append([f"config.{key}", *values])
    notes = [f"Not listed (they change no figure): {', '.join('config.' + k for k in NOT_COMPARED)}.",
             f"{NOT_SET}: the run's config has no such key (an older tool version, or a section it did not use)."]
    return Table("Configuration keys that differ", ["key", *(run.label for run in runs)], rows, notes=notes)


def _weakening_callout(runs: list[Run]) -> Callout | None:
    """Each weakened run with its weakenings, the full runs named, and the warning when they differ."""
    if not any(run.weakened for run in runs):
        return None
    items = [f"{run.label}: weakened: {line}" for run in runs for line in run.weakened]
    items += [f"{run.label}: full audit, no weakening recorded" for run in runs if not run.weakened]
    message = weakening_warning(runs)
    title = ("Weakened runs: " + (message.removeprefix("compare: ") if message else
                                  "every run records the same weakenings, so each may underestimate leakage"))
    return Callout("warning", title, items)


def _corpus_callout(runs: list[Run], measures: list[Measure]) -> Callout | None:
    """A warning when the runs audit different corpora: by listing fingerprint, else by fingerprint, else by spec.

    The listing fingerprint (schema 2.8) ignores where the files are, so one corpus in two
    folders is one corpus; runs that predate it are told apart by the store's fingerprint.
    """
    listed = all(run.results["corpus"].get("listing_fingerprint") for run in runs)
    key = "listing_fingerprint" if listed else "fingerprint"
    ids = [run.results["corpus"].get(key) or str(run.results["corpus"].get("spec")) for run in runs]
    if len(set(ids)) == 1:
        return None
    items = [f"{run.label}: corpus {run.results['corpus'].get('spec', '?')}, "
             f"{run.results['corpus'].get('n_speakers', '?')} speakers, {key.replace('_', ' ')} "
             f"{_provenance_value(run, 'corpus', key)}" for run in runs]
    for m in measures:
        shared, each = _shared_chance(runs, m)
        if shared is None and each:
            items.append(f"chance {m.title} differs: {', '.join(each)}")
    items.append("Compare each figure with its own run's chance level; for a like-for-like comparison of models "
                 "or defenses, audit them on one corpus.")
    return Callout("warning", "The runs audit different corpora: leakage figures are not directly comparable "
                   "(chance levels and attack difficulty differ)", items)


def _schema_callout(runs: list[Run]) -> Callout | None:
    """A note when the runs' results are of different minor schema versions (only keys were added)."""
    versions = [str(run.results["schema_version"]) for run in runs]
    if len(set(versions)) == 1:
        return None
    items = [f"{run.label}: schema {version}" for run, version in zip(runs, versions)]
    items.append("Minor schema versions only add keys (reports/CHANGELOG.md lists them): a figure or note that a "
                 "run's version did not record is blank for that run, not zero. Re-run the older audit for a "
                 "like-for-like comparison.")
    return Callout("info", "The runs' results are of different schema versions", items)


def _overview_section(runs: list[Run], measures: list[Measure]) -> Section:
    """One sentence per measure: each run's headline and which leaks most."""
    items = [item for m in measures if (item := _overview_item(runs, m))]
    blocks: list = [Bullets(items)] if items else [Paragraph("No leakage measure is present in these runs.")]
    blocks.insert(0, Paragraph("Each run's leakiest layer per measure, with its 95% CI (selection-adjusted where "
                               "the run computed one: it accounts for picking the leakiest of many "
                               "attackers x layers). Overlapping intervals mean the difference is within noise."))
    return Section("overview", "Headline per measure", blocks)


def _headline_ci(entry: dict) -> list | None:
    """The CI valid for a headline: selection-adjusted where the run computed one."""
    return entry.get("selection_ci95") or entry.get("ci95")


def _overview_item(runs: list[Run], measure: Measure) -> str | None:
    """The overview sentence of ``measure`` (None when no run has it)."""
    present = [(run.label, e) for run in runs if (e := run.leakiest.get(measure.leakiest_key))]
    if not present:
        return None
    parts = [f"{label} {measure.value(e['value'])} {measure.ci(_headline_ci(e))} at layer {e.get('layer')}".strip()
             for label, e in present]
    text = f"{measure.title} ({measure.direction}): " + "; ".join(parts) + ". " + _verdict(measure, present)
    shared, each = _shared_chance(runs, measure)
    if shared is None and len(each) > 1:
        text += f" Chance differs ({', '.join(each)}): read each against its own chance."
    return text


def _verdict(measure: Measure, present: list[tuple[str, dict]]) -> str:
    """Which run's headline leaks most, and whether its CI sets it apart from the others'."""
    if len(present) < 2:
        return f"Only {present[0][0]} measured it."
    best_label, best = present[0]
    for label, entry in present[1:]:
        if measure.leakier(entry["value"], best["value"]):
            best_label, best = label, entry
    clear = all(not _overlap(_headline_ci(best), _headline_ci(e)) for label, e in present if label != best_label)
    if clear:
        return f"Leakiest: {best_label}, clearly (its CI overlaps no other run's)."
    return f"Leakiest: {best_label}, but its CI overlaps another run's, so the difference is within noise."


#: Per-layer inversion figures that :func:`ci_agreement` also compares (the report's headline measures
#: leave them out: they have no leakiest-layer headline).
INVERSION_MEASURES = (
    Measure("inversion_wer", "inversion: ASR judge's WER on the reconstructions", "", ("inversion", "frame", "content"),
            "wer_reconstruction", "wer_reconstruction_ci95", True, False),
    Measure("inversion_speaker_eer", "inversion: speaker judge's EER on the reconstructions", "",
            ("inversion", "frame", "speaker"), "eer", "eer_ci95", True, False),
    Measure("inversion_lsd", "inversion: log-mel LSD (dB)", "", ("inversion", "frame", "mel"), "lsd_db",
            "lsd_db_ci95", False, False),
)


@dataclass(frozen=True)
class Agreement:
    """One figure of two runs side by side: where it sits, each run's value and CI, and whether they agree.

    Run ``a`` is the reference: the figures agree when ``b``'s value lies inside ``a``'s 95% CI.
    A figure either run lacks, or whose CI either run lacks, is not compared: it never agrees.
    """

    what: str
    where: str
    a: tuple[float | None, list | None]
    b: tuple[float | None, list | None]
    percent: bool

    @property
    def measured_by_both(self) -> bool:
        return self.a[0] is not None and self.b[0] is not None

    @property
    def compared(self) -> bool:
        """Both runs recorded the figure's value and a 95% CI, so the figure can be checked at all."""
        return self.measured_by_both and _is_ci(self.a[1]) and _is_ci(self.b[1])

    @property
    def agrees(self) -> bool:
        """Compared, and ``b``'s value lies inside ``a``'s 95% CI (bounds included)."""
        if not self.compared:
            return False
        low, high = self.a[1]
        return low <= self.b[0] <= high

    @property
    def verdict(self) -> str:
        """``yes`` (agrees), ``NO`` (b outside a's CI), or why it was not compared."""
        if not self.measured_by_both:
            return "not compared: only one run"
        if not self.compared:
            return "not compared: no CI"
        return "yes" if self.agrees else "NO"

    def text(self, side: tuple[float | None, list | None]) -> str:
        """``value [CI]`` of one run (``self.a`` or ``self.b``) on the figure's scale, a dash when it has none."""
        value, ci = side
        return "-" if value is None else f"{_value_text(value, self.percent)} {_ci_text(ci, self.percent)}".strip()


def ci_agreement(a: Run, b: Run) -> list[Agreement]:
    """Every per-layer leakage figure and defense outcome of ``a`` next to ``b``'s: is ``b``'s value in ``a``'s CI.

    Per layer: the compared measures (:func:`find_measures`) and the inversion figures
    (:data:`INVERSION_MEASURES`); per defense setting and layer: the strongest attacker's top-1
    and EER and the utility on the run's task. A figure only one run measured, or without a CI,
    is listed too (``compared`` is False), so a silent gap cannot read as agreement. Used to
    check that the same audit on two devices (or precisions) gives the same findings: ``a`` is
    the reference run whose CI ``b``'s value must fall in.
    """
    rows = []
    for measure in [*find_measures([a, b]), *INVERSION_MEASURES]:
        pa, pb = _points(a, measure), _points(b, measure)
        for index in sorted(set(pa) | set(pb)):
            rows.append(Agreement(measure.title, f"layer {index}", pa.get(index, (None, None)),
                                  pb.get(index, (None, None)), measure.percent))
    da, db = _defense_figures(a), _defense_figures(b)
    for key in [*da, *(k for k in db if k not in da)]:
        rows.append(Agreement(key[0], key[1], da.get(key, (None, None)), db.get(key, (None, None)), key[2]))
    return rows


def _defense_figures(run: Run) -> dict[tuple[str, str, bool], tuple[float | None, list | None]]:
    """(figure, setting at layer, percent) -> (value, CI) of a run's defense entries that ran."""
    out = {}
    for entry in run.results.get("defenses") or []:
        if entry.get("status", "ok") != "ok":
            continue
        where = f"{setting_label(entry)} at layer {entry.get('layer')}"
        for metric, title in (("top1", "defense: strongest speaker-ID top-1"),
                              ("eer", "defense: strongest verification EER")):
            best = (entry.get("strongest") or {}).get(metric)
            if best and best.get("value") is not None:
                out[(title, where, True)] = (best["value"], best.get("ci95"))
        utility = entry.get("utility") or {}
        if utility.get("value") is not None:
            out[(f"defense: utility ({utility.get('task')}, {utility.get('metric')})", where, True)] = (
                utility["value"], utility.get("ci95"))
    return out


def _is_ci(ci: object) -> bool:
    """True for a ``[low, high]`` pair of finite numbers with ``low <= high``."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return False
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in ci):
        return False
    return ci[0] <= ci[1]


def _overlap(a: list | None, b: list | None) -> bool:
    """True when two CIs overlap (or either is missing, so no difference can be claimed)."""
    if not a or not b or None in (a[0], a[1], b[0], b[1]):
        return True
    return a[0] <= b[1] and b[0] <= a[1]


def _measure_section(runs: list[Run], measure: Measure, figure: Figure | None) -> Section:
    """A measure's headline table, overlaid curves and per-layer table."""
    blocks: list = [_headline_table(runs, measure)]
    if figure:
        blocks.append(figure)
    blocks.append(_per_layer_table(runs, measure))
    return Section(f"measure-{measure.slug}", measure.heading, blocks)


def _headline_table(runs: list[Run], measure: Measure) -> Table:
    """Each run's leakiest layer of ``measure``: value, CIs, chance, layer, attacker, how many compared."""
    rows = [["leakiest value"], ["95% CI"], ["selection-adjusted CI"], ["chance"], ["layer"], ["attacker"],
            ["picked from"]]
    for run in runs:
        entry = run.leakiest.get(measure.leakiest_key)
        for row, cell in zip(rows, _headline_cells(measure, entry)):
            row.append(cell)
    return Table(f"{measure.title}: leakiest layer of each run ({measure.direction})",
                 ["", *(run.label for run in runs)], rows,
                 notes=["Blank: the run did not measure it. The selection-adjusted CI is valid for the pick "
                        "(Bonferroni over the attackers x layers compared)."])


def _headline_cells(measure: Measure, entry: dict | None) -> list[str]:
    """One run's column of the headline table (blank when the run lacks the measure)."""
    if not entry:
        return [""] * 7
    layer = f"{entry.get('layer')} ({entry['name']})" if entry.get("name") else str(entry.get("layer"))
    picked = ""
    if entry.get("n_compared") is not None:
        picked = f"best of {entry['n_compared']} attackers x layers ({entry.get('n_layers_compared', '?')} layers)"
    chance = entry.get("chance")
    return [measure.value(entry.get("value")), measure.ci(entry.get("ci95")), measure.ci(entry.get("selection_ci95")),
            measure.value(chance) if chance is not None else "", layer, str(entry.get("attacker") or ""), picked]


def _union_indices(runs: list[Run]) -> list[int]:
    """Every layer index any run audited, sorted."""
    return sorted({la["index"] for run in runs for la in run.results["layers"]})


def _layer_name(runs: list[Run], index: int) -> str:
    """A layer's name, or the runs' names joined by ``/`` where their models name it differently."""
    names = list(dict.fromkeys(la.get("name", "") for run in runs if (la := run.layer(index))))
    return " / ".join(n for n in names if n)


def _per_layer_table(runs: list[Run], measure: Measure) -> Table:
    """``measure`` per layer index, one column per run; skipped layers say why in the notes."""
    rows, skipped = [], []
    for index in _union_indices(runs):
        name = _layer_name(runs, index)
        row = [f"{index} ({name})" if name else str(index)]
        for run in runs:
            res = layer_attack(run.layer(index) or {}, *measure.path)
            row.append(_layer_cell(measure, res))
            if isinstance(res, dict) and res.get("skipped"):
                skipped.append(f"{run.label} layer {index}: skipped, {res['skipped']}")
        rows.append(row)
    notes = ["value [95% CI]; blank: the run has no such layer or did not measure it there."] + skipped
    return Table(f"{measure.title} per layer ({measure.direction})", ["layer", *(run.label for run in runs)], rows,
                 notes=notes)


def _layer_cell(measure: Measure, res: dict | None) -> str:
    """``value [CI]``, ``skipped``, or blank where the run lacks the layer or measure."""
    if not isinstance(res, dict):
        return ""
    if res.get("skipped"):
        return "skipped"
    if res.get(measure.metric) is None:
        return ""
    return f"{measure.value(res[measure.metric])} {measure.ci(res.get(measure.ci_key))}".strip()


def _defense_section(runs: list[Run]) -> Section:
    """Each defense setting and layer, with each run's strongest top-1 and retained utility."""
    cells: dict[tuple[str, int, int], dict[str, str]] = {}
    for run in runs:
        seen: dict[tuple[str, int], int] = {}
        for entry in run.results.get("defenses") or []:
            base = (setting_label(entry), entry.get("layer"))
            seen[base] = seen.get(base, 0) + 1
            cells.setdefault((*base, seen[base]), {})[run.label] = _defense_cell(entry)
    rows = [[label if n == 1 else f"{label} ({n})", str(layer), *(by_run.get(run.label, "") for run in runs)]
            for (label, layer, n), by_run in cells.items()]
    notes = ["top-1: the strongest attacker's speaker-ID top-1 over the attack scenarios [95% CI]; retained: "
             "defended / undefended utility on the run's own task [95% CI]; layer: a layer index of that run's "
             "model; blank: the run did not try that setting on that layer."]
    notes += [f"{run.label}: " + _utility_note(run) for run in runs]
    return Section("defenses", "Defenses", [Table("Defense settings in each run", ["setting", "layer",
                                                                                  *(run.label for run in runs)],
                                                  rows, notes=notes)])


def _utility_note(run: Run) -> str:
    """How many settings a run tried and on which utility task."""
    entries = run.results.get("defenses") or []
    if not entries:
        return "no defenses were run."
    utility = next((e["utility"] for e in entries if e.get("utility")), {})
    return f"{len(entries)} settings, utility task {utility.get('task', '?')} ({utility.get('metric', '?')})."


def _defense_cell(entry: dict) -> str:
    """One defense entry as ``top-1 X [CI]; retained Y [CI]`` (or why it failed)."""
    if entry.get("status", "ok") != "ok":
        return f"failed: {entry.get('reason') or 'no reason recorded'}"
    top1 = (entry.get("strongest") or {}).get("top1")
    leak = f"top-1 {fmt_pct(top1.get('value'))} {fmt_ci(top1.get('ci95'))}".strip() if top1 else "top-1 n/a"
    utility = entry.get("utility") or {}
    if entry.get("name") == "none":
        kept = "retained 1 (reference)"
    elif utility.get("retained") is not None:
        kept = f"retained {fmt_num(utility['retained'])} {fmt_ci(utility.get('retained_ci95'), 1, '.3f')}".strip()
    else:
        kept = "retained n/a"
    return f"{leak}; {kept}"


def _plot_text(text: str) -> str:
    """Text for matplotlib: dollar signs escaped so user names are never read as math."""
    return text.replace("$", r"\$")


def _figure(runs: list[Run], measure: Measure, out: Path) -> Figure | None:
    """Write the overlaid per-layer curves of ``measure`` (one line and CI band per run); None when empty."""
    points = {run.label: _points(run, measure) for run in runs}
    if not any(points.values()):
        return None
    indices = _union_indices(runs)
    series = {}
    for label, pts in points.items():
        values = [pts[i][0] if i in pts else None for i in indices]
        cis = [pts[i][1] if i in pts and pts[i][1] else None for i in indices]
        series[_plot_text(label)] = {"values": values, "lo": [c[0] if c else None for c in cis],
                                     "hi": [c[1] if c else None for c in cis]}
    chance, each = _shared_chance(runs, measure)
    file = f"compare_{measure.slug}.png"
    plots.layer_curves(out / file, indices, [_plot_text(_layer_name(runs, i)) for i in indices], series,
                       ylabel=_plot_text(measure.title), chance=chance, ylim=measure.ylim,
                       title=_plot_text(f"{measure.title} per layer, {len(runs)} runs ({measure.direction})"))
    caption = ("One line per run with its shaded 95% CI; x = layer index (a run with fewer layers stops early). "
               + (f"Dashed line: chance {measure.value(chance)}, shared by all runs." if chance is not None else
                  f"Chance differs between runs, so no chance line is drawn: {', '.join(each) or 'not recorded'}."))
    return Figure(file=file, alt=_alt_text(runs, measure, points, chance), caption=caption)


def _alt_text(runs: list[Run], measure: Measure, points: dict[str, dict], chance: float | None) -> str:
    """The figure in words: each run's peak, and which run leaks more on the layers they share."""
    text = f"Line plot of {measure.title} per layer ({measure.direction}), one line per run with a 95% CI band. "
    peaks = []
    for label, pts in points.items():
        if not pts:
            peaks.append(f"{label} has no value")
            continue
        pick = max if measure.higher_is_leakier else min
        index = pick(pts, key=lambda i: pts[i][0])
        peaks.append(f"{label} (layers {_index_list(list(pts))}) is leakiest at layer {index} with "
                     f"{measure.value(pts[index][0])}")
    text += "; ".join(peaks) + ". " + _leader_text(measure, points)
    return text + (f" Dashed line: chance {measure.value(chance)}." if chance is not None else
                   " Chance differs between runs; no chance line.")


def _leader_text(measure: Measure, points: dict[str, dict]) -> str:
    """Which run leaks most at each layer two or more runs share, and where its CI overlaps another's."""
    shared = sorted(i for i in {i for pts in points.values() for i in pts}
                    if sum(i in pts for pts in points.values()) > 1)
    if not shared:
        return "No layer has values from two or more runs, so the curves cannot be compared layer by layer."
    leaders: dict[str, list[int]] = {}
    overlapping = []
    for i in shared:
        have = [(label, pts[i]) for label, pts in points.items() if i in pts]
        best = have[0]
        for cand in have[1:]:
            if measure.leakier(cand[1][0], best[1][0]):
                best = cand
        leaders.setdefault(best[0], []).append(i)
        if any(_overlap(best[1][1], other[1][1]) for other in have if other[0] != best[0]):
            overlapping.append(i)
    text = "Leakiest run on the shared layers: " + "; ".join(
        f"{label} at layer(s) {_index_list(idx)}" for label, idx in leaders.items()) + "."
    if not overlapping:
        return text + " The CI bands are apart at every shared layer."
    text += f" The CI bands overlap at layer(s) {_index_list(overlapping)}"
    return text + ("." if len(overlapping) == len(shared) else " and are apart elsewhere.")


__all__ = ["CompareError", "Measure", "Run", "compare_runs", "comparison_document", "find_measures",
           "flatten_config", "load_runs"]

"""Reports of a run: ``results.json``, ``summary.md``, ``report.html``, ``junit.xml`` and plots.

Measuring, judging and rendering stay apart. The pipeline measures (``results``); judging adds
the risk rating per threat (from each family's registry entry) and, with a policy, the gate's
verdict (:mod:`audit.gate`); rendering builds one :class:`~audit.report.document.ReportDocument`
(:mod:`audit.report.build`) that the Markdown and HTML renderers draw, and writes the verdict as
JUnit. :func:`write_report` does all of it from results alone, so ``speech-audit report``
re-renders a finished run with no recomputation. Every file is written atomically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from audit.atomic import output_dir, write_error, write_output, write_output_text
from audit.errors import OutputError
from audit.family import AttackFamily
from audit.report.build import build_document, risk_ratings
from audit.report.document import Figure, ReportDocument
from audit.report.figures import write_figures
from audit.report.html import render_html
from audit.report.junit import write_junit
from audit.report.markdown import render_markdown
from audit.report.redact import new_salt, redact_examples, redact_results

REPORT_FILES = ("results.json", "summary.md", "report.html", "junit.xml")


def _carry_files(results: dict, source: Path | None, out: Path, names: dict[str, str | None]) -> None:
    """Bring files the run made from data (examples, maps) into ``out`` under their report names.

    ``names`` maps a file to its name in this report (None: left out, deleted when ``out`` is the
    run folder itself); unmapped files keep their name.
    """
    if source is None:
        return
    same = source.resolve() == out.resolve()
    for file in results.get("files", []):
        if file in REPORT_FILES:
            continue
        src, target = source / file, names.get(file, file)
        if target is None:
            if same and src.exists():
                src.unlink()
            continue
        dst = out / target
        if not src.is_file() or (same and target == file):
            continue
        output_dir(dst.parent)
        if same:
            try:
                src.replace(dst)
            except OSError as exc:
                raise OutputError(write_error(dst, exc)) from exc
            continue
        write_output(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))


def _kept_figures(results: dict, out: Path, drawn: list[Figure]) -> list[Figure]:
    """Figures the pipeline drew from embeddings (not re-drawable from results) that exist in ``out``.

    Runs recorded before figure records existed list their maps in ``files`` only; those get a
    generic alt text from the file name.
    """
    kept = [Figure(**f) for f in results.get("figures") or [] if (out / f["file"]).is_file()]
    known = {f.file for f in kept + drawn}
    for file in results.get("files", []):
        if file.startswith("map_") and file.endswith(".png") and file not in known and (out / file).is_file():
            kept.append(Figure(file, f"t-SNE map of mean-pooled embeddings ({file[:-4].replace('_', ' ')}), one "
                                     "panel per colouring (speaker and attributes).", topic="maps"))
    return kept


def write_report(results: dict, out: Path, registry: dict[str, AttackFamily], *, redact: bool = False,
                 source: Path | None = None, salt: str | None = None) -> dict:
    """Judge, render and write every report file of ``results`` into ``out``; returns the results as written.

    ``source`` is the folder holding the run's own files (examples, maps; default ``out``).
    ``redact`` writes a report without personal data (:mod:`audit.report.redact`); the salt of
    its id hashes is ``salt`` or a fresh secret, never stored.
    """
    out = output_dir(Path(out))
    source = Path(source) if source is not None else out
    results = dict(results)
    results["risks"] = [r.to_dict() for r in risk_ratings(results, registry)]
    if redact:
        salt = salt or new_salt()
        names = redact_examples(results, salt, registry)
        _carry_files(results, source, out, names)
        results = redact_results(results, salt, names, registry)
        results["report_mode"] = {"mode": "redacted", "left_out": ["original audio", "transcripts",
                                                                   "judge and probe hypotheses"],
                                  "ids": "salted SHA-256 (salt not stored)", "paths": "absolute paths cut"}
    else:
        _carry_files(results, source, out, {})
        results["report_mode"] = {"mode": "full", "personal_data": ["original audio", "transcripts", "speaker ids"]}
    drawn = write_figures(results, out, registry)
    figures = drawn + _kept_figures(results, out, drawn)
    written = {f.file for f in figures} | {"results.json", "summary.md", "report.html"}
    if results.get("verdict"):
        written.add("junit.xml")
    results["files"] = sorted(set(results.get("files", [])) | written)
    doc = build_document(results, registry, figures)
    write_output_text(out / "results.json", json.dumps(results, indent=1))
    write_output_text(out / "summary.md", render_markdown(doc, summary_only=True))
    write_output_text(out / "report.html", render_html(doc, out))
    if results.get("verdict"):
        write_output(out / "junit.xml", lambda tmp: write_junit(results["verdict"], tmp))
    return results


__all__ = ["REPORT_FILES", "ReportDocument", "build_document", "render_html", "render_markdown", "risk_ratings",
           "write_report"]

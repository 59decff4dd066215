"""Markdown rendering of a :class:`~audit.report.document.ReportDocument` (``summary.md``).

Every text field is escaped: HTML special characters become entities (GitHub renders raw HTML
in Markdown), and pipes and newlines cannot break a table. ``summary_only`` keeps the sections
marked ``in_summary`` so the file fits a pull-request comment.
"""

from __future__ import annotations

import html

from audit.report.document import (AudioExample, Block, Bullets, Callout, Code, Figure, Paragraph,
                                   ReportDocument)
from audit.results import Table


def escape(text: object) -> str:
    """Plain text safe in Markdown: HTML escaped, Markdown emphasis/link characters neutralised, one line."""
    out = html.escape(str(text), quote=False).replace("\r", " ").replace("\n", " ")
    for ch in ("\\", "`", "*", "_", "[", "]"):
        out = out.replace(ch, "\\" + ch)
    return out


def cell(text: object) -> str:
    """A Markdown table cell: :func:`escape` plus escaped pipes."""
    return escape(text).replace("|", "\\|")


def markdown_table(table: Table, level: int = 3) -> list[str]:
    """Markdown lines of a :class:`Table`: a heading, the grid, then its notes (empty when it has no rows)."""
    if not table.columns or not table.rows:
        return []
    lines = [f"{'#' * level} {escape(table.title)}", "", "| " + " | ".join(cell(c) for c in table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    return lines + [""] + [escape(n) + "  " for n in table.notes] + ([""] if table.notes else [])


def _block(block: Block) -> list[str]:
    if isinstance(block, Paragraph):
        lead = f"**{escape(block.lead)}** " if block.lead else ""
        return [lead + escape(block.text), ""]
    if isinstance(block, Bullets):
        return [f"- {escape(item)}" for item in block.items] + [""] if block.items else []
    if isinstance(block, Callout):
        return [f"> **{escape(block.title)}**"] + [f"> - {escape(item)}" for item in block.items] + [""]
    if isinstance(block, Table):
        return markdown_table(block)
    if isinstance(block, Figure):
        return [f"![{escape(block.alt)}]({_link(block.file)})", ""] + ([f"*{escape(block.caption)}*", ""]
                                                                       if block.caption else [])
    if isinstance(block, AudioExample):
        clips = ", ".join(f"[{escape(c.label)}]({_link(c.file)})" for c in block.clips)
        mel = f"; [mel plot]({_link(block.mel.file)})" if block.mel else ""
        note = f" {escape(block.note)}" if block.note else ""
        return [f"- **{escape(block.title)}**: {clips}{mel}.{note}", ""]
    if isinstance(block, Code):
        fence = "~~~~" if "```" in block.text else "```"
        return [fence + block.language, block.text.rstrip("\n"), fence, ""]
    raise TypeError(f"unknown report block {type(block).__name__}")


def _link(path: str) -> str:
    """A relative link target: spaces and parentheses percent-encoded so the link cannot break."""
    return str(path).replace(" ", "%20").replace("(", "%28").replace(")", "%29").replace("<", "%3C")


def render_markdown(doc: ReportDocument, *, summary_only: bool = True) -> str:
    """The document as Markdown (only ``in_summary`` sections when ``summary_only``)."""
    lines = [f"# {escape(doc.title)}", "", f"*{escape(doc.subtitle)}*", ""]
    for section in doc.sections:
        if summary_only and not section.in_summary:
            continue
        lines += [f"## {escape(section.title)}", ""]
        for block in section.blocks:
            lines += _block(block)
    return "\n".join(lines).rstrip("\n") + "\n"


__all__ = ["cell", "escape", "markdown_table", "render_markdown"]

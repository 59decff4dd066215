"""The report as a format-neutral document: sections of paragraphs, tables, figures and audio.

:func:`audit.report.build.build_document` builds one :class:`ReportDocument` from a run's
results; the Markdown and HTML renderers draw that same document, so no table or sentence is
written twice. Every text field is plain text (no markup): renderers escape it, because
transcripts, ids, file names and model names come from users' manifests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from audit.results import Table


@dataclass
class Paragraph:
    """A paragraph; ``lead`` (optional) is rendered emphasised before the text."""

    text: str
    lead: str = ""


@dataclass
class Bullets:
    """A bulleted list of plain-text items."""

    items: list[str]


@dataclass
class Callout:
    """A boxed notice: ``kind`` is ``warning`` (weakens or limits the audit) or ``info``."""

    kind: str
    title: str
    items: list[str] = field(default_factory=list)


@dataclass
class Figure:
    """A plot file in the report folder; ``alt`` says in words what it shows (never left empty)."""

    file: str
    alt: str
    caption: str = ""
    topic: str = "leakage"


@dataclass
class AudioClip:
    """One listenable file of an example: ``label`` (original, vocoder copy, reconstruction) and its path."""

    label: str
    file: str


@dataclass
class AudioExample:
    """An inversion example: its clips, the mel comparison plot, and a plain-text note."""

    title: str
    clips: list[AudioClip]
    mel: Figure | None = None
    note: str = ""


@dataclass
class Code:
    """A preformatted block (a config, a command line)."""

    text: str
    language: str = ""


Block = Paragraph | Bullets | Callout | Table | Figure | AudioExample | Code


@dataclass
class Section:
    """A titled part of the report; ``in_summary`` sections also go into ``summary.md``."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    in_summary: bool = True


@dataclass
class ReportDocument:
    """A whole report: title, subtitle, the mode it was made in (``full`` or ``redacted``), sections in order."""

    title: str
    subtitle: str
    mode: str
    sections: list[Section] = field(default_factory=list)

    def section(self, section_id: str) -> Section | None:
        """The section with ``section_id`` (None when absent)."""
        return next((s for s in self.sections if s.id == section_id), None)


__all__ = ["AudioClip", "AudioExample", "Block", "Bullets", "Callout", "Code", "Figure", "Paragraph",
           "ReportDocument", "Section"]

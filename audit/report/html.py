"""HTML rendering of a :class:`~audit.report.document.ReportDocument` (``report.html``).

The page is self-contained and opens from disk without a network: one inline ``<style>``, no
JavaScript, a restrictive Content-Security-Policy, plots embedded as ``data:`` URIs and audio
embedded until a size budget is spent (later clips link to their file in the report folder).
Every text field is escaped with :func:`html.escape`, because transcripts, ids, file names and
model names come from users' manifests.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from urllib.parse import quote

from audit.report.document import (AudioClip, AudioExample, Block, Bullets, Callout, Code, Figure, Paragraph,
                                   ReportDocument, Section)
from audit.results import Table

CSP = ("default-src 'none'; img-src data: 'self'; media-src data: 'self'; style-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")

IMAGE_TYPES = MappingProxyType({".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".svg": "image/svg+xml", ".webp": "image/webp"})
AUDIO_TYPES = MappingProxyType({".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
               ".opus": "audio/ogg", ".m4a": "audio/mp4"})

# Status word -> (CSS class suffix, symbol shown next to it). Longest words first so "NOT MEASURED" wins.
STATUS = MappingProxyType({
    "NOT MEASURED": ("not-measured", "\u2013"), "INCONCLUSIVE": ("inconclusive", "?"),
    "MEDIUM": ("medium", "\u25c6"), "ERROR": ("error", "\u2717"),
    "FAIL": ("fail", "\u2717"), "WARN": ("warn", "!"), "PASS": ("pass", "\u2713"), "HIGH": ("high", "\u25b2"),
    "LOW": ("low", "\u25bc")})

STYLE = """
:root { --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --bg: #ffffff; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); background: var(--bg); margin: 0 auto; padding: 1.5rem; max-width: 72rem; }
h1 { font-size: 1.9rem; margin: 0 0 .25rem; }
h2 { font-size: 1.4rem; margin-top: 2.2rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; }
h3 { font-size: 1.1rem; margin-top: 1.5rem; }
.subtitle { color: var(--muted); margin: 0; }
.mode { margin: .25rem 0 1rem; }
nav ul { display: flex; flex-wrap: wrap; gap: .25rem 1rem; padding: 0; list-style: none; }
a { color: #0a58ca; }
a:focus, audio:focus { outline: 3px solid #0a58ca; outline-offset: 2px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .95rem; }
caption { text-align: left; font-weight: 600; padding: .3rem 0; }
th, td { border: 1px solid var(--line); padding: .3rem .55rem; text-align: left; vertical-align: top; }
thead th { background: var(--soft); }
.note { color: var(--muted); font-size: .9rem; margin: .2rem 0; }
.missing { color: #8a1c1c; font-style: italic; }
td.status { font-weight: 600; white-space: nowrap; }
.status-fail, .status-error, .status-high { background: #ffebe9; color: #82071e; }
.status-warn, .status-medium { background: #fff8c5; color: #633c01; }
.status-pass, .status-low { background: #dafbe1; color: #116329; }
.status-not-measured { background: #eaeef2; color: #424a53; }
.status-inconclusive { background: #fff1e5; color: #762c00; border: 1px dashed #bc4c00; }
.callout { border-left: 5px solid #0969da; background: #ddf4ff; padding: .6rem 1rem; margin: 1rem 0; }
.callout.warning { border-left-color: #bf8700; background: #fff8c5; }
.callout-title { margin: 0; }
.callout ul { margin: .3rem 0 0; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .9rem; }
.audio-example { border: 1px solid var(--line); border-radius: 6px; padding: .5rem 1rem; margin: 1rem 0; }
.clips { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; }
.clips figure { margin: .3rem 0; }
.clips figcaption { color: var(--fg); font-weight: 600; }
pre { background: var(--soft); border: 1px solid var(--line); padding: .6rem; overflow-x: auto; }
@media print { nav, audio { display: none; } a { color: inherit; } }
"""


def escape(text: object) -> str:
    """Plain text safe anywhere in HTML, attribute values included (``&``, ``<``, ``>``, quotes)."""
    return html.escape(str(text), quote=True)


def status_of(text: str) -> tuple[str, str] | None:
    """``(css class, symbol)`` for a cell starting with a verdict word (FAIL, WARN, ...), else None."""
    word = " ".join(str(text).split()).upper()
    for key, (cls, symbol) in STATUS.items():
        if word == key or word.startswith(key + " ") or word.startswith(key + ":"):
            return f"status-{cls}", symbol
    return None


def html_table(table: Table) -> list[str]:
    """HTML lines of a :class:`Table` (caption, header row, body, notes); empty when it has no rows."""
    if not table.columns or not table.rows:
        return []
    out = ['<div class="table-wrap">', "<table>", f"<caption>{escape(table.title)}</caption>", "<thead><tr>"]
    out += [f'<th scope="col">{escape(c)}</th>' for c in table.columns]
    out += ["</tr></thead>", "<tbody>"]
    for row in table.rows:
        cells = []
        for i, value in enumerate(row):
            status = status_of(value) if i == table.status_column else None
            if status:
                cls, symbol = status
                cells.append(f'<td class="status {cls}"><span aria-hidden="true">{escape(symbol)}</span> '
                             f"{escape(value)}</td>")
            else:
                cells.append(f"<td>{escape(value)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>", "</div>"]
    return out + [f'<p class="note">{escape(n)}</p>' for n in table.notes]


def _missing(file: str) -> str:
    return f'<p class="missing">missing: {escape(file)}</p>'


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@dataclass
class _Renderer:
    """Block renderer of one page: knows the report folder and how much audio it has embedded so far."""

    folder: Path
    embed_limit_bytes: int
    embedded_audio_bytes: int = 0

    def read(self, file: str) -> bytes | None:
        """Bytes of ``file`` in the report folder (None when missing or unreadable)."""
        try:
            return (self.folder / file).read_bytes()
        except OSError:
            return None

    def figure(self, fig: Figure) -> list[str]:
        """An embedded image in ``<figure>``, captioned when a caption exists."""
        data = self.read(fig.file)
        if data is None:
            return [_missing(fig.file)]
        mime = IMAGE_TYPES.get(Path(fig.file).suffix.lower(), "image/png")
        alt = fig.alt.strip() or fig.caption.strip() or Path(fig.file).name or "figure"
        out = ["<figure>", f'<img src="{_data_uri(mime, data)}" alt="{escape(alt)}">']
        if fig.caption:
            out.append(f"<figcaption>{escape(fig.caption)}</figcaption>")
        return out + ["</figure>"]

    def audio_src(self, clip: AudioClip) -> tuple[str, bool] | None:
        """``(src, embedded)``: a data URI while the budget lasts, else the quoted relative path; None if missing."""
        path = self.folder / clip.file
        if not path.is_file():
            return None
        encoded = 4 * ((path.stat().st_size + 2) // 3)
        if self.embedded_audio_bytes + encoded <= self.embed_limit_bytes:
            data = self.read(clip.file)
            if data is None:
                return None
            self.embedded_audio_bytes += encoded
            return _data_uri(AUDIO_TYPES.get(path.suffix.lower(), "audio/wav"), data), True
        return quote(str(clip.file)), False

    def clip(self, clip: AudioClip) -> list[str]:
        """One labelled ``<audio>`` player (or a missing-file note)."""
        out = ["<figure>", f"<figcaption>{escape(clip.label)}</figcaption>"]
        src = self.audio_src(clip)
        if src is None:
            return out + [_missing(clip.file), "</figure>"]
        url, embedded = src
        fallback = "Your browser cannot play this audio." if embedded else (
            f'<a href="{escape(url)}">Download {escape(clip.label)} ({escape(Path(clip.file).name)})</a>')
        return out + [f'<audio controls preload="metadata" aria-label="{escape(clip.label)}" src="{escape(url)}">'
                      f"{fallback}</audio>", "</figure>"]

    def audio_example(self, example: AudioExample) -> list[str]:
        """A titled group of clips, the mel comparison plot and the note."""
        out = ['<section class="audio-example">', f"<h3>{escape(example.title)}</h3>", '<div class="clips">']
        for clip in example.clips:
            out += self.clip(clip)
        out.append("</div>")
        if example.mel is not None:
            out += self.figure(example.mel)
        if example.note:
            out.append(f'<p class="note">{escape(example.note)}</p>')
        return out + ["</section>"]

    def block(self, block: Block) -> list[str]:
        """HTML lines of one block."""
        if isinstance(block, Paragraph):
            lead = f"<strong>{escape(block.lead)}</strong> " if block.lead else ""
            return [f"<p>{lead}{escape(block.text)}</p>"]
        if isinstance(block, Bullets):
            return ["<ul>"] + [f"<li>{escape(item)}</li>" for item in block.items] + ["</ul>"] if block.items else []
        if isinstance(block, Callout):
            kind = "warning" if block.kind == "warning" else "info"
            word = "Warning:" if kind == "warning" else "Note:"
            out = [f'<aside role="note" class="callout {kind}">',
                   f'<p class="callout-title"><strong>{word}</strong> {escape(block.title)}</p>']
            if block.items:
                out += ["<ul>"] + [f"<li>{escape(item)}</li>" for item in block.items] + ["</ul>"]
            return out + ["</aside>"]
        if isinstance(block, Table):
            return html_table(block)
        if isinstance(block, Figure):
            return self.figure(block)
        if isinstance(block, AudioExample):
            return self.audio_example(block)
        if isinstance(block, Code):
            language = re.sub(r"[^A-Za-z0-9_+-]", "", block.language)
            cls = f' class="language-{language}"' if language else ""
            return [f"<pre><code{cls}>{escape(block.text.rstrip(chr(10)))}</code></pre>"]
        raise TypeError(f"unknown report block {type(block).__name__}")

    def section(self, section: Section) -> list[str]:
        """A ``<section>`` with its ``<h2 id>`` and blocks."""
        out = [f'<section aria-labelledby="{escape(section.id)}">',
               f'<h2 id="{escape(section.id)}">{escape(section.title)}</h2>']
        for block in section.blocks:
            out += self.block(block)
        return out + ["</section>"]


def render_html(doc: ReportDocument, folder: Path, *, embed_limit_bytes: int = 3_500_000) -> str:
    """The whole document as one self-contained HTML5 page.

    ``folder`` holds the figure and audio files (paths in the document are relative to it).
    Audio is embedded as ``data:`` URIs while their encoded size stays within
    ``embed_limit_bytes``; later clips link to their relative path. A missing file becomes a note.
    """
    renderer = _Renderer(Path(folder), embed_limit_bytes)
    nav = ['<nav aria-label="Contents">', "<ul>"]
    nav += [f'<li><a href="#{escape(quote(s.id, safe=""))}">{escape(s.title)}</a></li>' for s in doc.sections]
    nav += ["</ul>", "</nav>"]
    body: list[str] = []
    for section in doc.sections:
        body += renderer.section(section)
    head = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{escape(CSP)}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="referrer" content="no-referrer">', f"<title>{escape(doc.title)}</title>",
            f"<style>{STYLE}</style>", "</head>", "<body>", "<header>", f"<h1>{escape(doc.title)}</h1>"]
    if doc.subtitle:
        head.append(f'<p class="subtitle">{escape(doc.subtitle)}</p>')
    head.append(f'<p class="mode">Report mode: <strong>{escape(doc.mode)}</strong></p>')
    head += ["</header>"] + nav + ["<main>"]
    return "\n".join(head + body + ["</main>", "</body>", "</html>"]) + "\n"


__all__ = ["escape", "html_table", "render_html", "status_of"]

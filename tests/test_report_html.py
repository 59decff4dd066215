"""The HTML report: escaped user text, self-contained embedding, accessible and balanced markup."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from audit.report.document import (
    AudioClip,
    AudioExample,
    Bullets,
    Callout,
    Code,
    Figure,
    Paragraph,
    ReportDocument,
    Section,
)
from audit.report.html import render_html
from audit.results import Table
from tests.conftest import plot_png, sine_wav

XSS = "<script>alert(1)</script>"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}




class Structure(HTMLParser):
    """Collects tags with attributes, checks open/close balance of non-void elements."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def all(self, tag: str) -> list[dict]:
        return [attrs for t, attrs in self.tags if t == tag]


def parse(page: str) -> Structure:
    parser = Structure()
    parser.feed(page)
    parser.close()
    assert not parser.errors, parser.errors
    assert not parser.stack, f"unclosed: {parser.stack}"
    return parser


def hostile_doc(folder: Path) -> ReportDocument:
    """A document with a script tag in every kind of text field, incl. file names."""
    name = f"{XSS}.wav"
    sine_wav(folder / "audio" / name)
    plot_png(folder / "plots" / f"{XSS}.png")
    table = Table(title=f"Speaker {XSS}", columns=["model", f"col {XSS}", "verdict"],
                  rows=[[f"m {XSS}", f"cell {XSS}", "FAIL"]], notes=[f"note {XSS}"], status_column=2)
    blocks = [
        Paragraph(text=f"text {XSS}", lead=f"lead {XSS}"),
        Bullets(items=[f"item {XSS}"]),
        Callout(kind="warning", title=f"callout {XSS}", items=[f"why {XSS}"]),
        table,
        Figure(file=f"plots/{XSS}.png", alt=f"alt {XSS}", caption=f"caption {XSS}"),
        AudioExample(title=f"utt {XSS}", clips=[AudioClip(label=f"original {XSS}", file=f"audio/{name}")],
                     mel=Figure(file=f"plots/{XSS}.png", alt=f"mel {XSS}"), note=f"transcript {XSS}"),
        Code(text=f"model: {XSS}\n", language=f"yaml{XSS}"),
    ]
    return ReportDocument(title=f"Audit {XSS}", subtitle=f"of {XSS}", mode="full",
                          sections=[Section(id="verdict", title=f"Verdict {XSS}", blocks=blocks)])


def test_user_text_is_escaped_everywhere(tmp_path: Path) -> None:
    page = render_html(hostile_doc(tmp_path), tmp_path)
    assert "<script" not in page.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for text in ("Audit", "of", "Verdict", "lead", "text", "item", "callout", "why", "Speaker", "col", "m", "cell",
                 "note", "caption", "alt", "utt", "original", "transcript", "mel", "model:"):
        assert f"{text} {escaped}" in page, text
    parse(page)


def test_escaped_file_names_still_embed_and_missing_names_stay_text(tmp_path: Path) -> None:
    doc = hostile_doc(tmp_path)
    page = render_html(doc, tmp_path)
    assert page.count("data:image/png;base64,") == 2 and page.count("data:audio/wav;base64,") == 1
    (tmp_path / "audio" / f"{XSS}.wav").unlink()
    linked = render_html(doc, tmp_path, embed_limit_bytes=0)
    assert "missing: audio/&lt;script&gt;alert(1)&lt;/script&gt;.wav" in linked
    assert "<script" not in linked.lower()


def media_doc(folder: Path, n_clips: int = 3) -> ReportDocument:
    plot_png(folder / "plots" / "mel 0.png")
    clips = [AudioClip(label=f"clip {i}", file=str(sine_wav(folder / "audio" / f"utt {i}.wav").relative_to(folder)))
             for i in range(n_clips)]
    return ReportDocument(title="Audit", subtitle="sub", mode="redacted", sections=[
        Section(id="inversion", title="Inversion", blocks=[
            Figure(file="plots/mel 0.png", alt="", caption=""),
            AudioExample(title="example", clips=clips, mel=Figure(file="plots/mel 0.png", alt="mel plot"))])])


def srcs(page: str) -> list[str]:
    return [attrs.get("src", "") for attrs in parse(page).all("audio")]


def test_media_is_embedded_with_no_network_urls(tmp_path: Path) -> None:
    page = render_html(media_doc(tmp_path), tmp_path)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert all(s.startswith("data:audio/wav;base64,") for s in srcs(page)) and len(srcs(page)) == 3
    images = parse(page).all("img")
    assert len(images) == 2 and all(i["src"].startswith("data:image/png;base64,") for i in images)
    assert 'preload="metadata"' in page and "Content-Security-Policy" in page and "Report mode: " in page


def test_audio_beyond_the_budget_links_the_relative_file(tmp_path: Path) -> None:
    doc = media_doc(tmp_path)
    one = 4 * ((sine_wav(tmp_path / "audio" / "utt 0.wav").stat().st_size + 2) // 3)
    sources = srcs(render_html(doc, tmp_path, embed_limit_bytes=one + 10))
    assert sources[0].startswith("data:audio/wav;base64,")
    assert sources[1:] == ["audio/utt%201.wav", "audio/utt%202.wav"]
    assert srcs(render_html(doc, tmp_path, embed_limit_bytes=0)) == [f"audio/utt%20{i}.wav" for i in range(3)]


def test_default_budget_keeps_a_large_report_small(tmp_path: Path) -> None:
    doc = media_doc(tmp_path, n_clips=0)
    clips = [AudioClip(label=f"c{i}", file=f"audio/long {i}.wav") for i in range(40)]
    for clip in clips:
        sine_wav(tmp_path / clip.file, seconds=3.0)
    doc.sections[0].blocks.append(AudioExample(title="many", clips=clips))
    page = render_html(doc, tmp_path)
    assert len(page.encode()) < 5_000_000
    assert 0 < page.count("data:audio/wav;base64,") < 40 and "audio/long%2039.wav" in page


def test_missing_files_render_a_note(tmp_path: Path) -> None:
    doc = ReportDocument(title="Audit", subtitle="", mode="full", sections=[Section(id="s", title="S", blocks=[
        Figure(file="plots/gone.png", alt="gone"),
        AudioExample(title="ex", clips=[AudioClip(label="original", file="audio/gone.wav")],
                     mel=Figure(file="plots/mel_gone.png", alt="mel"))])])
    page = render_html(doc, tmp_path)
    for file in ("plots/gone.png", "audio/gone.wav", "plots/mel_gone.png"):
        assert f"missing: {file}" in page
    assert not parse(page).all("img") and not parse(page).all("audio")


def status_doc() -> ReportDocument:
    words = ["FAIL", "WARN", "PASS", "ERROR", "HIGH", "MEDIUM", "LOW", "NOT MEASURED", "INCONCLUSIVE (LOW TO HIGH)"]
    table = Table(title="Verdicts", columns=["check", "status"], rows=[[f"c{i}", w] for i, w in enumerate(words)],
                  notes=["n1", "n2"], status_column=1)
    return ReportDocument(title="Audit", subtitle="s", mode="redacted", sections=[
        Section(id="verdict", title="Verdict", blocks=[table, Callout(kind="warning", title="Weak attacker")]),
        Section(id="risk", title="Risk", blocks=[
            Table(title="Risk", columns=["layer", "risk"], rows=[["3", "HIGH"]], status_column=1),
            Paragraph(text="body", lead="Lead."), Code(text="a < b")])])


def test_accessible_structure(tmp_path: Path) -> None:
    plot_png(tmp_path / "p.png")
    doc = status_doc()
    doc.sections[1].blocks.append(Figure(file="p.png", alt="", caption="Caption as alt"))
    doc.sections[1].blocks.append(Figure(file="p.png", alt="  "))
    page = render_html(doc, tmp_path)
    tree = parse(page)
    assert tree.all("html")[0].get("lang") == "en" and tree.all("meta")[0].get("charset") == "utf-8"
    assert len(tree.all("h1")) == 1 and [h["id"] for h in tree.all("h2")] == ["verdict", "risk"]
    assert [i["alt"] for i in tree.all("img")] == ["Caption as alt", "p.png"]
    assert len(tree.all("table")) == len(tree.all("caption")) == 2
    assert len(tree.all("th")) == 4 and all(th.get("scope") == "col" for th in tree.all("th"))
    assert tree.all("nav")[0].get("aria-label") == "Contents"
    assert [a["href"] for a in tree.all("a")] == ["#verdict", "#risk"]
    assert re.search(r'<aside role="note" class="callout warning">\s*<p[^>]*><strong>Warning:</strong> Weak', page)
    assert "<pre><code>a &lt; b</code></pre>" in page and "<strong>Lead.</strong> body" in page
    assert "Report mode: <strong>redacted</strong>" in page
    assert '<p class="note">n1</p>' in page and '<p class="note">n2</p>' in page


@pytest.mark.parametrize("word,cls", [("FAIL", "fail"), ("WARN", "warn"), ("PASS", "pass"), ("ERROR", "error"),
                                      ("HIGH", "high"), ("MEDIUM", "medium"), ("LOW", "low"),
                                      ("NOT MEASURED", "not-measured"),
                                      ("INCONCLUSIVE (LOW TO HIGH)", "inconclusive")])
def test_status_cells_keep_their_word(tmp_path: Path, word: str, cls: str) -> None:
    page = render_html(status_doc(), tmp_path)
    cell = re.search(rf'<td class="status status-{cls}">(.*?)</td>', page)
    assert cell and re.sub(r"<[^>]+>", "", cell.group(1)).strip().endswith(word)
    assert "<td>c0</td>" in page


def test_unknown_block_is_an_error(tmp_path: Path) -> None:
    doc = ReportDocument(title="t", subtitle="", mode="full", sections=[Section(id="s", title="S", blocks=[42])])
    with pytest.raises(TypeError):
        render_html(doc, tmp_path)

"""The HTML report in a real headless Chromium: sections, a decoded image and audio, no console errors.

Needs the ``selenium`` package plus a Chromium and its chromedriver (Debian: ``chromium``,
``chromium-driver``); the test is skipped, with the reason, when any of them is absent. Set
``SPEECH_AUDIT_ARTIFACTS`` to a folder to keep the screenshot.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from audit.report.document import (
    AudioClip,
    AudioExample,
    Figure,
    Paragraph,
    ReportDocument,
    Section,
)
from audit.report.html import render_html
from audit.results import Table
from tests.conftest import plot_png, sine_wav

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

MEASURE_JS = """
const audios = Array.from(document.querySelectorAll('audio'));
return {
  sections: Array.from(document.querySelectorAll('h2[id]')).map(h => h.id),
  img_natural_widths: Array.from(document.images).map(i => (i.complete ? i.naturalWidth : 0)),
  audio_durations: audios.map(a => (Number.isFinite(a.duration) ? a.duration : -1)),
  audio_errors: audios.map(a => (a.error ? a.error.code : 0)),
  status_cells: Array.from(document.querySelectorAll('td.status')).map(td => td.innerText.trim()),
};
"""


def chromium_tools() -> tuple[str, str]:
    """``(chromium binary, chromedriver)``, skipping the test with the reason when one is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    browser = os.environ.get("CHROME_BIN") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not browser:
        pytest.skip("no Chromium/Chrome binary found (apt-get install chromium)")
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not driver:
        pytest.skip("chromedriver not found (apt-get install chromium-driver)")
    return browser, driver


def open_in_chromium(html_path: Path, screenshot: Path, *, wait_s: float = 10.0) -> dict:
    """Open ``html_path`` from disk in headless Chromium, wait for the audio metadata, save ``screenshot``.

    Returns what the page showed: ``sections`` (ids of ``<h2>``), ``img_natural_widths``,
    ``img_natural_width`` (the largest), ``audio_durations`` (seconds, -1 while unknown),
    ``audio_errors`` (MediaError codes, 0 = none), ``audio_duration`` (the first one, or None),
    ``status_cells`` (visible text of status cells) and ``severe`` (SEVERE console messages).
    Skips the calling test when selenium, Chromium or chromedriver is absent.
    """
    browser, driver_path = chromium_tools()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
                "--window-size=1280,2000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.get(Path(html_path).resolve().as_uri())
        driver.execute_script("document.querySelectorAll('audio').forEach(a => a.load());")
        deadline = time.monotonic() + wait_s
        while True:
            seen = driver.execute_script(MEASURE_JS)
            settled = all(d > 0 or e for d, e in zip(seen["audio_durations"], seen["audio_errors"]))
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        logs = driver.get_log("browser")
    finally:
        driver.quit()
    seen["img_natural_width"] = max(seen["img_natural_widths"], default=0)
    seen["audio_duration"] = seen["audio_durations"][0] if seen["audio_durations"] else None
    seen["severe"] = [entry.get("message", "") for entry in logs if entry.get("level") == "SEVERE"]
    return seen




def browser_doc(folder: Path) -> ReportDocument:
    """A hand-made report: verdict and risk tables with status columns, a plot, an audio example."""
    plot_png(folder / "plots" / "leakage.png")
    plot_png(folder / "plots" / "mel <0>.png")
    sine_wav(folder / "audio" / "original 0.wav")
    sine_wav(folder / "audio" / "reconstruction <0>.wav")
    verdict = Table(title="Verdict", columns=["check", "status"], status_column=1,
                    rows=[["speaker identity", "FAIL"], ["gender", "WARN"], ["content", "NOT MEASURED"]],
                    notes=["FAIL: an attacker beats the threshold."])
    risk = Table(title="Risk by layer", columns=["layer", "risk"], rows=[["3", "HIGH"], ["9", "LOW"]],
                 status_column=1)
    return ReportDocument(title="Privacy audit <script>x</script>", subtitle="toy model", mode="redacted", sections=[
        Section(id="verdict", title="Verdict", blocks=[Paragraph(text="Identity leaks.", lead="Result:"), verdict]),
        Section(id="risk", title="Risk", blocks=[
            risk, Figure(file="plots/leakage.png", alt="Attack accuracy per layer", caption="Leakage by layer")]),
        Section(id="inversion", title="Inversion", blocks=[AudioExample(
            title="utt <1>", note="transcript: hello",
            clips=[AudioClip(label="original", file="audio/original 0.wav"),
                   AudioClip(label="reconstruction", file="audio/reconstruction <0>.wav")],
            mel=Figure(file="plots/mel <0>.png", alt="Mel spectrograms, original and reconstruction"))])])


def test_report_opens_in_headless_chromium(tmp_path: Path) -> None:
    chromium_tools()
    folder = tmp_path / "report"
    doc = browser_doc(folder)
    one_clip = 4 * (((folder / "audio" / "original 0.wav").stat().st_size + 2) // 3)
    html_path = folder / "report.html"
    html_path.write_text(render_html(doc, folder, embed_limit_bytes=one_clip), encoding="utf-8")
    page = html_path.read_text(encoding="utf-8")
    assert "data:audio/wav;base64," in page and 'src="audio/reconstruction%20%3C0%3E.wav"' in page

    artifacts = Path(os.environ.get("SPEECH_AUDIT_ARTIFACTS") or tmp_path)
    screenshot = artifacts / "report_html_chromium.png"
    seen = open_in_chromium(html_path, screenshot)

    assert {"verdict", "risk"} <= set(seen["sections"]), seen["sections"]
    assert len(seen["img_natural_widths"]) == 2 and min(seen["img_natural_widths"]) > 0, seen
    assert len(seen["audio_durations"]) == 2 and seen["audio_errors"] == [0, 0], seen
    assert all(abs(d - 1.0) < 0.05 for d in seen["audio_durations"]), seen  # embedded and linked clip both decode
    assert seen["status_cells"] == ["\u2717 FAIL", "! WARN", "\u2013 NOT MEASURED", "\u25b2 HIGH", "\u25bc LOW"]
    assert not seen["severe"], seen["severe"]
    assert screenshot.is_file() and screenshot.stat().st_size > 0
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

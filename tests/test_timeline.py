"""RunTimeline: the run's phases and jobs, and each worker's busy and idle seconds in a pooled phase."""

from __future__ import annotations

import types

import pytest

from audit import timeline as timeline_module
from audit.timeline import RunTimeline


def test_pooled_phase_counts_each_workers_busy_and_idle_seconds(monkeypatch):
    clock = iter([1010.0, 1010.0, 1100.5])  # store ends, second pass starts, second pass ends
    monkeypatch.setattr(timeline_module, "time", types.SimpleNamespace(time=lambda: next(clock)))
    timeline = RunTimeline(origin=1000.0, workers=2)
    timeline.add_phase("store", 1000.0)
    with timeline.phase("second pass"):
        timeline.job("inversion layer 1", 41, 1010.0, 1100.0)
        timeline.job("speaker_id layer 1", 42, 1010.0, 1040.0)
        timeline.job("speaker_id layer 4", 42, 1040.0, 1070.0)
        timeline.job("verification layer 4", 42, 1010.0, 1010.0, resumed=True)
    out = timeline.to_dict()
    second = out["phases"][1]
    assert (second["start"], second["end"], second["seconds"]) == (10.0, 100.5, 90.5)
    assert [ph["name"] for ph in out["phases"]] == ["store", "second pass"]
    assert [j["worker"] for j in out["jobs"]] == [0, 1, 1, 1]  # numbered in the order the pids first report
    assert [j["phase"] for j in out["jobs"]] == ["second pass"] * 4
    (pooled,) = out["pooled_phases"]
    assert pooled["busy_seconds"] == [90.0, 60.0]  # the resumed job took no time here
    assert pooled["idle_seconds"] == [0.5, 30.5]
    assert pooled["utilisation"] == pytest.approx(150.0 / 181.0, abs=1e-4)


def test_jobs_in_this_process_and_outside_a_phase_make_no_pooled_phase():
    timeline = RunTimeline(workers=1)
    with timeline.phase("outer"):
        with timeline.phase("inner"):
            timeline.job("a", None, timeline.origin, timeline.origin + 1)
        timeline.job("b", None, timeline.origin, timeline.origin + 2)
    timeline.job("c", None, timeline.origin, timeline.origin + 3)
    out = timeline.to_dict()
    assert [(j["job"], j["phase"], j["worker"]) for j in out["jobs"]] == [
        ("a", "inner", "main"), ("b", "outer", "main"), ("c", None, "main")]
    assert [ph["name"] for ph in out["phases"]] == ["inner", "outer"]
    assert out["pooled_phases"] == []

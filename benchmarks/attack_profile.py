"""Where an audit's time goes: per-family attack seconds per layer, and the total against extraction.

Reads a finished run's ``results.json`` (default ``reports/default``) and prints measured
figures only (nothing is asserted): the store's extraction seconds, every family's attack
seconds per layer, the defense comparison's seconds per setting and scenario, the run's phases
and each worker's busy and idle seconds in the pooled ones (``results["timeline"]``), and the
run's wall time as a multiple of its own extraction time (the budget of issue #11 is <= 4x, cold).

Usage: ``python benchmarks/attack_profile.py [RUN_DIR_OR_RESULTS_JSON]``
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.defense_tables import setting_label  # noqa: E402
from audit.errors import SpeechAuditError  # noqa: E402
from audit.results import load_results  # noqa: E402


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else ROOT / "reports" / "default"
    try:
        results = load_results(path)
    except SpeechAuditError as err:
        print(f"profile: {err} (run `make audit` first)")
        return 0
    store, wall = results.get("store") or {}, results.get("wall_seconds") or 0.0
    cold = not store.get("cache_hit", True)
    print(f"run {path} ({results['model'].get('spec')} on {results['corpus'].get('spec')}, created "
          f"{results.get('created')}, {results['model'].get('precision', 'float32')} on "
          f"{results['model'].get('device', 'cpu')})")
    print(f"store: {'built (cold)' if cold else 'reused (warm)'}, {store.get('wall_seconds', 0):.1f} s wall, "
          f"{store.get('model_seconds', 0):.1f} s in the model, {store.get('audio_seconds', 0):.0f} audio-s")
    families: dict[str, dict[int, float]] = {}
    for la in results["layers"]:
        for name, sec in (la.get("attack_seconds") or {}).items():
            families.setdefault(name, {})[la["index"]] = sec
    indices = [la["index"] for la in results["layers"]]
    workers = (results.get("config") or {}).get("workers", 1)
    print("attack seconds per layer (layers " + ", ".join(map(str, indices)) + "; '-': not run there):")
    for name, secs in families.items():
        print(f"  {name:14s} " + " ".join(f"{secs[i]:7.1f}" if i in secs else f"{'-':>7s}" for i in indices)
              + f"   total {sum(secs.values()):7.1f}")
    if workers > 1:
        print(f"  (the costly second pass and the defense comparison ran over {workers} worker processes: these "
              "are per-job seconds, their sum exceeds the wall time)")
    attacks = sum(sum(v.values()) for v in families.values())
    defenses = 0.0
    for e in results.get("defenses") or []:
        per = {sc: sum(v.values()) for sc, v in (e.get("attack_seconds") or {}).items()}
        fit = (e.get("fit") or {}).get("seconds") or 0.0
        defenses += e.get("wall_seconds") or 0.0
        print(f"  defense layer {e['layer']} {setting_label(e):28s} wall {e.get('wall_seconds') or 0:7.1f} s, fit "
              f"{fit:6.1f} s, attacks " + ", ".join(f"{k} {v:.0f} s" for k, v in per.items()))
    print(f"attacks {attacks:.1f} s, defense comparison {defenses:.1f} s, run wall {wall:.1f} s")
    timeline = results.get("timeline") or {}
    if timeline.get("phases"):
        print("phases (wall seconds): " + ", ".join(f"{ph['name']} {ph['seconds']:.1f}" for ph in timeline["phases"]))
    for ph in timeline.get("pooled_phases") or []:
        print(f"  {ph['phase']}: {ph['workers']} workers busy " + " / ".join(f"{b:.1f}" for b in ph["busy_seconds"])
              + " s, idle " + " / ".join(f"{i:.1f}" for i in ph["idle_seconds"])
              + f" s of {ph['wall_seconds']:.1f} s ({100 * (ph['utilisation'] or 0):.0f}% busy)")
    if cold and store.get("wall_seconds"):
        print(f"wall / extraction = {wall / store['wall_seconds']:.2f}x (budget <= 4x, cold)")
    else:
        print("wall / extraction: not measurable on a warm store (run with an empty cache: SPEECH_AUDIT_CACHE=...)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Device benchmark: the same audit on two devices (CPU and CUDA) or precisions, wall ratio and agreement within CI.

Prints measured figures (nothing is asserted). Each audit runs in a fresh process into its
own empty store folder, so both extract cold; settings are the config's, with only
``device`` and ``attacker_precision`` (and, when given, ``workers``, corpus and filters) overridden. Then, for every
figure both runs report (per layer: speaker-ID top-1, verification EER, attributes,
inversion WER / speaker-judge EER / log-mel LSD; per defense setting: the strongest
attacker's top-1 and EER and the utility), the two values with their 95% CIs and whether the
second run's value lies inside the first run's CI (:func:`audit.compare.ci_agreement`); a figure
one run lacks, or without a CI, is counted apart as not compared, never as agreeing.

With no CUDA device (``torch.cuda.is_available()`` False) the GPU audit cannot run and the
script says so in one line. ``--devices cpu,cpu`` runs the comparison on the CPU twice (the
two runs must then agree exactly: a check of the script itself). ``--precisions
float32,bfloat16`` (with ``--devices cpu,cpu`` or ``cuda,cuda``) measures what the attackers'
bfloat16 autocast buys in time and whether its figures stay within the float32 run's CIs.

Usage: ``python benchmarks/device_audit.py [--config examples/complete_default.toml]
[--corpus SPEC] [--where COLUMN=VALUE] [--workers N] [--devices cpu,cuda] [--precisions P,P] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.compare import ci_agreement, load_runs  # noqa: E402

DEFAULT_CONFIG = ROOT / "examples" / "complete_default.toml"


def run_audit(config: str, device: str, out: Path, cache: Path, overrides: dict) -> dict:
    """One audit in a fresh process (device, out, cache and ``overrides`` replacing the config's); its timings."""
    code = (
        "import json, sys, time; from dataclasses import replace\n"
        "from audit.config import load_config\nfrom audit.pipeline import AuditPipeline\n"
        "a = json.loads(sys.argv[1])\n"
        "cfg = replace(load_config(a['config']), device=a['device'], out=a['out'], cache_dir=a['cache'], "
        "progress=False, **a['overrides']).validate()\n"
        "t = time.perf_counter(); r = AuditPipeline(cfg).run()\n"
        "print(json.dumps({'wall': time.perf_counter() - t, 'results_wall': r['wall_seconds'], "
        "'store_wall': r['store']['wall_seconds'], 'model_seconds': r['store']['model_seconds'], "
        "'device': r['environment']['device'], 'precision': r['environment']['attacker_precision']}))\n"
    )
    args = {"config": config, "device": device, "out": str(out), "cache": str(cache), "overrides": overrides}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"device_audit: the {device} {overrides.get('attacker_precision', '')} audit failed "
                         f"(exit {done.returncode}): {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def agreement_counts(rows: list) -> dict[str, int]:
    """How many figures agree (the second value inside the first CI), differ, were not compared, are identical."""
    compared = [r for r in rows if r.compared]
    return {"agree": sum(r.agrees for r in compared), "differ": sum(not r.agrees for r in compared),
            "not_compared": len(rows) - len(compared), "one_run_only": sum(not r.measured_by_both for r in rows),
            "identical": sum(r.a == r.b for r in compared)}


def print_agreement(runs: list[Path], labels: list[str]) -> None:
    """Every figure of the two runs with both 95% CIs and whether the second lies in the first's CI, then counts."""
    rows = ci_agreement(*load_runs(runs))
    print(f"\nfigures of both runs with their 95% CIs ({labels[0]} | {labels[1]} | {labels[1]} value inside "
          f"{labels[0]} CI):")
    for row in rows:
        print(f"  {row.what:<52} {row.where:<34} {row.text(row.a):<26} {row.text(row.b):<26} {row.verdict}")
    n = agreement_counts(rows)
    print(f"  {n['agree']} of {n['agree'] + n['differ']} compared figures agree ({labels[1]} value inside {labels[0]} "
          f"95% CI; {n['identical']} identical), {n['differ']} differ; {n['not_compared']} not compared "
          f"({n['one_run_only']} measured by one run only, the rest without a CI)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--corpus", help="corpus spec replacing the config's")
    parser.add_argument("--where", action="append", help="row filters replacing the config's (repeatable)")
    parser.add_argument("--workers", type=int, help="worker processes of both runs (default: the config's)")
    parser.add_argument("--devices", default="cpu,cuda", help="two devices, comma-separated (default cpu,cuda)")
    parser.add_argument("--precisions", help="the attackers' precision of each run, e.g. float32,bfloat16 "
                                             "(default: the config's for both)")
    parser.add_argument("--out", help="folder for the two runs (default: a temporary folder, removed after)")
    args = parser.parse_args()
    devices = [d.strip() for d in args.devices.split(",")]
    if len(devices) != 2:
        raise SystemExit(f"device_audit: --devices needs two devices, got {args.devices!r}")
    precisions = [p.strip() for p in args.precisions.split(",")] if args.precisions else [None, None]
    if len(precisions) != 2:
        raise SystemExit(f"device_audit: --precisions needs two precisions, got {args.precisions!r}")
    import torch

    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        print("skipped: no CUDA device here (torch.cuda.is_available() is False), so the GPU audit was not "
              "measured; --devices cpu,cpu checks this script on the CPU")
        return
    overrides = {k: v for k, v in (("corpus", args.corpus), ("where", args.where), ("workers", args.workers))
                 if v is not None}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out) if args.out else Path(tmp)
        print(f"config {args.config} {json.dumps(overrides) if overrides else ''}; {os.cpu_count()} CPU cores"
              + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
        runs, timing, labels = [], {}, []
        for k, (device, precision) in enumerate(zip(devices, precisions)):
            name = f"{k}-{device.replace(':', '_')}" + (f"-{precision}" if precision else "")
            extra = {**overrides, **({"attacker_precision": precision} if precision else {})}
            timing[name] = run_audit(args.config, device, base / name, base / f"cache-{name}", extra)
            runs.append(base / name)
            t = timing[name]
            labels.append(f"{device} {t['precision']}")
            print(f"  {labels[-1]:<16} audit {t['wall']:8.1f} s wall, extraction {t['store_wall']:7.1f} s "
                  f"({t['model_seconds']:.1f} s in the model); wall / extraction {t['wall'] / t['store_wall']:.1f}x; "
                  f"results record device {t['device']}, precision {t['precision']}")
        first, second = (timing[n] for n in timing)
        print(f"  {labels[0]} / {labels[1]}: audit wall {first['wall'] / second['wall']:.2f}x, "
              f"extraction {first['store_wall'] / second['store_wall']:.2f}x")
        print_agreement(runs, labels)
        if args.out:
            print(f"runs kept in {base}")


if __name__ == "__main__":
    main()

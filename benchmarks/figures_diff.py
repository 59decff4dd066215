"""Every figure of ``layers`` and ``defenses`` in two results.json files, compared leaf by leaf.

    .venv/bin/python benchmarks/figures_diff.py A/results.json B/results.json

Floats agree within 1e-9; keys that hold timings (seconds, wall, ``*_s``) are left out. Prints
how many leaves were compared and each one changed, added or removed (what "every figure the
same" means when a change claims it).
"""
import json
import math
import sys

def is_timing(key):
    k = key.lower()
    return "second" in k or k.startswith("wall") or k.endswith("_s") or "timeline" in k or k in ("model_seconds",)
def walk(a, b, path, out):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if is_timing(k):
                continue
            p = f"{path}.{k}"
            if k not in a: out["added"].append(p); continue
            if k not in b: out["removed"].append(p); continue
            walk(a[k], b[k], p, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out["changed"].append((path, f"len {len(a)}", f"len {len(b)}")); return
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", out)
    else:
        out["n"] += 1
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            if not (math.isclose(a, b, rel_tol=0, abs_tol=1e-9)):
                out["changed"].append((path, a, b))
        elif a != b:
            out["changed"].append((path, a, b))
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for key in ("layers", "defenses"):
    out = {"n": 0, "changed": [], "added": [], "removed": []}
    walk(a.get(key), b.get(key), key, out)
    print(f"== {key}: {out['n']} leaves compared, {len(out['changed'])} changed, {len(out['added'])} added, "
          f"{len(out['removed'])} removed")
    for c in out["changed"][:400]:
        print("  CHANGED", c[0], "|", str(c[1])[:90], "->", str(c[2])[:90])
    for p in out["added"][:200]:
        print("  ADDED", p)
    for p in out["removed"][:100]:
        print("  REMOVED", p)

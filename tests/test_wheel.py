"""The wheel holds every package folder of the project: packages are found, never listed by hand."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("audit", "attacks", "defenses")


def test_the_wheel_holds_every_package_folder_a_new_sub_package_included(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for top in TOP:
        shutil.copytree(ROOT / top, src / top, ignore=shutil.ignore_patterns("__pycache__"))
    # a sub-package nobody listed anywhere: it must ship as the existing ones do
    (src / "audit" / "probe_subpackage").mkdir()
    (src / "audit" / "probe_subpackage" / "__init__.py").write_text('"""A new sub-package."""\n')
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                            "--quiet", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("speech_audit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    folders = sorted(str(p.parent.relative_to(src)) for top in TOP for p in (src / top).rglob("__init__.py"))
    assert "audit/report" in folders and "audit/probe_subpackage" in folders
    missing = [f for f in folders if f"{f}/__init__.py" not in names]
    assert not missing, f"package folders left out of the wheel: {missing}"
    modules = sorted(str(p.relative_to(src)) for top in TOP for p in (src / top).rglob("*.py"))
    assert [m for m in modules if m not in names] == []
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)

"""Install a plugin distribution for a test: a module beside a ``.dist-info`` whose entry point names it."""

from __future__ import annotations

from pathlib import Path


def install_plugin(root: Path, dist: str, group: str, entry: str, modules: dict[str, str] | None = None) -> Path:
    """Write ``modules`` (name -> source) and a ``<dist>-0.1.dist-info`` with the entry point ``entry`` in ``group``.

    ``entry`` is one ``name = module:attribute`` line. The caller puts ``root`` on ``sys.path``
    (``monkeypatch.syspath_prepend``), which makes :mod:`importlib.metadata` see the plugin.
    """
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    for name, source in (modules or {}).items():
        (root / f"{name}.py").write_text(source)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
    return root

"""Finished jobs of a run kept on disk, so a rerun after a crash resumes instead of starting over.

The costly part of a complete audit is its jobs (:mod:`audit.jobs`: frame attackers, inversion
decoders, defense settings), minutes each. A run that dies midway (kill -9, out of memory, a
lost machine) would lose them all; :class:`JobCache` writes each finished job's result
atomically under ``jobs/<run key>/`` in the store's folder (``$SPEECH_AUDIT_CACHE/store`` or
``cache_dir``), and a rerun of the same audit reads it back instead
of recomputing. The run key covers everything a job's numbers depend on: the store (model
weights, extractor settings, corpus), the run settings (seed, device, precision, output
folder), the versions of python and of every numeric library (:data:`NUMERIC_LIBRARIES`, read
from the installed distributions, a missing one recorded as absent), and the source of the
modules that compute (this package, every attack family's module and every registered
defense's module, plugins included); a job's own key adds its function and arguments. A changed input is a different key, never a stale hit. The folder is
removed when the run completes, so a later run measures afresh: it exists only to resume.

Entries are pickles read back through an allow-list unpickler (plain containers, numpy arrays
and scalars, and the result classes named in :data:`ALLOWED`): a tampered entry cannot run
code. An entry that fails to load, or whose result names an example file missing from the
output folder, is recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import shutil
import sys
import warnings
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from audit.atomic import atomic_save
from audit.results import listed_files

#: (module, name) pairs an entry may reference: numpy's array and scalar reconstruction, and result classes.
ALLOWED = frozenset({
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "slice"),
    ("collections", "OrderedDict"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path"),
    ("audit.utility", "UtilityScore"),
})


#: Distributions whose version can change a job's numbers (their versions enter the run key).
NUMERIC_LIBRARIES = ("numpy", "scipy", "scikit-learn", "torch", "torchaudio", "speechbrain", "pystoi", "pysptk",
                     "jiwer", "concept-erasure", "transformers")
#: The version recorded for a numeric library that is not installed.
ABSENT = "absent"


def library_versions() -> dict[str, str]:
    """Each of :data:`NUMERIC_LIBRARIES` with its installed version (:data:`ABSENT` when not installed)."""
    found = {}
    for name in NUMERIC_LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = ABSENT
    return found


def defense_modules() -> list[Any]:
    """The modules that define the registered defenses (built-in and ``speech_audit.defenses`` plugins)."""
    from defenses import load_defenses

    names = {getattr(part, "__module__", None) for family in load_defenses().values()
             for part in (family.estimator, family.settings)}
    return [sys.modules[n] for n in sorted(n for n in names if n and n in sys.modules)]


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a job cache entry")
        return super().find_class(module, name)


def source_fingerprint(modules: Iterable[Any]) -> str:
    """sha256 over the source files of ``modules`` and of every module of this package's top-level packages."""
    files = {Path(m.__file__).resolve() for m in modules if getattr(m, "__file__", None)}
    root = Path(__file__).resolve().parents[1]
    for package in ("audit", "attacks", "defenses"):
        files.update(p.resolve() for p in (root / package).glob("**/*.py"))
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(root) if path.is_relative_to(root) else path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def canonical(value: Any) -> Any:
    """``value`` as nested tuples of plain values that repr the same in every process.

    Sets are sorted (their order follows the per-process string hash seed), dataclasses become
    their fields, arrays their dtype, shape and a hash of their bytes; anything else is pickled.
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, Path):
        return ("path", str(value))
    if isinstance(value, np.ndarray):
        data = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        return ("ndarray", value.dtype.str, value.shape, data)
    if isinstance(value, np.generic):
        return canonical(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__qualname__, tuple((f.name, canonical(getattr(value, f.name)))
                                                for f in dataclasses.fields(value)))
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((canonical(k), canonical(v)) for k, v in value.items()), key=repr)))
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted((canonical(v) for v in value), key=repr)))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(canonical(v) for v in value))
    return ("pickle", hashlib.sha256(pickle.dumps(value, protocol=5)).hexdigest())


class JobCache:
    """Results of one run's finished jobs under ``root`` (a folder named by the run key).

    Parameters
    ----------
    root : Path
        ``<folder>/jobs/<run key>``; :meth:`for_run` builds it.
    out_dir : Path or None
        The run's output folder: a hit whose result lists files (``files``) needs them there.
    """

    def __init__(self, root: Path, out_dir: Path | None = None) -> None:
        self.root = Path(root)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.hits_ = 0

    @classmethod
    def for_run(cls, folder: Path, parts: dict[str, Any], modules: Iterable[Any],
                out_dir: Path | None) -> "JobCache":
        """The cache in ``folder`` of the run that ``parts`` (store key, settings, versions) and ``modules`` name.

        The key also covers :func:`library_versions` and the source of :func:`defense_modules`.
        """
        digest = hashlib.sha256(repr(sorted((str(k), repr(v)) for k, v in parts.items())).encode())
        digest.update(repr(sorted(library_versions().items())).encode())
        digest.update(source_fingerprint([*modules, *defense_modules()]).encode())
        return cls(Path(folder) / "jobs" / digest.hexdigest()[:24], out_dir)

    @staticmethod
    def key(function: Callable[..., Any], args: tuple) -> str:
        """The job's key: its function's qualified name and its arguments (:func:`canonical`, so a rerun's match)."""
        digest = hashlib.sha256(f"{function.__module__}.{function.__qualname__}".encode())
        digest.update(repr(canonical(args)).encode())
        return digest.hexdigest()[:32]

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.pkl"

    def load(self, key: str) -> tuple[bool, Any]:
        """``(True, result)`` for a finished job; ``(False, None)`` when it must run (absent, unreadable, file gone)."""
        path = self._path(key)
        if not path.is_file():
            return False, None
        try:
            value = _AllowListUnpickler(io.BytesIO(path.read_bytes())).load()
        except Exception as err:  # noqa: BLE001 - any damage means: recompute
            warnings.warn(f"{path}: job cache entry unreadable ({type(err).__name__}: {err}); recomputing it",
                          stacklevel=2)
            return False, None
        if self.out_dir is not None and any(not (self.out_dir / f).is_file() for f in listed_files(value)):
            return False, None
        self.hits_ += 1
        return True, value

    def save(self, key: str, value: Any) -> None:
        """Keep a finished job's result (atomically: a crash leaves the entry whole or absent)."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_save(self._path(key), lambda tmp: tmp.write_bytes(pickle.dumps(value, protocol=5)))

    def clear(self) -> None:
        """Remove the run's entries (the run completed: nothing left to resume)."""
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.parent.is_dir() and not any(self.root.parent.iterdir()):
            self.root.parent.rmdir()


def family_modules(families: dict[str, Any]) -> list[Any]:
    """The modules that define the registered attack families' functions (plugins included)."""
    names = {getattr(fn, "__module__", None) for family in families.values()
             for fn in vars(family).values() if callable(fn)}
    return [sys.modules[n] for n in sorted(n for n in names if n and n in sys.modules)]


__all__ = ["ABSENT", "ALLOWED", "NUMERIC_LIBRARIES", "JobCache", "canonical", "defense_modules", "family_modules",
           "library_versions", "source_fingerprint"]

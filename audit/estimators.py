"""The attackers' small estimator base (the project's own sklearn ``base.py``).

Written once and used by every attack family: the fitted check, seeded torch code, fitting an
sklearn model while recording whether it converged, choosing a hyper-parameter on validation
data, the learning curve (the attacker refitted on 25/50/100% of its training data, so a
reviewer can see whether more data would have made it stronger), and the per-dimension frame
statistics every frame-level model (attacker, defense, utility probe) standardises its input with, and
the one check of a torch estimator's ``device`` setting (:func:`torch_device`), with float32 on
CUDA (:func:`full_fp32`, entered by :func:`seeded` too), and the attackers' opt-in bfloat16
autocast (:func:`check_precision`, :func:`mixed_precision`).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: Fractions of the training data an attacker's learning curve is measured at.
CURVE_FRACTIONS = (0.25, 0.5, 1.0)
#: sklearn's early stopping holds out 10%: below this many rows that slice is too small to use.
MIN_EARLY_STOPPING_ROWS = 50
#: Precisions the audit's attacker networks may train and predict in (``precision`` setting).
PRECISIONS = ("float32", "bfloat16")


class NotFittedError(RuntimeError):
    """An attacker was asked to evaluate or transform before ``fit``."""


def check_is_fitted(estimator: Any, attribute: str) -> None:
    """Raise :class:`NotFittedError` unless ``estimator`` has the learned ``attribute``."""
    if not hasattr(estimator, attribute):
        raise NotFittedError(f"{type(estimator).__name__} is not fitted: call fit(train) first")


def torch_device(name: "str | torch.device", owner: str = "") -> "torch.device":
    """The ``torch.device`` of an estimator's ``device`` setting (``"cpu"``, ``"cuda"``, ``"cuda:N"``).

    A name torch cannot use here (no CUDA, a missing GPU index, ``"auto"`` or anything else) is a
    :class:`ConfigError` naming ``device`` (prefixed by ``owner``, e.g. the estimator's class), so
    a CPU-only machine asked for ``"cuda"`` fails in one line rather than with a torch traceback.
    """
    import torch

    prefix = f"{owner}: " if owner else ""
    text = str(name) if isinstance(name, torch.device) else name
    if not isinstance(text, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise ConfigError(f"{prefix}device={name!r}: expected 'cpu', 'cuda' or 'cuda:N' (a resolved device; "
                          "'auto' is resolved once per run by audit.extractor.resolve_device)")
    if text == "cpu":
        return torch.device(text)
    if not torch.cuda.is_available():
        raise ConfigError(f"{prefix}device={text!r}: CUDA is not available (torch {torch.__version__} sees no GPU); "
                          "use device='cpu'")
    index = int(text.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"{prefix}device={text!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(text)


@contextlib.contextmanager
def full_fp32(device: "str | torch.device") -> Iterator[None]:
    """On a CUDA ``device``, float32 matmuls, convolutions and RNNs without TF32 for the block; nothing on the CPU.

    The extractor's rule (:func:`audit.extractor.full_fp32`), so estimators on a GPU compute in
    the same precision as on the CPU.
    """
    if not str(device).startswith("cuda"):
        yield
        return
    from audit.extractor import full_fp32 as extractor_fp32

    with extractor_fp32(str(device)):
        yield


def check_precision(precision: str, owner: str = "", key: str = "precision") -> str:
    """``precision`` when it is one of :data:`PRECISIONS`; else a :class:`ConfigError` naming ``key``."""
    if precision not in PRECISIONS:
        prefix = f"{owner}: " if owner else ""
        raise ConfigError(f"{prefix}{key}={precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


@contextlib.contextmanager
def mixed_precision(device: "str | torch.device", precision: str = "float32") -> Iterator[None]:
    """Forward passes of the block under torch's bfloat16 autocast when ``precision`` is ``"bfloat16"``.

    ``"float32"`` leaves the block as it is (full float32 where :func:`seeded` or
    :func:`full_fp32` is entered). Under bfloat16, convolutions and matrix products run in
    bfloat16 and torch's autocast keeps losses, reductions and normalisations in float32;
    parameters, gradients and optimiser state stay float32. Enter it around forward passes and
    losses, not ``backward``; cast outputs with ``.float()`` before numpy.
    """
    import torch

    check_precision(precision)
    device = torch.device(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        yield


def native_bfloat16(device: "str | torch.device") -> bool:
    """True when ``device`` computes bfloat16 natively (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX).

    Elsewhere torch emulates bfloat16, and the attackers' autocast is slower than float32.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe()) if probe is not None else False


@contextlib.contextmanager
def seeded(seed: int, device: "str | torch.device" = "cpu") -> Iterator[None]:
    """Run torch code under ``seed`` without disturbing the caller's global RNG.

    ``torch.manual_seed`` seeds the CPU and every CUDA generator; the CPU generator's state,
    and on a CUDA ``device`` that GPU's, are restored afterwards. On CUDA the block also runs
    in full float32 (:func:`full_fp32`).
    """
    import torch

    device = torch.device(device)
    devices = [] if device.type != "cuda" else [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=devices), full_fp32(device):
        torch.manual_seed(seed)
        yield


def fit_quiet(model: Any, X: np.ndarray, y: np.ndarray) -> tuple[Any, bool]:
    """Fit an sklearn ``model``; return it and whether it converged (no ConvergenceWarning)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X, y)
    return model, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a per-label ``fraction`` of rows (at least one row per label)."""
    rng = np.random.default_rng(seed)
    keep = []
    for value in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == value))
        keep.append(idx[: max(1, int(round(fraction * idx.size)))])
    return np.sort(np.concatenate(keep))


def grid_search(grid: Sequence[Any], score: Callable[[Any], float]) -> tuple[Any, dict[str, float]]:
    """The grid value with the highest validation ``score(value)`` (first on ties) and every score."""
    scores = {str(v): float(score(v)) for v in grid}
    best = grid[int(np.argmax([scores[str(v)] for v in grid]))]
    return best, scores


def frame_moments(seqs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std ``(D,)`` over all frames of ``seqs`` (float64 running sums).

    Dimensions with (near-)zero spread get std 1 so standardising never divides by zero.
    """
    n, total, squares = 0, 0.0, 0.0
    for x in seqs:
        x = x.astype(np.float64)
        n += x.shape[0]
        total = total + x.sum(0)
        squares = squares + np.square(x).sum(0)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
    std[std <= 1e-6 * max(float(std.max()), 1e-30)] = 1.0
    return mean, std


def learning_curve(metric: str, full_value: float, refit_value: Callable[[float], float],
                   fractions: Sequence[float] = CURVE_FRACTIONS) -> list[dict[str, float]]:
    """Rows ``{"fraction", metric}``: ``refit_value(f)`` for ``f < 1`` and the fitted attacker's value at 1."""
    return [{"fraction": f, metric: full_value if f == 1.0 else float(refit_value(f))} for f in fractions]


__all__ = ["CURVE_FRACTIONS", "MIN_EARLY_STOPPING_ROWS", "NotFittedError", "PRECISIONS", "check_is_fitted",
           "check_precision", "fit_quiet", "frame_moments", "full_fp32", "grid_search", "learning_curve",
           "mixed_precision", "native_bfloat16", "seeded", "stratified_fraction", "torch_device"]

"""Metric functions used by the attacks (pure numpy, no torch).

Every function takes plain arrays and returns a value, or ``(value, extra)``
where ``extra`` is the threshold or a dict of diagnostics, in the style of
``speechbrain.utils.metric_stats`` (``EER``, ``minDCF``). Verification metrics
are computed from sorted scores with ``np.searchsorted`` in O(n log n) rather
than with a thresholds x scores matrix.

The docstrings state the exact definitions; audit reports quote them.

Invalid input (empty arrays, NaN/inf scores, mismatched lengths, out-of-range
options) raises :class:`ValueError` with a message that repeats the bad value
or shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

__all__ = [
    "bootstrap_ci",
    "topk_accuracy",
    "chance_topk",
    "eer",
    "min_dcf",
    "linkability",
    "roc_auc",
    "regression_scores",
    "speaker_bootstrap_ci",
    "leakage_ci",
    "proportion_ci",
    "clopper_pearson",
    "CI_METHOD",
]

# Largest number of bootstrap indices materialised at once (int64: 80 MB).
_MAX_INDEX_BLOCK = 10_000_000


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    """Convert array-likes (including CPU torch tensors) to a numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, no import
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_1d_numeric(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a non-empty, finite, 1-D float array.

    float32 (and narrower floats, upcast to float32) stay float32; every other
    numeric dtype becomes float64.
    """
    arr = _to_numpy(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype.itemsize <= 4:
        arr = arr.astype(np.float32, copy=False)
    else:
        arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must be finite, got {int(bad.sum())} non-finite value(s), "
            f"first {name}[{i}]={arr[i].item()!r}"
        )
    return arr


def _check_binary(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a non-empty 1-D bool array (accepts bool or 0/1)."""
    arr = _to_numpy(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be bool or 0/1, got dtype {arr.dtype}")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must be bool or 0/1, got {name}[{i}]={arr[i].item()!r} "
            f"(values {np.unique(arr[bad])[:5].tolist()} are not allowed)"
        )
    return arr == 1


def _check_same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"arrays must have the same length, got lengths {lengths}")
    return next(iter(lengths.values()))


def _check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {name}={value!r}")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {rng}, got {name}={value!r}")
    return int(value)


def _check_alpha(alpha: float) -> float:
    if not (isinstance(alpha, (int, float, np.floating)) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be a float in (0, 1), got alpha={alpha!r}")
    return float(alpha)


def _check_pos_float(value: Any, name: str, *, open_unit: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    if ok:
        v = float(value)
        ok = np.isfinite(v) and (0.0 < v < 1.0 if open_unit else v > 0.0)
    if not ok:
        rng = "in (0, 1)" if open_unit else "finite and > 0"
        raise ValueError(f"{name} must be {rng}, got {name}={value!r}")
    return float(value)


# --------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------


def bootstrap_ci(
    stat: Callable[..., float],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    vectorized: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``stat(*arrays)``.

    Definition: draw ``n_boot`` index vectors ``I_b`` of length ``N`` uniformly
    with replacement from ``{0, ..., N-1}`` (``N`` = common first-axis length),
    resample every array with the same ``I_b`` (rows stay paired), and compute
    ``t_b = stat(arrays[0][I_b], arrays[1][I_b], ...)``. The interval is
    ``(q(alpha/2), q(1 - alpha/2))`` where ``q`` is ``np.quantile`` (linear
    interpolation) of ``t_1..t_B``.

    Parameters
    ----------
    stat : callable
        ``stat(*resampled_arrays) -> float``. With ``vectorized=True`` it
        receives arrays with an extra leading batch axis, shape ``(m, N, ...)``,
        and must return shape ``(m,)``.
    *arrays : ndarray
        One or more arrays of equal length ``N`` along axis 0.
    n_boot : int, default=1000
        Number of bootstrap resamples.
    alpha : float, default=0.05
        Two-sided level; ``0.05`` gives a 95% interval.
    seed : int, default=0
        Seed of ``np.random.default_rng``; the result is deterministic for a
        given ``(seed, N, n_boot)``.
    vectorized : bool, default=False
        Call ``stat`` once per block of resamples instead of once per resample.

    Returns
    -------
    (low, high) : tuple of float

    Examples
    --------
    >>> x = np.arange(100.0)
    >>> low, high = bootstrap_ci(np.mean, x, n_boot=200)
    >>> bool(low < 49.5 < high)
    True
    """
    if not callable(stat):
        raise ValueError(f"stat must be callable, got stat={stat!r}")
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array, got none")
    arrs = [_to_numpy(a) for a in arrays]
    for i, a in enumerate(arrs):
        if a.ndim == 0:
            raise ValueError(f"arrays[{i}] must have at least 1 dimension, got shape {a.shape}")
    n = _check_same_length(**{f"arrays[{i}]": a for i, a in enumerate(arrs)})
    if n == 0:
        raise ValueError(f"arrays must not be empty, got shape {arrs[0].shape}")
    n_boot = _check_int(n_boot, "n_boot", 1)
    alpha = _check_alpha(alpha)

    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, _MAX_INDEX_BLOCK // n))  # depends on (n, n_boot) only
    stats = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, block):
        m = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(m, n))
        if vectorized:
            out = np.asarray(stat(*(a[idx] for a in arrs)), dtype=np.float64)
            if out.shape != (m,):
                raise ValueError(
                    f"vectorized stat must return shape ({m},), got shape {out.shape}"
                )
            stats[start : start + m] = out
        else:
            for j in range(m):
                stats[start + j] = float(stat(*(a[idx[j]] for a in arrs)))
    bad = ~np.isfinite(stats)
    if bad.any():
        raise ValueError(
            f"stat returned a non-finite value on {int(bad.sum())} of {n_boot} "
            f"resamples (first: {stats[bad][0].item()!r})"
        )
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


# --------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-row top-k hit: is the true label among the ``k`` highest scores.

    Definition: row ``i`` is a hit iff
    ``#{c : s[i, c] > s[i, y_i]} + #{c > y_i : s[i, c] == s[i, y_i]} < k``,
    i.e. classes are ranked by score and ties are broken in favour of the
    larger class index (identical to ``sklearn.metrics.top_k_accuracy_score``,
    which ranks with a stable ascending argsort reversed). A constant score
    row therefore counts as a hit only for the ``k`` largest class indices,
    not for every class.

    Parameters
    ----------
    scores : ndarray of shape (N, C)
        Higher means more likely; finite.
    labels : ndarray of shape (N,)
        Integer class indices in ``[0, C)``.
    k : int
        ``1 <= k <= C``.

    Returns
    -------
    hits : ndarray of bool, shape (N,)

    Examples
    --------
    >>> s = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    >>> topk_accuracy(s, np.array([2, 2]), k=2).tolist()
    [True, False]
    """
    s = _to_numpy(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (N, C), got shape {s.shape}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must not be empty, got shape {s.shape}")
    if s.dtype == np.bool_ or not np.issubdtype(s.dtype, np.number):
        raise ValueError(f"scores must be numeric, got dtype {s.dtype}")
    if not np.isfinite(s).all():
        raise ValueError(
            f"scores must be finite, got {int((~np.isfinite(s)).sum())} non-finite "
            f"value(s) in shape {s.shape}"
        )
    y = _to_numpy(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.shape[0] != s.shape[0]:
        raise ValueError(
            f"labels and scores must have the same length, got labels shape "
            f"{y.shape} and scores shape {s.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    n, c = s.shape
    bad = (y < 0) | (y >= c)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"labels must be in [0, {c}), got labels[{i}]={y[i].item()!r}")
    k = _check_int(k, "k", 1, c)
    true_s = s[np.arange(n), y][:, None]
    above = (s > true_s).sum(axis=1)
    tied_after = ((s == true_s) & (np.arange(c)[None, :] > y[:, None])).sum(axis=1)
    return (above + tied_after) < k


def chance_topk(n_classes: int, k: int) -> float:
    """Top-k accuracy of a random guess: ``k / n_classes``.

    Parameters
    ----------
    n_classes : int
        Number of classes, ``>= 1``.
    k : int
        ``1 <= k <= n_classes``.

    Returns
    -------
    float

    Examples
    --------
    >>> chance_topk(40, 5)
    0.125
    """
    n_classes = _check_int(n_classes, "n_classes", 1)
    k = _check_int(k, "k", 1, n_classes)
    return k / n_classes


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Binary ROC AUC via the Mann-Whitney rank statistic (ties count 1/2).

    Definition: ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``,
    where ``R_pos`` is the sum of the average ranks (1-based, tied scores get
    the mean of their ranks) of the positive items among all scores. This
    equals ``P(s_pos > s_neg) + 0.5 P(s_pos == s_neg)`` over all pairs and
    ``sklearn.metrics.roc_auc_score`` (trapezoidal ROC).

    Parameters
    ----------
    scores : ndarray of shape (N,)
        Higher means more likely positive; finite.
    labels : ndarray of shape (N,)
        Bool or 0/1; 1 is the positive class. Both classes must be present.

    Returns
    -------
    float

    Examples
    --------
    >>> roc_auc(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0, 0, 1, 1]))
    0.875
    """
    s = _check_1d_numeric(scores, "scores").astype(np.float64, copy=False)
    y = _check_binary(labels, "labels")
    _check_same_length(scores=s, labels=y)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"roc_auc needs both classes, got n_pos={n_pos} and n_neg={n_neg}"
        )
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts, dtype=np.float64)
    avg_rank = ends - (counts - 1) / 2.0
    r_pos = avg_rank[inverse][y].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def regression_scores(
    y_true: np.ndarray, y_pred: np.ndarray, *, train_mean: float
) -> dict[str, float]:
    """MSE, MAE, R² of a regression probe and the MSE of the train-mean baseline.

    Definitions (``e = y_true - y_pred``, ``N`` items):

    - ``mse = mean(e**2)``; ``mae = mean(|e|)``;
    - ``r2 = 1 - sum(e**2) / sum((y_true - mean(y_true))**2)`` (the test-set
      mean, as ``sklearn.metrics.r2_score``); if the denominator is 0,
      ``r2 = 1.0`` when ``sum(e**2) == 0`` else ``0.0`` (sklearn's
      ``force_finite=True``);
    - ``baseline_mse = mean((y_true - train_mean)**2)``: the MSE of always
      predicting the mean of the *training* targets, the no-information
      baseline a probe must beat.

    Parameters
    ----------
    y_true, y_pred : ndarray of shape (N,)
        Finite.
    train_mean : float
        Mean of the training targets (keyword-only, required).

    Returns
    -------
    dict
        Keys ``mse``, ``mae``, ``r2``, ``baseline_mse`` (floats).

    Examples
    --------
    >>> r = regression_scores(np.array([1.0, 2, 3]), np.array([1.0, 2, 4]), train_mean=2.0)
    >>> [round(r[k], 4) for k in ("mse", "mae", "r2", "baseline_mse")]
    [0.3333, 0.3333, 0.5, 0.6667]
    """
    t = _check_1d_numeric(y_true, "y_true").astype(np.float64, copy=False)
    p = _check_1d_numeric(y_pred, "y_pred").astype(np.float64, copy=False)
    _check_same_length(y_true=t, y_pred=p)
    ok = isinstance(train_mean, (int, float, np.integer, np.floating)) and not isinstance(
        train_mean, (bool, np.bool_)
    )
    if not ok or not np.isfinite(float(train_mean)):
        raise ValueError(f"train_mean must be a finite float, got train_mean={train_mean!r}")
    e = t - p
    ss_res = float(np.sum(e * e))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot > 0.0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res == 0.0 else 0.0
    return {
        "mse": ss_res / t.size,
        "mae": float(np.mean(np.abs(e))),
        "r2": float(r2),
        "baseline_mse": float(np.mean((t - float(train_mean)) ** 2)),
    }


# --------------------------------------------------------------------------
# verification: EER, minDCF (speechbrain definitions), linkability
# --------------------------------------------------------------------------


def _verification_sweep(
    positive_scores: Any, negative_scores: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds and float32 miss / false-alarm rates of speechbrain's sweep.

    Returns ``(thresholds, p_miss, p_fa)``; ``thresholds`` are in the scores'
    dtype, the rates are float32 exactly as speechbrain computes them
    (``count.float() / n``).
    """
    pos = _check_1d_numeric(positive_scores, "positive_scores")
    neg = _check_1d_numeric(negative_scores, "negative_scores")
    dtype = np.result_type(pos, neg)
    pos = np.sort(pos.astype(dtype, copy=False))
    neg = np.sort(neg.astype(dtype, copy=False))
    merged = np.concatenate([pos, neg])
    merged.sort(kind="stable")  # two sorted runs: a linear merge
    keep = np.empty(merged.size, dtype=bool)
    keep[0] = True
    np.not_equal(merged[1:], merged[:-1], out=keep[1:])
    uniq = merged[keep]
    # Midpoint i lies in [uniq[i], uniq[i+1]] (also after rounding), so the
    # interleaving is the sorted concatenation speechbrain builds. No score
    # lies strictly between uniq[i] and uniq[i+1], so the counts at midpoint i
    # are those at uniq[i], or at uniq[i+1] if the midpoint rounded up to it.
    mids = (uniq[:-1] + uniq[1:]) / dtype.type(2)
    up = mids == uniq[1:]
    thresholds = np.empty(2 * uniq.size - 1, dtype=dtype)
    thresholds[0::2] = uniq
    thresholds[1::2] = mids
    n_miss = np.empty(thresholds.size, dtype=np.int64)
    n_miss[0::2] = np.searchsorted(pos, uniq, side="right")  # #{pos <= t}
    n_miss[1::2] = np.where(up, n_miss[2::2], n_miss[0:-1:2])
    n_le_neg = np.empty(thresholds.size, dtype=np.int64)
    n_le_neg[0::2] = np.searchsorted(neg, uniq, side="right")
    n_le_neg[1::2] = np.where(up, n_le_neg[2::2], n_le_neg[0:-1:2])
    n_fa = neg.size - n_le_neg  # #{neg > t}
    p_miss = n_miss.astype(np.float32) / np.float32(pos.size)
    p_fa = n_fa.astype(np.float32) / np.float32(neg.size)
    return thresholds, p_miss, p_fa


def eer(positive_scores: np.ndarray, negative_scores: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold, as ``speechbrain.utils.metric_stats.EER``.

    Definition (speechbrain 1.x): a trial is accepted iff ``score > t``.
    Candidate thresholds ``T`` are the sorted unique values ``u_1 < ... < u_M``
    of all scores together with the midpoints ``(u_i + u_{i+1}) / 2``. For each
    ``t`` in ``T``: ``FRR(t) = #{pos <= t} / n_pos`` and
    ``FAR(t) = #{neg > t} / n_neg``. The chosen ``t*`` minimises
    ``|FAR(t) - FRR(t)|`` (the first such threshold in ascending order) and
    ``EER = (FAR(t*) + FRR(t*)) / 2``; returns ``(EER, t*)``. FAR and FRR need
    not be equal at ``t*``; ``t`` never goes below the smallest score.

    Bit-for-bit compatibility: like speechbrain, the rates are float32
    (``count.float() / n``) and the scan compares the candidate's float32
    ``|FAR - FRR|`` with the incumbent's float64 one, so among thresholds with
    mathematically equal ``|FAR - FRR|`` a later one can win (rare: over
    20,000 small integer-valued score sets the EER differed from exact
    arithmetic in 0.3% and the threshold alone in 0.7%). This function reproduces that scan, so it returns
    the identical pair of floats as ``speechbrain.utils.metric_stats.EER``.
    Thresholds are in the scores' dtype (float16/float32 -> float32, anything
    else -> float64). Runs in O(n log n) with sorted scores and
    ``np.searchsorted`` instead of speechbrain's loop over thresholds.

    Parameters
    ----------
    positive_scores : ndarray of shape (n_pos,)
        Scores of target (same-speaker / mated) trials; finite.
    negative_scores : ndarray of shape (n_neg,)
        Scores of non-target trials; finite.

    Returns
    -------
    eer : float
        In [0, 1].
    threshold : float

    Examples
    --------
    >>> eer(np.array([0.6, 0.7, 0.8, 0.5]), np.array([0.4, 0.3, 0.2, 0.1]))
    (0.0, 0.4)
    """
    thresholds, frr, far = _verification_sweep(positive_scores, negative_scores)
    # speechbrain keeps the first minimum of a scan that compares the float32
    # |FAR - FRR| of the candidate with the float64 |FAR - FRR| of the
    # incumbent (both rates float32). Only indices with exact gap <= T, the
    # smallest float32 >= min gap, can take part after the first of them (any
    # other gap g > T has float32(g) >= T), so the scan runs over those only.
    gap32 = np.abs(far - frr)  # float32 arithmetic, as torch
    gap64 = np.abs(far.astype(np.float64) - frr.astype(np.float64))  # exact
    g_min = gap64.min()
    bound = np.float32(g_min)
    if bound < g_min:
        bound = np.nextafter(bound, np.float32(np.inf))
    candidates = np.flatnonzero(gap64 <= bound)
    best = 0
    for i in candidates:
        if i == 0 or gap32[i] < gap64[best]:
            best = int(i)
    value = (float(far[best]) + float(frr[best])) / 2
    return float(value), float(thresholds[best])


def min_dcf(
    positive_scores: np.ndarray,
    negative_scores: np.ndarray,
    *,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> tuple[float, float]:
    """Minimum detection cost and its threshold, as speechbrain's ``minDCF``.

    Definition (speechbrain 1.x): over the same thresholds ``T`` as :func:`eer`
    (sorted unique scores plus midpoints; accept iff ``score > t``),
    ``C_det(t) = c_miss * P_miss(t) * p_target + c_fa * P_fa(t) * (1 - p_target)``
    with ``P_miss(t) = #{pos <= t} / n_pos`` and ``P_fa(t) = #{neg > t} / n_neg``;
    returns ``(min_t C_det(t), first argmin t)``.

    NOT normalised: speechbrain does not divide by
    ``min(c_miss * p_target, c_fa * (1 - p_target))`` (NIST's normalised
    minDCF). With the defaults the normalised value is ``min_dcf / 0.01``.
    Rates and costs are computed in float32 like speechbrain, so the returned
    floats are identical to ``speechbrain.utils.metric_stats.minDCF``; runs in
    O(n log n) instead of its thresholds x scores matrix.

    Parameters
    ----------
    positive_scores : ndarray of shape (n_pos,)
        Target-trial scores; finite.
    negative_scores : ndarray of shape (n_neg,)
        Non-target-trial scores; finite.
    p_target : float, default=0.01
        Prior of a target trial, in (0, 1).
    c_miss : float, default=1.0
        Cost of a miss, > 0.
    c_fa : float, default=1.0
        Cost of a false alarm, > 0.

    Returns
    -------
    min_dcf : float
    threshold : float

    Examples
    --------
    >>> min_dcf(np.array([0.6, 0.7, 0.8, 0.5]), np.array([0.4, 0.3, 0.2, 0.1]))
    (0.0, 0.4)
    """
    p_target = _check_pos_float(p_target, "p_target", open_unit=True)
    c_miss = _check_pos_float(c_miss, "c_miss")
    c_fa = _check_pos_float(c_fa, "c_fa")
    thresholds, p_miss, p_fa = _verification_sweep(positive_scores, negative_scores)
    f32 = np.float32
    c_det = f32(c_miss) * p_miss * f32(p_target) + f32(c_fa) * p_fa * f32(1 - p_target)
    best = int(np.argmin(c_det))  # first minimum, as torch.min on CPU
    return float(c_det[best]), float(thresholds[best])


def linkability(
    mated_scores: np.ndarray,
    nonmated_scores: np.ndarray,
    *,
    omega: float = 1.0,
    n_bins: int | None = None,
    integration: str = "sum",
) -> tuple[float, dict[str, Any]]:
    """Global linkability ``D_sys`` (Gomez-Barrero et al. 2017, histogram estimate).

    Definition, following the reference code (Gomez-Barrero's
    ``unlinkability-metric`` and Maouche's ``anonymization_metrics`` used by the
    VoicePrivacy Challenge):

    - ``B = n_bins`` or, if None, ``min(floor(n_mated / 10), 100)``; ``B`` equal
      width bins over ``[min(all scores), max(all scores)]`` (``np.histogram``
      bins: half-open, the last one closed);
    - ``p_m(s)``, ``p_n(s)``: normalised histograms (densities) of the mated
      and non-mated scores; ``LR(s) = p_m(s) / p_n(s)``;
    - ``D(s) = 2 * omega * LR / (1 + omega * LR) - 1`` if ``omega * LR > 1``
      else 0; bins with ``p_n = 0 < p_m`` (LR infinite) get ``D = 1``; empty
      bins (0/0) get ``D = 0``;
    - ``integration="sum"`` (default): ``D_sys = sum_bins D(s) * P_m(bin)``,
      with ``P_m(bin)`` the fraction of mated scores in the bin, i.e. the exact
      integral of ``D(s) p_m(s)`` for the histogram density. Perfectly
      separated scores give exactly 1.
    - ``integration="trapz"``: ``D_sys = trapz(D * p_m, x=bin centres)``, what
      the reference code computes (``np.trapz``); it equals the "sum" value
      minus half the contributions of the first and last bins, so it is below
      1 even for perfectly separated scores.

    Parameters
    ----------
    mated_scores : ndarray of shape (n_mated,)
        Scores of mated (same-speaker) pairs; finite.
    nonmated_scores : ndarray of shape (n_nonmated,)
        Scores of non-mated pairs; finite.
    omega : float, default=1.0
        Prior ratio ``P(mated) / P(non-mated)``, > 0.
    n_bins : int or None, default=None
        Number of bins; the default needs ``n_mated >= 10``.
    integration : {"sum", "trapz"}, default="sum"

    Returns
    -------
    d_sys : float
        In [0, 1]. If all scores are equal the two distributions are the same
        point mass and ``d_sys = 0.0`` (one bin of zero width, densities NaN).
    extra : dict
        ``bin_edges`` (B + 1,), ``bin_centers`` (B,), ``D`` (B,) local
        linkability per bin, ``p_mated`` and ``p_nonmated`` (B,) densities,
        ``n_bins``, ``omega``, ``integration``.

    Examples
    --------
    >>> d, extra = linkability(np.linspace(0.6, 1, 20), np.linspace(0, 0.4, 20))
    >>> d, extra["n_bins"]
    (1.0, 2)
    """
    mated = _check_1d_numeric(mated_scores, "mated_scores").astype(np.float64, copy=False)
    nonmated = _check_1d_numeric(nonmated_scores, "nonmated_scores").astype(
        np.float64, copy=False
    )
    omega = _check_pos_float(omega, "omega")
    if integration not in ("sum", "trapz"):
        raise ValueError(
            f"integration must be 'sum' or 'trapz', got integration={integration!r}"
        )
    if n_bins is None:
        n_bins = min(mated.size // 10, 100)
        if n_bins < 1:
            raise ValueError(
                f"the default n_bins = min(n_mated // 10, 100) needs at least 10 mated "
                f"scores, got n_mated={mated.size}; pass n_bins explicitly"
            )
    else:
        n_bins = _check_int(n_bins, "n_bins", 1)
    lo = min(mated.min(), nonmated.min())
    hi = max(mated.max(), nonmated.max())
    if lo == hi:
        return 0.0, {
            "bin_edges": np.array([lo, hi]),
            "bin_centers": np.array([lo]),
            "D": np.zeros(1),
            "p_mated": np.array([np.nan]),
            "p_nonmated": np.array([np.nan]),
            "n_bins": 1,
            "omega": omega,
            "integration": integration,
        }
    edges = np.linspace(lo, hi, num=n_bins + 1, endpoint=True)
    centers = (edges[1:] + edges[:-1]) / 2
    p_m = np.histogram(mated, bins=edges, density=True)[0]
    p_n = np.histogram(nonmated, bins=edges, density=True)[0]
    lr = np.divide(p_m, p_n, out=np.ones_like(p_m), where=p_n != 0)
    d = np.where(omega * lr > 1, 2 * (omega * lr / (1 + omega * lr)) - 1, 0.0)
    d[(p_n == 0) & (p_m != 0)] = 1.0
    d[(p_n == 0) & (p_m == 0)] = 0.0
    f = d * p_m
    if integration == "sum":
        d_sys = float(np.sum(f * np.diff(edges)))
    else:
        d_sys = float(np.sum(np.diff(centers) * (f[1:] + f[:-1]) / 2))
    return d_sys, {
        "bin_edges": edges,
        "bin_centers": centers,
        "D": d,
        "p_mated": p_m,
        "p_nonmated": p_n,
        "n_bins": n_bins,
        "omega": omega,
        "integration": integration,
    }


CI_METHOD = ("speaker-clustered percentile bootstrap (test speakers drawn with replacement, within strata "
             "when given, every row of a drawn speaker kept; resamples where the statistic is undefined "
             "redrawn), widened where the statistic is a proportion to contain the exact Clopper-Pearson "
             "binomial interval, so no interval is zero-width")


def clopper_pearson(k: int, n: int, *, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided ``1 - alpha`` interval of a binomial proportion ``k / n``.

    ``low = Beta(alpha/2; k, n - k + 1)`` (0 when ``k = 0``) and ``high = Beta(1 - alpha/2;
    k + 1, n - k)`` (1 when ``k = n``): never zero-width for finite ``n``.

    Examples
    --------
    >>> low, high = clopper_pearson(20, 20)
    >>> round(low, 3), high
    (0.832, 1.0)
    """
    from scipy.stats import beta

    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"clopper_pearson needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got alpha={alpha!r}")
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


class DegenerateBootstrap(ValueError):
    """The speakers cannot be resampled in more than one way, so a speaker-clustered CI would be zero-width."""


def _groups(n_speakers: int, strata: np.ndarray | None) -> list[np.ndarray]:
    """Speaker indices per stratum (one group without strata)."""
    return [np.arange(n_speakers)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]


def _one_resample_only(groups: list[np.ndarray], min_distinct: int) -> bool:
    """True when every allowed speaker resample is the original (each stratum one speaker, or all must be distinct)."""
    return all(g.size == 1 for g in groups) or (len(groups) == 1 and groups[0].size == min_distinct)


def _speaker_bootstrap_values(stat: Callable[[np.ndarray], float], n_speakers: int, *,
                              strata: np.ndarray | None, n_boot: int, seed: int, min_distinct: int) -> np.ndarray:
    """``n_boot`` values of ``stat(counts)`` over speaker resamples (see :func:`speaker_bootstrap_ci`)."""
    if n_speakers < min_distinct:
        raise ValueError(f"speaker bootstrap needs >= {min_distinct} speakers, got n_speakers={n_speakers}")
    groups = _groups(n_speakers, strata)
    rng = np.random.default_rng(seed)
    values: list[float] = []
    attempts = 0
    while len(values) < n_boot:
        attempts += 1
        if attempts > 20 * n_boot:
            raise ValueError(f"speaker bootstrap: statistic undefined on {attempts - 1 - len(values)} of "
                             f"{attempts - 1} resamples of {n_speakers} speakers")
        drawn = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        counts = np.bincount(drawn, minlength=n_speakers)
        if np.count_nonzero(counts) < min_distinct:
            continue
        value = float(stat(counts))
        if np.isfinite(value):
            values.append(value)
    return np.asarray(values)


def speaker_bootstrap_ci(stat: Callable[[np.ndarray], float], n_speakers: int, *,
                         strata: np.ndarray | None = None, n_boot: int = 1000, alpha: float = 0.05,
                         seed: int = 0, min_distinct: int = 2) -> tuple[float, float]:
    """Percentile bootstrap CI of a statistic, resampling speakers rather than rows.

    Utterances of one speaker are correlated, so the resampling unit is the speaker: each
    resample draws ``n_speakers`` speakers with replacement (with ``strata``, as many speakers
    from each stratum as it holds, so e.g. both genders stay present) and calls
    ``stat(counts)`` with ``counts[s]`` the multiplicity of speaker ``s``; the statistic
    weights speaker ``s``'s rows by ``counts[s]``. Resamples with fewer than ``min_distinct``
    distinct speakers, or where ``stat`` returns a non-finite value (undefined, e.g. a single
    class), are redrawn. The interval is ``(q(alpha/2), q(1 - alpha/2))`` of the ``n_boot``
    values with ``np.quantile`` (linear interpolation). Prefer :func:`leakage_ci`, which adds
    the exact binomial floor for proportions.

    Parameters
    ----------
    stat : callable
        ``stat(counts: ndarray of int, shape (n_speakers,)) -> float``.
    n_speakers : int
        Number of speakers (``>= min_distinct``).
    strata : ndarray of shape (n_speakers,), default=None
        Stratum label of each speaker.
    n_boot : int, default=1000
    alpha : float, default=0.05
        Two-sided level; 0.05 gives a 95% interval.
    seed : int, default=0
    min_distinct : int, default=2

    Returns
    -------
    (low, high) : tuple of float
    """
    return leakage_ci(stat, n_speakers, strata=strata, n_boot=n_boot, alphas=(alpha,), seed=seed,
                      min_distinct=min_distinct)[0]


def leakage_ci(stat: Callable[[np.ndarray], float], n_speakers: int, *, binomial: tuple[int, int] | None = None,
               strata: np.ndarray | None = None, n_boot: int = 1000, alphas: Sequence[float] = (0.05,),
               seed: int = 0, min_distinct: int = 2) -> list[tuple[float, float]]:
    """The project's one confidence interval for a leakage figure, at each level ``1 - alpha``.

    A speaker-clustered percentile bootstrap (:func:`speaker_bootstrap_ci`'s resampling; the
    same resamples serve every level) and, for a proportion of ``binomial = (k, n)`` outcomes
    (top-1 hits, EER as the error rate of ``n`` target trials), its union with the exact
    Clopper-Pearson interval (:func:`clopper_pearson`) at the same level, so a figure of 100%
    on finite data never gets the zero-width CI ``[100, 100]``. Pass ``alpha / m`` to get an
    interval that stays valid for the best of ``m`` compared figures (Bonferroni). A statistic
    that is not a proportion, on speakers that can be resampled in only one way (two speakers
    that must both be drawn, or one speaker per stratum), raises :class:`DegenerateBootstrap`
    rather than return a zero-width interval.

    Parameters
    ----------
    stat, n_speakers, strata, n_boot, seed, min_distinct
        As :func:`speaker_bootstrap_ci`.
    binomial : (int, int) or None, default=None
        Successes and trials of a proportion; None for statistics that are not proportions.
    alphas : sequence of float, default=(0.05,)

    Returns
    -------
    list of (low, high)
        One interval per ``alpha``.

    Examples
    --------
    >>> hits = np.ones(20)  # 2 speakers x 10 test utterances, all identified
    >>> spk = np.repeat([0, 1], 10)
    >>> ((low, high),) = leakage_ci(lambda c: np.average(hits, weights=c[spk]), 2, binomial=(20, 20))
    >>> bool(low < 1.0 == high)
    True
    """
    for a in alphas:
        if not 0 < a < 1:
            raise ValueError(f"alpha must be in (0, 1), got alpha={a!r}")
    if binomial is None and _one_resample_only(_groups(n_speakers, strata), min_distinct):
        per = "" if strata is None else f" in {np.unique(strata).size} strata"
        raise DegenerateBootstrap(f"{n_speakers} test speakers{per} can be resampled in only one way, so a "
                                  "speaker-clustered CI would be zero-width: at least 3 test speakers (2 per "
                                  "stratum) are needed")
    values = _speaker_bootstrap_values(stat, n_speakers, strata=strata, n_boot=n_boot, seed=seed,
                                       min_distinct=min_distinct)
    out = []
    for a in alphas:
        low, high = (float(q) for q in np.quantile(values, [a / 2, 1 - a / 2]))
        if binomial is not None:
            cl, ch = clopper_pearson(*binomial, alpha=a)
            low, high = min(low, cl), max(high, ch)
        out.append((low, high))
    return out


def proportion_ci(hits: np.ndarray, clusters: np.ndarray, *, n_boot: int = 1000,
                  alphas: Sequence[float] = (0.05,), seed: int = 0) -> list[tuple[float, float]]:
    """:func:`leakage_ci` of the mean of per-row ``hits`` (0/1), rows clustered by ``clusters`` (speakers)."""
    h = _check_binary(hits, "hits").astype(np.float64)
    _, idx = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = int(idx.max()) + 1 if idx.size else 0
    min_distinct = 1 if n_clusters < 2 else 2
    return leakage_ci(lambda counts: float(np.average(h, weights=counts[idx])), n_clusters,
                      binomial=(int(h.sum()), int(h.size)), n_boot=n_boot, alphas=alphas, seed=seed,
                      min_distinct=min_distinct)


def selection_alphas(n_comparisons: int, alpha: float = 0.05) -> tuple[float, ...]:
    """``(alpha,)``, plus the Bonferroni level ``alpha / m`` when ``m = n_comparisons > 1`` figures are compared."""
    return (alpha,) if n_comparisons <= 1 else (alpha, alpha / n_comparisons)


def closed_set_metrics(proba: np.ndarray, classes: np.ndarray, y_true: np.ndarray, *, n_boot: int = 1000,
                       seed: int = 0, n_comparisons: int = 1) -> dict:
    """Top-1/top-5 accuracy with :func:`proportion_ci` 95% CIs (clustered by test speaker) and macro-F1.

    With ``n_comparisons = m > 1`` the top-1 also gets ``selection_ci95``, the interval at level
    ``1 - 0.05 / m``: valid for the best of ``m`` compared attackers x layers.
    """
    from sklearn.metrics import f1_score

    label_pos = {c: i for i, c in enumerate(classes)}
    missing = sorted(set(y_true.tolist()) - set(label_pos))
    if missing:
        raise ValueError(f"closed-set test speakers never seen in training: {missing[:5]}")
    y = np.array([label_pos[s] for s in y_true])
    k5 = min(5, len(classes))
    alphas = selection_alphas(n_comparisons)
    hits1, hits5 = topk_accuracy(proba, y, 1), topk_accuracy(proba, y, k5)
    ci1 = proportion_ci(hits1, y_true, n_boot=n_boot, alphas=alphas, seed=seed)
    (ci5,) = proportion_ci(hits5, y_true, n_boot=n_boot, seed=seed)
    pred = classes[np.argmax(proba, axis=1)]
    out = {"top1": float(hits1.mean()), "ci95": list(ci1[0]), "top5": float(hits5.mean()), "top5_ci95": list(ci5),
           "top5_k": k5, "macro_f1": float(f1_score(y_true, pred, average="macro")),
           "n_speakers": int(len(classes)), "n_test": int(y.size), "n_test_speakers": int(np.unique(y_true).size),
           "chance_top5": chance_topk(len(classes), k5), "ci_method": CI_METHOD}
    if len(ci1) > 1:
        out["selection_ci95"] = list(ci1[1])
        out["n_comparisons"] = int(n_comparisons)
    return out

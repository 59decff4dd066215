"""Judging whether an attacker was still gaining when its training data, or its epochs, ran out.

Every attack result carries ``learning_curve`` rows ``{"fraction", <metric>, ...}``: the
attacker's figure refitted on 25% and 50% of its training data, and the figure at 100%. A figure
that still rises (or, for an EER, still falls) by more than :data:`STILL_LEARNING_GAIN` over the
last step says that a better-resourced attacker would read more: the measured leakage is a lower
bound, and a defense judged by it looks stronger than it is. The run records the verdict next to
each headline figure (``still_learning``) and the report says so; this module only judges, it
renders nothing.
"""

from __future__ import annotations

from typing import Any

#: Gain over the last step of the curve (half to all the data, on the metric's own scale: 5 points of a
#: proportion) above which an attacker counts as still learning.
STILL_LEARNING_GAIN = 0.05

#: Curve keys that describe the point rather than the figure measured there.
_POINT_KEYS = frozenset({"fraction", "n_train_speakers"})

#: Figures where lower means more leakage (verification error rates); every other figure leaks more as it rises.
LOWER_IS_LEAKIER = frozenset({"eer", "min_dcf", "min_dcf_norm"})


def still_learning(result: Any, margin: float = STILL_LEARNING_GAIN) -> dict[str, Any] | None:
    """The last step of ``result``'s data learning curve when it gains more than ``margin`` towards leakage, else None.

    The curve's figure is the one key of its rows besides the point's own (``fraction``,
    ``n_train_speakers``): ``top1``, ``eer``, ``accuracy``, ``r2``. Returns ``metric``,
    ``fractions`` and ``values`` (the last two points), ``gain`` (towards more leakage) and
    ``margin``. Curves over epochs (no ``fraction``), and results without two points, are not
    judged (None). It compares two points, it is not a test: on a small test set a figure at
    chance can jitter past the margin, which errs towards caution.
    """
    if not isinstance(result, dict):
        return None
    rows = [row for row in result.get("learning_curve") or []
            if isinstance(row, dict) and isinstance(row.get("fraction"), (int, float))]
    figures = {key for row in rows for key in row} - _POINT_KEYS
    if len(figures) != 1:
        return None
    metric = figures.pop()
    curve = sorted((row for row in rows if isinstance(row.get(metric), (int, float))), key=lambda row: row["fraction"])
    if len(curve) < 2:
        return None
    prev, last = curve[-2], curve[-1]
    gain = (last[metric] - prev[metric]) * (-1.0 if metric in LOWER_IS_LEAKIER else 1.0)
    if not gain > margin:
        return None
    return {"metric": metric, "fractions": [prev["fraction"], last["fraction"]],
            "values": [prev[metric], last[metric]], "gain": gain, "margin": margin}


def epoch_capped(result: Any) -> dict[str, Any] | None:
    """``epochs`` and ``best_epoch`` of ``result``'s network when it stopped at its epoch cap, else None.

    A network trained epoch by epoch stops early once validation stops improving; one that ran
    its last allowed epoch instead may still have been improving, so its figure may understate
    leakage. Such networks record ``epochs`` and ``max_epochs`` in their budget, with
    ``converged`` saying whether the early stop fired (frame speaker ID, inversion decoder), or
    an ``encoder`` record with its own ``converged`` (frame verification, whose result-level
    ``converged`` also asks for a flat curve). Other attackers (closed-form, solver-based) are
    not judged here (None).
    """
    if not isinstance(result, dict) or not isinstance(result.get("budget"), dict):
        return None
    budget = result["budget"]
    encoder = budget.get("encoder")
    if isinstance(encoder, dict) and isinstance(encoder.get("epochs"), int):
        net, stopped = encoder, encoder.get("converged")
    elif isinstance(budget.get("epochs"), int) and isinstance(budget.get("max_epochs"), int):
        net, stopped = budget, result.get("converged")
    else:
        return None
    if stopped is not False:
        return None
    return {"epochs": net["epochs"], "best_epoch": net.get("best_epoch")}


__all__ = ["LOWER_IS_LEAKIER", "STILL_LEARNING_GAIN", "epoch_capped", "still_learning"]

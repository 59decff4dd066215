"""The report's training-curves figure: drawn from results alone, and it names every network stopped at its cap."""

from __future__ import annotations

from pathlib import Path

from audit.report.build import _curve_cell
from audit.report.figures import _training_figure


def _epochs(values: list[float], metric: str) -> list[dict]:
    return [{"epoch": i + 1, "train_loss": 9.0, metric: v} for i, v in enumerate(values)]


def _layer(index: int, *, decoder_stopped: bool, encoder_stopped: bool) -> dict:
    decoder = {"attacker": "frame", "converged": decoder_stopped,
               "budget": {"epochs": 3, "best_epoch": 2, "max_epochs": 3},
               "learning_curve": _epochs([0.5, 0.3, 0.31], "val_loss")}
    speaker = {"attacker": "frame-ecapa", "converged": True,
               "budget": {"epochs": 2, "max_epochs": 8, "best_epoch": 1,
                          "history": _epochs([0.9, 0.8], "val_top1")}}
    verifier = {"attacker": "frame", "converged": False,
                "budget": {"encoder": {"epochs": 3, "best_epoch": 3, "converged": encoder_stopped,
                                       "history": _epochs([0.2, 0.4, 0.6], "val_top1")}}}
    return {"index": index, "attacks": {"inversion": {"frame": decoder},
                                        "speaker_id": {"attackers": {"frame": speaker}},
                                        "verification": {"scorers": {"frame": verifier}}}}


def test_capped_and_early_stopped_networks_are_told_apart(tmp_path: Path) -> None:
    results = {"layers": [_layer(1, decoder_stopped=True, encoder_stopped=False),
                          _layer(4, decoder_stopped=False, encoder_stopped=True),
                          {"index": 7, "attacks": {"inversion": {"frame": {"skipped": "too few frames"}}}}]}
    (figure,) = _training_figure(results, tmp_path)
    assert (tmp_path / figure.file).stat().st_size > 5000 and figure.topic == "methodology"
    early, capped = figure.alt.split("Stopped at their epoch cap")
    assert "L1 inversion decoder (best epoch 2 of 3)" in early and "L4 inversion decoder" in capped
    assert "L1 frame verification encoder (best epoch 3 of 3)" in capped and "L4 frame verification encoder" in early
    assert "L1 frame speaker-ID network (best epoch 1 of 2)" in early and "L7" not in figure.alt
    assert "of 6 networks" in figure.alt


def test_no_trained_network_draws_no_figure(tmp_path: Path) -> None:
    pooled_only = {"layers": [{"index": 0, "attacks": {"speaker_id": {"attackers": {"logreg": {"converged": True}}}}}]}
    assert _training_figure(pooled_only, tmp_path) == []
    assert not (tmp_path / "training_curves.png").exists()


def test_budget_table_reads_a_per_epoch_curve_on_its_validation_metric() -> None:
    cell = _curve_cell(_epochs([0.5, 0.3, 0.31, 0.29, 0.28, 0.27], "val_loss"))
    assert cell.startswith("val_loss 1: 0.5 / 2: 0.3") and "(6 epochs)" in cell
    assert _curve_cell([{"fraction": 0.5, "top1": 0.4}, {"fraction": 1.0, "top1": 0.6}]) == "top1 0.5: 0.4 / 1.0: 0.6"

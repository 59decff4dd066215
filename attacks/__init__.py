"""Attacks on speech embeddings, one family per module, registered by name.

Each family module holds its attackers (estimator contract: ``fit(train: EmbeddingSet) -> self``,
``evaluate(test: EmbeddingSet) -> AttackResult``), a settings dataclass (its TOML section) and a
``run_<family>(view, settings, *, seed, frame_rate) -> dict`` that attacks one layer. Adding a
family means one new file plus one line in :data:`LAYER_ATTACKS` and a settings field in
``audit/config.py``.
"""

from attacks.attributes import run_attributes
from attacks.inversion import preflight_inversion, run_inversion
from attacks.speaker_id import run_speaker_id
from attacks.verification import run_verification

LAYER_ATTACKS = {"speaker_id": run_speaker_id, "verification": run_verification, "attributes": run_attributes,
                 "inversion": run_inversion}
#: Per-family checks run before extraction (models a family needs besides the audited one).
PREFLIGHT = {"inversion": preflight_inversion}
#: Families an audit runs unless its config names others. Inversion trains a decoder per layer and
#: runs ASR/speaker judges on vocoded audio, so it is opted into with ``attacks = [..., "inversion"]``.
DEFAULT_ATTACKS = ("speaker_id", "verification", "attributes")

__all__ = ["DEFAULT_ATTACKS", "LAYER_ATTACKS", "PREFLIGHT"]

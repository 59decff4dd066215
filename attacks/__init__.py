"""Attacks on speech embeddings, one family per module, registered by name.

A new attacker is one file with a class following the estimator contract
(``fit(train: EmbeddingSet) -> self``, ``evaluate(test: EmbeddingSet) -> AttackResult``)
plus one line in the matching registry below.
"""

from attacks.speaker_id import LogisticSpeakerID, MLPSpeakerID

SPEAKER_ID_ATTACKERS = {"logreg": LogisticSpeakerID, "mlp": MLPSpeakerID}

__all__ = ["SPEAKER_ID_ATTACKERS", "LogisticSpeakerID", "MLPSpeakerID"]

"""Personal data in results: which fields hold it, and what a redacted report does with each kind.

Threat: a report handed on (to a reviewer, a vendor, a public issue) must not name the people of
the audited corpus. Contract: personal data is marked where it is produced. Each attack family
declares, in its registry entry (``AttackFamily.personal``), the fields of its per-layer result
that hold personal data, each as a :class:`PersonalField`: a dotted path and one of the
:data:`KINDS`. The run's own fields (splits, skipped audio, the utility probe's examples) are
declared once in :mod:`audit.report.redact`, which applies every declaration and nothing else: a
field nobody declared is kept (absolute paths cut), so a family that produces ids, transcripts or
recordings must declare them.

Paths are matched as :meth:`audit.measures.Measure.matches` matches a measure: ``*`` stands for
one key, and a list's items are keyed by their index (``frame.examples.*.utt_id``). A declared
field whose value is a list holds one such value per item.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What a redacted report does with a field: ``hash`` replaces each id by a salted hash (stable within
#: one report, so the same speaker reads the same everywhere); ``remove`` drops the field; ``leave_out``
#: drops the field and the file it names, from every file list of the results and from the report folder.
ACTIONS = ("hash", "remove", "leave_out")


@dataclass(frozen=True)
class PersonalKind:
    """One kind of personal data: its name, what redaction does to it (one of :data:`ACTIONS`), and why."""

    name: str
    action: str
    description: str


#: Every kind of personal data a field may be declared as, with what a redacted report does to it.
KINDS: dict[str, PersonalKind] = {k.name: k for k in (
    PersonalKind("speaker_id", "hash", "a speaker id (or a list of them): replaced by its salted hash"),
    PersonalKind("utterance_id", "hash", "an utterance id (or a list of them): replaced by its salted hash"),
    PersonalKind("transcript", "remove", "what someone said: a reference transcript, or an ASR hypothesis of their "
                                         "speech or of its reconstruction; removed"),
    PersonalKind("audio_file", "leave_out", "a file (relative to the run folder) of someone's recorded voice: the "
                                            "original or its vocoder copy; left out of the results and the report "
                                            "folder. Reconstructions from the embeddings are not declared: they are "
                                            "the finding, and stay (under names with the ids hashed)"),
)}


@dataclass(frozen=True)
class PersonalField:
    """A field of a result that holds personal data: ``pattern`` (dotted, ``*`` for one key) and ``kind``.

    Parameters
    ----------
    pattern : str
        Dotted path below the family's per-layer result (or, for the run's own fields, below
        the results), ``*`` matching one key or list index: ``frame.examples.*.speaker``.
    kind : str
        One of :data:`KINDS`.

    Examples
    --------
    >>> PersonalField("frame.examples.*.utt_id", "utterance_id").matches("frame.examples.0.utt_id")
    True
    """

    pattern: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"personal field {self.pattern!r}: kind={self.kind!r} (known: {', '.join(KINDS)})")
        if not isinstance(self.pattern, str) or not all(self.pattern.split(".")):
            raise ValueError(f"personal field pattern={self.pattern!r}: expected dotted keys, '*' for any one key")

    @property
    def action(self) -> str:
        """What a redacted report does with the field (see :data:`ACTIONS`)."""
        return KINDS[self.kind].action

    def matches(self, path: str) -> bool:
        """True when the dotted ``path`` is an instance of this field's pattern."""
        want, got = self.pattern.split("."), path.split(".")
        return len(want) == len(got) and all(w in ("*", g) for w, g in zip(want, got))


__all__ = ["ACTIONS", "KINDS", "PersonalField", "PersonalKind"]

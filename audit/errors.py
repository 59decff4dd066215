"""User-facing errors.

Every error a user can cause (bad audio, bad config, unknown model, ...) is a
:class:`SpeechAuditError`; the CLI prints its message on one line and exits 2,
so messages must name the file, key or setting at fault and say what is wrong.
"""


class SpeechAuditError(Exception):
    """Base class of errors caused by input, configuration or environment."""


class AudioError(SpeechAuditError):
    """An audio file is unreadable, empty, silent, non-finite or implausible."""


class CorpusError(SpeechAuditError):
    """A corpus specification, manifest row or split request is invalid."""


class ModelLoadError(SpeechAuditError):
    """A model specification cannot be resolved or its weights cannot be loaded."""


class ConfigError(SpeechAuditError):
    """A configuration key or value is invalid."""


class StoreError(SpeechAuditError):
    """The embedding store on disk is inconsistent or cannot be written."""


class OutputError(SpeechAuditError):
    """A report, plot or listenable example cannot be written (disk full, no permission)."""

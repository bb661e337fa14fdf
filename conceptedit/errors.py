"""One exception family, so the CLI and the demo can show a single clear line for any user error."""

from __future__ import annotations


class ConceptEditError(Exception):
    """Base class: the message says what was wrong and what to do, on one line: line breaks that a
    user's input brings into a message (a path or a prompt with a newline) are shown escaped."""

    def __str__(self) -> str:
        return _one_line(super().__str__())


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class UnknownPluginError(ConceptEditError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return _one_line(str(self.args[0])) if self.args else ""


class BrokenPluginError(ConceptEditError):
    pass


class DuplicateNameError(ConceptEditError, ValueError):
    """Two different things registered under one name, in any registry (the message names both)."""


class ConfigError(ConceptEditError, ValueError):
    pass


class RequestError(ConceptEditError, ValueError):
    pass


class UnsupportedModelError(ConceptEditError):
    pass


class ModelLoadError(ConceptEditError):
    pass


class ArtifactError(ConceptEditError):
    """An Edit folder is missing, corrupted, tampered with or made for another base model."""


class ModelMismatchError(ArtifactError):
    pass


class ArtifactWriteError(ArtifactError, OSError):
    """Saving an artifact failed (disk full, permissions); an earlier artifact at the path is unchanged."""


class SAEConfigError(ConfigError):
    """An SAE's ``cfg.json`` is malformed: missing or unknown keys, unknown architecture, bad values."""


class SAEShapeError(ArtifactError):
    """An SAE's weights file does not match the architecture and sizes its ``cfg.json`` declares."""

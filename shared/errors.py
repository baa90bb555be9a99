"""Lineguard's one exception family.

Every error the project raises on purpose derives from ``LineguardError``, so a command catches one
type and prints one clear line (``services/cli.py``). ``reason`` is a short machine-readable code
(for dead letters, metrics and refusals); ``str(error)`` is the sentence for a human.

Subclasses live here when several packages raise or catch them; a service's own failure kinds
(PLC, VLM) subclass ``LineguardError`` in that service.
"""

from __future__ import annotations


class LineguardError(Exception):
    """The root of every deliberate Lineguard error."""

    default_reason = "error"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason


class ConfigError(LineguardError, ValueError):
    """Invalid configuration: settings, command-line values or a config file."""

    default_reason = "invalid_config"


class DatasetError(LineguardError, ValueError):
    """A data folder that is not in the expected layout."""

    default_reason = "bad_dataset"


class BackboneError(LineguardError, ValueError):
    """Unknown backbone, missing or unusable weights."""

    default_reason = "bad_backbone"


class ArtifactError(LineguardError, ValueError):
    """A model directory that is missing, tampered with or of an incompatible format."""

    default_reason = "bad_artifact"


class ImageError(LineguardError, ValueError):
    """An image that cannot be used.

    Reasons: ``empty``, ``corrupt``, ``too_large``, ``unsupported_format``, ``bad_dimensions``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}", reason=reason)
        self.detail = detail


class ClaimCheckError(ImageError):
    """A claim-checked frame that cannot be had from the claim-check store (``shared/frames_store.py``).

    An image that cannot be used, so every reader handles it where it handles a bad image. Reasons:
    ``no_claim_store`` (a reference, and no store configured), ``ref_outside_store`` (a reference to
    anywhere but the configured store's claim checks), ``too_large`` (a declared size over the
    reader's limit), ``frame_missing``, ``frame_size_mismatch``, ``frame_hash_mismatch`` (the stored
    bytes are not the ones referred to), ``store_unavailable`` (the store did not answer).
    """


class MessageError(LineguardError, ValueError):
    """A message that cannot be encoded or decoded (reasons: see ``shared.messages.codec``)."""

    def __init__(self, reason: str, detail: str, field: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}", reason=reason)
        self.detail = detail
        self.field = field


class BrokerError(LineguardError, RuntimeError):
    """The local broker could not be started, stopped or found; the message says what to do."""

    default_reason = "broker"


class ModelRefused(LineguardError, ValueError):
    """A model that must not serve: unreadable, tampered, unsigned or inconsistent."""

    default_reason = "model_refused"

"""TLS for Lineguard's outgoing HTTPS (the explainer's VLM calls, the alerts' webhook posts)."""

from __future__ import annotations

import ssl
from pathlib import Path

from shared.errors import ConfigError


def client_context(ca_file: Path | None, setting: str) -> ssl.SSLContext:
    """Certificate and host name verification always on; ``ca_file`` (the value of ``setting``,
    named in the error) replaces the system CAs."""
    if ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{setting}: cannot use the CA file {ca_file}: {exc}") from None

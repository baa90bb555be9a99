"""Client-side Kafka security: the TLS context, the SASL credentials, and a clear word when refused.

``client_security(settings)`` is what the one client wrapper (``shared.kafka.client``) adds to every
producer, consumer and admin client: the protocol, an ``ssl.SSLContext`` that verifies the broker
(chain and hostname) and may present a client certificate, and the SASL username and password. The
password and key passphrase are read from their files each time a client is made (so a new client
picks up a rotated password), are never logged, and never leave this module except to aiokafka.

aiokafka reports a refused connection as "Unable to bootstrap"; ``explain_refusal`` connects once
more, alone, and says what went wrong (untrusted certificate, wrong password, TLS or SASL expected)
and which setting to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

from shared.errors import ConfigError, LineguardError
from shared.settings import KafkaSettings, Settings

_VAR = "LINEGUARD_KAFKA__"
_PROBE_TIMEOUT_S = 10.0


class KafkaAccessError(LineguardError):
    """The cluster could not be reached or refused this client (TLS, authentication); the message
    says which and what to check. Never contains a secret."""

    default_reason = "kafka_access"


def read_secret(path: Path, variable: str) -> str:
    """The secret in ``path`` (one line; the trailing newline dropped). A missing, unreadable or empty
    file is a ``ConfigError`` naming the variable, never showing any content."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{variable}={path}: cannot read it ({exc.strerror or type(exc).__name__})"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{variable}={path}: not a UTF-8 text file") from None
    secret = text.rstrip("\r\n")
    if not secret.strip():
        raise ConfigError(f"{variable}={path}: the file is empty")
    return secret


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """A client TLS context: TLS 1.2 or newer, the broker's chain verified against the CA file (else
    the system's CAs), its hostname checked unless turned off, and the client certificate if set."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(kafka.ssl_ca_file) if kafka.ssl_ca_file else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{_VAR}SSL_CA_FILE={kafka.ssl_ca_file}: not a readable PEM CA bundle ({exc})"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = kafka.ssl_check_hostname  # the chain is verified either way
    if kafka.ssl_cert_file is not None:
        password = (
            read_secret(kafka.ssl_key_password_file, f"{_VAR}SSL_KEY_PASSWORD_FILE")
            if kafka.ssl_key_password_file is not None
            else None
        )
        try:
            context.load_cert_chain(
                str(kafka.ssl_cert_file),
                str(kafka.ssl_key_file) if kafka.ssl_key_file is not None else None,
                password=password,
            )
        except (OSError, ssl.SSLError) as exc:
            # The ssl module's message names the problem (no such file, key mismatch, bad password)
            # and never the key itself.
            raise ConfigError(
                f"{_VAR}SSL_CERT_FILE={kafka.ssl_cert_file} / {_VAR}SSL_KEY_FILE={kafka.ssl_key_file}: "
                f"cannot load the client certificate and key ({exc})"
            ) from None
    return context


def client_security(settings: Settings) -> dict[str, Any]:
    """The aiokafka keyword arguments that secure a client as the settings say."""
    kafka = settings.kafka
    config: dict[str, Any] = {"security_protocol": kafka.security_protocol.value}
    if kafka.security_protocol.uses_tls:
        config["ssl_context"] = ssl_context(kafka)
    if kafka.security_protocol.uses_sasl:
        assert kafka.sasl_username is not None and kafka.sasl_password_file is not None  # validated
        config["sasl_mechanism"] = kafka.sasl_mechanism.value
        config["sasl_plain_username"] = kafka.sasl_username
        config["sasl_plain_password"] = read_secret(kafka.sasl_password_file, f"{_VAR}SASL_PASSWORD_FILE")
    return config


def who(settings: Settings) -> str:
    """The client's identity and transport, for messages: ``user camera over SASL_SSL (SCRAM-SHA-512)``."""
    kafka = settings.kafka
    if kafka.security_protocol.uses_sasl:
        return f"user {kafka.sasl_username} over {kafka.security_protocol} ({kafka.sasl_mechanism})"
    if kafka.ssl_cert_file is not None:
        return f"the certificate {kafka.ssl_cert_file} over {kafka.security_protocol}"
    return f"an anonymous client over {kafka.security_protocol}"


async def access_error(settings: Settings, cause: BaseException) -> KafkaAccessError:
    """A ``KafkaAccessError`` for a client that could not start: what the broker said, and why."""
    why = await explain_refusal(settings)
    return KafkaAccessError(
        f"cannot use Kafka at {settings.bootstrap} as {who(settings)}: {why or cause}",
        reason="kafka_access",
    )


async def explain_refusal(settings: Settings) -> str | None:
    """Connect once to the first bootstrap server as the client would and say what fails, or None
    when that connection works (the failure was elsewhere or passed)."""
    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError
    from aiokafka.protocol.metadata import MetadataRequest

    host, port = _first_server(settings.bootstrap)
    kafka = settings.kafka
    try:
        security = client_security(settings)
    except ConfigError as exc:
        return str(exc)
    try:
        conn = await create_conn(host, port, request_timeout_ms=int(_PROBE_TIMEOUT_S * 1000), **security)
    except ssl.SSLCertVerificationError as exc:
        trusted = f"{_VAR}SSL_CA_FILE={kafka.ssl_ca_file}" if kafka.ssl_ca_file else "the system's CAs"
        if "hostname" in (exc.verify_message or "").lower() or "IP address mismatch" in str(exc):
            return (
                f"the broker's certificate does not name {host} ({exc.verify_message}); connect by a name "
                f"in its certificate or, only if you must, set {_VAR}SSL_CHECK_HOSTNAME=false"
            )
        return f"the broker's certificate is not trusted by {trusted} ({exc.verify_message})"
    except ssl.SSLError as exc:
        return (
            f"the TLS handshake failed ({exc.reason or exc}); does the listener at {host}:{port} speak TLS?"
        )
    except SaslAuthenticationFailed as exc:
        return (
            f"the broker refused the credentials of user {kafka.sasl_username} ({exc}); check "
            f"{_VAR}SASL_PASSWORD_FILE and {_VAR}SASL_MECHANISM"
        )
    except UnsupportedSaslMechanismError as exc:
        return f"{exc}; set {_VAR}SASL_MECHANISM to one of them"
    except ConnectionRefusedError:
        return f"nothing accepts connections at {host}:{port}; is the broker running?"
    except (TimeoutError, OSError, KafkaError) as exc:
        failure = str(exc) if isinstance(exc, KafkaError) else f"{type(exc).__name__}: {exc}"
        if not kafka.security_protocol.uses_tls and await _speaks_tls(host, port):
            return (
                f"the listener at {host}:{port} speaks TLS but {_VAR}SECURITY_PROTOCOL="
                f"{kafka.security_protocol}; set it to SASL_SSL (or SSL) with the credentials it needs"
            )
        if kafka.security_protocol.uses_tls and kafka.ssl_cert_file is None:
            # With TLS 1.3 a server that wants a client certificate refuses after the handshake.
            return (
                f"the broker at {host}:{port} closed the connection after the TLS handshake ({failure}); "
                f"a listener that requires a client certificate needs {_VAR}SSL_CERT_FILE"
            )
        return f"the connection to {host}:{port} failed ({failure})"
    try:
        await asyncio.wait_for(conn.send(MetadataRequest([])), _PROBE_TIMEOUT_S)
    except (TimeoutError, KafkaError, OSError):
        if not kafka.security_protocol.uses_sasl:
            return (
                f"the broker at {host}:{port} closed the connection before any request was served: it "
                f"expects SASL authentication ({_VAR}SECURITY_PROTOCOL=SASL_SSL with a username and "
                "password file)"
            )
        return f"the broker at {host}:{port} closed the connection after authenticating"
    finally:
        conn.close()
    return None


async def _speaks_tls(host: str, port: int) -> bool:
    """Whether the listener completes a TLS handshake (trust not checked: this only tells which
    protocol the port speaks, to say so in a message)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), _PROBE_TIMEOUT_S)
    except (TimeoutError, OSError, ssl.SSLError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


def _first_server(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    try:
        return host.strip("[]") or "localhost", int(port)
    except ValueError:
        raise ConfigError(f"LINEGUARD_KAFKA_BOOTSTRAP: {first!r} is not host:port") from None

"""The client side of Kafka security: TLS context, SASL credentials from files, clear refusals.

Refusals are checked against real local servers: nothing listening, and a TLS listener whose
certificate comes from our private CA (the real broker's refusals: tests/integration)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.kafka import pki
from shared.kafka.broker import free_port
from shared.kafka.client import make_admin, make_consumer, make_producer
from shared.kafka.security import KafkaAccessError, client_security, explain_refusal, read_secret, ssl_context
from shared.settings import KafkaSettings, SecurityProtocol, Settings


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server key store naming only "localhost", and an unrelated CA, as files."""
    ca, other = pki.new_ca("test CA"), pki.new_ca("other CA")
    server = pki.issue(ca, "broker", ["localhost"])
    files = {
        "ca": tmp_path / "ca.pem",
        "other_ca": tmp_path / "other.pem",
        "keystore": tmp_path / "broker.pem",
    }
    files["ca"].write_bytes(pki.certificate_pem(ca.certificate))
    files["other_ca"].write_bytes(pki.certificate_pem(other.certificate))
    pki.write_private(files["keystore"], pki.keystore_pem(server, ca.certificate))
    files["password"] = tmp_path / "password"
    files["password"].write_text("s3cret-pa55\n")
    return files


@pytest.fixture
def tls_listener(pem: dict[str, Path]) -> Iterator[int]:
    """A TLS server on 127.0.0.1 (not Kafka), in a thread: handshakes, then hangs up."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem["keystore"])
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        listener.close()


def _settings(port: int, **kafka: object) -> Settings:
    return Settings(kafka_bootstrap=f"localhost:{port}", kafka=KafkaSettings(**kafka))  # type: ignore[arg-type]


def test_a_secret_file_is_read_without_its_newline_and_problems_name_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("hunter2\n")
    assert read_secret(path, "LINEGUARD_KAFKA__SASL_PASSWORD_FILE") == "hunter2"
    with pytest.raises(ConfigError, match=r"LINEGUARD_KAFKA__SASL_PASSWORD_FILE=.*missing.*cannot read"):
        read_secret(tmp_path / "missing", "LINEGUARD_KAFKA__SASL_PASSWORD_FILE")
    path.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_secret(path, "X")


async def test_sasl_ssl_clients_get_a_verifying_context_and_the_password_from_its_file(
    pem: dict[str, Path],
) -> None:
    settings = _settings(
        9092,
        security_protocol=SecurityProtocol.SASL_SSL,
        sasl_username="camera",
        sasl_password_file=pem["password"],
        ssl_ca_file=pem["ca"],
    )
    config = client_security(settings)
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("camera", "s3cret-pa55")
    context = config["ssl_context"]
    assert context.check_hostname and context.verify_mode is ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    # Every client the wrapper makes carries it.
    admin, producer = make_admin(settings), make_producer(settings)
    consumer = make_consumer(settings, "t", group_id=None)
    for inner in (admin._client, producer.client, consumer._client):
        assert inner._security_protocol == "SASL_SSL" and inner._sasl_plain_username == "camera"
        assert inner._ssl_context.check_hostname
    await consumer.stop()
    await producer.stop()
    await admin.close()


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    assert client_security(Settings()) == {"security_protocol": "PLAINTEXT"}


def test_hostname_checking_can_be_turned_off_but_the_chain_is_still_verified(pem: dict[str, Path]) -> None:
    context = ssl_context(
        KafkaSettings(security_protocol=SecurityProtocol.SSL, ssl_ca_file=pem["ca"], ssl_check_hostname=False)
    )
    assert not context.check_hostname and context.verify_mode is ssl.CERT_REQUIRED


def test_client_certificate_files_that_do_not_load_are_config_errors(
    pem: dict[str, Path], tmp_path: Path
) -> None:
    good = KafkaSettings(
        security_protocol=SecurityProtocol.SSL, ssl_ca_file=pem["ca"], ssl_cert_file=pem["keystore"]
    )
    assert ssl_context(good)  # key and chain in one file
    wrong_key = tmp_path / "other.key"
    pki.write_private(wrong_key, pki.key_pem(pki.new_ca("x").key))
    for kafka, named in (
        (good.model_copy(update={"ssl_key_file": wrong_key}), "cannot load the client certificate"),
        (good.model_copy(update={"ssl_cert_file": tmp_path / "nope.pem"}), "LINEGUARD_KAFKA__SSL_CERT_FILE="),
        (good.model_copy(update={"ssl_ca_file": pem["password"]}), "LINEGUARD_KAFKA__SSL_CA_FILE="),
    ):
        with pytest.raises(ConfigError, match=named) as caught:
            ssl_context(kafka)
        assert "PRIVATE KEY" not in str(caught.value)


async def test_nothing_listening_is_said_plainly() -> None:
    port = free_port()
    why = await explain_refusal(_settings(port))
    assert why == f"nothing accepts connections at localhost:{port}; is the broker running?"


async def test_a_plaintext_client_at_a_tls_listener_is_told_to_use_tls(tls_listener: int) -> None:
    why = await explain_refusal(_settings(tls_listener))
    assert why is not None and "speaks TLS" in why and "LINEGUARD_KAFKA__SECURITY_PROTOCOL=PLAINTEXT" in why


async def test_a_certificate_from_another_ca_is_not_trusted(tls_listener: int, pem: dict[str, Path]) -> None:
    why = await explain_refusal(
        _settings(tls_listener, security_protocol=SecurityProtocol.SSL, ssl_ca_file=pem["other_ca"])
    )
    assert why is not None and "not trusted by LINEGUARD_KAFKA__SSL_CA_FILE=" in why and "other.pem" in why


async def test_a_certificate_for_other_names_is_refused_by_hostname(
    tls_listener: int, pem: dict[str, Path]
) -> None:
    settings = _settings(tls_listener, security_protocol=SecurityProtocol.SSL, ssl_ca_file=pem["ca"])
    settings = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{tls_listener}"})
    why = await explain_refusal(settings)  # the certificate names localhost, not the address
    assert why is not None and "does not name 127.0.0.1" in why and "SSL_CHECK_HOSTNAME" in why


async def test_a_client_that_cannot_start_raises_one_clear_error() -> None:
    port = free_port()
    admin = make_admin(_settings(port), request_timeout_ms=2000)
    with pytest.raises(KafkaAccessError) as caught:
        await admin.start()
    message = str(caught.value)
    assert message.startswith(f"cannot use Kafka at localhost:{port} as an anonymous client over PLAINTEXT:")
    assert "nothing accepts connections" in message

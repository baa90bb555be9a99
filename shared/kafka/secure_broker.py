"""``lineguard kafka up --secure``: the local broker closed to strangers, one identity per service.

The same KRaft broker as ``LocalBroker``, with a SASL_SSL client listener. On first start it makes
a private CA and the broker's certificate (``shared.kafka.pki``), one random password per principal
of the table (``shared.kafka.principals``), formats the storage with those users' SCRAM credentials
(``--add-scram``; salted, from an owner-only argument file, never on a command line), starts the
broker, and creates the table's ACLs as the broker itself (its certificate, on its mutual-TLS
listener: the one super user). Then it writes one client settings file per principal.

Layout of ``<data_dir>/secure`` (a folder only its owner may open; every secret mode 0600):

``ca.pem``
    the CA certificate clients trust (``LINEGUARD_KAFKA__SSL_CA_FILE``)
``ca.key``
    the CA's key: issues and renews the broker certificate; never needed by a client
``broker.pem``
    the broker's PEM key store (key, then certificate chain); also its client identity
``passwords/<principal>``
    one SCRAM password each (``LINEGUARD_KAFKA__SASL_PASSWORD_FILE``)
``<principal>.env``
    the ``LINEGUARD_*`` variables that principal's processes need, in shell syntax
``server.properties``, ``kraft/``, ``broker.log``, ``broker.pid``
    the broker itself, as for ``LocalBroker``

The same files, made by ``init_secrets`` for other hosts' names, serve a container deployment
(docker-compose.yml), where ``provision`` sets the SCRAM credentials and ACLs on the running broker.
"""

from __future__ import annotations

import asyncio
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from shared.errors import BrokerError, ConfigError
from shared.kafka import pki
from shared.kafka.acl import apply_acls, scram_credential, scram_format_argument, upsert_scram
from shared.kafka.broker import BrokerStatus, BrokerTls, LocalBroker
from shared.kafka.principals import PRINCIPAL_NAMES, Principal, principals
from shared.settings import KafkaSettings, SaslMechanism, SecurityProtocol, Settings

T = TypeVar("T")

LOCAL_HOSTNAMES = ("localhost", "127.0.0.1", "::1")
BROKER_PRINCIPAL = "broker"
CA_NAME = "Lineguard Kafka CA"
SCRAM_MECHANISMS = (SaslMechanism.SCRAM_SHA_512, SaslMechanism.SCRAM_SHA_256)
CLIENT_MECHANISM = SaslMechanism.SCRAM_SHA_512
ACL_PROPAGATION_S = 30.0  # how long new ACLs may take to reach the broker's authorizer


@dataclass(frozen=True)
class SecretsLayout:
    """Where a secure deployment's CA, broker key store, passwords and client files are."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def keystore(self) -> Path:
        return self.root / "broker.pem"

    @property
    def scram_arguments(self) -> Path:
        return self.root / "scram.args"  # exists only while storage is being formatted

    def password_file(self, name: str) -> Path:
        return self.root / "passwords" / name

    def env_file(self, name: str) -> Path:
        return self.root / f"{name}.env"


def new_password() -> str:
    """A random password: 256 bits, URL-safe characters (nothing SASLprep could change)."""
    return secrets.token_urlsafe(32)


def init_secrets(
    layout: SecretsLayout, hostnames: Sequence[str], names: Iterable[str] = PRINCIPAL_NAMES
) -> list[str]:
    """Make what is missing: the CA, the broker key store (also when its certificate expires within
    30 days or lacks a hostname), a password per principal. Never replaces a password or the CA.
    Returns what it made, for the operator to read."""
    made: list[str] = []
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.root.chmod(0o700)
    (layout.root / "passwords").mkdir(mode=0o700, exist_ok=True)
    if layout.ca_cert.exists() and layout.ca_key.exists():
        ca = pki.load_issued(layout.ca_key, layout.ca_cert)
    else:
        ca = pki.new_ca(CA_NAME)
        pki.write_private(layout.ca_key, pki.key_pem(ca.key))
        pki.write_private(layout.ca_cert, pki.certificate_pem(ca.certificate), mode=0o644)  # public
        made.append(f"CA {layout.ca_cert}")
    if not layout.keystore.exists() or pki.needs_renewal(pki.load_certificate(layout.keystore), hostnames):
        broker = pki.issue(ca, BROKER_PRINCIPAL, hostnames)
        pki.write_private(layout.keystore, pki.keystore_pem(broker, ca.certificate))
        made.append(f"broker certificate for {', '.join(hostnames)} in {layout.keystore}")
    for name in names:
        path = layout.password_file(name)
        if not path.exists():
            pki.write_private(path, new_password().encode())
            made.append(f"password of {name}")
    return made


def hand_over(layout: SecretsLayout, broker_uid: int | None, service_uid: int | None) -> None:
    """Give the broker's key store to the user the broker runs as, and the password files to the
    user the services run as (containers; needs root). Modes stay owner-only; the CA key stays."""
    import os

    try:
        if broker_uid is not None:
            os.chown(layout.keystore, broker_uid, -1)
        if service_uid is not None:
            for path in (layout.root / "passwords").iterdir():
                if not path.name.startswith("."):
                    os.chown(path, service_uid, -1)
    except PermissionError:
        raise ConfigError(
            "giving secrets to other users needs root (docker compose run --rm kafka-init)"
        ) from None


def read_password(layout: SecretsLayout, name: str) -> str:
    return layout.password_file(name).read_text(encoding="utf-8").strip()


def principal_kafka_settings(layout: SecretsLayout, name: str) -> KafkaSettings:
    """The ``settings.kafka`` of a principal: SASL_SSL as ``name``, trusting the CA."""
    return KafkaSettings(
        security_protocol=SecurityProtocol.SASL_SSL,
        sasl_mechanism=CLIENT_MECHANISM,
        sasl_username=name,
        sasl_password_file=layout.password_file(name).resolve(),
        ssl_ca_file=layout.ca_cert.resolve(),
    )


def broker_identity(settings: Settings, layout: SecretsLayout, internal_bootstrap: str) -> Settings:
    """Settings for a client that is the broker itself: mutual TLS on the internal listener with the
    broker's certificate (a super user). Only for setting up ACLs and credentials."""
    kafka = KafkaSettings(
        security_protocol=SecurityProtocol.SSL,
        ssl_ca_file=layout.ca_cert.resolve(),
        ssl_cert_file=layout.keystore.resolve(),  # the key store holds the key too
    )
    return settings.model_copy(update={"kafka_bootstrap": internal_bootstrap, "kafka": kafka})


def env_file_text(settings: Settings, layout: SecretsLayout, name: str, bootstrap: str) -> str:
    """The ``LINEGUARD_*`` variables a principal's processes need, in shell syntax (``set -a; .
    FILE; set +a``), pointing at its password file; the password itself is never in it."""
    kafka = principal_kafka_settings(layout, name)
    variables = {
        "LINEGUARD_KAFKA_BOOTSTRAP": bootstrap,
        "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix,
        "LINEGUARD_KAFKA__SECURITY_PROTOCOL": str(kafka.security_protocol),
        "LINEGUARD_KAFKA__SASL_MECHANISM": str(kafka.sasl_mechanism),
        "LINEGUARD_KAFKA__SASL_USERNAME": name,
        "LINEGUARD_KAFKA__SASL_PASSWORD_FILE": str(kafka.sasl_password_file),
        "LINEGUARD_KAFKA__SSL_CA_FILE": str(kafka.ssl_ca_file),
    }
    lines = [
        f"# Kafka client settings of principal {name!r}, written by `lineguard kafka up --secure`.",
        "# Load before starting its service: set -a; . THIS_FILE; set +a",
        *(f"{key}={shlex.quote(value)}" for key, value in variables.items()),
    ]
    return "\n".join(lines) + "\n"


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an env file written by ``env_file_text`` (shell quoting undone)."""
    variables: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            (variables[key.strip()],) = shlex.split(value) or [""]
    return variables


async def provision(
    identity: Settings, table: Sequence[Principal], layout: SecretsLayout | None = None
) -> int:
    """On a running cluster, as ``identity`` (the broker's certificate or ``admin``): set the SCRAM
    credentials of every principal from ``layout``'s password files (when given), then create the
    table's ACLs. Idempotent. Returns the number of ACLs sent."""
    from shared.kafka.client import make_protocol_client

    client = make_protocol_client(identity)
    await client.bootstrap()
    try:
        if layout is not None:
            credentials = [
                scram_credential(p.name, read_password(layout, p.name), mechanism)
                for p in table
                for mechanism in SCRAM_MECHANISMS
            ]
            await upsert_scram(client, credentials)
        return await apply_acls(client, table)
    finally:
        await client.close()


async def rotate_password(identity: Settings, user: str, password_file: Path) -> None:
    """Give ``user`` a new random password: first on the cluster (both SCRAM mechanisms), then in
    ``password_file`` (atomically). Connections already authenticated stay up; new ones need the new
    password, so restart the user's processes next (they read the file when they make a client).

    Brokers apply the change as they replay the metadata log, a moment after the controller took it;
    when ``identity`` itself logs in with SASL, the new password is tried on its listener until it is
    accepted, so the file is written only once it works there."""
    from shared.kafka.client import make_protocol_client

    password = new_password()
    client = make_protocol_client(identity)
    await client.bootstrap()
    try:
        await upsert_scram(client, [scram_credential(user, password, m) for m in SCRAM_MECHANISMS])
    finally:
        await client.close()
    if identity.kafka.security_protocol.uses_sasl:
        await _await_login(identity, user, password)
    pki.write_private(password_file, password.encode())


async def _await_login(identity: Settings, user: str, password: str, timeout_s: float = 30.0) -> None:
    from aiokafka.conn import create_conn
    from aiokafka.errors import SaslAuthenticationFailed

    from shared.kafka.security import client_security

    host, _, port = identity.bootstrap.split(",")[0].rpartition(":")
    config = {**client_security(identity), "sasl_plain_username": user, "sasl_plain_password": password}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            conn = await create_conn(host, int(port), **config)
        except SaslAuthenticationFailed:
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerError(
                    f"the cluster took {user}'s new password but still refuses it after {timeout_s:.0f}s; "
                    "the password file was left unchanged"
                ) from None
            await asyncio.sleep(0.2)
        else:
            conn.close()
            return


class SecureLocalBroker:
    """The local broker with TLS, SCRAM users and ACLs; its files in ``<data_dir>/secure``."""

    def __init__(self, settings: Settings, libs_dir: Path | None = None) -> None:
        self.settings = settings
        broker_settings = settings.broker.model_copy(
            update={"data_dir": Path(settings.broker.data_dir) / "secure"}
        )
        self.layout = SecretsLayout(Path(broker_settings.data_dir).resolve())
        tls = BrokerTls(
            keystore=self.layout.keystore,
            truststore=self.layout.ca_cert,
            principal=BROKER_PRINCIPAL,
            sasl_mechanisms=tuple(str(m) for m in SCRAM_MECHANISMS),
            scram_arguments_file=self.layout.scram_arguments,
        )
        self.broker = LocalBroker(broker_settings, libs_dir, tls=tls)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def data_dir(self) -> Path:
        return self.broker.data_dir

    def start(self) -> BrokerStatus:
        """Start (first time: make the secrets and format with the users), create the ACLs for the
        settings' topic prefix and group ids, write every principal's env file. Idempotent."""
        table = principals(self.settings)
        if self.broker.status().running:
            status = self.broker.start()  # waits until it is ready
        else:
            init_secrets(self.layout, LOCAL_HOSTNAMES, [p.name for p in table])
            try:
                if not (self.broker.log_dirs / "meta.properties").exists():
                    self._write_scram_arguments(table)
                status = self.broker.start()
            finally:
                self.layout.scram_arguments.unlink(missing_ok=True)
        identity = broker_identity(self.settings, self.layout, self.broker.internal_bootstrap)
        _run(lambda: provision(identity, table))
        for p in table:
            text = env_file_text(self.settings, self.layout, p.name, self.bootstrap)
            pki.write_private(self.layout.env_file(p.name), text.encode())
        return status

    def stop(self, timeout_s: float | None = None) -> bool:
        return self.broker.stop(timeout_s)

    def status(self) -> BrokerStatus:
        return self.broker.status()

    def authorize(self, settings: Settings, frames_partitions: int = 2) -> None:
        """Open the broker to another topic prefix and its group ids: the table's ACLs for
        ``settings`` (as the broker), then its topics (as ``admin``). For tests and trials that keep
        apart by prefix on one broker."""
        from shared.kafka.client import ensure_topics

        identity = broker_identity(self.settings, self.layout, self.broker.internal_bootstrap)
        _run(lambda: provision(identity, principals(settings)))
        admin = self.client_settings("admin", topic_prefix=settings.topic_prefix)
        # The broker applies new ACLs as it replays the metadata log, a moment after the controller
        # took them: until then the admin's creates are refused.
        deadline = time.monotonic() + ACL_PROPAGATION_S
        while True:
            try:
                _run(lambda: ensure_topics(admin, frames_partitions=frames_partitions))
                return
            except BrokerError as exc:
                if exc.reason != "not_authorized" or time.monotonic() > deadline:
                    raise
                time.sleep(0.25)

    def client_settings(self, name: str, **changes: object) -> Settings:
        """Settings for an in-process client acting as principal ``name``."""
        update = {
            "kafka_bootstrap": self.bootstrap,
            "kafka": principal_kafka_settings(self.layout, name),
            **changes,
        }
        return self.settings.model_copy(update=update)

    def _write_scram_arguments(self, table: Sequence[Principal]) -> None:
        lines: list[str] = []
        for p in table:
            password = read_password(self.layout, p.name)
            for mechanism in SCRAM_MECHANISMS:
                lines += ["--add-scram", scram_format_argument(scram_credential(p.name, password, mechanism))]
        pki.write_private(self.layout.scram_arguments, ("\n".join(lines) + "\n").encode())


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code, also when called inside an event loop."""

    async def main() -> T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()

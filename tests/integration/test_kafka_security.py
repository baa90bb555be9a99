"""Kafka closed to strangers, on the real secure broker (``secure_kafka``: SASL_SSL, SCRAM, ACLs).

Refusals: no credentials, a wrong password, another CA, a client without a certificate at the
mutual-TLS listener. Authorization: the camera writes frames and nothing else; nothing it was
refused reaches a topic. Rotation: a new password works, the old one no longer does.
"""

from __future__ import annotations

import argparse
import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import TopicAuthorizationFailedError, TransactionalIdAuthorizationFailed

from services.kafka_admin import cli
from shared.kafka import pki
from shared.kafka.acl import describe_acls
from shared.kafka.client import make_admin, make_consumer, make_producer, make_protocol_client
from shared.kafka.principals import CLUSTER_NAME, PRINCIPAL_NAMES, principals
from shared.kafka.secure_broker import SecureLocalBroker, read_env_file
from shared.kafka.security import KafkaAccessError
from shared.settings import KafkaSettings, SecurityProtocol, Settings
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.integration


async def end_offsets(broker: SecureLocalBroker, *topics: str) -> dict[str, int]:
    """Records on each topic (all partitions), as the admin sees them (DESCRIBE: no reading)."""
    admin = broker.client_settings("admin")
    consumer = make_consumer(admin, group_id=None)
    await consumer.start()
    try:
        partitions = {t: sorted(consumer.partitions_for_topic(t) or ()) for t in map(admin.topic, topics)}
        for topic in partitions:
            if not partitions[topic]:
                await consumer._client.force_metadata_update()
                partitions[topic] = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(t, p) for t, ps in partitions.items() for p in ps]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {t.split(".", 1)[1]: sum(ends[tp] for tp in tps if tp.topic == t) for t in partitions}


async def refusal(settings: Settings) -> str:
    admin = make_admin(settings, request_timeout_ms=10_000)
    with pytest.raises(KafkaAccessError) as caught:
        await admin.start()
    return str(caught.value)


def with_kafka(broker: SecureLocalBroker, kafka: KafkaSettings, bootstrap: str | None = None) -> Settings:
    return broker.settings.model_copy(
        update={"kafka_bootstrap": bootstrap or broker.bootstrap, "kafka": kafka}
    )


async def test_clients_without_credentials_with_a_wrong_password_or_another_ca_are_refused(
    secure_kafka: SecureLocalBroker, tmp_path: Path
) -> None:
    layout = secure_kafka.layout
    camera = secure_kafka.client_settings("camera").kafka

    message = await refusal(with_kafka(secure_kafka, KafkaSettings()))
    assert "as an anonymous client over PLAINTEXT" in message and "speaks TLS" in message

    message = await refusal(
        with_kafka(
            secure_kafka, KafkaSettings(security_protocol=SecurityProtocol.SSL, ssl_ca_file=layout.ca_cert)
        )
    )
    assert "expects SASL authentication" in message

    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    message = await refusal(with_kafka(secure_kafka, camera.model_copy(update={"sasl_password_file": wrong})))
    assert "refused the credentials of user camera" in message and "SaslAuthenticationFailed" in message
    assert "not-the-password" not in message

    stranger_ca = tmp_path / "stranger-ca.pem"
    stranger_ca.write_bytes(pki.certificate_pem(pki.new_ca("stranger").certificate))
    message = await refusal(with_kafka(secure_kafka, camera.model_copy(update={"ssl_ca_file": stranger_ca})))
    assert f"not trusted by LINEGUARD_KAFKA__SSL_CA_FILE={stranger_ca}" in message

    # The broker's own listener wants a certificate from our CA; a password is no way in.
    no_certificate = KafkaSettings(security_protocol=SecurityProtocol.SSL, ssl_ca_file=layout.ca_cert)
    message = await refusal(with_kafka(secure_kafka, no_certificate, secure_kafka.broker.internal_bootstrap))
    assert "closed the connection after the TLS handshake" in message
    assert "requires a client certificate needs LINEGUARD_KAFKA__SSL_CERT_FILE" in message

    # The same through the command line: one line, exit 1, the password never printed.
    variables = read_env_file(layout.env_file("camera")) | {"LINEGUARD_KAFKA__SASL_PASSWORD_FILE": str(wrong)}
    command = ServiceProcess(["topics", "ensure"], variables, tmp_path / "cli.log")
    assert await command.wait_exit(120) == 1
    output = command.log_text().strip().splitlines()
    assert output[-1].startswith("lineguard: topics ensure: cannot use Kafka at ")
    assert "refused the credentials of user camera" in output[-1]
    assert "Traceback" not in command.log_text() and "not-the-password" not in command.log_text()


async def test_the_camera_may_write_frames_but_not_verdicts_or_models(
    secure_kafka: SecureLocalBroker,
) -> None:
    before = await end_offsets(secure_kafka, "frames", "verdicts", "models")
    camera = secure_kafka.client_settings("camera")
    producer = make_producer(camera)
    await producer.start()
    try:
        await producer.send_and_wait(camera.topic("frames"), b"a frame", key=b"cam-1")
        for topic in ("verdicts", "models"):
            with pytest.raises(TopicAuthorizationFailedError, match=camera.topic(topic)):
                await producer.send_and_wait(camera.topic(topic), b'{"decision": "pass"}', key=b"current")
    finally:
        await producer.stop()
    # Nor can it read what the scorer decided.
    consumer = make_consumer(camera, camera.topic("verdicts"), group_id=None)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await consumer.start()
            await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    after = await end_offsets(secure_kafka, "frames", "verdicts", "models")
    assert after == {**before, "frames": before["frames"] + 1}  # nothing refused was written
    # The broker's authorizer log names who was denied what.
    denied = "Principal = User:camera is Denied operation = DESCRIBE from host = 127.0.0.1 on resource = "
    assert denied + f"Topic:LITERAL:{camera.topic('verdicts')}" in secure_kafka.broker.log_file.read_text()

    operator = secure_kafka.client_settings("operator")  # the one principal that announces models
    producer = make_producer(operator)
    await producer.start()
    try:
        await producer.send_and_wait(operator.topic("models"), b"an announcement", key=b"current")
    finally:
        await producer.stop()
    assert (await end_offsets(secure_kafka, "models"))["models"] == before["models"] + 1


async def test_the_scorer_uses_its_own_transactional_ids_only(secure_kafka: SecureLocalBroker) -> None:
    scorer = secure_kafka.client_settings("scorer")
    own = make_producer(scorer, transactional_id=f"{scorer.scorer.transactional_id_prefix}-t-0")
    await own.start()
    try:
        async with own.transaction():
            await own.send_and_wait(scorer.topic("dlq"), b"in a transaction")
    finally:
        await own.stop()
    other = make_producer(scorer, transactional_id="someone-else-0")
    with pytest.raises(TransactionalIdAuthorizationFailed):
        await other.start()
    await other.stop()


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lineguard")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.handler(args))


async def test_a_rotated_password_replaces_the_old_one(
    secure_kafka: SecureLocalBroker, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The commands read the topic prefix from the environment, like the fixture's broker was made.
    monkeypatch.setenv("LINEGUARD_TOPIC_PREFIX", secure_kafka.settings.topic_prefix)
    s = secure_kafka.settings.broker
    options = ["--port", str(s.port), "--controller-port", str(s.controller_port)]
    options += ["--internal-port", str(s.internal_port), "--data-dir", str(s.data_dir), "--secure"]
    assert await asyncio.to_thread(run_cli, "kafka", "status", *options) == 0
    # `kafka up --secure` on the running broker: same process, ACLs and env files in place again.
    assert await asyncio.to_thread(run_cli, "kafka", "up", *options) == 0
    out = capsys.readouterr().out
    assert f"secure kafka (SASL_SSL, ACLs) ready at {secure_kafka.bootstrap}" in out
    for name in PRINCIPAL_NAMES:
        env_file = secure_kafka.layout.env_file(name)
        assert str(env_file) in out and stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert read_env_file(env_file)["LINEGUARD_TOPIC_PREFIX"] == secure_kafka.settings.topic_prefix
    password_file = secure_kafka.layout.password_file("console")
    old = password_file.read_text()
    kept_old = password_file.with_name("console.old")
    kept_old.write_text(old)
    try:
        assert await asyncio.to_thread(run_cli, "kafka", "rotate-password", "console", *options) == 0
        assert password_file.read_text() != old
        assert "new password of console set" in capsys.readouterr().out
        console = secure_kafka.client_settings("console")
        admin = make_admin(console)
        await admin.start()  # the new password works
        await admin.close()
        stale = console.kafka.model_copy(update={"sasl_password_file": kept_old})
        message = await refusal(console.model_copy(update={"kafka": stale}))
        assert "refused the credentials of user console" in message
    finally:
        kept_old.unlink()


async def test_provisioning_as_the_broker_sets_every_user_and_exactly_the_table(
    secure_kafka: SecureLocalBroker, tmp_path: Path
) -> None:
    # What compose's kafka-setup does: the broker's certificate on its mutual-TLS listener.
    layout = secure_kafka.layout
    identity = {
        "LINEGUARD_KAFKA_BOOTSTRAP": secure_kafka.broker.internal_bootstrap,
        "LINEGUARD_TOPIC_PREFIX": secure_kafka.settings.topic_prefix,
        "LINEGUARD_KAFKA__SECURITY_PROTOCOL": "SSL",
        "LINEGUARD_KAFKA__SSL_CA_FILE": str(layout.ca_cert),
        "LINEGUARD_KAFKA__SSL_CERT_FILE": str(layout.keystore),
    }
    args = ["kafka", "provision", "--secrets", str(layout.root)]
    command = ServiceProcess(args, identity, tmp_path / "provision.log")
    assert await command.wait_exit(120) == 0, command.log_text()
    table = principals(secure_kafka.settings)
    count = sum(len(p.grants) for p in table)
    assert f"SCRAM credentials of {len(table)} principals set; {count} ACLs in place" in command.log_text()

    admin = make_protocol_client(secure_kafka.client_settings("admin"))
    await admin.bootstrap()
    try:
        found = await describe_acls(admin)
    finally:
        await admin.close()
    # Exactly the table for this prefix and these groups (other prefixes on the broker have theirs).
    prefix = secure_kafka.settings.topic_prefix
    for p in table:
        mine = {
            g
            for g in found[p.acl_principal]
            if g.name.startswith((f"{prefix}.", f"{prefix}-", "lineguard-")) or g.name in ("*", CLUSTER_NAME)
        }
        assert mine == set(p.grants), p.name
    assert set(found) == {p.acl_principal for p in table}  # no other principal has any
    for name in PRINCIPAL_NAMES:  # everyone still logs in with the password in their file
        client = make_admin(secure_kafka.client_settings(name))
        await client.start()
        await client.close()

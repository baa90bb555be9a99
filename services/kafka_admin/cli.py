"""``lineguard kafka ...`` (the local broker, its security) and ``lineguard topics ensure``.

Thin shell over ``shared.kafka``: ``broker.LocalBroker`` (``kafka up|down|status``),
``secure_broker`` (``--secure``, ``init-secrets``, ``provision``, ``rotate-password``), the principal
table (``kafka acls``) and ``client.ensure_topics``. Options override the ``LINEGUARD_BROKER__*``
settings for one invocation; every Kafka client uses the ``LINEGUARD_KAFKA__*`` security settings.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from services.arguments import positive_int
from shared.errors import BrokerError, ConfigError, LineguardError
from shared.kafka.principals import PRINCIPAL_NAMES
from shared.settings import Settings, load_settings


def register(subparsers: Any) -> None:
    kafka = subparsers.add_parser("kafka", help="the local Kafka broker and the cluster's security")
    actions = kafka.add_subparsers(dest="kafka_action", required=True, metavar="ACTION")
    for name, handler, text in (
        ("up", _kafka_up, "format (first time) and start the broker; wait until it is ready"),
        ("down", _kafka_down, "stop the broker (SIGTERM, then SIGKILL after a timeout)"),
        ("status", _kafka_status, "say whether the broker runs and answers; exit 1 if not"),
    ):
        _add_broker_options(_command(actions, name, handler, text, text))

    init = _command(
        actions,
        "init-secrets",
        _init_secrets,
        "make a CA, the broker's key store and a password per principal (for a deployment)",
        "Make what is missing in DIR: a private CA (ca.pem, ca.key), the broker's PEM key "
        "store for the given hostnames (broker.pem; renewed when it expires within 30 days or lacks a "
        "hostname) and one random password per principal (passwords/NAME). Never replaces a password.",
    )
    init.add_argument("--out", type=Path, required=True, help="folder for the secrets (made owner-only)")
    init.add_argument(
        "--hostname",
        action="append",
        required=True,
        help="a name or address clients reach the broker by (repeat for each)",
    )
    init.add_argument("--broker-uid", type=int, help="owner of broker.pem (the broker's user; needs root)")
    init.add_argument("--service-uid", type=int, help="owner of the password files (the services' user)")

    provision = _command(
        actions,
        "provision",
        _provision,
        "set every principal's SCRAM credentials and ACLs on a running cluster (idempotent)",
        "As the identity of the LINEGUARD_KAFKA__* settings (the broker's certificate or "
        "admin): set each principal's SCRAM credentials from SECRETS/passwords/NAME, then create the "
        "ACLs of `lineguard kafka acls` for the current topic prefix and group ids.",
    )
    provision.add_argument("--secrets", type=Path, required=True, help="folder made by init-secrets")
    provision.add_argument("--bootstrap", help="bootstrap servers (default: LINEGUARD_KAFKA_BOOTSTRAP)")

    rotate = _command(
        actions,
        "rotate-password",
        _rotate_password,
        "give a principal a new random password (cluster first, then its password file)",
        "Set a new SCRAM password for PRINCIPAL on the cluster, then write it to its "
        "password file. Restart that principal's processes afterwards: new connections need the new "
        "password. With --secure: the local secure broker, acting as its admin principal.",
    )
    rotate.add_argument("principal", choices=PRINCIPAL_NAMES, help="whose password to renew")
    target = rotate.add_mutually_exclusive_group(required=True)
    target.add_argument("--secure", action="store_true", help="the local `kafka up --secure` broker")
    target.add_argument("--password-file", type=Path, help="the principal's password file to replace")
    _add_broker_options(rotate, secure_flag=False)

    _command(
        actions,
        "acls",
        _print_acls,
        "print every principal's grants for the current settings",
        "The least-privilege table that `kafka up --secure` and `kafka provision` apply.",
    )

    topics = subparsers.add_parser("topics", help="manage Lineguard's Kafka topics")
    topic_actions = topics.add_subparsers(dest="topics_action", required=True, metavar="ACTION")
    ensure = _command(
        topic_actions,
        "ensure",
        _topics_ensure,
        "create missing topics (idempotent)",
        "Create missing topics.",
    )
    ensure.add_argument(
        "--frames-partitions",
        type=positive_int,
        default=4,
        help="partitions of the frames topic = the most scorers that can share the load (default 4)",
    )
    ensure.add_argument("--bootstrap", help="bootstrap servers (default: LINEGUARD_KAFKA_BOOTSTRAP or local)")


def _command(actions: Any, name: str, handler: Any, text: str, description: str) -> argparse.ArgumentParser:
    """One ``ACTION`` under ``actions``, run by ``handler``; ``text`` is its one-line help."""
    parser: argparse.ArgumentParser = actions.add_parser(name, help=text, description=description)
    parser.set_defaults(handler=handler)
    return parser


def _add_broker_options(parser: argparse.ArgumentParser, *, secure_flag: bool = True) -> None:
    parser.add_argument("--port", type=int, help="client port (default LINEGUARD_BROKER__PORT or 9092)")
    parser.add_argument("--controller-port", type=int, help="KRaft controller port (default 9093)")
    parser.add_argument(
        "--internal-port", type=int, help="the secure broker's own mutual-TLS port (default 9094)"
    )
    parser.add_argument("--data-dir", type=Path, help="data directory (default var/kafka)")
    parser.add_argument("--libs-dir", type=Path, help="Kafka jars (default .cache/kafka/libs)")
    if secure_flag:
        parser.add_argument(
            "--brokers",
            type=positive_int,
            default=1,
            help="nodes of a local KRaft cluster (3: topics with 3 replicas and min.insync.replicas 2; "
            "node N on ports PORT+2(N-1), CONTROLLER_PORT+2(N-1), data in DATA_DIR/node-N); default 1",
        )
        parser.add_argument(
            "--secure",
            action="store_true",
            help="SASL_SSL, one SCRAM user per service and ACLs; files in DATA_DIR/secure "
            "(also LINEGUARD_BROKER__SECURE=true)",
        )


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings()
    updates = {
        key: value
        for key, value in (
            ("port", getattr(args, "port", None)),
            ("controller_port", getattr(args, "controller_port", None)),
            ("internal_port", getattr(args, "internal_port", None)),
            ("data_dir", getattr(args, "data_dir", None)),
            ("libs_dir", getattr(args, "libs_dir", None)),
            ("secure", getattr(args, "secure", None) or None),
        )
        if value is not None
    }
    broker = settings.broker.model_validate({**settings.broker.model_dump(), **updates})
    changes: dict[str, Any] = {"broker": broker}
    if getattr(args, "bootstrap", None):
        changes["kafka_bootstrap"] = args.bootstrap
    return settings.model_copy(update=changes)


def _broker(settings: Settings, brokers: int = 1) -> Any:
    if brokers > 1:
        from shared.kafka.cluster import KafkaCluster

        return KafkaCluster.from_settings(settings.broker, brokers)
    if settings.broker.secure:
        from shared.kafka.secure_broker import SecureLocalBroker

        return SecureLocalBroker(settings)
    from shared.kafka.broker import LocalBroker

    return LocalBroker(settings.broker)


def _kafka_up(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.brokers > 1:
        return _cluster_up(settings, args.brokers)
    broker = _broker(settings)
    status = broker.start()  # a BrokerError says what to do; the lineguard command prints it
    kind = "secure kafka (SASL_SSL, ACLs)" if settings.broker.secure else "kafka"
    where = f"pid {status.pid}, data {status.data_dir}, log {status.log_file}"
    print(f"{kind} ready at {status.bootstrap} ({where})")
    if settings.broker.secure:
        print("client settings, one file per principal (set -a; . FILE; set +a before starting it):")
        for name in PRINCIPAL_NAMES:
            print(f"  {name:<15} {broker.layout.env_file(name)}")
    return 0


def _cluster_up(settings: Settings, brokers: int) -> int:
    cluster = _broker(settings, brokers)
    statuses = cluster.start()
    print(f"kafka cluster of {brokers} nodes ready at {cluster.bootstrap} (data {cluster.data_dir})")
    for node, status in zip(cluster.nodes, statuses, strict=True):
        print(f"  node {node.node_id}: {status.bootstrap}, pid {status.pid}, log {status.log_file}")
    print("clients and `topics ensure` (3 replicas, 2 in sync) with:")
    print(f"  export LINEGUARD_KAFKA_BOOTSTRAP={cluster.bootstrap}")
    print(f"  export LINEGUARD_KAFKA__REPLICATION_FACTOR={cluster.replication}")
    print(f"  export LINEGUARD_KAFKA__MIN_INSYNC_REPLICAS={cluster.min_insync}")
    return 0


def _kafka_down(args: argparse.Namespace) -> int:
    broker = _broker(_settings(args), args.brokers)
    stopped = broker.stop()
    print("kafka stopped" if stopped else f"kafka was not running (data {broker.data_dir})")
    return 0


def _kafka_status(args: argparse.Namespace) -> int:
    if args.brokers > 1:
        statuses = _broker(_settings(args), args.brokers).status()
        for number, node in enumerate(statuses, 1):
            state = "ready" if node.ready else "running, not answering" if node.running else "not running"
            print(f"node {number}: {state} at {node.bootstrap} (data {node.data_dir})")
        return 0 if all(node.ready for node in statuses) else 1
    status = _broker(_settings(args)).status()
    if status.ready:
        print(f"kafka running and ready at {status.bootstrap} (pid {status.pid})")
        return 0
    if status.running:
        print(
            f"kafka running (pid {status.pid}) but not answering at {status.bootstrap}; see {status.log_file}"
        )
        return 1
    print(f"kafka not running (data {status.data_dir})")
    return 1


def _init_secrets(args: argparse.Namespace) -> int:
    from shared.kafka.secure_broker import SecretsLayout, hand_over, init_secrets

    layout = SecretsLayout(args.out)
    made = init_secrets(layout, args.hostname)
    hand_over(layout, args.broker_uid, args.service_uid)
    for line in made or ["nothing to make: every secret exists"]:
        print(line)
    print(f"clients trust {layout.ca_cert}; keep {layout.ca_key} where only certificates are issued")
    return 0


def _provision(args: argparse.Namespace) -> int:
    from shared.kafka.principals import principals
    from shared.kafka.secure_broker import SecretsLayout, provision

    settings = _settings(args)
    layout = SecretsLayout(args.secrets)
    missing = [n for n in PRINCIPAL_NAMES if not layout.password_file(n).is_file()]
    if missing:
        raise ConfigError(
            f"--secrets {args.secrets}: no password file for {', '.join(missing)}; run init-secrets"
        )
    table = principals(settings)
    count = _kafka_call("kafka provision", settings, lambda: provision(settings, table, layout))
    print(f"SCRAM credentials of {len(table)} principals set; {count} ACLs in place")
    return 0


def _rotate_password(args: argparse.Namespace) -> int:
    from shared.kafka.secure_broker import SecureLocalBroker, rotate_password

    settings = _settings(args)
    if args.secure:
        broker = SecureLocalBroker(settings)
        if not broker.status().ready:
            raise BrokerError(
                f"the secure broker in {broker.data_dir} is not running; `lineguard kafka up --secure`"
            )
        identity, password_file = broker.client_settings("admin"), broker.layout.password_file(args.principal)
    else:
        identity, password_file = settings, args.password_file
    _kafka_call(
        "kafka rotate-password", identity, lambda: rotate_password(identity, args.principal, password_file)
    )
    print(
        f"new password of {args.principal} set on the cluster and in {password_file}; restart its processes"
    )
    return 0


def _print_acls(args: argparse.Namespace) -> int:
    from shared.kafka.principals import principals

    for principal in principals(load_settings()):
        print(f"{principal.acl_principal}: {principal.role}")
        for grant in principal.grants:
            print(f"  {grant.describe()}")
    return 0


def _topics_ensure(args: argparse.Namespace) -> int:
    from shared.kafka.client import ensure_topics

    settings = _settings(args)
    names = _kafka_call(
        "topics ensure", settings, lambda: ensure_topics(settings, frames_partitions=args.frames_partitions)
    )
    print("topics ready: " + ", ".join(names))
    return 0


def _kafka_call(what: str, settings: Settings, call: Any) -> Any:
    """Run one Kafka conversation; any failure is one line naming the command (never a traceback)."""
    from shared.kafka.security import KafkaAccessError

    try:
        return asyncio.run(call())
    except ConfigError:
        raise
    except KafkaAccessError as exc:
        raise KafkaAccessError(f"{what}: {exc}", reason=exc.reason) from exc
    except LineguardError as exc:
        raise BrokerError(f"{what}: {exc}", reason=exc.reason) from exc
    except Exception as exc:  # the Kafka client's many errors: one line, not a traceback
        raise BrokerError(f"{what}: {type(exc).__name__}: {exc} (bootstrap {settings.bootstrap})") from exc

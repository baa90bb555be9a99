"""ACLs and SCRAM credentials on a running cluster: the admin requests aiokafka's admin client lacks.

``apply_acls`` creates every grant of the principal table (``shared.kafka.principals``) in one
CreateAcls request (creating an ACL that exists is a no-op, so it is idempotent); ``upsert_scram``
sets users' SCRAM credentials (AlterUserScramCredentials, KIP-554): the client sends a random salt
and the salted password, never the password itself. Both need ``ALTER`` on the cluster (the
``admin`` principal) or a super user (the broker's own certificate identity).

``scram_format_argument`` is the same credential for ``kafka-storage format --add-scram``, so a new
cluster starts with its users (KIP-900) and no password ever appears on a command line.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.protocol.admin import CreateAclsRequest_v1, DescribeAclsRequest_v1
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactBytes,
    CompactString,
    Int8,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

from shared.errors import BrokerError
from shared.kafka.principals import ANY_HOST, Grant, Operation, Pattern, Principal, Resource
from shared.settings import SaslMechanism

SCRAM_ITERATIONS = 8192  # Kafka accepts 4096 to 16384
_SCRAM = {SaslMechanism.SCRAM_SHA_256: (1, "sha256"), SaslMechanism.SCRAM_SHA_512: (2, "sha512")}
_ALLOW = 3
_ANY = 1  # resource type, pattern, operation and permission filter "any"


@dataclass(frozen=True)
class ScramCredential:
    user: str
    mechanism: SaslMechanism
    iterations: int
    salt: bytes
    # Secret: whoever has it can log in as the user. Kept out of repr, so never in a log line.
    salted_password: bytes = field(repr=False)


def scram_credential(
    user: str,
    password: str,
    mechanism: SaslMechanism,
    iterations: int = SCRAM_ITERATIONS,
    salt: bytes | None = None,
) -> ScramCredential:
    """RFC 5802's SaltedPassword: PBKDF2 over the password with a salt (fresh and random unless
    given, which only a test of the arithmetic does)."""
    if mechanism not in _SCRAM:
        raise ValueError(f"{mechanism} is not a SCRAM mechanism")
    salt = secrets.token_bytes(32) if salt is None else salt
    digest = _SCRAM[mechanism][1]
    salted = hashlib.pbkdf2_hmac(digest, password.encode("utf-8"), salt, iterations)
    return ScramCredential(user, mechanism, iterations, salt, salted)


def scram_format_argument(credential: ScramCredential) -> str:
    """The value of one ``kafka-storage format --add-scram`` option for this credential."""
    salt = base64.b64encode(credential.salt).decode()
    salted = base64.b64encode(credential.salted_password).decode()
    return (
        f"{credential.mechanism}=[name={credential.user},iterations={credential.iterations},"
        f'salt="{salt}",saltedpassword="{salted}"]'
    )


# ---- AlterUserScramCredentials v0 (API key 51; flexible encoding) ----------------------------


class _AlterUserScramCredentialsResponse_v0(Response):
    API_KEY = 51
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            CompactArray(
                ("user", CompactString("utf-8")),
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _AlterUserScramCredentialsRequest_v0(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 51
    API_VERSION = 0
    RESPONSE_TYPE = _AlterUserScramCredentialsResponse_v0
    SCHEMA = Schema(
        (
            "deletions",
            CompactArray(("name", CompactString("utf-8")), ("mechanism", Int8), ("tags", TaggedFields)),
        ),
        (
            "upsertions",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("mechanism", Int8),
                ("iterations", Int32),
                ("salt", CompactBytes),
                ("salted_password", CompactBytes),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _AlterUserScramCredentials(Request[_AlterUserScramCredentialsRequest_v0]):
    API_KEY = 51

    def __init__(self, upsertions: Sequence[ScramCredential]) -> None:
        self._upsertions = upsertions

    def build(
        self, request_struct_class: type[_AlterUserScramCredentialsRequest_v0]
    ) -> _AlterUserScramCredentialsRequest_v0:
        rows: list[tuple[Any, ...]] = [
            (c.user, _SCRAM[c.mechanism][0], c.iterations, c.salt, c.salted_password, {})
            for c in self._upsertions
        ]
        return request_struct_class([], rows, {})


# ---- CreateAcls v1 with many creations, DescribeAcls v1 -------------------------------------


class _CreateAcls(Request[CreateAclsRequest_v1]):
    API_KEY = 30

    def __init__(self, creations: Sequence[tuple[Any, ...]]) -> None:
        self._creations = creations

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(list(self._creations))


class _DescribeAllAcls(Request[DescribeAclsRequest_v1]):
    API_KEY = 29

    def build(self, request_struct_class: type[DescribeAclsRequest_v1]) -> DescribeAclsRequest_v1:
        return request_struct_class(_ANY, None, _ANY, None, None, _ANY, _ANY)


async def _send(client: Any, request: Request[Any]) -> Any:
    """Send to any broker (KRaft brokers forward ACL and credential changes to the controller)."""
    node = client.get_random_node()
    if node is None:
        await client.force_metadata_update()
        node = client.get_random_node()
    if node is None:
        raise BrokerError("the cluster reported no brokers")
    return (await client.send(node, request)).to_object()


async def apply_acls(client: Any, table: Iterable[Principal]) -> int:
    """Create every grant of every principal in ``table`` (existing ones are left as they are);
    returns how many grants were sent. ``client``: a started ``make_protocol_client``."""
    rules = [(p.acl_principal, g) for p in table for g in p.grants]
    if not rules:
        return 0
    creations = [(g.resource, g.name, g.pattern, who, ANY_HOST, g.operation, _ALLOW) for who, g in rules]
    response = await _send(client, _CreateAcls(creations))
    failures = [
        f"{rules[i][0]}: {rules[i][1].describe()}: {r['error_message']}"
        for i, r in enumerate(response["creation_responses"])
        if r["error_code"] != 0
    ]
    if failures:
        raise BrokerError("could not create ACLs:\n  " + "\n  ".join(failures), reason="acl")
    return len(rules)


async def describe_acls(client: Any) -> dict[str, set[Grant]]:
    """Every ALLOW ACL on the cluster, by principal (``User:name``)."""
    response = await _send(client, _DescribeAllAcls())
    if response["error_code"] != 0:
        raise BrokerError(f"could not describe ACLs: {response['error_message']}", reason="acl")
    found: dict[str, set[Grant]] = {}
    for resource in response["resources"]:
        for acl in resource["acls"]:
            if acl["permission_type"] != _ALLOW:
                continue
            grant = Grant(
                Resource(resource["resource_type"]),
                resource["resource_name"],
                Pattern(resource["resource_pattern_type"]),
                Operation(acl["operation"]),
            )
            found.setdefault(acl["principal"], set()).add(grant)
    return found


async def upsert_scram(client: Any, credentials: Sequence[ScramCredential]) -> None:
    """Create or replace the users' SCRAM credentials; a refusal names the user and the reason."""
    # Kafka alters a user at most once per request: one request per mechanism.
    failures: list[str] = []
    for mechanism in dict.fromkeys(c.mechanism for c in credentials):
        batch = [c for c in credentials if c.mechanism is mechanism]
        response = await _send(client, _AlterUserScramCredentials(batch))
        results = response["results"]
        failures += [f"{r['user']}: {r['error_message']}" for r in results if r["error_code"] != 0]
    if failures:
        raise BrokerError("could not set SCRAM credentials:\n  " + "\n  ".join(failures), reason="scram")

"""deploy/asyncapi.yaml and the code agree: every topic, every message, every field, type and limit.

The expected JSON schema of each dataclass is derived here from its type hints and field limits,
and compared with the document's (descriptions aside). A field added to a message or a row added
to the topic table without updating the document fails this test.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import yaml

from shared.kafka.topics import TOPICS, partitions_for
from shared.messages.schemas import MESSAGE_TYPES, NESTED_TYPES

DOC_PATH = Path(__file__).resolve().parents[3] / "deploy" / "asyncapi.yaml"
DEFAULT_FRAMES_PARTITIONS = 4  # ensure_topics' default, as the document states


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded = yaml.safe_load(DOC_PATH.read_text())
    assert isinstance(loaded, dict)
    return loaded


def field_schema(tp: Any, lim: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema (AsyncAPI schema, draft-07 style) for a field type and its limits."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        (inner,) = [t for t in get_args(tp) if t is not type(None)]
        schema = field_schema(inner, lim)
        if "$ref" in schema:
            return {"oneOf": [schema, {"type": "null"}]}
        return {**schema, "type": [schema["type"], "null"]}
    if dataclasses.is_dataclass(tp):
        return {"$ref": f"#/components/schemas/{tp.__name__}"}
    item_lim = {k: v for k, v in lim.items() if k == "max_len"}
    if origin is list:
        (item,) = get_args(tp)
        schema = {"type": "array", "items": field_schema(item, item_lim)}
        if "max_items" in lim:
            schema["maxItems"] = lim["max_items"]
        return schema
    if origin is tuple:
        items = [field_schema(t, lim) for t in get_args(tp)]
        return {"type": "array", "items": items, "minItems": len(items), "maxItems": len(items)}
    if origin is dict:
        schema = {"type": "object", "additionalProperties": field_schema(get_args(tp)[1], item_lim)}
        if "max_items" in lim:
            schema["maxProperties"] = lim["max_items"]
        if "max_len" in lim:
            schema["propertyNames"] = {"maxLength": lim["max_len"]}
        return schema
    names = {str: "string", bytes: "string", int: "integer", float: "number", bool: "boolean"}
    schema = {"type": names[tp]}
    if tp is bytes:
        schema["format"] = "binary"
    for key, json_key in (
        ("min_len", "minLength"),
        ("max_len", "maxLength"),
        ("minimum", "minimum"),
        ("maximum", "maximum"),
    ):
        if key in lim:
            schema[json_key] = lim[key]
    if "choices" in lim:
        schema["enum"] = list(lim["choices"])
    return schema


def expected_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    if cls in MESSAGE_TYPES:
        properties["schema"] = {"const": cls.SCHEMA}  # type: ignore[attr-defined]
        properties["v"] = {"const": cls.VERSION}  # type: ignore[attr-defined]
        required += ["schema", "v"]
    for f in dataclasses.fields(cls):
        properties[f.name] = field_schema(hints[f.name], f.metadata.get("limits", {}))
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    return {"type": "object", "additionalProperties": False, "required": required, "properties": properties}


def without_descriptions(value: Any) -> Any:
    if isinstance(value, dict):
        # Annotations are strings; a property that happens to be named "description" is a schema.
        return {
            k: without_descriptions(v)
            for k, v in value.items()
            if not (k in ("description", "title") and isinstance(v, str))
        }
    if isinstance(value, list):
        return [without_descriptions(v) for v in value]
    return value


def test_document_is_asyncapi_3(doc: dict[str, Any]) -> None:
    assert str(doc["asyncapi"]).startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["defaultContentType"] == "application/msgpack"


@pytest.mark.parametrize("cls", MESSAGE_TYPES + NESTED_TYPES, ids=lambda c: c.__name__)
def test_every_schema_matches_its_dataclass(doc: dict[str, Any], cls: type) -> None:
    documented = doc["components"]["schemas"].get(cls.__name__)
    assert documented is not None, f"{cls.__name__} is not in {DOC_PATH.name}"
    assert without_descriptions(documented) == expected_schema(cls)


def test_no_schema_without_a_dataclass(doc: dict[str, Any]) -> None:
    assert set(doc["components"]["schemas"]) == {c.__name__ for c in MESSAGE_TYPES + NESTED_TYPES}


def test_every_top_level_message_is_documented(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    for cls in MESSAGE_TYPES:
        message = messages[cls.__name__]
        assert message["name"] == cls.SCHEMA  # type: ignore[attr-defined]
        assert message["payload"] == {"$ref": f"#/components/schemas/{cls.__name__}"}


def _class_for_schema(name: str) -> type:
    (cls,) = [c for c in MESSAGE_TYPES if name == c.SCHEMA]  # type: ignore[attr-defined]
    return cls


def test_every_topic_is_a_channel_with_its_message_key_and_configuration(doc: dict[str, Any]) -> None:
    channels = doc["channels"]
    assert set(channels) == {spec.name for spec in TOPICS}
    for spec in TOPICS:
        channel = channels[spec.name]
        assert channel["address"] == "{prefix}." + spec.name
        assert channel["parameters"]["prefix"]["default"] == "lineguard"
        cls = _class_for_schema(spec.schema)
        ((_, ref),) = channel["messages"].items()
        assert ref == {"$ref": f"#/components/messages/{cls.__name__}"}
        binding = channel["bindings"]["kafka"]
        assert binding["partitions"] == partitions_for(spec, DEFAULT_FRAMES_PARTITIONS), spec.name
        assert binding["replicas"] == 1
        # The full configuration is the channel's x-kafka-topic-config; the keys the Kafka binding
        # knows are repeated in its topicConfiguration.
        assert channel["x-kafka-topic-config"] == dict(spec.config), spec.name
        for k, v in binding["topicConfiguration"].items():
            assert (",".join(v) if isinstance(v, list) else str(v)) == spec.config[k], (spec.name, k)
        key = doc["components"]["messages"][cls.__name__]["bindings"]["kafka"]["key"]
        assert key["description"] == spec.key, spec.name


def test_operations_refer_to_existing_channels(doc: dict[str, Any]) -> None:
    for name, operation in doc["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel = operation["channel"]["$ref"].removeprefix("#/channels/")
        assert channel in doc["channels"], name
    used = {op["channel"]["$ref"].removeprefix("#/channels/") for op in doc["operations"].values()}
    assert used == set(doc["channels"])

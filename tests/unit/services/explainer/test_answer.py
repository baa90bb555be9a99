import json
from typing import Any

import pytest

from services.explainer.answer import (
    ANSWER_SCHEMA,
    AnswerError,
    DefectFinding,
    VlmAnswer,
    extract_json_object,
    parse_answer,
)
from tests.support.reports import answer_json


def test_plain_json_answer_parses() -> None:
    answer = parse_answer(answer_json(confidence=0.7))
    assert answer.anomalous and answer.confidence == 0.7
    assert answer.defects[0].location == "upper right"


@pytest.mark.parametrize(
    "wrap",
    [
        "```json\n{}\n```",
        "```\n{}\n```",
        "Here is my assessment:\n\n```json\n{}\n```\nLet me know if you need more.",
        "Sure. {} Hope this helps.",
        "  {}  ",
    ],
)
def test_fenced_and_chatty_answers_are_tolerated(wrap: str) -> None:
    text = wrap.replace("{}", answer_json(), 1)
    assert parse_answer(text).assessment.startswith("The part has")


def test_the_first_object_wins_over_prose_braces() -> None:
    text = "Notes {not json} then " + answer_json(defect_type="crack")
    assert parse_answer(text).defects[0].type == "crack"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("I cannot tell.", "no JSON object"),
        ('{"anomalous": true, "confidence": 0.5,', "invalid JSON"),
        ("[1, 2]", "no JSON object"),
    ],
)
def test_text_without_an_object_is_refused_with_a_reason(text: str, expected: str) -> None:
    with pytest.raises(AnswerError, match=expected):
        extract_json_object(text)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"confidence": 1.5}, "confidence"),
        (
            {
                "defects": [
                    {
                        "type": "x",
                        "location": "top",
                        "severity": "minor",
                        "description": "",
                        "possible_cause": "",
                    }
                ]
            },
            "defects.0.location",
        ),
        (
            {
                "defects": [
                    {
                        "type": "x",
                        "location": "center",
                        "severity": "fatal",
                        "description": "",
                        "possible_cause": "",
                    }
                ]
            },
            "defects.0.severity",
        ),
        ({"anomalous": "maybe"}, "anomalous"),
    ],
)
def test_schema_violations_name_the_field(override: dict[str, Any], field: str) -> None:
    with pytest.raises(AnswerError, match=field.replace(".", r"\.")):
        parse_answer(answer_json(**override))


def test_missing_field_is_a_schema_error() -> None:
    value = json.loads(answer_json())
    del value["root_cause"]
    with pytest.raises(AnswerError, match="root_cause"):
        parse_answer(json.dumps(value))


def test_oversized_answer_is_refused() -> None:
    with pytest.raises(AnswerError, match="characters"):
        extract_json_object("x" * 70_000)


def _strict(schema: dict[str, Any]) -> None:
    if schema.get("type") == "object":
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) == set(schema["properties"])
        for sub in schema["properties"].values():
            _strict(sub)
    if schema.get("type") == "array":
        _strict(schema["items"])


def test_schema_is_valid_for_strict_structured_outputs_and_matches_the_model() -> None:
    _strict(ANSWER_SCHEMA)
    assert set(ANSWER_SCHEMA["properties"]) == set(VlmAnswer.model_fields)
    item = ANSWER_SCHEMA["properties"]["defects"]["items"]
    assert set(item["properties"]) == set(DefectFinding.model_fields)
    json.dumps(ANSWER_SCHEMA)  # serialisable as sent

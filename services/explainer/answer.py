"""The VLM's answer: its JSON schema and how it is requested, a tolerant parser with strict
validation, and the two turns that ask again (repair, follow-up).

Endpoints differ: some honour structured outputs, some only JSON mode, some wrap JSON in markdown
fences or add chatter around it. ``parse_answer`` finds the JSON object in whatever came back and
validates it; the error message it raises is what the repair round-trip shows the model.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.explainer.geometry import LOCATION_CODES
from shared.errors import LineguardError

SEVERITIES = ("minor", "moderate", "severe")
MAX_ANSWER_CHARS = 64_000  # an answer longer than this is not a report
Message = dict[str, Any]  # one chat-completions message, as sent


class DefectFinding(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = Field(min_length=1, max_length=80)
    location: Literal[LOCATION_CODES]  # type: ignore[valid-type]
    severity: Literal["minor", "moderate", "severe"]
    description: str = Field(max_length=2000)
    possible_cause: str = Field(max_length=2000)


class VlmAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    anomalous: bool
    confidence: float = Field(ge=0, le=1)
    observations: str = Field(max_length=4000)  # the step-by-step look, kept as evidence
    defects: list[DefectFinding] = Field(max_length=20)
    assessment: str = Field(max_length=4000)
    root_cause: str = Field(max_length=2000)
    recommended_actions: list[str] = Field(max_length=10)


def _string(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


# Written out (not generated) so it stays inside the subset strict structured outputs accept:
# every property required, no additional properties, no numeric bounds.
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "anomalous",
        "confidence",
        "observations",
        "defects",
        "assessment",
        "root_cause",
        "recommended_actions",
    ],
    "properties": {
        "anomalous": {"type": "boolean", "description": "true if the part has a real defect"},
        "confidence": {"type": "number", "description": "0 to 1: how sure you are"},
        "observations": _string("what you see, step by step, before concluding"),
        "defects": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "location", "severity", "description", "possible_cause"],
                "properties": {
                    "type": _string("defect type, from the vocabulary when one fits"),
                    "location": {"type": "string", "enum": list(LOCATION_CODES)},
                    "severity": {"type": "string", "enum": list(SEVERITIES)},
                    "description": _string("what the defect looks like"),
                    "possible_cause": _string("likely process cause"),
                },
            },
        },
        "assessment": _string("overall assessment in one or two sentences"),
        "root_cause": _string("most likely root cause across the findings, or empty"),
        "recommended_actions": {"type": "array", "items": {"type": "string"}},
    },
}


class AnswerError(LineguardError, ValueError):
    """The text is not a valid answer; ``detail`` says why, briefly (shown to the model on repair)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="invalid_answer")
        self.detail = detail


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text``: the whole text, a fenced block, or an object embedded
    in prose. Raises ``AnswerError``."""
    if len(text) > MAX_ANSWER_CHARS:
        raise AnswerError(f"answer is {len(text)} characters, more than {MAX_ANSWER_CHARS}")
    stripped = text.strip()
    if not stripped:
        raise AnswerError("the answer is empty")
    candidates = [stripped, *(m.group(1).strip() for m in _FENCE.finditer(text))]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    decoder = json.JSONDecoder()
    first_error = "no JSON object found"
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError as exc:
            if first_error == "no JSON object found":
                first_error = f"invalid JSON: {exc}"
            continue
        if isinstance(value, dict):
            return value
    raise AnswerError(first_error)


def validate_answer(value: dict[str, Any]) -> VlmAnswer:
    try:
        return VlmAnswer.model_validate(value)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()[:8]
        ]
        raise AnswerError("the JSON does not match the schema: " + "; ".join(problems)) from None


def parse_answer(text: str) -> VlmAnswer:
    return validate_answer(extract_json_object(text))


def response_format(structured: bool) -> dict[str, Any]:
    """How the answer is requested: the schema itself (structured outputs), or any JSON object
    (JSON mode; the schema is then spelled out in the prompt)."""
    if structured:
        return {
            "type": "json_schema",
            "json_schema": {"name": "defect_assessment", "strict": True, "schema": ANSWER_SCHEMA},
        }
    return {"type": "json_object"}


def repair_messages(language_note: str, bad_answer: str, problem: str) -> list[Message]:
    """The one repair round-trip, in text only: the model's answer and what is wrong with it.
    Fixing the form of an answer needs no pictures, so none is sent again (and the call is
    charged like any other)."""
    return [
        {
            "role": "system",
            "content": "You correct a JSON answer so that it conforms to a JSON schema. "
            + language_note
            + " Reply with the corrected JSON object only.",
        },
        {"role": "assistant", "content": bad_answer[:8000]},
        {
            "role": "user",
            "content": (
                f"That answer cannot be used: {problem[:1000]}. Reply with only the corrected JSON object, "
                "conforming to this schema, keeping what you said where it fits, and nothing else:\n"
                + json.dumps(ANSWER_SCHEMA, separators=(",", ":"))
            ),
        },
    ]


def follow_up_messages(
    messages: list[Message], answer_json: str, confidence: float, top_position: str
) -> list[Message]:
    """The low-confidence follow-up: ask the model to look again where the heatmap points."""
    where = f" at the {top_position}" if top_position else ""
    return [
        *messages,
        {"role": "assistant", "content": answer_json},
        {
            "role": "user",
            "content": (
                f"Your confidence is low ({confidence:.2f}). Look again at the close-up crop and the "
                f"region{where} the anomaly model flagged. Is there a visible defect, or is it normal "
                "variation (texture, lighting, dust on the lens)? Answer again with the complete JSON "
                "object, same schema."
            ),
        },
    ]

"""The grounded inspection prompt: what the scorer knows, in words, plus the pictures the egress
policy lets out, as OpenAI chat-completions messages."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.explainer.answer import ANSWER_SCHEMA
from services.explainer.geometry import LOCATION_CODES
from services.explainer.i18n import LANGUAGE_NAMES
from services.explainer.imaging import EventPictures, data_url
from services.explainer.report import EventFacts
from shared.settings import EgressPolicy

Message = dict[str, Any]


@dataclass(frozen=True)
class Reference:
    """A few-shot reference picture of the class: ``label`` is "normal" or "defective"."""

    label: str
    jpeg: bytes


def system_prompt(language: str) -> str:
    return (
        "You are a senior visual quality inspector on a factory line. An anomaly-detection model has "
        "flagged a part; you look at the pictures and write a grounded defect assessment. Work step by "
        "step: first describe what you see in 'observations', then decide. The heatmap shows where the "
        "anomaly model found deviations from good parts; it can be wrong, so trust the pixels of the "
        "part over the heatmap and say so when they disagree. Use the class's defect vocabulary for "
        "'type' when a term fits. For 'location' use exactly one of: "
        + ", ".join(LOCATION_CODES)
        + ". Severity is minor, moderate or severe. Report only defects you can see. "
        f"Write all free text in {LANGUAGE_NAMES[language]}; keep JSON keys and enum values in English. "
        "Answer with a single JSON object only."
    )


def grounding_text(
    facts: EventFacts, vocabulary: list[str], egress: EgressPolicy, crop_origin: tuple[int, int] | None
) -> str:
    lines = [
        f"Line {facts.line_id}, station {facts.station_id}, camera {facts.camera_id}.",
        f"Product class: {facts.product_class} (routing confidence {facts.route_confidence:.2f}).",
        f"Anomaly model decision: {facts.decision}; score {facts.score:.3f} on a scale where 0.5 is the "
        f"class threshold (raw score {facts.raw_score:.4g}, raw threshold {facts.threshold:.4g}).",
    ]
    if facts.image_width and facts.image_height:
        lines.append(f"Image size: {facts.image_width}x{facts.image_height} pixels.")
    if facts.regions:
        lines.append("Anomalous regions, most anomalous first:")
        for index, region in enumerate(facts.regions[:5], 1):
            lines.append(
                f"  {index}. {region.position or 'position unknown'}: box x={region.x} y={region.y} "
                f"w={region.width} h={region.height}, {region.area_fraction:.2%} of the part, "
                f"region score {region.score:.3f}"
            )
    else:
        lines.append("The anomaly model reported no region above threshold.")
    lines.append(
        "Defect vocabulary for this class: " + (", ".join(vocabulary) if vocabulary else "(none)") + "."
    )
    if egress is EgressPolicy.CROP:
        origin = f" starting at x={crop_origin[0]} y={crop_origin[1]}" if crop_origin else ""
        lines.append(
            "Only a crop around the top region is shown (plant policy)" + origin + "; state the location "
            "on the whole part from the region positions above."
        )
    return "\n".join(lines)


def _image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": "high"}}


def _label(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def build_messages(
    facts: EventFacts,
    pictures: EventPictures,
    *,
    egress: EgressPolicy,
    vocabulary: list[str],
    language: str,
    structured: bool,
    references: list[Reference] | None = None,
) -> list[Message]:
    """System and user messages; images per the egress policy (``full``: frame, overlay, crop and
    references; ``crop``: the crop alone). ``none`` never reaches here."""
    if egress is EgressPolicy.NONE:
        raise ValueError("egress policy 'none' sends nothing; write the fallback report instead")
    origin = (pictures.crop_box.x0, pictures.crop_box.y0)
    content: list[dict[str, Any]] = [_label(grounding_text(facts, vocabulary, egress, origin))]
    if egress is EgressPolicy.FULL:
        for reference in references or []:
            content += [
                _label(f"Reference image of a {reference.label} {facts.product_class} part:"),
                _image(data_url(reference.jpeg)),
            ]
        content += [
            _label("The flagged part:"),
            _image(data_url(pictures.frame)),
            _label("Anomaly heatmap over the part (red = most anomalous):"),
            _image(data_url(pictures.overlay)),
        ]
    content += [_label("Close-up crop around the most anomalous region:"), _image(data_url(pictures.crop))]
    instruction = "Assess the part and answer with the JSON object."
    if not structured:
        instruction += " It must conform to this JSON schema:\n" + json.dumps(
            ANSWER_SCHEMA, separators=(",", ":")
        )
    content.append(_label(instruction))
    return [{"role": "system", "content": system_prompt(language)}, {"role": "user", "content": content}]


def response_format(structured: bool) -> dict[str, Any]:
    if structured:
        return {
            "type": "json_schema",
            "json_schema": {"name": "defect_assessment", "strict": True, "schema": ANSWER_SCHEMA},
        }
    return {"type": "json_object"}


def repair_messages(messages: list[Message], bad_answer: str, problem: str) -> list[Message]:
    """The one repair round-trip: show the model its answer and what is wrong with it."""
    return [
        *messages,
        {"role": "assistant", "content": bad_answer[:8000]},
        {
            "role": "user",
            "content": (
                f"That answer cannot be used: {problem[:1000]}. Reply with only the corrected JSON object, "
                "conforming to this schema, and nothing else:\n"
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

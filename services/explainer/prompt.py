"""Step two of an event's path: the grounded inspection prompt. What the scorer knows, in words,
plus the pictures the egress policy lets out, as OpenAI chat-completions messages."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.explainer.answer import ANSWER_SCHEMA, Message
from services.explainer.facts import EventFacts
from services.explainer.geometry import LOCATION_CODES
from services.explainer.i18n import LANGUAGE_NAMES
from services.explainer.pictures import EventPictures, Reference, data_url
from shared.errors import ConfigError
from shared.settings import EgressPolicy


@dataclass(frozen=True)
class Prompt:
    """The opening of the conversation in the two forms an endpoint may need: with structured
    outputs the schema travels in the request, in JSON mode it is spelled out in the text. Also
    where the heatmap points, for the follow-up question."""

    structured: list[Message]
    json_mode: list[Message]
    top_position: str


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
    v = facts.verdict
    lines = [
        f"Line {v.line_id}, station {v.station_id}, camera {v.camera_id}.",
        f"Product class: {v.product_class} (routing confidence {v.route_confidence:.2f}).",
        f"Anomaly model decision: {facts.decision}; score {v.score:.3f} on a scale where 0.5 is the "
        f"class threshold (raw score {v.raw_score:.4g}, raw threshold {v.threshold:.4g}).",
        f"Image size: {facts.width}x{facts.height} pixels.",
    ]
    if v.regions:
        lines.append("Anomalous regions, most anomalous first:")
        for index, (region, position) in enumerate(zip(v.regions[:5], facts.positions, strict=False), 1):
            lines.append(
                f"  {index}. {position}: box x={region.x} y={region.y} "
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
        raise ConfigError("egress policy 'none' sends nothing; write the fallback report instead")
    origin = (pictures.crop_box.x0, pictures.crop_box.y0)
    content: list[dict[str, Any]] = [_label(grounding_text(facts, vocabulary, egress, origin))]
    if egress is EgressPolicy.FULL:
        for reference in references or []:
            content += [
                _label(f"Reference image of a {reference.label} {facts.verdict.product_class} part:"),
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


def build_prompt(
    facts: EventFacts,
    pictures: EventPictures,
    *,
    egress: EgressPolicy,
    vocabulary: list[str],
    language: str,
    references: list[Reference],
) -> Prompt:
    """The prompt for ``facts``, in both forms (see ``Prompt``)."""

    def messages(structured: bool) -> list[Message]:
        return build_messages(
            facts,
            pictures,
            egress=egress,
            vocabulary=vocabulary,
            language=language,
            structured=structured,
            references=references,
        )

    return Prompt(messages(True), messages(False), facts.positions[0] if facts.positions else "")

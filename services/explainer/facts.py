"""Step one of an event's path: what is known about the flagged frame.

The scorer's verdict is kept as it came off the wire (``Verdict``, its regions ``RegionMsg``); to
it this step adds what the pictures show: the frame, the heatmap over it and the crop for the report
and the prompt, and the share of the heat in each grid cell for the location cross-check. Frame and
map are decoded by the one bounded decoder of each (``shared.messages``); an undecodable picture is
not an error here, it is a fact (``image_problem``) that later steps turn into a fallback report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from services.explainer.geometry import cell_shares, region_position
from services.explainer.pictures import EventPictures, make_pictures
from shared.engine.config import Decision
from shared.errors import ImageError
from shared.frames_store import FrameImage, image_of
from shared.limits import MAX_IMAGE_BYTES, MAX_PIXELS
from shared.messages.anomaly_map import decode_anomaly_map, resize_levels
from shared.messages.schemas import DefectEvent, Verdict
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.explainer")


@dataclass(frozen=True)
class EventFacts:
    """The grounding for the prompt and the report: plain data, read once from the event."""

    verdict: Verdict  # as it came off the wire; its regions (RegionMsg) most anomalous first
    decision: Decision
    width: int  # the frame's size: the regions' coordinate space
    height: int
    positions: tuple[str, ...]  # the grid cell code of each region's centre, in the verdict's order
    pictures: EventPictures | None = None  # None when the frame or its map cannot be decoded
    heat_shares: dict[str, float] | None = None  # share of the hot pixels per grid cell
    image_problem: str = ""  # the decoder's reason code when there are no pictures


def verdict_facts(verdict: Verdict, width: int, height: int) -> EventFacts:
    """What the verdict alone says about a frame of ``width`` x ``height`` (no pictures yet)."""
    positions = tuple(region_position(r.x, r.y, r.width, r.height, width, height) for r in verdict.regions)
    return EventFacts(verdict, Decision(verdict.decision), width, height, positions)


def read_facts(
    event: DefectEvent, image: FrameImage | None = None, *, frame_max_side: int, crop_max_side: int
) -> EventFacts:
    """The facts of ``event``: its verdict, and its pictures when frame and map decode. ``image``:
    a claim-checked frame's bytes, fetched and verified by the service (None: the event's own)."""
    facts = verdict_facts(event.verdict, event.width, event.height)
    try:
        if image is None:  # a claim check without its fetched bytes: no_claim_store, a fact
            image = image_of(event, None, max_bytes=MAX_IMAGE_BYTES, max_pixels=MAX_PIXELS)
        frame = image.pixels(event)
        levels = decode_anomaly_map(event.anomaly_map_png)
    except ImageError as exc:
        log_event(
            log,
            "event_image_unusable",
            logging.WARNING,
            frame_id=event.verdict.frame_id,
            reason=exc.reason,
        )
        return replace(facts, image_problem=exc.reason)
    regions = event.verdict.regions
    pictures = make_pictures(
        frame,
        levels,
        regions[0] if regions else None,
        frame_max_side=frame_max_side,
        crop_max_side=crop_max_side,
    )
    shares = cell_shares(resize_levels(levels, event.width, event.height))  # the frame's own size
    return replace(facts, pictures=pictures, heat_shares=shares)

"""Report files: JSON (the record), Markdown (for tickets and chat) and a self-contained HTML page
with the frame, heatmap and crop embedded. All free text is escaped; the HTML loads nothing."""

from __future__ import annotations

import json
import re
import time
from html import escape

from services.explainer import i18n
from services.explainer.document import UNCLASSIFIED, ReportDocument
from services.explainer.geometry import region_position
from services.explainer.pictures import EventPictures, data_url


def render_json(doc: ReportDocument) -> str:
    return json.dumps(doc.to_dict(), ensure_ascii=False, indent=2, sort_keys=True)


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ns / 1e9))


def _source_line(doc: ReportDocument) -> str:
    lang = doc.language
    if doc.source == "vlm":
        return i18n.text(lang, "source_vlm", model=doc.vlm_model)
    return i18n.text(lang, "source_fallback")


_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")  # every ASCII punctuation character
_UNTRUSTED_ROWS = (True, True, True, True)  # line, station, camera, product: ids from the wire


def _facts_rows(doc: ReportDocument) -> list[tuple[str, str]]:
    lang = doc.language
    t = lambda key: i18n.text(lang, key)  # noqa: E731
    rows = [
        (t("line"), doc.line_id),
        (t("station"), doc.station_id),
        (t("camera"), doc.camera_id),
        (t("product"), doc.product_class),
        (t("decision"), doc.decision),
        (t("score"), f"{doc.score:.3f}"),
        (t("source"), _source_line(doc)),
    ]
    if doc.confidence is not None:
        rows.append((t("confidence"), f"{doc.confidence:.2f}"))
    return rows


def _esc(text: str) -> str:
    """Our own text (fixed texts with values from the wire in them) as plain Markdown: every
    ASCII punctuation character backslash-escaped, so nothing in it becomes a link, image,
    heading, emphasis, HTML or a table break, and one line."""
    return _PUNCTUATION.sub(r"\\\g<0>", " ".join(text.split()))


def _code(text: str, *, table: bool = False) -> str:
    """Untrusted text (the VLM's words, ids from the wire) as an inline code span: shown verbatim,
    never interpreted (no link, image, heading or HTML). The fence is longer than any run of
    backticks inside; in a table cell pipes are escaped, the one thing GFM tables read inside."""
    flat = " ".join(text.split())
    if not flat:
        return ""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", flat)), default=0) + 1)
    if table:
        flat = flat.replace("|", "\\|")
    return f"{fence} {flat} {fence}"


def _code_block(text: str) -> list[str]:
    """Untrusted multi-line text as a fenced code block (its lines kept), the fence longer than
    any backtick run inside, so the text cannot close it."""
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return [fence + "text", *text.splitlines(), fence]


def _vlm_markdown(doc: ReportDocument) -> list[str]:
    """The VLM's own words, quoted, under a heading that says whose they are."""
    lang = doc.language
    t = lambda key: i18n.text(lang, key)  # noqa: E731
    parts: list[tuple[str, str]] = [
        ("vlm_assessment", doc.vlm_assessment),
        ("vlm_observations", doc.vlm_observations),
        ("vlm_root_cause", doc.vlm_root_cause),
    ]
    if not any(text for _, text in parts) and not doc.vlm_suggestions:
        return []
    lines = ["", f"## {_esc(t('vlm_words'))}"]
    for key, text in parts:
        if text:
            lines += ["", f"**{_esc(t(key))}**", "", *_code_block(text)]
    if doc.vlm_suggestions:
        lines += ["", f"**{_esc(t('vlm_suggestions'))}**", ""]
        lines += [f"- {_code(a)}" for a in doc.vlm_suggestions]
    return lines


def render_markdown(doc: ReportDocument) -> str:
    """Markdown for tickets and chat. Fixed texts are escaped, untrusted text is quoted as code:
    nothing from the VLM or the wire becomes a heading, link, image or HTML."""
    lang = doc.language
    t = lambda key: i18n.text(lang, key)  # noqa: E731
    lines = [f"# {_esc(t('title'))}: {_code(doc.frame_id)}", "", f"_{_esc(_when(doc.captured_at))}_", ""]
    if doc.source == "fallback":
        lines += [f"> **{_esc(i18n.text(lang, 'fallback_notice', reason=doc.fallback_reason))}**", ""]
    if doc.vlm_disagrees:
        lines += [f"> **{_esc(i18n.text(lang, 'vlm_disagrees', decision=doc.decision))}**", ""]
    lines += ["| | |", "|---|---|"]
    for (key, value), untrusted in zip(_facts_rows(doc), _UNTRUSTED_ROWS, strict=False):
        shown = _code(value, table=True) if untrusted else _esc(value)
        lines.append(f"| {_esc(key)} | {shown} |")
    grade_meaning = i18n.GRADE_MEANINGS[lang][doc.grade]
    lines += ["", rf"## {_esc(t('grade'))}: **{_esc(doc.grade)}** \({_esc(grade_meaning)}\)", ""]
    lines += [f"## {_esc(t('summary'))}", "", _esc(doc.summary), "", f"## {_esc(t('findings'))}", ""]
    if not doc.findings:
        lines.append(_esc(t("no_findings")))
    elif any(f.by_vlm for f in doc.findings):
        lines += [f"_{_esc(t('vlm_findings'))}_", ""]
    for number, f in enumerate(doc.findings, 1):
        position = i18n.position_words(lang, f.location) if f.location else t("undetermined")
        flag = " ⚠" if f.location_agrees is False else ""
        words = _code if f.by_vlm else _esc
        kind = words(_type_words(lang, f.defect_type))
        lines.append(
            f"{number}. **{kind}** — {_esc(t('location'))}: {_esc(position)}{flag}; "
            f"{_esc(t('severity'))}: {_esc(i18n.severity_word(lang, f.severity))}. {words(f.description)}"
            + (f" {_esc(t('cause'))}: {words(f.possible_cause)}" if f.possible_cause else "")
        )
    lines += ["", f"## {_esc(t('evidence'))}", ""] + [f"- {_esc(e)}" for e in doc.evidence]
    if doc.root_cause:  # format 1 reports kept the VLM's root cause here
        lines += ["", f"**{_esc(t('root_cause'))}**", "", *_code_block(doc.root_cause)]
    lines += ["", f"## {_esc(t('actions'))}", ""] + [f"- {_esc(a)}" for a in doc.recommended_actions]
    lines += _vlm_markdown(doc)
    return "\n".join(lines) + "\n"


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
    ".grade{font-size:2.5em;font-weight:bold;padding:.1em .5em;border:3px solid #333;display:inline-block}"
    ".fallback{background:#fff3cd;border:2px solid #b58100;padding:.8em;font-weight:bold}"
    ".disagreement{background:#f8d7da;border:2px solid #a00;padding:.8em;font-weight:bold}"
    "blockquote.vlm{border-left:4px solid #999;margin:1em 0;padding:0 1em;color:#444}"
    ".mismatch{color:#a00;font-weight:bold}figure{display:inline-block;margin:.5em;vertical-align:top}"
    "img{max-width:340px;max-height:340px;border:1px solid #999}"
)


def _type_words(language: str, defect_type: str) -> str:
    return i18n.text(language, "unclassified") if defect_type == UNCLASSIFIED else defect_type


def _crop_caption(doc: ReportDocument, pictures: EventPictures) -> str:
    """Names the crop's place with the same position words as the findings, so the caption and the
    findings never seem to speak of different places."""
    if doc.region_positions:  # the crop is around the first (top) region
        position = i18n.position_words(doc.language, doc.region_positions[0])
        return i18n.text(doc.language, "crop_region", index=1, position=position)
    box = pictures.crop_box
    code = region_position(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0, pictures.width, pictures.height)
    return i18n.text(doc.language, "crop_peak", position=i18n.position_words(doc.language, code))


def _img(jpeg: bytes, caption: str) -> str:
    src = data_url(jpeg)
    label = escape(caption)
    return f'<figure><img src="{src}" alt="{label}"><figcaption>{label}</figcaption></figure>'


def _html_text(text: str) -> str:
    return "<br>".join(escape(line) for line in text.splitlines())


def _vlm_html(doc: ReportDocument) -> list[str]:
    """The VLM's own words in one quoted block, under a heading that says whose they are."""
    t = lambda key: i18n.text(doc.language, key)  # noqa: E731
    inner = [
        f"<h3>{escape(t(key))}</h3><p>{_html_text(text)}</p>"
        for key, text in (
            ("vlm_assessment", doc.vlm_assessment),
            ("vlm_observations", doc.vlm_observations),
            ("vlm_root_cause", doc.vlm_root_cause),
        )
        if text
    ]
    if doc.vlm_suggestions:
        items = "".join(f"<li>{escape(a)}</li>" for a in doc.vlm_suggestions)
        inner.append(f"<h3>{escape(t('vlm_suggestions'))}</h3><ul>{items}</ul>")
    if not inner:
        return []
    return [f"<h2>{escape(t('vlm_words'))}</h2>", '<blockquote class="vlm">', *inner, "</blockquote>"]


def render_html(doc: ReportDocument, pictures: EventPictures | None) -> str:
    lang = doc.language
    t = lambda key: i18n.text(lang, key)  # noqa: E731
    parts = [
        f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8">',
        f"<title>{escape(t('title'))}: {escape(doc.frame_id)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(t('title'))}: {escape(doc.frame_id)}</h1><p>{escape(_when(doc.captured_at))}</p>",
    ]
    if doc.source == "fallback":
        notice = i18n.text(lang, "fallback_notice", reason=doc.fallback_reason)
        parts.append(f'<p class="fallback">{escape(notice)}</p>')
    if doc.vlm_disagrees:
        notice = i18n.text(lang, "vlm_disagrees", decision=doc.decision)
        parts.append(f'<p class="disagreement">{escape(notice)}</p>')
    parts.append(
        "<table>"
        + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in _facts_rows(doc))
        + "</table>"
    )
    meaning = i18n.GRADE_MEANINGS[lang][doc.grade]
    parts.append(
        f"<h2>{escape(t('grade'))}</h2>"
        f'<p><span class="grade">{escape(doc.grade)}</span> {escape(meaning)}</p>'
    )
    parts.append(f"<h2>{escape(t('summary'))}</h2><p>{escape(doc.summary)}</p>")
    if pictures is not None:
        parts.append(f"<h2>{escape(t('images'))}</h2>")
        parts += [
            _img(pictures.frame, t("frame")),
            _img(pictures.overlay, t("overlay")),
            _img(pictures.crop, _crop_caption(doc, pictures)),
        ]
    parts.append(f"<h2>{escape(t('findings'))}</h2>")
    if any(f.by_vlm for f in doc.findings):
        parts.append(f'<p class="vlm-note">{escape(t("vlm_findings"))}</p>')
    if doc.findings:
        head = [t("type"), t("location"), t("severity"), t("findings"), t("cause")]
        parts.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>")
        for f in doc.findings:
            position = i18n.position_words(lang, f.location) if f.location else t("undetermined")
            css = ' class="mismatch"' if f.location_agrees is False else ""
            cells = [  # a VLM finding's type, description and cause are its words (row class vlm)
                f"<td>{escape(_type_words(lang, f.defect_type))}</td>",
                f"<td{css}>{escape(position)}</td>",
                f"<td>{escape(i18n.severity_word(lang, f.severity))}</td>",
                f"<td>{escape(f.description)}</td>",
                f"<td>{escape(f.possible_cause)}</td>",
            ]
            parts.append(('<tr class="vlm">' if f.by_vlm else "<tr>") + "".join(cells) + "</tr>")
        parts.append("</table>")
    else:
        parts.append(f"<p>{escape(t('no_findings'))}</p>")
    parts.append(f"<h2>{escape(t('evidence'))}</h2><ul>")
    parts += [f"<li>{escape(line)}</li>" for line in doc.evidence]
    parts.append("</ul>")
    if doc.root_cause:  # format 1 reports kept the VLM's root cause here
        quoted = f'<blockquote class="vlm">{_html_text(doc.root_cause)}</blockquote>'
        parts.append(f"<h2>{escape(t('root_cause'))}</h2>{quoted}")
    parts.append(f"<h2>{escape(t('actions'))}</h2><ol>")
    parts += [f"<li>{escape(a)}</li>" for a in doc.recommended_actions]
    parts.append("</ol>")
    parts += _vlm_html(doc)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

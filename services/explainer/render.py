"""Report files: JSON (the record), Markdown (for tickets and chat) and a self-contained HTML page
with the frame, heatmap and crop embedded. All free text is escaped; the HTML loads nothing."""

from __future__ import annotations

import json
import time
from html import escape

from services.explainer import i18n
from services.explainer.document import ReportDocument
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


def _md(text: str) -> str:
    """Markdown-neutral text: no raw HTML, no table breaks."""
    return escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: ReportDocument) -> str:
    lang = doc.language
    t = lambda key: i18n.text(lang, key)  # noqa: E731
    lines = [f"# {t('title')}: {_md(doc.frame_id)}", "", f"_{_when(doc.captured_at)}_", ""]
    if doc.source == "fallback":
        lines += [f"> **{_md(i18n.text(lang, 'fallback_notice', reason=doc.fallback_reason))}**", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {_md(k)} | {_md(v)} |" for k, v in _facts_rows(doc)]
    grade_meaning = i18n.GRADE_MEANINGS[lang][doc.grade]
    lines += ["", f"## {t('grade')}: **{doc.grade}** ({_md(grade_meaning)})", ""]
    lines += [f"## {t('summary')}", "", _md(doc.summary), "", f"## {t('findings')}", ""]
    if not doc.findings:
        lines.append(t("no_findings"))
    for number, f in enumerate(doc.findings, 1):
        position = i18n.position_words(lang, f.location) if f.location else t("undetermined")
        flag = " ⚠" if f.location_agrees is False else ""
        lines.append(
            f"{number}. **{_md(f.defect_type)}** — {t('location')}: {_md(position)}{flag}; "
            f"{t('severity')}: {_md(i18n.severity_word(lang, f.severity))}. {_md(f.description)}"
            + (f" {t('cause')}: {_md(f.possible_cause)}" if f.possible_cause else "")
        )
    lines += ["", f"## {t('evidence')}", ""] + [f"- {_md(e)}" for e in doc.evidence]
    if doc.root_cause:
        lines += ["", f"## {t('root_cause')}", "", _md(doc.root_cause)]
    lines += ["", f"## {t('actions')}", ""] + [f"- {_md(a)}" for a in doc.recommended_actions]
    return "\n".join(lines) + "\n"


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
    ".grade{font-size:2.5em;font-weight:bold;padding:.1em .5em;border:3px solid #333;display:inline-block}"
    ".fallback{background:#fff3cd;border:2px solid #b58100;padding:.8em;font-weight:bold}"
    ".mismatch{color:#a00;font-weight:bold}figure{display:inline-block;margin:.5em;vertical-align:top}"
    "img{max-width:340px;max-height:340px;border:1px solid #999}"
)


def _img(jpeg: bytes, caption: str) -> str:
    src = data_url(jpeg)
    label = escape(caption)
    return f'<figure><img src="{src}" alt="{label}"><figcaption>{label}</figcaption></figure>'


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
            _img(pictures.crop, t("crop")),
        ]
    parts.append(f"<h2>{escape(t('findings'))}</h2>")
    if doc.findings:
        head = [t("type"), t("location"), t("severity"), t("findings"), t("cause")]
        parts.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>")
        for f in doc.findings:
            position = i18n.position_words(lang, f.location) if f.location else t("undetermined")
            css = ' class="mismatch"' if f.location_agrees is False else ""
            cells = [
                f"<td>{escape(f.defect_type)}</td>",
                f"<td{css}>{escape(position)}</td>",
                f"<td>{escape(i18n.severity_word(lang, f.severity))}</td>",
                f"<td>{escape(f.description)}</td>",
                f"<td>{escape(f.possible_cause)}</td>",
            ]
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    else:
        parts.append(f"<p>{escape(t('no_findings'))}</p>")
    parts.append(f"<h2>{escape(t('evidence'))}</h2><ul>")
    parts += [f"<li>{escape(line)}</li>" for line in doc.evidence]
    parts.append("</ul>")
    if doc.root_cause:
        parts.append(f"<h2>{escape(t('root_cause'))}</h2><p>{escape(doc.root_cause)}</p>")
    parts.append(f"<h2>{escape(t('actions'))}</h2><ol>")
    parts += [f"<li>{escape(a)}</li>" for a in doc.recommended_actions]
    parts.append("</ol></body></html>")
    return "\n".join(parts) + "\n"

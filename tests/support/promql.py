"""Just enough PromQL lexing to list the metric names (and their label matchers) an expression uses.

Used by the observability tests to hold dashboards and alert rules to the metrics the services
really export. Functions, aggregations, keywords, label lists (``by (...)``), matchers inside
``{...}``, ranges and durations inside ``[...]`` and Grafana variables are not metric names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<num>(?:0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
            (?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@:])
    """,
    re.VERBOSE,
)

AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "atan2",
    "inf",
    "nan",
    "start",
    "end",
} | LABEL_LIST_KEYWORDS


class PromQLSyntaxError(ValueError):
    pass


@dataclass
class Selector:
    metric: str
    labels: set[str] = field(default_factory=set)
    matchers: dict[str, str] = field(default_factory=dict)  # label="value" (equality) matchers


def tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLSyntaxError(f"cannot lex {expr[pos : pos + 20]!r} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "ws":
            out.append((kind, match.group()))
        pos = match.end()
    return out


def _skip_group(toks: list[tuple[str, str]], i: int, open_: str, close: str) -> int:
    """Index just past the group that opens at toks[i]."""
    depth = 0
    while i < len(toks):
        if toks[i][1] == open_:
            depth += 1
        elif toks[i][1] == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise PromQLSyntaxError(f"unclosed {open_!r}")


def selectors(expr: str) -> list[Selector]:
    toks = tokens(expr)
    depth = 0
    for _, text in toks:
        depth += {"(": 1, ")": -1}.get(text, 0)
        if depth < 0:
            raise PromQLSyntaxError(f"unbalanced ')' in {expr!r}")
    if depth:
        raise PromQLSyntaxError(f"unclosed '(' in {expr!r}")
    found: list[Selector] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        if text == "[":
            i = _skip_group(toks, i, "[", "]")
            continue
        if text == "{":  # a selector without a name ({__name__=...}): not used here
            i = _skip_group(toks, i, "{", "}")
            continue
        if kind != "ident":
            i += 1
            continue
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text in LABEL_LIST_KEYWORDS and nxt == "(":
            i = _skip_group(toks, i + 1, "(", ")")
            continue
        if text in KEYWORDS or text in AGGREGATIONS or nxt == "(":
            i += 1  # keyword, aggregation or function call
            continue
        selector = Selector(text)
        i += 1
        if nxt == "{":
            end = _skip_group(toks, i, "{", "}")
            inner = toks[i + 1 : end - 1]
            for j, (k, t) in enumerate(inner):
                if k == "ident" and j + 1 < len(inner) and inner[j + 1][1] in ("=", "!=", "=~", "!~"):
                    selector.labels.add(t)
                    if inner[j + 1][1] == "=" and j + 2 < len(inner) and inner[j + 2][0] == "str":
                        selector.matchers[t] = inner[j + 2][1][1:-1]
            i = end
        found.append(selector)
    return found

"""What a PromQL expression refers to: metric names, label matchers, grouping labels.

Prometheus 2.42 (Debian's) has no `/api/v1/parse_query`, and `promtool` has no `promql` subcommand, so this is a
small tokenizer-driven extractor. It does not build a full AST; it walks the token stream with a stack of open
brackets, which is enough to tell a metric selector from a function call, an aggregation's `by (...)` list from a
vector, and to read the label arguments of `label_replace`/`label_join`/`count_values`. Anything it does not
understand (an unknown function, an unexpected character, an unbalanced bracket) raises `PromQLError`, so a typo
in a dashboard fails the test instead of being skipped. Syntax itself is validated by the real Prometheus
(`/api/v1/format_query`) in the live tests.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

AGGREGATIONS = frozenset("sum min max avg group stddev stdvar count count_values bottomk topk quantile".split())
# Prometheus 2.42 function names (promql/parser/functions.go of that release).
FUNCTIONS = frozenset(
    """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max
    clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv exp
    floor histogram_count histogram_fraction histogram_quantile histogram_sum holt_winters hour idelta increase
    irate label_join label_replace last_over_time ln log10 log2 max_over_time min_over_time minute month pi
    predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_desc
    sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp vector year start end""".split()
)
GROUPING = frozenset("by without on ignoring group_left group_right".split())
OPERATOR_WORDS = frozenset("and or unless bool offset atan2".split())
CONSTANTS = frozenset("inf nan".split())

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+(?![\w.]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[=<>+\-*/%^(){}\[\],@:])
    """,
    re.VERBOSE,
)


class PromQLError(ValueError):
    """The expression could not be read; the message names the position."""


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    pos: int


@dataclass(frozen=True, slots=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(frozen=True, slots=True)
class Selector:
    metric: str | None
    matchers: tuple[Matcher, ...] = ()

    def labels(self) -> set[str]:
        return {m.label for m in self.matchers if m.label != "__name__"}


@dataclass(slots=True)
class Refs:
    """What an expression refers to."""

    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)  # by/without/on/ignoring/group_left/group_right labels
    source_labels: set[str] = field(default_factory=set)  # read by label_replace/label_join
    created_labels: set[str] = field(default_factory=set)  # written by label_replace/label_join/count_values

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors if s.metric}


def tokenize(expr: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise PromQLError(f"unexpected character {expr[pos]!r} at {pos} in {expr!r}")
        kind = m.lastgroup or ""
        if kind not in ("ws", "comment"):
            out.append(Token(kind, m.group(), pos))
        pos = m.end()
    return out


def _unquote(text: str) -> str:
    if text[0] == "`":
        return text[1:-1]
    # PromQL strings use Go escapes; the ones that matter in label values/regexes are \\ and the quote.
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


@dataclass(slots=True)
class _Frame:
    closer: str
    func: str | None
    arg: int = 0
    strings: dict[int, list[str]] = field(default_factory=dict)


def extract(expr: str) -> Refs:
    """Metric selectors, grouping labels and label-function arguments of one PromQL expression."""
    toks = tokenize(expr)
    refs = Refs()
    stack: list[_Frame] = []
    i = 0

    def peek(k: int) -> Token | None:
        return toks[k] if k < len(toks) else None

    def read_matchers(k: int) -> tuple[tuple[Matcher, ...], int]:
        """Parse `{a="x", b=~"y"}` starting at the `{` at index k; return the matchers and the index after `}`."""
        matchers: list[Matcher] = []
        k += 1
        while True:
            t = peek(k)
            if t is None:
                raise PromQLError(f"unclosed '{{' in {expr!r}")
            if t.text == "}":
                return tuple(matchers), k + 1
            op, val = peek(k + 1), peek(k + 2)
            if t.kind != "ident" or op is None or op.text not in ("=", "!=", "=~", "!~") or val is None:
                raise PromQLError(f"bad label matcher at {t.pos} in {expr!r}")
            if val.kind != "string":
                raise PromQLError(f"label matcher value must be a string at {val.pos} in {expr!r}")
            matchers.append(Matcher(t.text, op.text, _unquote(val.text)))
            k += 3
            sep = peek(k)
            if sep is not None and sep.text == ",":
                k += 1

    def read_label_list(k: int) -> int:
        """`(a, b)` at index k → grouping labels; returns the index after `)`."""
        k += 1
        while True:
            t = peek(k)
            if t is None:
                raise PromQLError(f"unclosed label list in {expr!r}")
            if t.text == ")":
                return k + 1
            if t.kind != "ident":
                raise PromQLError(f"expected a label name at {t.pos} in {expr!r}")
            refs.grouping.add(t.text)
            k += 1
            if (s := peek(k)) is not None and s.text == ",":
                k += 1

    while i < len(toks):
        t = toks[i]
        nxt = peek(i + 1)
        if t.kind == "ident":
            word = t.text
            low = word.lower()
            if low in GROUPING:
                if nxt is not None and nxt.text == "(":
                    i = read_label_list(i + 1)
                elif low in ("group_left", "group_right"):
                    i += 1
                else:
                    raise PromQLError(f"{word} needs a label list at {t.pos} in {expr!r}")
                continue
            if low in AGGREGATIONS and nxt is not None and (nxt.text == "(" or nxt.text.lower() in GROUPING):
                if nxt.text == "(":
                    stack.append(_Frame(")", low))
                    i += 2
                else:
                    i += 1
                continue
            if word in FUNCTIONS and nxt is not None and nxt.text == "(":
                stack.append(_Frame(")", word))
                i += 2
                continue
            if low in OPERATOR_WORDS or low in CONSTANTS:
                i += 1
                continue
            if nxt is not None and nxt.text == "(":
                raise PromQLError(f"unknown function {word!r} at {t.pos} in {expr!r}")
            if nxt is not None and nxt.text == "{":
                matchers, i = read_matchers(i + 1)
            else:
                matchers, i = (), i + 1
            refs.selectors.append(Selector(word, matchers))
            continue
        if t.text == "{":
            matchers, i = read_matchers(i)
            names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
            if not matchers:
                raise PromQLError(f"empty selector at {t.pos} in {expr!r}")
            refs.selectors.append(Selector(names[0] if names else None, matchers))
            continue
        if t.text in ("(", "["):
            stack.append(_Frame(")" if t.text == "(" else "]", None))
        elif t.text in (")", "]"):
            if not stack or stack[-1].closer != t.text:
                raise PromQLError(f"unbalanced {t.text!r} at {t.pos} in {expr!r}")
            _close(stack.pop(), refs)
        elif t.text == "," and stack:
            stack[-1].arg += 1
        elif t.kind == "string" and stack:
            stack[-1].strings.setdefault(stack[-1].arg, []).append(_unquote(t.text))
        i += 1
    if stack:
        raise PromQLError(f"unclosed {stack[-1].closer!r} in {expr!r}")
    return refs


def _close(frame: _Frame, refs: Refs) -> None:
    s = frame.strings
    if frame.func == "label_replace":  # (v, dst, replacement, src, regex)
        refs.created_labels.update(s.get(1, []))
        refs.source_labels.update(x for x in s.get(3, []) if x)
    elif frame.func == "label_join":  # (v, dst, separator, src...)
        refs.created_labels.update(s.get(1, []))
        for k, vals in s.items():
            if k >= 3:
                refs.source_labels.update(vals)
    elif frame.func == "count_values":  # ("label", v)
        refs.created_labels.update(s.get(0, []))


_VAR = re.compile(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\[\[([A-Za-z_]\w*)\]\]|\$([A-Za-z_]\w*)")


def expand_grafana(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana template variables (`$x`, `${x}`, `${x:fmt}`, `[[x]]`) with `values`; unknown ones raise,
    so a dashboard cannot smuggle a variable the test does not know about."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise PromQLError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VAR.sub(sub, expr)


def iter_rule_exprs(rule_docs: list[dict]) -> Iterator[tuple[str, str, dict]]:
    """(kind, name, rule) for every rule of parsed Prometheus rule files; kind is "record" or "alert"."""
    for doc in rule_docs:
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                if "record" in rule:
                    yield "record", rule["record"], rule
                else:
                    yield "alert", rule["alert"], rule

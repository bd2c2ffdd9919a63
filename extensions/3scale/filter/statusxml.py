"""A small, strict parser for the XML the 3scale Service Management API answers.

Why not ``xml.etree``: its parser is the ``pyexpat`` C module, which
CPython's wasm32-wasi build has but meshext's shim does not link (it would
add its code to every VM), and ``xml.etree``'s pure-Python fallback has no
parser at all.  Apisonator's answers use a tiny subset of XML: a declaration,
elements with double- or single-quoted attributes, text, the five
predefined entities and character references.  This parser accepts exactly
that and raises ``ValueError`` on anything else (comments, CDATA, DTDs,
processing instructions after the declaration, mismatched tags), so a
garbled answer is an error, never a guess.
"""

import re

_NAME = r"[A-Za-z_][\w.\-:]*"
_TOKEN = re.compile(rf"<(/?)({_NAME})((?:\s+{_NAME}\s*=\s*(?:\"[^\"<]*\"|'[^'<]*'))*)\s*(/?)>|([^<]+)")
_ATTRIBUTE = re.compile(rf"({_NAME})\s*=\s*(?:\"([^\"<]*)\"|'([^'<]*)')")
_DECLARATION = re.compile(r"\A\s*<\?xml\s[^?]*\?>")
_ENTITY = re.compile(r"&(?:(amp|lt|gt|quot|apos)|#([0-9]+)|#x([0-9a-fA-F]+));|&")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


class Element:
    """An element: ``tag``, ``attributes``, ``children`` (elements) and ``text`` (its own text, entities resolved)."""

    __slots__ = ("tag", "attributes", "children", "text")

    def __init__(self, tag: str, attributes: dict[str, str]) -> None:
        self.tag, self.attributes = tag, attributes
        self.children: list[Element] = []
        self.text = ""

    def find(self, tag: str) -> "Element | None":
        for child in self.children:
            if child.tag == tag:
                return child
        return None

    def child_text(self, tag: str) -> str | None:
        child = self.find(tag)
        return None if child is None else child.text


def _unescape(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name, decimal, hexadecimal = match.groups()
        if name:
            return _NAMED[name]
        if decimal or hexadecimal:
            return chr(int(decimal) if decimal else int(hexadecimal, 16))
        raise ValueError("a bare '&' in XML text")
    return _ENTITY.sub(replace, text)


def parse(document: bytes | str) -> Element:
    """The root element of ``document``."""
    text = document.decode("utf-8") if isinstance(document, bytes) else document
    declaration = _DECLARATION.match(text)
    position = declaration.end() if declaration else 0
    stack: list[Element] = []
    root: Element | None = None
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"unsupported XML at offset {position}: {text[position:position + 20]!r}")
        position = match.end()
        closing, tag, attributes, self_closing, characters = match.groups()
        if characters is not None:
            if stack:
                stack[-1].text += _unescape(characters)
            elif characters.strip():
                raise ValueError("text outside the root element")
            continue
        if closing:
            if attributes or self_closing or not stack or stack[-1].tag != tag:
                raise ValueError(f"unexpected closing tag </{tag}>")
            stack.pop()
            continue
        if root is not None and not stack:
            raise ValueError("more than one root element")
        element = Element(tag, {name: _unescape(double if double is not None else single)
                                for name, double, single in _ATTRIBUTE.findall(attributes)})
        if stack:
            stack[-1].children.append(element)
        else:
            root = element
        if not self_closing:
            stack.append(element)
    if root is None or stack:
        raise ValueError("no complete root element")
    return root


class UsageReport:
    """One ``<usage_report>``: a limit of ``metric`` per ``period``."""

    __slots__ = ("metric", "period", "max_value", "current_value", "exceeded", "period_end")

    def __init__(self, metric: str, period: str, max_value: int, current_value: int, exceeded: bool,
                 period_end: str | None) -> None:
        self.metric, self.period, self.max_value, self.current_value = metric, period, max_value, current_value
        self.exceeded, self.period_end = exceeded, period_end


class Status:
    """An authorization result: ``authorized``, ``reason``, ``plan``, ``usage_reports``."""

    __slots__ = ("authorized", "reason", "plan", "usage_reports")

    def __init__(self, authorized: bool, reason: str | None, plan: str | None,
                 usage_reports: list[UsageReport]) -> None:
        self.authorized, self.reason, self.plan, self.usage_reports = authorized, reason, plan, usage_reports


def parse_status(document: bytes | str) -> Status:
    """A ``<status>`` document (200 or 409 answers); ``ValueError`` for anything else."""
    root = parse(document)
    if root.tag != "status":
        raise ValueError(f"expected <status>, got <{root.tag}>")
    authorized = root.child_text("authorized")
    if authorized not in ("true", "false"):
        raise ValueError(f"<authorized> is {authorized!r}")
    reports = []
    container = root.find("usage_reports")
    for report in container.children if container is not None else ():
        if report.tag != "usage_report":
            raise ValueError(f"unexpected <{report.tag}> in <usage_reports>")
        max_value, current_value = report.child_text("max_value"), report.child_text("current_value")
        if max_value is None or current_value is None:
            raise ValueError("a usage report without max_value or current_value")
        reports.append(UsageReport(report.attributes.get("metric", ""), report.attributes.get("period", ""),
                                   int(max_value), int(current_value), report.attributes.get("exceeded") == "true",
                                   report.child_text("period_end")))
    return Status(authorized == "true", root.child_text("reason"), root.child_text("plan"), reports)

"""The request as the 3scale module sees it (a parsed URL), and mapping rules.

**The URL.** The module builds ``<:scheme>://<:authority><:path>`` (scheme
from ``:scheme``, else ``x-forwarded-proto``, else ``https``) and parses it
with the ``url`` crate; services are matched on its authority, mapping
rules on its path and query.  :func:`parse_url` does the parts of that
parsing that change what matches: scheme and host lower-cased, the default
port of ``http``/``https``/``ws``/``wss``/``ftp`` dropped, ``\\`` read as
``/``, ``.``/``..`` segments (also percent-encoded) resolved, the fragment
dropped, and the characters the URL standard percent-encodes in a path or
query encoded.  A URL that does not parse (a host with a space, a port
that is not a number) makes the module answer 403 ``Authentication
failed``: :class:`BadUrl`.

**Mapping rules** (threescalers 0.8 ``RestRule``): the method is upper-cased
and ``ANY`` matches every method; the pattern's path is a *raw regular
expression* (only ``{placeholder}`` is replaced, by
``[0-9a-zA-Z_\\-.~%!$&'()*+,;=@:]+``) anchored at the start only, so a
rule is a prefix match unless it ends with ``$``, and ``.`` matches any
character; repeated ``/`` are coalesced on both sides.  The pattern's query
part is literal (escaped), each ``k=v`` must match a distinct ``&``-piece
of the request's raw query, in any order, as a prefix.  Patterns are
compiled with Python's ``re``, which accepts everything Rust's ``regex``
accepts that a path can use (it also accepts look-around and
back-references, which the module refuses).
"""

# mypy: disable-error-code="import-not-found"
# (the filter imports its sibling modules by their in-VM names; mypy walks them as meshext.extensions.*)

import re

from problems import ConfigProblem

PATH_VALUE = r"[0-9a-zA-Z_\-.~%!$&'()*+,;=@:]+"
QUERY_VALUE = r"[0-9a-zA-Z_\-.~%!$'()*+,;=@:]+"
PLACEHOLDER = re.compile(r"\{.+?\}")
DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443", "ftp": "21"}
FORBIDDEN_HOST = re.compile(r"[\x00-\x20#%/<>?@\[\\\]^|]")
PATH_ENCODE = frozenset(b' "<>`{}')
QUERY_ENCODE = frozenset(b" \"#<>'")
# Fast paths: most paths and queries have nothing to encode and no dot segments.
NEEDS_PATH_ENCODING = re.compile(r'[^\x21-\x7e]|[ "<>`{}]')
NEEDS_QUERY_ENCODING = re.compile(r"[^\x21-\x7e]|[ \"#<>']")
DOT = frozenset((".", "%2e", "%2E"))
DOUBLE_DOT = frozenset(("..", ".%2e", ".%2E", "%2e.", "%2E.", "%2e%2e", "%2E%2E", "%2e%2E", "%2E%2e"))


class BadUrl(ValueError):
    """The request's scheme, authority and path do not make a URL."""


class RequestUrl:
    """What the module matches on: ``authority`` (``user@host[:port]``), ``path``, ``query`` (raw; None: no ``?``)."""

    __slots__ = ("authority", "path", "query", "_pairs")

    def __init__(self, authority: str, path: str, query: str | None) -> None:
        self.authority, self.path, self.query = authority, path, query
        self._pairs: list[tuple[str, str]] | None = None

    def pattern_target(self) -> str:
        """The string mapping rules match: path, then ``?`` and the query when there is one."""
        return self.path if self.query is None else f"{self.path}?{self.query}"

    def query_pairs(self) -> list[tuple[str, str]]:
        """The query's form-urlencoded pairs (``+`` is a space), as the ``url`` crate reads them.

        Decoded once per URL: the filter memoises URLs per route, so a hot route's query is not decoded again.
        """
        if self._pairs is None:
            self._pairs = [(form_decode(name), form_decode(value)) for name, _, value in
                           (piece.partition("=") for piece in (self.query or "").split("&") if piece)]
        return self._pairs


def form_decode(text: str) -> str:
    raw = text.replace("+", " ").encode("utf-8", "surrogateescape")
    out = bytearray()
    index = 0
    while index < len(raw):
        byte = raw[index]
        if byte == 0x25 and index + 2 < len(raw) and _is_hex(raw[index + 1:index + 3]):
            out.append(int(raw[index + 1:index + 3], 16))
            index += 3
        else:
            out.append(byte)
            index += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(chr(byte) in "0123456789abcdefABCDEF" for byte in pair)


def _percent_encode(text: str, encode: frozenset[int]) -> str:
    out = []
    for byte in text.encode("utf-8", "surrogateescape"):
        out.append(f"%{byte:02X}" if byte < 0x20 or byte > 0x7E or byte in encode else chr(byte))
    return "".join(out)


def _authority(scheme: str, authority: str) -> str:
    userinfo, at, hostport = authority.rpartition("@")
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise BadUrl("unclosed IPv6 address")
        host, rest = hostport[:end + 1], hostport[end + 1:]
        if rest and not rest.startswith(":"):
            raise BadUrl("junk after IPv6 address")
        port = rest[1:] if rest else None
    else:
        host, colon, port_text = hostport.partition(":")
        port = port_text if colon else None
        if not host or FORBIDDEN_HOST.search(host):
            raise BadUrl(f"invalid host {host!r}")
    host = host.lower()
    if port:
        if not port.isdigit() or not port.isascii() or int(port) > 65535:
            raise BadUrl(f"invalid port {port!r}")
        port = str(int(port))
        if DEFAULT_PORTS.get(scheme) == port:
            port = None
    prefix = f"{userinfo}@" if at else ""
    return f"{prefix}{host}:{port}" if port else f"{prefix}{host}"


def _path(raw: str) -> str:
    if raw.startswith("/") and "." not in raw and "%" not in raw and "\\" not in raw:
        return raw if not NEEDS_PATH_ENCODING.search(raw) else _percent_encode(raw, PATH_ENCODE)
    segments: list[str] = []
    pieces = raw.replace("\\", "/").split("/")[1:] if raw.startswith(("/", "\\")) else raw.split("/")
    for index, segment in enumerate(pieces):
        last = index == len(pieces) - 1
        if segment in DOUBLE_DOT:
            if segments:
                segments.pop()
            if last:
                segments.append("")
        elif segment in DOT:
            if last:
                segments.append("")
        else:
            segments.append(_percent_encode(segment, PATH_ENCODE))
    return "/" + "/".join(segments)


def parse_url(scheme: str, authority: str, path: str) -> RequestUrl:
    """The module's ``url::Url`` of the request, or :class:`BadUrl`."""
    scheme = scheme.lower()
    if not re.fullmatch(r"[a-z][a-z0-9+.\-]*", scheme):
        raise BadUrl(f"invalid scheme {scheme!r}")
    path, _, _fragment = path.partition("#")
    path, question, query = path.partition("?")
    if question and NEEDS_QUERY_ENCODING.search(query):
        query = _percent_encode(query, QUERY_ENCODE)
    return RequestUrl(_authority(scheme, authority), _path(path), query if question else None)


def _coalesce_slashes(text: str) -> str:
    return re.sub(r"/{2,}", "/", text) if "//" in text else text


class MappingRule:
    """``method`` + ``pattern`` -> ``usages`` (metric -> delta); ``last`` stops the evaluation."""

    __slots__ = ("method", "pattern", "path_regex", "query_regexes", "usages", "last")

    def __init__(self, method: str, pattern: str, usages: list[tuple[str, int]], last: bool, where: str) -> None:
        self.method = method.upper()
        self.pattern = pattern
        self.usages = usages
        self.last = last
        path, question, query = pattern.partition("?")
        literal_parts = PLACEHOLDER.split(_coalesce_slashes(path))  # literals stay raw regex, as in the module
        try:
            self.path_regex = re.compile(r"\A" + PATH_VALUE.join(literal_parts))
            self.query_regexes = self._query_regexes(query) if question else None
        except re.error as error:
            raise ConfigProblem(f"{where}.pattern", f"{pattern!r} does not compile as the module's pattern "
                                f"(its path is a regular expression: {error})",
                                "escape regex characters in the path, e.g. \\( or \\[") from None

    @staticmethod
    def _query_regexes(query: str) -> list[re.Pattern[str]]:
        literals = ["&".join(re.escape(part) for part in literal.split("&")) for literal in PLACEHOLDER.split(query)]
        return [re.compile(r"\A" + piece) for piece in QUERY_VALUE.join(literals).split("&")]

    def matches(self, method: str, url: RequestUrl) -> bool:
        if self.method != "ANY" and method != "ANY" and self.method != method:
            return False
        if self.query_regexes is not None:
            pieces = (url.query or "").split("&")
            for regex in self.query_regexes:
                for index, piece in enumerate(pieces):
                    if regex.match(piece):
                        del pieces[index]
                        break
                else:
                    return False
        return self.path_regex.match(_coalesce_slashes(url.path)) is not None


def usages_for(rules: list[MappingRule], method: str, url: RequestUrl) -> dict[str, int]:
    """Deltas summed per metric over the matching rules, in rule order, stopping after a matching ``last`` rule."""
    usages: dict[str, int] = {}
    method = method.upper()
    for rule in rules:
        if rule.matches(method, url):
            for name, delta in rule.usages:
                usages[name] = usages.get(name, 0) + delta
            if rule.last:
                break
    return usages

"""Credential sources (``header``, ``query_string``, ``filter``) and the module's resolution order.

Each of ``user_key``, ``app_id`` and ``app_key`` is a list of sources; the
first source that resolves wins (a source resolves when its key is found
and its ``ops`` succeed).  Then, as ``src/threescale/credentials.rs`` does:
``user_key`` is the bottom of its stack; ``app_id`` the bottom of its
stack, and the value above it, if any, is the ``app_key`` (the ``app_key``
list is then not consulted), else the ``app_key`` list's bottom value.
When both a ``user_key`` and an ``app_id`` resolve, the ``user_key`` is
used.

- ``header``: ``keys`` compared exactly with Envoy's header names, which are
  lower case (a key with capitals never matches, as in the module; the
  filter logs a warning at configure time);
- ``query_string``: the URL-decoded query pairs (``+`` is a space);
- ``filter``: Envoy's dynamic metadata (property ``metadata``): ``path[0]``
  names the filter (e.g. ``envoy.filters.http.jwt_authn``), the rest walks
  into its Struct, ``"0"`` meaning the sole entry of a one-entry struct;
  then the first of ``keys`` found yields a string, a list of strings
  (several stack values) or a one-entry struct of those.  ``path`` needs at
  least two segments.
"""

# mypy: disable-error-code="import-not-found"
# (the filter imports its sibling modules by their in-VM names; mypy walks them as meshext.extensions.*)

from __future__ import annotations

from operations import LOGGING_OPERATIONS, Failed, Operation, parse_operations, run_all
from problems import ConfigProblem, kind, only_keys, optional, want_list, want_object, want_strings
from protobuf import decode_filter_metadata
from rules import RequestUrl

from meshext.sdk import log, properties

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from protobuf import ProtoValue

USER_KEY, APP_ID = "user_key", "app_id"
Credential = tuple[str, str, str | None]  # ("user_key", key, None) or ("app_id", id, app_key or None)


class Request:
    """One request's view for the sources: header lookup, the parsed URL, dynamic metadata read on first use."""

    __slots__ = ("header", "url", "_metadata")

    def __init__(self, header: Callable[[str], str | None], url: RequestUrl) -> None:
        self.header = header
        self.url = url
        self._metadata: dict[str, dict[str, ProtoValue]] | None = None

    def filter_metadata(self) -> dict[str, dict[str, ProtoValue]]:
        if self._metadata is None:
            raw = properties.get("metadata")
            try:
                self._metadata = decode_filter_metadata(raw) if raw else {}
            except ValueError as error:
                log.debug(f"3scale: dynamic metadata does not decode: {error}")
                self._metadata = {}
        return self._metadata


class Source:
    """One credential source; :meth:`resolve` gives its stack of values, or None."""

    __slots__ = ("kind", "keys", "path", "operations", "logs", "_values", "header_names")

    def __init__(self, kind: str, keys: list[str], path: list[str], operations: list[Operation] | None,
                 logs: bool = False) -> None:
        self.kind, self.keys, self.path, self.operations = kind, keys, path, operations
        self.logs = logs  # its ops write to the log (a side effect on every resolution)
        # The lookup for this kind, chosen once: resolve runs on every request.
        self._values: Callable[[Request], list[str] | None] = {
            "header": self._header_values, "query_string": self._query_values}.get(kind, self._filter_values)
        # Envoy's lookup ignores case; the module compares names exactly with Envoy's lower-case ones, so a
        # header key with capitals never matches.
        self.header_names = [key for key in keys if key == key.lower()]

    def _header_values(self, request: Request) -> list[str] | None:
        header = request.header
        for key in self.header_names:
            value = header(key)
            if value is not None:
                return [value]
        return None

    def _query_values(self, request: Request) -> list[str] | None:
        pairs = request.url.query_pairs()
        for key in self.keys:
            for name, value in pairs:
                if name == key:
                    return [value]
        return None

    def _filter_values(self, request: Request) -> list[str] | None:
        if len(self.path) < 2:
            return None
        entries = request.filter_metadata().get(self.path[0])
        if entries is None:
            return None
        entry = entries.get(self.path[1])
        if entry is None and len(entries) == 1 and self.path[1] == "0":
            (entry,) = entries.values()
        found = entry.lookup(self.path[2:]) if entry is not None else None
        if found is None:
            return None
        for key in self.keys:
            value = found.lookup([key])
            if value is not None:
                return value.strings()
        return None

    def resolve(self, request: Request) -> list[str] | None:
        values = self._values(request)
        if values is None or self.operations is None:
            return values
        try:
            return run_all(self.operations, values)
        except Failed:
            return None


def _first(sources: list[Source] | None, request: Request) -> list[str] | None:
    for source in sources or ():
        values = source.resolve(request)
        if values is not None:
            return values
    return None


class Credentials:
    """The ``credentials`` of a service."""

    __slots__ = ("user_key", "app_id", "app_key", "header_names", "memoisable")

    def __init__(self, user_key: list[Source] | None, app_id: list[Source] | None,
                 app_key: list[Source] | None) -> None:
        self.user_key, self.app_id, self.app_key = user_key, app_id, app_key
        sources = [source for group in (user_key, app_id, app_key) if group for source in group]
        # the headers the sources read: the only ones resolve looks up
        self.header_names = {key for source in sources if source.kind == "header" for key in source.header_names}
        # Without Envoy's metadata and without logging ops, resolving is a function of the query and of those
        # headers, so the filter memoises it on them (Root.prepare); otherwise every request resolves afresh.
        self.memoisable = all(source.kind != "filter" and not source.logs for source in sources)

    def resolve(self, header: Callable[[str], str | None], url: RequestUrl) -> Credential | None:
        """``("user_key", key, None)`` or ``("app_id", id, key or None)``, or None: no credentials.

        ``header`` looks a request header up by its (lower-case) name; only :attr:`header_names` are asked.
        """
        request = Request(header, url)
        user_key = _first(self.user_key, request)
        if user_key:
            return (USER_KEY, user_key[0], None)
        app_values = _first(self.app_id, request)
        if not app_values:
            return None
        app_key = app_values[1] if len(app_values) > 1 else None
        if app_key is None:
            key_values = _first(self.app_key, request)
            app_key = key_values[0] if key_values else None
        return (APP_ID, app_values[0], app_key)


def _parse_source(value: object, where: str) -> Source:
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigProblem(where, f"expected one source (header, query_string or filter), got {kind(value)}",
                            "write e.g. '- header: {keys: [x-api-key]}'")
    ((source_kind, fields),) = value.items()
    where = f"{where}.{source_kind}"
    if source_kind not in ("header", "query_string", "filter"):
        raise ConfigProblem(where, f"unknown credential source {source_kind!r}", "use header, query_string or filter")
    fields = want_object(fields, where)
    if source_kind == "filter":
        keys = optional(fields, "keys", where, want_strings, [])
        path = optional(fields, "path", where, want_strings, [])
    else:
        if fields.get("keys") is None:
            raise ConfigProblem(f"{where}.keys", "required field is missing", "list the names to look for")
        keys = want_strings(fields["keys"], f"{where}.keys")
        path = []
        if source_kind == "header":
            for index, key in enumerate(keys):
                if key != key.lower():
                    log.warn(f"3scale: {where}.keys[{index}]: {key!r} has capitals and never matches (Envoy's "
                             f"header names are lower case, and the 3scale module compares exactly); "
                             f"fix: write {key.lower()!r}")
    operations = optional(fields, "ops", where, parse_operations)
    return Source(source_kind, keys, path, operations, logs=_mentions_log(fields.get("ops")))


def _mentions_log(ops: object) -> bool:
    """Whether the ``ops`` as configured hold a logging operation at any depth (``test``, ``and``... nest)."""
    if isinstance(ops, dict):
        return any(name in ops for name in LOGGING_OPERATIONS) or any(_mentions_log(value) for value in ops.values())
    if isinstance(ops, list):
        return any(_mentions_log(value) for value in ops)
    return False


def parse_credentials(value: object, where: str) -> Credentials:
    data = want_object(value, where)
    only_keys(data, (USER_KEY, APP_ID, "app_key"), where)

    def sources(key: str) -> list[Source] | None:
        if data.get(key) is None:  # serde's Option: absent or null
            return None
        items = want_list(data[key], f"{where}.{key}")
        return [_parse_source(item, f"{where}.{key}[{index}]") for index, item in enumerate(items)]

    credentials = Credentials(sources(USER_KEY), sources(APP_ID), sources("app_key"))
    if credentials.user_key is None and credentials.app_id is None:
        raise ConfigProblem(where, "you must provide at least one of user_key or app_id",
                            "add a user_key or an app_id list of sources")
    return credentials

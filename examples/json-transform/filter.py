"""json-transform: rename and drop fields of JSON request and response bodies.

A body whose ``content-type`` is JSON (``application/json`` or ``...+json``)
and not content-encoded is buffered to its end, parsed, changed as the
configuration says and passed on compact (``{"a":1}``).  Fields are named by
dotted paths from the document's top (``user.password``); a list on the way
applies the rest of the path to each of its objects, so ``items.sku`` means
the ``sku`` of every item, and a document that is a list means each of its
objects.  In each direction ``drop`` is applied first, then ``rename``;
both name the fields as they arrive.

The new body's length is known only at its end, after the headers went on,
so the filter removes ``content-length`` from a message it will transform
(Envoy then sends it chunked, or framed by HTTP/2) and leaves it on every
other message.

A request body that is not valid JSON gets a 400 naming the error; one over
``max_body_bytes`` gets a 413 (the bound also caps what parsing costs: JSON
objects become dicts keyed by attacker-chosen strings).  A response cannot
be refused any more once its headers went downstream: an invalid or too large
response body passes unchanged, with a warning and a counter.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from meshext.sdk import Action, ConfigError, Counter, HeaderMap, HttpContext, Message, RootContext, log

REJECTED = Counter("json_transform_rejected_requests_total")
UNTRANSFORMED = Counter("json_transform_untransformed_responses_total")


@dataclass
class FieldRules:
    """Changes to one direction's JSON documents."""

    drop: list[str] = field(default_factory=list)  # dotted paths of fields to remove
    rename: dict[str, str] = field(default_factory=dict)  # dotted path -> new name in the same object


@dataclass
class Config:
    """The plugin configuration (JSON); every field is optional."""

    request: FieldRules = field(default_factory=FieldRules)
    response: FieldRules = field(default_factory=FieldRules)
    max_body_bytes: int = 1024 * 1024


def config_problem(config: Config) -> str | None:
    """What the type checks cannot see, as 'field: problem; fix: ...', or None when fine."""
    if config.max_body_bytes <= 0:
        return f"config.max_body_bytes: {config.max_body_bytes} is not positive; fix: give a size in bytes"
    for direction, rules in (("request", config.request), ("response", config.response)):
        for index, path in enumerate(rules.drop):
            if not _is_dotted_path(path):
                return f"config.{direction}.drop[{index}]: {path!r} is not a dotted path; fix: {PATH_FIX}"
        for path, new_name in rules.rename.items():
            where = f"config.{direction}.rename[{path!r}]"
            if not _is_dotted_path(path):
                return f"{where}: {path!r} is not a dotted path; fix: {PATH_FIX}"
            if not new_name or "." in new_name:
                return (f"{where}: the new name {new_name!r} is not a field name; fix: give the new name of the last "
                        "field alone, without dots (a rename stays in the same object)")
    return None


PATH_FIX = "name fields as in 'user.address.city', without empty parts"


def _is_dotted_path(path: str) -> bool:
    return all(path.split("."))


def transform(document: Any, rules: FieldRules) -> Any:
    """The document with ``rules`` applied (changed in place)."""
    for path in rules.drop:
        *parents, name = path.split(".")
        for parent in _objects_at(document, parents):
            parent.pop(name, None)
    for path, new_name in rules.rename.items():
        *parents, name = path.split(".")
        for parent in _objects_at(document, parents):
            if name in parent:
                parent[new_name] = parent.pop(name)
    return document


def _objects_at(value: Any, path: list[str]) -> list[dict]:
    """The objects ``path`` leads to from ``value``; lists fan out to their elements."""
    if isinstance(value, list):
        return [found for item in value for found in _objects_at(item, path)]
    if not isinstance(value, dict):
        return []
    if not path:
        return [value]
    return _objects_at(value.get(path[0]), path[1:]) if path[0] in value else []


def is_plain_json(headers: HeaderMap) -> bool:
    """A JSON body the filter can read: JSON media type, no content encoding (gzip...)."""
    media_type = (headers.get("content-type") or "").partition(";")[0].strip().lower()
    encoding = (headers.get("content-encoding") or "identity").strip().lower()
    return (media_type == "application/json" or media_type.endswith("+json")) and encoding == "identity"


def rewritten(message: Message, rules: FieldRules) -> bytes:
    """The buffered body with ``rules`` applied; ValueError/RecursionError when it is not JSON."""
    document = json.loads(message.body.read())
    return json.dumps(transform(document, rules), ensure_ascii=False, separators=(",", ":")).encode()


def has_rules(rules: FieldRules) -> bool:
    return bool(rules.drop or rules.rename)


class Transform(HttpContext):
    root: "Root"

    def on_request_headers(self, end_of_stream: bool) -> Action:
        self.replied = False
        self.path = self.request.headers.get(":path")  # request headers are not readable on the response path
        self.transform_request = (not end_of_stream and has_rules(self.root.config.request)
                                  and is_plain_json(self.request.headers))
        if self.transform_request:
            self.request.headers.remove("content-length")  # the new length is known only at the end
        return Action.CONTINUE

    def on_request_body(self, body_size: int, end_of_stream: bool) -> Action:
        if not self.transform_request:
            return Action.CONTINUE
        limit = self.root.config.max_body_bytes
        if body_size > limit:
            return self.reject(413, f"request body is larger than {limit} bytes")
        if not end_of_stream:
            return Action.PAUSE  # Envoy buffers the body until the filter continues
        try:
            self.request.body.replace(rewritten(self.request, self.root.config.request))
        except RecursionError:
            return self.reject(400, "request body is not valid JSON: nested too deeply")
        except ValueError as error:  # json.JSONDecodeError, UnicodeDecodeError
            return self.reject(400, f"request body is not valid JSON: {error}")
        return Action.CONTINUE

    def on_response_headers(self, end_of_stream: bool) -> Action:
        self.transform_response = (not self.replied and not end_of_stream and has_rules(self.root.config.response)
                                   and is_plain_json(self.response.headers))
        if self.transform_response:
            self.response.headers.remove("content-length")
        return Action.CONTINUE

    def on_response_body(self, body_size: int, end_of_stream: bool) -> Action:
        if not self.transform_response:
            return Action.CONTINUE
        if body_size > self.root.config.max_body_bytes:
            self.transform_response = False  # let this and all later data through unchanged
            return self.pass_unchanged(f"larger than {self.root.config.max_body_bytes} bytes")
        if not end_of_stream:
            return Action.PAUSE
        try:
            self.response.body.replace(rewritten(self.response, self.root.config.response))
        except RecursionError:
            return self.pass_unchanged("not valid JSON: nested too deeply")
        except ValueError as error:
            return self.pass_unchanged(f"not valid JSON: {error}")
        return Action.CONTINUE

    def reject(self, status: int, message: str) -> Action:
        REJECTED.increment()
        self.replied = True  # our own reply is not the upstream's JSON: on_response_* leave it alone
        body = json.dumps({"error": message}) + "\n"
        return self.send_local_response(status, body, [("content-type", "application/json")],
                                        details="json_transform_rejected")

    def pass_unchanged(self, problem: str) -> Action:
        UNTRANSFORMED.increment()
        log.warn(f"json-transform: response body of {self.path} is {problem}; "
                 "passed on unchanged")
        return Action.CONTINUE


class Root(RootContext):
    http_context = Transform
    config_class = Config
    config: Config

    def check_config(self, config: Config) -> None:
        problem = config_problem(config)
        if problem:
            raise ConfigError(problem)

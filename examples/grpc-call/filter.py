"""grpc-call: ask a rate limit service over gRPC about each request.

The service speaks Envoy's rate limit protocol (``envoy.service.ratelimit.v3
.RateLimitService/ShouldRateLimit``, what envoyproxy/ratelimit and Envoy's
own ratelimit filter use).  For each request the filter builds the
configured descriptors from the request's headers, pauses the request, makes
one unary call and acts on the reply:

- ``OK``: the request continues, with the reply's ``request_headers_to_add``;
  its response gets the reply's ``response_headers_to_add``;
- ``OVER_LIMIT``: 429 with ``x-envoy-ratelimited: true``, the reply's
  ``response_headers_to_add`` and its ``raw_body``, as Envoy's filter answers;
- an error (gRPC status, an unreadable reply, ``UNKNOWN``): the request
  continues, or gets a 500 with ``failure_mode_deny``.

Messages are encoded by hand (``meshext.sdk.protowire``) from the service's ``.proto``
files, quoted below with the field numbers used here:

    // envoy/service/ratelimit/v3/rls.proto
    message RateLimitRequest {
      string domain = 1;
      repeated envoy.extensions.common.ratelimit.v3.RateLimitDescriptor descriptors = 2;
      uint32 hits_addend = 3;                  // not sent: 0 means 1
    }
    message RateLimitResponse {
      enum Code { UNKNOWN = 0; OK = 1; OVER_LIMIT = 2; }
      Code overall_code = 1;
      repeated DescriptorStatus statuses = 2;  // skipped
      repeated config.core.v3.HeaderValue response_headers_to_add = 3;
      repeated config.core.v3.HeaderValue request_headers_to_add = 4;
      bytes raw_body = 5;                      // fields 6 and 7: skipped
    }
    // envoy/extensions/common/ratelimit/v3/ratelimit.proto
    message RateLimitDescriptor {
      message Entry { string key = 1; string value = 2; }
      repeated Entry entries = 1;              // fields 2 and 3: not sent
    }
    // envoy/config/core/v3/base.proto
    message HeaderValue { string key = 1; string value = 2; bytes raw_value = 3; }
"""

from dataclasses import dataclass

from meshext.sdk import Action, CalloutError, ConfigError, Counter, GrpcResponse, HttpContext, RootContext, log
from meshext.sdk.protowire import decode_fields, encode_bytes

SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
METHOD = "ShouldRateLimit"
CODE_OK, CODE_OVER_LIMIT = 1, 2
# gRPC status names for the log (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
GRPC_STATUS = {1: "CANCELLED", 2: "UNKNOWN", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND", 7: "PERMISSION_DENIED",
               8: "RESOURCE_EXHAUSTED", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE", 16: "UNAUTHENTICATED"}

OK = Counter("ratelimit_ok_total")
OVER_LIMIT = Counter("ratelimit_over_limit_total")
ERRORS = Counter("ratelimit_error_total")


@dataclass
class DescriptorEntry:
    """One entry of a descriptor: its value is a request header's, or fixed."""

    key: str
    header: str = ""  # the value of this request header (:path, :method, :authority work too)
    value: str = ""  # or this fixed value


@dataclass
class Descriptor:
    """Sent when every header its entries name is present (as Envoy's request_headers action)."""

    entries: list[DescriptorEntry]


@dataclass
class Config:
    """The plugin configuration (JSON)."""

    cluster: str  # the rate limit service's cluster (HTTP/2) in Envoy's configuration
    domain: str  # the service's configuration domain
    descriptors: list[Descriptor]
    timeout_ms: int = 100
    failure_mode_deny: bool = False  # True: 500 when the service cannot answer


def config_problem(config: Config) -> str | None:
    """What the type checks cannot see, as 'field: problem; fix: ...', or None when fine."""
    for name in ("cluster", "domain"):
        if not getattr(config, name):
            return f"config.{name}: empty; fix: give the rate limit service's {name}"
    if config.timeout_ms <= 0:
        return f"config.timeout_ms: {config.timeout_ms} is not positive; fix: give milliseconds, e.g. 100"
    if not config.descriptors:
        return "config.descriptors: empty, nothing would ever be limited; fix: describe at least one descriptor"
    for index, descriptor in enumerate(config.descriptors):
        if not descriptor.entries:
            return f"config.descriptors[{index}].entries: empty; fix: give the descriptor at least one entry"
        for number, entry in enumerate(descriptor.entries):
            where = f"config.descriptors[{index}].entries[{number}]"
            if not entry.key:
                return f"{where}.key: empty; fix: name the entry as the rate limit service's configuration does"
            if bool(entry.header) == bool(entry.value):
                return f"{where}: give exactly one of 'header' and 'value'; fix: a header to read, or a fixed value"
    return None


def encode_request(domain: str, descriptors: list[list[tuple[str, str]]]) -> bytes:
    """A RateLimitRequest for ``descriptors`` (each a list of (key, value) entries)."""
    message = encode_bytes(1, domain)
    for entries in descriptors:
        encoded = b"".join(encode_bytes(1, encode_bytes(1, key) + encode_bytes(2, value)) for key, value in entries)
        message += encode_bytes(2, encoded)
    return message


class RateLimitAnswer:
    """The fields of a RateLimitResponse the filter acts on."""

    def __init__(self, message: bytes) -> None:
        """Parse ``message``; ValueError when it is not a RateLimitResponse."""
        self.code = 0
        self.response_headers: list[tuple[str, str]] = []
        self.request_headers: list[tuple[str, str]] = []
        self.body = b""
        for number, _, value in decode_fields(message):
            if number == 1 and isinstance(value, int):
                self.code = value
            elif number in (3, 4) and isinstance(value, bytes):
                (self.response_headers if number == 3 else self.request_headers).append(header_value(value))
            elif number == 5 and isinstance(value, bytes):
                self.body = value


def header_value(message: bytes) -> tuple[str, str]:
    """(key, value) of a HeaderValue; ``raw_value`` when ``value`` is empty."""
    key = value = raw_value = b""
    for number, _, item in decode_fields(message):
        if isinstance(item, bytes):
            if number == 1:
                key = item
            elif number == 2:
                value = item
            elif number == 3:
                raw_value = item
    return key.decode(), (value or raw_value).decode()


class RateLimit(HttpContext):
    root: "Root"

    def on_request_headers(self, end_of_stream: bool) -> Action:
        self.response_headers_to_add: list[tuple[str, str]] = []
        descriptors = self.descriptors()
        if not descriptors:
            return Action.CONTINUE  # nothing to ask about
        config = self.root.config
        try:
            self.grpc_call(config.cluster, SERVICE, METHOD, encode_request(config.domain, descriptors),
                           callback=self.on_reply, timeout_ms=config.timeout_ms)
        except CalloutError as error:
            return Action.PAUSE if self.refused_without_answer(str(error)) else Action.CONTINUE
        return Action.PAUSE  # until the service answers

    def descriptors(self) -> list[list[tuple[str, str]]]:
        """This request's descriptors: those whose headers it has all."""
        headers = self.request.headers
        found = []
        for descriptor in self.root.config.descriptors:
            entries = []
            for entry in descriptor.entries:
                value = headers.get(entry.header) if entry.header else entry.value
                if value is None:
                    break
                entries.append((entry.key, value))
            else:
                found.append(entries)
        return found

    def on_reply(self, reply: GrpcResponse) -> None:
        if not reply.ok:
            name = GRPC_STATUS.get(reply.status_code, str(reply.status_code))
            self.resume_without_answer(f"gRPC status {name}" + (f": {reply.status_message}" if reply.status_message
                                                               else ""))
            return
        try:
            answer = RateLimitAnswer(reply.message)
        except ValueError as error:  # UnicodeDecodeError included
            self.resume_without_answer(f"unreadable reply: {error}")
            return
        if answer.code == CODE_OK:
            OK.increment()
            for name, value in answer.request_headers:
                self.request.headers.set(name, value)
            self.response_headers_to_add = answer.response_headers
            self.request.resume()
        elif answer.code == CODE_OVER_LIMIT:
            OVER_LIMIT.increment()
            self.send_local_response(429, answer.body, [("x-envoy-ratelimited", "true"), *answer.response_headers],
                                     details="request_rate_limited")
        else:
            self.resume_without_answer(f"reply with overall_code {answer.code} (UNKNOWN)")

    def resume_without_answer(self, problem: str) -> None:
        """A paused request the service gave no usable answer for."""
        if not self.refused_without_answer(problem):
            self.request.resume()

    def refused_without_answer(self, problem: str) -> bool:
        """Log ``problem``; with failure_mode_deny, answer 500 and say True, else the request may go on."""
        ERRORS.increment()
        deny = self.root.config.failure_mode_deny
        log.warn(f"grpc-call: rate limit service {self.root.config.cluster!r}: {problem}; request "
                 + ("refused (failure_mode_deny)" if deny else "let through"))
        if deny:
            self.send_local_response(500, "rate limit service unavailable\n", details="rate_limiter_error")
        return deny

    def on_response_headers(self, end_of_stream: bool) -> Action:
        for name, value in self.response_headers_to_add:
            self.response.headers.add(name, value)
        return Action.CONTINUE


class Root(RootContext):
    http_context = RateLimit
    config_class = Config
    config: Config

    def check_config(self, config: Config) -> None:
        problem = config_problem(config)
        if problem:
            raise ConfigError(problem)

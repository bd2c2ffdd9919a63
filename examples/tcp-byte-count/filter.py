"""tcp-byte-count: count the bytes of each TCP connection, close those over a limit.

A network filter (Envoy's ``envoy.filters.network.wasm``, in front of
``tcp_proxy``).  It counts the bytes each connection carries each way, into
Envoy's metrics and into one log line per connection when it ends.  With a
limit configured, the chunk of data that takes a connection over it is not
forwarded, and the connection is closed.
"""

from dataclasses import dataclass

from meshext.sdk import Action, ConfigError, Counter, Histogram, RootContext, StreamContext, log, properties

CONNECTIONS = Counter("tcp_byte_count_connections_total")
FROM_CLIENTS = Counter("tcp_byte_count_downstream_bytes_total")
FROM_SERVERS = Counter("tcp_byte_count_upstream_bytes_total")
CLOSED_OVER_LIMIT = Counter("tcp_byte_count_closed_over_limit_total")
CONNECTION_BYTES = Histogram("tcp_byte_count_connection_bytes")  # both ways, per connection


@dataclass
class Config:
    """The plugin configuration (JSON); 0 means no limit."""

    max_downstream_bytes: int = 0  # bytes a connection may carry from the client
    max_upstream_bytes: int = 0  # bytes a connection may carry from the server


def config_problem(config: Config) -> str | None:
    """What the type checks cannot see, as 'field: problem; fix: ...', or None when fine."""
    for name in ("max_downstream_bytes", "max_upstream_bytes"):
        if getattr(config, name) < 0:
            return f"config.{name}: {getattr(config, name)} is negative; fix: give a byte count, or 0 for no limit"
    return None


class CountBytes(StreamContext):
    root: "Root"

    def on_new_connection(self) -> Action:
        CONNECTIONS.increment()
        self.client = properties.get_str("source.address", "unknown client")
        self.from_client = self.from_server = 0
        self.over_limit = ""
        return Action.CONTINUE

    def on_downstream_data(self, data_size: int, end_of_stream: bool) -> Action:
        self.from_client += data_size
        FROM_CLIENTS.increment(data_size)
        return self.check(self.from_client, self.root.config.max_downstream_bytes, "from the client")

    def on_upstream_data(self, data_size: int, end_of_stream: bool) -> Action:
        self.from_server += data_size
        FROM_SERVERS.increment(data_size)
        return self.check(self.from_server, self.root.config.max_upstream_bytes, "from the server")

    def check(self, count: int, limit: int, direction: str) -> Action:
        if not limit or count <= limit or self.over_limit:
            return Action.CONTINUE
        self.over_limit = f"{count} bytes {direction}, over the limit of {limit}"
        CLOSED_OVER_LIMIT.increment()
        log.warn(f"tcp-byte-count: closing the connection of {self.client}: {self.over_limit}")
        self.close_downstream()  # Envoy's tcp_proxy then closes the upstream side too
        return Action.PAUSE  # the data that went over the limit is not forwarded

    def on_log(self) -> None:
        CONNECTION_BYTES.record(self.from_client + self.from_server)
        ending = f"closed by the filter ({self.over_limit})" if self.over_limit else "closed"
        log.info(f"tcp-byte-count: connection of {self.client} {ending}: "
                 f"{self.from_client} bytes from the client, {self.from_server} bytes from the server")


class Root(RootContext):
    stream_context = CountBytes
    config_class = Config
    config: Config

    def check_config(self, config: Config) -> None:
        problem = config_problem(config)
        if problem:
            raise ConfigError(problem)

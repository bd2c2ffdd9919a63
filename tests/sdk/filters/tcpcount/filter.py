"""A network (TCP) filter that counts bytes in both directions."""

from meshext.sdk import Action, Counter, RootContext, StreamContext

DOWNSTREAM_BYTES = Counter("tcpcount_downstream_bytes")
UPSTREAM_BYTES = Counter("tcpcount_upstream_bytes")
CONNECTIONS = Counter("tcpcount_connections")


class CountBytes(StreamContext):
    def on_new_connection(self):
        CONNECTIONS.increment()
        return Action.CONTINUE

    def on_downstream_data(self, data_size, end_of_stream):
        DOWNSTREAM_BYTES.increment(data_size)
        return Action.CONTINUE

    def on_upstream_data(self, data_size, end_of_stream):
        UPSTREAM_BYTES.increment(data_size)
        return Action.CONTINUE


class Root(RootContext):
    stream_context = CountBytes

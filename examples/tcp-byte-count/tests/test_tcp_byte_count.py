"""tcp-byte-count in the meshext test host (`meshext test examples/tcp-byte-count`)."""

import pytest

from meshext.testing import Action, MeshextError

CLIENT = {"source.address": "10.0.0.7:41000"}


def test_bytes_each_way_are_counted_and_logged_when_the_connection_ends(filter_module, proxy_host):
    with filter_module() as plugin:
        connection = plugin.tcp_stream(properties=CLIENT)
        assert connection.send_downstream_data(b"hello") == Action.CONTINUE
        assert connection.send_upstream_data(b"welcome") == Action.CONTINUE
        connection.send_downstream_data(b"!")
        assert connection.to_upstream == b"hello!" and connection.to_downstream == b"welcome"
        connection.close()
        assert ("tcp-byte-count: connection of 10.0.0.7:41000 closed: 6 bytes from the client, "
                "7 bytes from the server") in plugin.log_messages()

        second = plugin.tcp_stream()
        second.send_downstream_data(b"ping")
        second.close()
        assert proxy_host.metric("tcp_byte_count_connections_total") == 2
        assert proxy_host.metric("tcp_byte_count_downstream_bytes_total") == 10
        assert proxy_host.metric("tcp_byte_count_upstream_bytes_total") == 7
        assert proxy_host.histogram("tcp_byte_count_connection_bytes") == [13, 4]


def test_a_connection_may_carry_exactly_its_limit(filter_module):
    with filter_module(config={"max_downstream_bytes": 10}) as plugin:
        connection = plugin.tcp_stream()
        assert connection.send_downstream_data(b"0123456789") == Action.CONTINUE
        assert connection.to_upstream == b"0123456789"
        assert not connection.ended


def test_data_from_the_client_over_the_limit_is_not_forwarded_and_the_connection_closed(filter_module, proxy_host):
    with filter_module(config={"max_downstream_bytes": 10}) as plugin:
        connection = plugin.tcp_stream(properties=CLIENT)
        connection.send_downstream_data(b"012345")
        assert connection.send_downstream_data(b"6789ab") == Action.PAUSE
        assert connection.to_upstream == b"012345"
        assert connection.ended and not connection.downstream_open and not connection.upstream_open
        assert ("tcp-byte-count: closing the connection of 10.0.0.7:41000: 12 bytes from the client, "
                "over the limit of 10") in plugin.log_messages()
        assert ("tcp-byte-count: connection of 10.0.0.7:41000 closed by the filter (12 bytes from the client, "
                "over the limit of 10): 12 bytes from the client, 0 bytes from the server") in plugin.log_messages()
        assert proxy_host.metric("tcp_byte_count_closed_over_limit_total") == 1


def test_data_from_the_server_has_its_own_limit(filter_module, proxy_host):
    with filter_module(config={"max_upstream_bytes": 4}) as plugin:
        connection = plugin.tcp_stream()
        connection.send_downstream_data(b"a request far longer than four bytes")
        assert connection.send_upstream_data(b"too long") == Action.PAUSE
        assert connection.to_downstream == b""
        assert connection.ended
        assert proxy_host.metric("tcp_byte_count_closed_over_limit_total") == 1


@pytest.mark.parametrize(("config", "message"), [
    ({"max_downstream_bytes": -1}, "config.max_downstream_bytes: -1 is negative"),
    ({"max_upstream_bytes": "1MB"}, "config.max_upstream_bytes: expected an integer, got a string '1MB'"),
    ({"max_bytes": 10}, "config: unknown field 'max_bytes'; fix: use one of max_downstream_bytes, max_upstream_bytes"),
])
def test_a_bad_configuration_is_refused_naming_the_field(filter_module, config, message):
    with pytest.raises(MeshextError, match="refused its plugin configuration") as refused:
        filter_module(config=config)
    assert f"plugin configuration refused: {message}" in str(refused.value)

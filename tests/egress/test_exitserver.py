"""The exit's connect step on real sockets, and the SOCKS5 reply for each way it can fail."""

from __future__ import annotations

import errno
import socket

import pytest
import trio

from kakuremichi.egress import socks5
from kakuremichi.egress.exitserver import connect_checked, reply_code
from kakuremichi.egress.policy import DestinationPolicy, Refused
from tests.deployment import free_port


@pytest.mark.parametrize("exc, code", [
    (Refused("private"), socks5.NOT_ALLOWED),
    (trio.TooSlowError(), socks5.TTL_EXPIRED),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), socks5.HOST_UNREACHABLE),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), socks5.CONNECTION_REFUSED),
    (OSError(errno.ENETUNREACH, "network unreachable"), socks5.NETWORK_UNREACHABLE),
    (OSError(errno.EHOSTUNREACH, "no route"), socks5.HOST_UNREACHABLE),
    (OSError(errno.EMFILE, "too many open files"), socks5.GENERAL_FAILURE),
])
def test_reply_codes(exc, code):
    assert reply_code(exc) == code


def test_connect_checked_connects_only_where_the_policy_allows():
    async def main():
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        stream = await connect_checked(DestinationPolicy(allow_private=True), "localhost", port)
        async with stream, listeners[0]:
            accepted = await listeners[0].accept()
            await stream.send_all(b"ping")
            assert await accepted.receive_some(4) == b"ping"
            await accepted.aclose()
        with pytest.raises(Refused):
            await connect_checked(DestinationPolicy(), "localhost", port)
        with pytest.raises(ConnectionRefusedError):
            await connect_checked(DestinationPolicy(allow_private=True), "127.0.0.1", free_port())

    trio.run(main)

"""What control buffers from a WebSocket client: the auth frame a few KiB, later frames and stats bounded."""

from __future__ import annotations

import json
import struct

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import CloseConnection, Request

from kakuremichi import protocol
from tests.control.conftest import WsClient, connect, public_key

pytestmark = pytest.mark.both_databases
MESSAGE_TOO_BIG = 1009


async def _closed_code(ws) -> int:
    with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    return closed.value.reason.code


async def test_an_auth_frame_over_a_few_kib_is_cut_off_as_it_arrives(control):
    """A frame announcing 16 MiB is refused after the first AUTH_FRAME_MAX bytes, its rest never sent."""
    host, port = control.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=host, target="/ws")))
    with trio.fail_after(5):
        while True:
            ws.receive_data(await stream.receive_some())
            if ws.state.name == "OPEN":
                break
    header = bytes([0x81, 0xFF]) + struct.pack("!Q", 16 << 20) + b"\0\0\0\0"  # text, masked with zeros
    await stream.send_all(header + b" " * (2 * protocol.AUTH_FRAME_MAX))
    with trio.fail_after(5):
        while True:
            data = await stream.receive_some()
            assert data, "closed without a close frame"
            ws.receive_data(data)
            events = [e for e in ws.events() if isinstance(e, CloseConnection)]
            if events:
                break
    assert events[0].code == MESSAGE_TOO_BIG
    await stream.aclose()


async def test_frames_after_auth_are_bounded_by_the_biggest_the_protocol_needs(control):
    agent = await control.create("agents", name="a")
    async with open_websocket_url(control.ws_url) as ws:  # a whole 5 KiB auth frame
        await ws.send_message(json.dumps({"type": "auth", "apiKey": agent["apiKey"], "role": "agent",
                                          "publicKey": public_key(), "version": 1, "pad": "x" * 5000}))
        assert await _closed_code(ws) == MESSAGE_TOO_BIG
    async with connect(control, agent["apiKey"], "agent") as client:
        padding = "x" * (protocol.FRAME_MAX - 100)  # a big certificate or stats frame is taken
        await client.ws.send_message(json.dumps({"type": "ping", "pad": padding}))
        await client.receive_pong()
        await client.ws.send_message(json.dumps({"type": "ping", "pad": padding + "x" * 200}))
        assert await _closed_code(client.ws) == MESSAGE_TOO_BIG


async def test_oversized_stats_are_refused_and_the_api_serves_the_bounded_ones(control):
    gw = await control.create("gateways", name="g")
    bounded = {"peers": {public_key(): {"rxBytes": 1, "txBytes": 2, "connected": True} for _ in range(3)}}
    async with connect(control, gw["apiKey"], "gateway", endpoint="203.0.113.9:51820") as client:
        await client.send(protocol.StatusUpdate(bounded))
        for stats in ({"peers": {str(i): i for i in range(protocol.STATS_MAX_ENTRIES + 1)}},
                      {"name": "x" * (protocol.STATS_MAX_STRING + 1)}, {"a": {"b": {"c": {"d": {"e": 1}}}}},
                      {"big": 1 << 70}):
            await client.ws.send_message(json.dumps({"type": "status_update", "stats": stats}))
        await client.send(protocol.Ping())  # answered after every status was handled
        await client.receive_pong()
        served = (await control.api.get(f"/api/gateways/{gw['id']}")).json()["metadata"]
    assert served == {"stats": bounded}


def test_stats_bounds_name_what_is_wrong():
    with pytest.raises(protocol.ProtocolError, match="more than 16384 entries"):
        protocol.decode(json.dumps({"type": "status_update", "stats": {"l": [0] * 20000}}))
    with pytest.raises(protocol.ProtocolError, match="not finite"):
        protocol.decode('{"type": "status_update", "stats": {"x": 1e999}}')
    assert protocol.decode(json.dumps({"type": "status_update", "stats": {"a": {"b": {"c": [1]}}}}))

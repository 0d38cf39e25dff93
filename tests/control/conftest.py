from __future__ import annotations

import json
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from kakuremichi import protocol
from kakuremichi.control.server import serve
from kakuremichi.control.state import Settings
from kakuremichi.wg import keys

ADMIN = "kma_test-admin-token"


def public_key() -> str:
    return keys.encode(keys.public_from_private(keys.generate_private()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Control:
    url: str
    api: httpx.AsyncClient
    settings: Settings

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    async def create(self, kind: str, **body) -> dict:
        response = await self.api.post(f"/api/{kind}", json=body)
        assert response.status_code == 201, response.text
        return response.json()


async def start_control(nursery: trio.Nursery, settings: Settings) -> Control:
    url = await nursery.start(serve, settings)
    api = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"})
    return Control(url, api, settings)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(listen="127.0.0.1:0", data_dir=str(tmp_path), admin_token=ADMIN, heartbeat_interval=2.0,
                    auth_timeout=1.0)


@pytest.fixture
async def control(nursery, settings) -> Control:
    ctl = await start_control(nursery, settings)
    async with ctl.api:
        yield ctl


class WsClient:
    """A raw protocol peer: what a gateway or agent sends, frame by frame."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, message) -> None:
        await self.ws.send_message(message.to_json())

    async def receive(self, timeout: float = 1.0):
        """The next frame other than pong, decoded; fails the test after `timeout` seconds."""
        with trio.fail_after(timeout):
            while True:
                message = protocol.decode(await self.ws.get_message())
                if not isinstance(message, protocol.Pong):
                    return message

    async def receive_pong(self, timeout: float = 1.0) -> None:
        with trio.fail_after(timeout):
            assert isinstance(protocol.decode(await self.ws.get_message()), protocol.Pong)

    async def config(self, timeout: float = 1.0) -> protocol.Config:
        message = await self.receive(timeout)
        assert isinstance(message, protocol.ConfigUpdate), message
        await self.send(protocol.ConfigAck(message.version))
        return message.config


@asynccontextmanager
async def connect(ctl: Control, api_key: str, role: str, key: str | None = None, endpoint: str | None = None):
    """Open /ws and authenticate; the client carries `welcome` and its `first_config`."""
    async with open_websocket_url(ctl.ws_url) as ws:
        client = WsClient(ws)
        await client.send(protocol.Auth(api_key, role, key or public_key(), endpoint))
        client.welcome = await client.receive()
        assert isinstance(client.welcome, protocol.AuthSuccess), client.welcome
        client.first_config = await client.config()
        yield client


def body(response: httpx.Response) -> dict:
    return json.loads(response.text)


async def closed_with(client: WsClient) -> int:
    """Read until the server closes; the close code."""
    with trio.fail_after(5):
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await client.ws.get_message()
    return closed.value.reason.code

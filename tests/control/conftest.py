from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from kakuremichi import protocol
from kakuremichi.control.server import serve
from kakuremichi.control.state import Settings
from kakuremichi.wg import keys
from tests.deployment import free_port

ADMIN = "kma_test-admin-token"


def public_key() -> str:
    return keys.encode(keys.public_from_private(keys.generate_private()))


@dataclass
class Control:
    url: str
    api: httpx.AsyncClient
    settings: Settings | None
    process: subprocess.Popen | None = None  # when it runs as its own process

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


@pytest.fixture(scope="session")
def postgres_server():
    """URL (without database) of a throwaway PostgreSQL cluster for this session, stopped and deleted after it.

    PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user Debian's package creates.
    """
    pytest.importorskip("psycopg2", reason="PostgreSQL tests need psycopg2: pip install -e '.[test]'")
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: float(path.split("/")[-3]))
    if not initdb:
        pytest.skip("PostgreSQL tests need the server in /usr/lib/postgresql/*/bin: apt-get install postgresql")
    bindir = os.path.dirname(initdb[-1])  # the newest
    as_user = []
    base = tempfile.mkdtemp(prefix="kakuremichi-pg-")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL will not run as root and there is no `postgres` user to run it as")
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(base, "data"), free_port()

    def run(*args: str) -> None:
        subprocess.run(as_user + list(args), check=True, capture_output=True, timeout=60)

    try:
        run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "kakuremichi", "--no-sync")
        run(f"{bindir}/pg_ctl", "-D", data, "-w", "-l", os.path.join(base, "log"), "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start a PostgreSQL cluster: {exc.stderr.decode(errors='replace')}")
    try:
        yield f"postgres://kakuremichi@127.0.0.1:{port}"
    finally:
        run(f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def new_postgres_database(server: str) -> str:
    """A fresh, empty database on `server`: its URL."""
    import psycopg2

    name = "k" + uuid.uuid4().hex[:12]
    connection = psycopg2.connect(server + "/postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    connection.close()
    return f"{server}/{name}"


def pytest_generate_tests(metafunc) -> None:
    if "database_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_databases"):
        metafunc.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
def database_url(request) -> str | None:
    """The control database: None is SQLite in the data dir; tests marked both_databases also run on a fresh
    PostgreSQL database."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return None
    return new_postgres_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    return Settings(listen="127.0.0.1:0", data_dir=str(tmp_path), database_url=database_url, admin_token=ADMIN,
                    heartbeat_interval=2.0, auth_timeout=1.0)


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
async def connect(ctl: Control, api_key: str, role: str, key: str | None = None, endpoint: str | None = None,
                  worker: int = 0):
    """Open /ws and authenticate (as a gateway's `worker`); the client carries `welcome` and its `first_config`."""
    async with open_websocket_url(ctl.ws_url) as ws:
        client = WsClient(ws)
        await client.send(protocol.Auth(api_key, role, key or public_key(), endpoint, worker=worker or msgspec.UNSET))
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

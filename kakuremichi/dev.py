"""`kakuremichi dev`: control, a gateway and an agent in one process on an embedded SQLite database,
publishing one local port through a real WireGuard tunnel, so the whole path can be tried in a minute.

Everything is the production code: control's REST API creates the agent, the gateway and the tunnel;
the gateway and agent fetch their configs over the control WebSocket and talk WireGuard over UDP on
loopback. Without --expose it publishes a small built-in page, so the command works on its own.
"""

from __future__ import annotations

import logging
import secrets
import sys
from pathlib import Path

import h11
import httpx
import trio

from kakuremichi import command, logs
from kakuremichi.agent.agent import Agent
from kakuremichi.control.server import serve as serve_control
from kakuremichi.control.state import Settings
from kakuremichi.controlclient import ControlClient
from kakuremichi.gateway.gateway import Gateway, Listen
from kakuremichi.options import EnvArgumentParser
from kakuremichi.tunnel import TunnelNode
from kakuremichi.wg import keyfile, keys

logger = logging.getLogger("kakuremichi.dev")

DEMO_PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>kakuremichi</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:4em auto">
<h1>Hello from behind the tunnel</h1>
<p>This page is served by a local app and reached through kakuremichi's gateway, its userspace
WireGuard and its userspace TCP/IP stack. Publish your own app with <code>kakuremichi dev --expose PORT</code>.</p>
</body></html>
"""


def build_parser(prog: str) -> EnvArgumentParser:
    parser = EnvArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--expose", default=None,
                        help="local target to publish: PORT, HOST:PORT or http(s)://HOST:PORT "
                             "(default: a built-in demo page)")
    parser.add_argument("--domain", default="app.localhost", help="public domain of the tunnel")
    parser.add_argument("--http-port", type=int, default=8081, help="gateway HTTP port")
    parser.add_argument("--control-port", type=int, default=8000, help="control server port")
    parser.add_argument("--data-dir", default="kakuremichi-dev", help="state directory")
    logs.add_arguments(parser)
    return parser


async def _demo_app(task_status=trio.TASK_STATUS_IGNORED) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some()
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.DONE:
                        return
                    continue
                if isinstance(event, h11.Request):
                    headers = [("content-type", "text/html; charset=utf-8"), ("content-length", str(len(DEMO_PAGE)))]
                    await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
                    await stream.send_all(conn.send(h11.Data(data=DEMO_PAGE)) + conn.send(h11.EndOfMessage()))
                elif isinstance(event, h11.ConnectionClosed) or conn.our_state is h11.MUST_CLOSE:
                    return
                elif conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


def _admin_token(data: Path) -> str:
    """The dev installation's admin token, kept 0600 in the data directory so restarts reuse it."""
    path = data / "admin-token"
    if path.exists():
        return path.read_text().strip()
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = "kma_" + secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


async def _ensure(api: httpx.AsyncClient, kind: str, name: str) -> str:
    """The API key of the agent/gateway called `name`, created or rotated (keys are only shown once)."""
    existing = [c for c in (await api.get(f"/api/{kind}s", params={"limit": 100})).json()["items"]
                if c["name"] == name]
    if existing:
        response = await api.post(f"/api/{kind}s/{existing[0]['id']}/rotate-key")
    else:
        response = await api.post(f"/api/{kind}s", json={"name": name})
    response.raise_for_status()
    body = response.json()
    return body["apiKey"], body["id"]


async def _ensure_tunnel(api: httpx.AsyncClient, domain: str, agent_id: str, target: str) -> None:
    tunnels = (await api.get("/api/tunnels", params={"limit": 100})).json()["items"]
    match = [t for t in tunnels if t["domain"] == domain]
    body = {"domain": domain, "agentId": agent_id, "target": target, "enabled": True, "tlsMode": "off"}
    if match:
        response = await api.patch(f"/api/tunnels/{match[0]['id']}", json=body)
    else:
        response = await api.post("/api/tunnels", json=body)
    if response.status_code >= 400:
        raise ValueError(f"control refused the tunnel: {response.json().get('details') or response.text}")


def _target(expose: str) -> str:
    return f"127.0.0.1:{expose}" if expose.isdigit() else expose


async def run(args) -> None:
    for port, what, flag in ((args.control_port, "control", "--control-port"), (args.http_port, "HTTP", "--http-port")):
        command.check_can_listen("127.0.0.1", port, what, flag)
    data = Path(args.data_dir)
    token = _admin_token(data)
    async with trio.open_nursery() as nursery:
        target = _target(args.expose) if args.expose else f"127.0.0.1:{await nursery.start(_demo_app)}"
        control_url = await nursery.start(serve_control, Settings(
            listen=f"127.0.0.1:{args.control_port}", data_dir=str(data / "control"), admin_token=token))
        async with httpx.AsyncClient(base_url=control_url, headers={"authorization": f"Bearer {token}"},
                                     timeout=10) as api:
            gateway_key, _ = await _ensure(api, "gateway", "dev-gateway")
            agent_key, agent_id = await _ensure(api, "agent", "dev-agent")
            await _ensure_tunnel(api, args.domain, agent_id, target)

        ws_url = control_url.replace("http://", "ws://") + "/ws"
        gateway_node = TunnelNode(keyfile.load_or_create(data / "gateway" / "wireguard.key"), listen_host="127.0.0.1")
        gateway = Gateway(gateway_node, data / "gateway", Listen("127.0.0.1", args.http_port, None))
        agent_node = TunnelNode(keyfile.load_or_create(data / "agent" / "wireguard.key"), listen_host="127.0.0.1")
        agent = Agent(agent_node)
        await nursery.start(gateway.run)
        await nursery.start(agent.run)
        gateway_link = gateway.control_client(ws_url, gateway_key, f"127.0.0.1:{gateway_node.listen_port}")
        agent_link = ControlClient(ws_url, agent_key, "agent", keys.encode(agent_node.public_key),
                                   on_config=agent.apply, stats=agent.stats)
        await nursery.start(gateway_link.run)
        await nursery.start(agent_link.run)
        with trio.fail_after(15):
            while not (gateway.routes.lookup(args.domain) and agent.targets and agent_node.device.peers):
                await trio.sleep(0.05)
        url = f"http://{args.domain}:{gateway.http_ports[0]}/"
        print(f"\nkakuremichi is up: {target} is published at\n\n    {url}\n\n"
              f"  (if {args.domain} does not resolve here: curl -H 'Host: {args.domain}' "
              f"http://127.0.0.1:{gateway.http_ports[0]}/)\n"
              f"  web UI: {control_url}/ (log in with the admin token kept in {data / 'admin-token'})\n"
              f"  control API: {control_url}/api (the same token as a bearer token)\n"
              f"  Ctrl-C stops everything.\n", flush=True)


def main(argv: list[str] | None = None, prog: str = "kakuremichi dev") -> int:
    args = build_parser(prog).parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    return command.run(prog, run, args)


if __name__ == "__main__":
    sys.exit(main(prog="python -m kakuremichi.dev"))

"""A real local web app (ASGI on Hypercorn/Trio) standing behind the gateway in tests.

/headers   → JSON: request headers, method, path, and the peer port (tells connections apart); any other
             path too, with ?sts=V answered with Strict-Transport-Security: V
/upload    → streams the request body, answers its length and SHA-256
/download  → ?size=N streams N deterministic bytes (?chunked=1: no Content-Length)
/slow      → ?delay=S sleeps before answering
/ws        → WebSocket echo
"""

from __future__ import annotations

import hashlib
import json
import random
from urllib.parse import parse_qs

import hypercorn.config
import hypercorn.trio
import trio

BLOCK = random.Random(7).randbytes(65536)


def payload(size: int):
    """The deterministic bytes /download sends, as chunks."""
    while size > 0:
        chunk = BLOCK[: min(size, len(BLOCK))]
        size -= len(chunk)
        yield chunk


def payload_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for chunk in payload(size):
        digest.update(chunk)
    return digest.hexdigest()


def make_app(name: str):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            while (message := await receive())["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": message.get("text"),
                            "bytes": message.get("bytes")})
            return
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        path = scope["path"]
        if path == "/upload":
            digest, length = hashlib.sha256(), 0
            while True:
                message = await receive()
                digest.update(message.get("body", b""))
                length += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
            await _json(send, {"length": length, "sha256": digest.hexdigest()})
        elif path == "/download":
            size = int(query.get("size", "0"))
            headers = [(b"content-type", b"application/octet-stream")]
            if not query.get("chunked"):
                headers.append((b"content-length", str(size).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for chunk in payload(size):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/slow":
            await trio.sleep(float(query.get("delay", "1")))
            await _json(send, {"app": name, "slow": True})
        else:
            await _json(send, {
                "app": name, "method": scope["method"], "path": path,
                "query": scope["query_string"].decode(), "peer_port": scope["client"][1],
                "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            }, [(b"strict-transport-security", query["sts"].encode())] if "sts" in query else [])

    return app


async def _json(send, obj, headers=()) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


async def start_app(nursery: trio.Nursery, name: str) -> int:
    """Run the app on 127.0.0.1 and return its port."""
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 30
    binds = await nursery.start(hypercorn.trio.serve, make_app(name), config)
    return int(binds[0].rsplit(":", 1)[1])

"""Pebble (Let's Encrypt's test CA) and pebble-challtestsrv (its mock DNS) as real processes.

Every test domain resolves to 127.0.0.1 through the mock DNS, and Pebble validates HTTP-01 on the
gateway's HTTP port (its `httpPort`), so issuance runs exactly as against a public CA. Pebble's
own HTTPS uses a certificate from a throw-away test CA (Debian ships none); the root that signs
issued certificates is fetched from Pebble's management endpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
import trio

from tests.deployment import free_port
from tests.gateway.testca import TestCA

PEBBLE = shutil.which("pebble")
CHALLTESTSRV = shutil.which("pebble-challtestsrv")
needs_pebble = pytest.mark.skipif(not (PEBBLE and CHALLTESTSRV),
                                  reason="pebble and pebble-challtestsrv not installed (apt-get install pebble)")


class Pebble:
    """Configured for one gateway HTTP port; `start()`/`stop()` may be called again (fresh CA state)."""

    def __init__(self, workdir: Path, http_port: int, acme_port: int | None = None) -> None:
        self.workdir = workdir
        self.acme_port = acme_port or free_port()
        self.management_port = free_port()
        self.dns_port = free_port()
        self.ca = TestCA()
        self.ca_bundle = workdir / "pebble-ca.pem"
        self.ca_bundle.write_bytes(self.ca.pem)
        cert, key = self.ca.issue("localhost", "127.0.0.1")
        (workdir / "pebble-cert.pem").write_bytes(cert)
        (workdir / "pebble-key.pem").write_bytes(key)
        (workdir / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.acme_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(workdir / "pebble-cert.pem"),
            "privateKey": str(workdir / "pebble-key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}))
        self._processes: list[subprocess.Popen] = []

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    def _client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    async def start(self) -> None:
        log = open(self.workdir / "pebble.log", "ab")
        self._processes = [
            subprocess.Popen([CHALLTESTSRV, "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "",
                              "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}",
                              "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""], stdout=log, stderr=log),
            subprocess.Popen([PEBBLE, "-config", str(self.workdir / "pebble.json"),
                              "-dnsserver", f"127.0.0.1:{self.dns_port}"], stdout=log, stderr=log,
                             env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}),
        ]
        log.close()
        with trio.fail_after(20):
            while True:
                try:
                    await trio.to_thread.run_sync(self._get, self.directory_url)
                    return
                except OSError:
                    await trio.sleep(0.1)

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self._client_context(), timeout=5) as response:
            return response.read()

    async def root_pem(self) -> bytes:
        """The root that issued certificates chain to (new on every Pebble start)."""
        return await trio.to_thread.run_sync(self._get, f"https://127.0.0.1:{self.management_port}/roots/0")

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes = []

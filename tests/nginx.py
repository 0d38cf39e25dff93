"""nginx on a loopback port that wants a PROXY protocol header (`listen … proxy_protocol`), the real consumer the
PROXY protocol tests check the gateway's headers with: its own prefix, pid, logs and temp paths in `root`."""

from __future__ import annotations

import contextlib
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

from tests.deployment import free_port, wait_for


@contextlib.contextmanager
def proxy_protocol_nginx(root: Path, log_format: str, answer: str, listening) -> Iterator[tuple[int, Path]]:
    """(its port, its access log): each request logged with `log_format` and answered 200 with `answer` (both
    nginx variables' text); `listening(port)` tells when it is up."""
    port = free_port()
    root.mkdir()
    (root / "nginx.conf").write_text(textwrap.dedent(f'''
        daemon off; pid {root}/nginx.pid; error_log {root}/error.log; worker_processes 1;
        events {{ worker_connections 64; }}
        http {{
            client_body_temp_path {root}; proxy_temp_path {root}; fastcgi_temp_path {root};
            uwsgi_temp_path {root}; scgi_temp_path {root};
            log_format proxied '{log_format}';
            access_log {root}/access.log proxied;
            server {{
                listen 127.0.0.1:{port} proxy_protocol;
                location / {{ return 200 "{answer}"; }}
            }}
        }}'''))
    process = subprocess.Popen(["nginx", "-c", str(root / "nginx.conf"), "-p", str(root)])
    try:
        wait_for(lambda: listening(port), 10, "nginx")
        yield port, root / "access.log"
    finally:
        process.terminate()
        process.wait(10)

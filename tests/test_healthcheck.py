"""`kakuremichi healthcheck`, the image's HEALTHCHECK: healthy on an answer below 500 or an existing file,
unhealthy (exit 1, saying why) on a 5xx, a refused connection or a missing file."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kakuremichi.healthcheck import main
from tests.deployment import free_port


@pytest.fixture
def server():
    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(int(self.path.strip("/")))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_an_answer_below_500_is_healthy(server, capsys):
    assert main(["--url", f"{server}/200"]) == 0
    assert main(["--url", f"{server}/404"]) == 0  # a gateway answering an unknown host serves
    assert capsys.readouterr().out == "healthy\nhealthy\n"


def test_a_server_error_or_no_server_is_unhealthy(server, capsys):
    assert main(["--url", f"{server}/503"]) == 1
    assert f"unhealthy: {server}/503 answered 503" in capsys.readouterr().err
    assert main(["--url", f"http://127.0.0.1:{free_port()}/healthz"]) == 1
    assert "Connection refused" in capsys.readouterr().err


def test_a_file_is_healthy_once_it_exists(tmp_path, capsys):
    config = tmp_path / "config.json"
    assert main(["--file", str(config)]) == 1
    assert "config.json does not exist yet" in capsys.readouterr().err
    config.write_text("{}")
    assert main(["--file", str(config)]) == 0

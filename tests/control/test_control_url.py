import pytest

from kakuremichi.controlclient import _in_clear, websocket_url


@pytest.mark.parametrize("given, expected", [
    ("http://control:8000", "ws://control:8000/ws"),
    ("https://control.example.com/", "wss://control.example.com/ws"),
    ("wss://control.example.com/ws", "wss://control.example.com/ws"),
    ("ws://10.0.0.1:8000/custom", "ws://10.0.0.1:8000/custom"),
])
def test_control_url_accepts_what_users_type(given, expected):
    assert websocket_url(given) == expected


@pytest.mark.parametrize("bad", ["control:8000", "ftp://control", "http://"])
def test_control_url_rejects_garbage_with_an_example(bad):
    with pytest.raises(ValueError, match="https://control.example.com"):
        websocket_url(bad)



@pytest.mark.parametrize("url, in_clear", [("ws://control.example.com:8000/ws", True),
                                           ("ws://127.0.0.1:8000/ws", False), ("ws://localhost/ws", False),
                                           ("wss://control.example.com/ws", False)])
def test_plain_ws_to_another_host_counts_as_in_the_clear(url, in_clear):
    assert _in_clear(url) is in_clear  # such a client warns at start that its API key crosses unencrypted

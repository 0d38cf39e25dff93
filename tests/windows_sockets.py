"""`python -m tests.windows_sockets MODULE ARGS...`: run MODULE as `python -m MODULE ARGS...` would, with the
socket API of Windows' CPython, which has no `recvmsg`, `recvmsg_into`, `sendmsg` or `CMSG_SPACE`/`CMSG_LEN`:
the only way CI on Linux reaches the code paths a Windows agent or gateway takes."""

from __future__ import annotations

import runpy
import socket
import sys

HIDDEN_METHODS = frozenset({"recvmsg", "recvmsg_into", "sendmsg"})
HIDDEN_CONSTANTS = ("CMSG_SPACE", "CMSG_LEN")


class WindowsSocket(socket.socket):
    """A socket whose ancillary-data methods are missing, as they are on Windows."""

    def __getattribute__(self, name: str):
        if name in HIDDEN_METHODS:
            raise AttributeError(f"'socket' object has no attribute {name!r} (hidden: tests.windows_sockets)")
        return super().__getattribute__(name)


def hide() -> None:
    socket.socket = WindowsSocket  # every socket made from now on, accepted ones included (socket.accept)
    for name in HIDDEN_CONSTANTS:
        delattr(socket, name)
        socket.__all__.remove(name)


MARKER = "tests.windows_sockets: no recvmsg, recvmsg_into, sendmsg, CMSG_SPACE or CMSG_LEN in this process"

if __name__ == "__main__":
    hide()
    print(MARKER, file=sys.stderr, flush=True)
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)

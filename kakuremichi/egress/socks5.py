"""SOCKS5 (RFC 1928) without I/O: CONNECT only, no authentication, IPv4/domain/IPv6 addresses.

`ServerHandshake` is the side that accepts a client (the gateway's exit, the agent's local proxy);
`ClientHandshake` is the side that asks a server to connect (the agent towards a gateway). Both are fed
the bytes that arrive and hand back events and the bytes to send; malformed input becomes the reply
code the RFC asks for, never an exception for the caller to catch.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

VERSION = 5
NO_AUTHENTICATION = 0x00
NO_ACCEPTABLE_METHODS = 0xFF
CONNECT = 0x01
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04

# reply codes (RFC 1928 §6)
SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
NOT_ALLOWED = 0x02
NETWORK_UNREACHABLE = 0x03
HOST_UNREACHABLE = 0x04
CONNECTION_REFUSED = 0x05
TTL_EXPIRED = 0x06
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_TYPE_NOT_SUPPORTED = 0x08

REPLY_TEXT = {SUCCEEDED: "succeeded", GENERAL_FAILURE: "general failure", NOT_ALLOWED: "not allowed by ruleset",
              NETWORK_UNREACHABLE: "network unreachable", HOST_UNREACHABLE: "host unreachable",
              CONNECTION_REFUSED: "connection refused", TTL_EXPIRED: "TTL expired",
              COMMAND_NOT_SUPPORTED: "command not supported",
              ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported"}


class NeedData:
    """More bytes are needed before anything can be decided."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@dataclass(frozen=True)
class Request:
    """A client asks to CONNECT to host:port (host: an IP address literal or a domain name)."""

    host: str
    port: int


@dataclass(frozen=True)
class Rejected:
    """The client's greeting or request cannot be served; the reply (if any) is in data_to_send()."""

    code: int  # a reply code, or NO_ACCEPTABLE_METHODS for a greeting
    reason: str


@dataclass(frozen=True)
class Connected:
    """The server connected; `bound` is the address it connected from."""

    bound: tuple[str, int]


@dataclass(frozen=True)
class Failed:
    """The server could not connect (`code` as in its reply, GENERAL_FAILURE for a garbled reply)."""

    code: int
    reason: str


class _Malformed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def encode_address(host: str, port: int) -> bytes:
    """ATYP, address and port as in requests and replies (a host that is no IP literal goes as a domain)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            name = host.encode("idna")
        except UnicodeError:
            raise ValueError(f"host name {host!r} is not a valid domain name") from None
        if not 0 < len(name) < 256:
            raise ValueError(f"host name {host!r} does not fit SOCKS5's 255 bytes") from None
        return bytes((ATYP_DOMAIN, len(name))) + name + struct.pack("!H", port)
    atyp = ATYP_IPV4 if address.version == 4 else ATYP_IPV6
    return bytes((atyp,)) + address.packed + struct.pack("!H", port)


def encode_reply(code: int, bound: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
    return bytes((VERSION, code, 0)) + encode_address(*bound)


def _parse_address(buffer: bytearray, offset: int) -> tuple[str, int, int] | None:
    """(host, port, end offset) of the ATYP+address+port at `offset`, or None if incomplete."""
    if len(buffer) < offset + 1:
        return None
    atyp = buffer[offset]
    if atyp == ATYP_IPV4:
        end = offset + 1 + 4
        if len(buffer) < end + 2:
            return None
        host = str(ipaddress.IPv4Address(bytes(buffer[offset + 1:end])))
    elif atyp == ATYP_IPV6:
        end = offset + 1 + 16
        if len(buffer) < end + 2:
            return None
        host = str(ipaddress.IPv6Address(bytes(buffer[offset + 1:end])))
    elif atyp == ATYP_DOMAIN:
        if len(buffer) < offset + 2:
            return None
        length = buffer[offset + 1]
        end = offset + 2 + length
        if len(buffer) < end + 2:
            return None
        raw = bytes(buffer[offset + 2:end])
        # a DNS name in printable ASCII: no empty name, no NUL or spaces to confuse a resolver or a log
        if not raw or not all(0x21 <= b < 0x7F for b in raw):
            raise _Malformed(GENERAL_FAILURE, "malformed domain name")
        host = raw.decode("ascii")
    else:
        raise _Malformed(ADDRESS_TYPE_NOT_SUPPORTED, f"address type {atyp:#x} not supported")
    port = struct.unpack_from("!H", buffer, end)[0]
    return host, port, end + 2


class ServerHandshake:
    """The accepting side: greeting → method selection, then one CONNECT request.

    Feed bytes with receive_data() (b"" at EOF), call next_event() until NEED_DATA, a Request or Rejected;
    send data_to_send() each time. After a Request, answer with reply(); then the stream carries the
    connection's bytes, starting with `trailing_data`.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._out = bytearray()
        self._stage = "greeting"  # greeting -> request -> replying -> done
        self._eof = False
        self.trailing_data = b""

    def receive_data(self, data: bytes) -> None:
        if data:
            self._buffer += data
        else:
            self._eof = True

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def next_event(self) -> NeedData | Request | Rejected:
        if self._stage == "done":
            raise RuntimeError("the handshake is over")
        try:
            if self._stage == "greeting":
                chosen = self._greeting()
                if chosen is None:
                    return self._need_data()
                self._stage = "request"
            if self._stage == "request":
                return self._request() or self._need_data()
        except _Malformed as exc:
            if self._stage == "greeting":
                self._out += bytes((VERSION, NO_ACCEPTABLE_METHODS))
            else:
                self._out += encode_reply(exc.code)
            self._stage = "done"
            return Rejected(exc.code, exc.reason)
        raise RuntimeError("reply() to the request first")

    def _need_data(self) -> NeedData | Rejected:
        if self._eof:
            self._stage = "done"
            return Rejected(GENERAL_FAILURE, "connection closed in the middle of the handshake")
        return NEED_DATA

    def _greeting(self) -> bool | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        if buffer[0] != VERSION:
            raise _Malformed(NO_ACCEPTABLE_METHODS, f"not SOCKS5 (version {buffer[0]})")
        count = buffer[1]
        if len(buffer) < 2 + count:
            return None
        methods = buffer[2:2 + count]
        del buffer[:2 + count]
        if NO_AUTHENTICATION not in methods:
            raise _Malformed(NO_ACCEPTABLE_METHODS, "the client offers no method without authentication")
        self._out += bytes((VERSION, NO_AUTHENTICATION))
        return True

    def _request(self) -> Request | None:
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        if buffer[0] != VERSION:
            raise _Malformed(GENERAL_FAILURE, f"request of version {buffer[0]}")
        if buffer[1] != CONNECT:
            raise _Malformed(COMMAND_NOT_SUPPORTED, f"command {buffer[1]:#x} not supported (CONNECT only)")
        if buffer[2] != 0:
            raise _Malformed(GENERAL_FAILURE, "reserved byte is not zero")
        parsed = _parse_address(buffer, 3)
        if parsed is None:
            return None
        host, port, end = parsed
        if port == 0:
            raise _Malformed(GENERAL_FAILURE, "port 0")
        self.trailing_data = bytes(buffer[end:])
        del buffer[:]
        self._stage = "replying"
        return Request(host, port)

    def reply(self, code: int, bound: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
        """The answer to the Request (SUCCEEDED, or the reason it failed)."""
        if self._stage != "replying":
            raise RuntimeError("no request to reply to")
        self._stage = "done"
        return encode_reply(code, bound)


class ClientHandshake:
    """The asking side: greeting and CONNECT request sent at once (one round trip), then the reply.

    data_to_send() first, then feed the server's bytes with receive_data() (b"" at EOF) and call
    next_event() until Connected or Failed; after Connected the stream is the connection, starting
    with `trailing_data`.
    """

    def __init__(self, host: str, port: int) -> None:
        self._out = bytes((VERSION, 1, NO_AUTHENTICATION)) + bytes((VERSION, CONNECT, 0)) + encode_address(host, port)
        self._buffer = bytearray()
        self._eof = False
        self._method_chosen = False
        self.trailing_data = b""

    def data_to_send(self) -> bytes:
        out, self._out = self._out, b""
        return out

    def receive_data(self, data: bytes) -> None:
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> NeedData | Connected | Failed:
        try:
            event = self._parse()
        except _Malformed as exc:
            return Failed(exc.code, exc.reason)
        if event is None:
            if self._eof:
                return Failed(GENERAL_FAILURE, "the server closed the connection during the handshake")
            return NEED_DATA
        return event

    def _parse(self) -> Connected | Failed | None:
        buffer = self._buffer
        if not self._method_chosen:
            if len(buffer) < 2:
                return None
            if buffer[0] != VERSION:
                raise _Malformed(GENERAL_FAILURE, f"the server is not SOCKS5 (version {buffer[0]})")
            if buffer[1] != NO_AUTHENTICATION:
                raise _Malformed(GENERAL_FAILURE, "the server wants authentication")
            del buffer[:2]
            self._method_chosen = True
        if len(buffer) < 3:
            return None
        if buffer[0] != VERSION or buffer[2] != 0:
            raise _Malformed(GENERAL_FAILURE, "garbled reply")
        code = buffer[1]
        try:
            parsed = _parse_address(buffer, 3)
        except _Malformed:
            raise _Malformed(GENERAL_FAILURE, "garbled reply address") from None
        if parsed is None:
            return None
        host, port, end = parsed
        self.trailing_data = bytes(buffer[end:])
        del buffer[:]
        if code != SUCCEEDED:
            return Failed(code, REPLY_TEXT.get(code, f"reply code {code:#x}"))
        return Connected((host, port))

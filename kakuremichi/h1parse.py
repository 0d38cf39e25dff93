"""HTTP/1.1 messages of one connection, sans-IO: bytes in, events out; events in, bytes out.

Both sides of the proxy use it: the client connection (`server=True`: requests in, responses out) and each
connection to an agent (requests out, responses in). A message head is parsed by llhttp (httptools, the
parser of Node.js and uvicorn), which refuses what lets a request be read two ways (RFC 9112 §11.2):
Content-Length with Transfer-Encoding, duplicate Content-Length, obs-fold, bare LF or CR line ends, bad
characters in names and values. Bodies are framed here, so a chunk size past 63 bits (which the servers
behind the agents would wrap) is refused too. Heads are written from the fields as given: what the gateway
forwards was parsed and checked on the way in (or built by h11 from HTTP/2, or by the gateway), so it is
not validated a second time.

Refusals raise Malformed with the status to answer: 400, 431 (head larger than `max_header_bytes` or more
than MAX_HEADERS fields), 501 (a request's transfer coding other than chunked), 505 (not HTTP/1.x). A
response is refused likewise (the proxy answers 502 then).
"""

from __future__ import annotations

import enum
import re
from http import HTTPStatus

import httptools

MAX_HEADERS = 256  # fields in one head (Apache allows 100, Node.js 2,000)
MAX_CHUNK_SIZE = (1 << 63) - 1  # the largest a signed 64-bit length holds (RFC 9112 §7.1)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_CHUNK_LINE_LIMIT = 4096  # a chunk-size line with its extensions
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


class Malformed(Exception):
    """The peer's message cannot be read: `status` is what a server answers."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class SendError(Exception):
    """What the proxy was about to send breaks the framing it announced (more bytes than the length...)."""


class State(enum.Enum):
    IDLE = "idle"  # before a message's head
    BODY = "body"  # head done, body under way
    DONE = "done"  # the message is complete; the next waits for start_next_cycle
    ERROR = "error"  # malformed (theirs) or abandoned (ours): the connection can only close


IDLE, BODY, DONE, ERROR = State.IDLE, State.BODY, State.DONE, State.ERROR


class Request:
    __slots__ = ("method", "target", "headers", "http_version")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                 http_version: bytes = b"1.1") -> None:
        self.method, self.target, self.headers, self.http_version = method, target, headers, http_version


class Response:
    """A final response; `InformationalResponse` is a 1xx one."""

    __slots__ = ("status_code", "reason", "headers", "http_version")

    def __init__(self, status_code: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"",
                 http_version: bytes = b"1.1") -> None:
        self.status_code, self.headers, self.reason, self.http_version = status_code, headers, reason, http_version


class InformationalResponse(Response):
    __slots__ = ()


class Data:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class EndOfMessage:
    __slots__ = ()


class ConnectionClosed:
    __slots__ = ()


END = EndOfMessage()
CLOSED = ConnectionClosed()
NEED_DATA = object()  # more bytes are needed for the next event
PAUSED = object()  # the message is done; the next is read after start_next_cycle


class _Head:
    """llhttp's callbacks for one head: the fields as they arrive, and whether the connection may stay open
    after the message (asked at the end of the head: llhttp forgets it once a body-less message is done)."""

    __slots__ = ("url", "reason", "headers", "parser", "keep_alive")

    def __init__(self) -> None:
        self.url = self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.parser = None
        self.keep_alive = False

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        if len(self.headers) > MAX_HEADERS:
            raise Malformed(f"more than {MAX_HEADERS} header fields", 431)


# Body framings.
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)
# Where a chunked body is.
_SIZE, _CHUNK, _CHUNK_END, _TRAILER = range(4)


class Connection:
    """One HTTP/1.1 connection's two directions. `their_state`/`our_state` follow the messages read and
    written; `reusable` says whether another request may follow on it."""

    def __init__(self, *, server: bool, max_header_bytes: int = 65536) -> None:
        self.server = server
        self.max_header_bytes = max_header_bytes
        self._buffer = bytearray()
        self._eof = False
        self.their_state = self.our_state = IDLE
        self.keep_alive = True
        self.client_is_waiting_for_100_continue = False
        self._searched = self._fed = 0  # of the head in the buffer: looked at for its end, given to llhttp
        self._parser = None
        self._head: _Head | None = None
        self._framing = _NONE
        self._left = 0  # body bytes still to come (_LENGTH), or of the current chunk (_CHUNKED)
        self._chunk_phase = _SIZE
        self._trailer_bytes = 0
        self._send_framing = _NONE
        self._send_left = 0
        self._head_request = False  # the request was HEAD: its response has no body
        self._upgrade = False  # the request asked for an Upgrade
        self.switched = False  # a 101 turned the connection into a byte pipe

    # Reading.

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; b"" is its end of stream."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read as events."""
        return len(self._buffer)

    @property
    def trailing_data(self) -> bytes:
        """What the peer sent after the message that ended the HTTP part (an upgrade's first bytes)."""
        return bytes(self._buffer)

    def next_event(self):
        """The next event from the buffered bytes: a head, Data, END, CLOSED, NEED_DATA or PAUSED; a
        malformed message raises Malformed (and the connection stays in ERROR)."""
        state = self.their_state
        if state is BODY:
            return self._body()
        if state is IDLE:
            try:
                return self._read_head()
            except Malformed:
                self._fail()
                raise
        if state is ERROR:
            raise Malformed("the message before was malformed")
        return PAUSED

    def _fail(self) -> None:
        self.their_state = ERROR
        self.keep_alive = False

    def _read_head(self):
        buffer = self._buffer
        if self._parser is None:
            while buffer[:2] == b"\r\n":  # empty lines before a request-line are ignored (RFC 9112 §2.2)
                del buffer[:2]
            if not buffer:
                if not self._eof:
                    return NEED_DATA
                self.keep_alive = False
                if self.server or self.our_state is IDLE:
                    return CLOSED  # between messages
                raise Malformed("the connection closed before the response")
            self._head = _Head()
            self._parser = self._head.parser = (
                httptools.HttpRequestParser if self.server else httptools.HttpResponseParser)(self._head)
            self._searched = self._fed = 0
        end = buffer.find(b"\r\n\r\n", max(self._searched - 3, 0))
        if end < 0:
            self._searched = len(buffer)
            if len(buffer) > self.max_header_bytes:
                raise Malformed("the message head is too large", 431)
            self._feed(bytes(buffer[self._fed:]))  # bad syntax is refused as soon as it arrives
            self._fed = len(buffer)
            if self._eof:
                raise Malformed("the connection closed inside a message head")
            return NEED_DATA
        end += 4
        if end > self.max_header_bytes:
            raise Malformed("the message head is too large", 431)
        self._feed(bytes(buffer[self._fed:end]))
        del buffer[:end]
        parser, head = self._parser, self._head
        self._parser = self._head = head.parser = None
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise Malformed(f"HTTP/{version} is not supported", 505)
        keep_alive = version == "1.1" and head.keep_alive
        if self.server:
            return self._request(parser.get_method(), head, version, keep_alive)
        return self._response(parser.get_status_code(), head, version, keep_alive)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the head is all it was given; the upgrade is decided by the response
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Malformed):
                raise cause from None
            raise Malformed(str(exc)) from None
        except httptools.HttpParserError as exc:
            raise Malformed(str(exc)) from None

    def _request(self, method: bytes, head: _Head, version: str, keep_alive: bool) -> Request:
        framing, length, coding, expect, upgrade = _NONE, None, None, False, False
        for name, value in head.headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                coding = value if coding is None else coding + b", " + value
            elif name == b"expect":
                expect = value.lower() == b"100-continue"
            elif name == b"upgrade":
                upgrade = True
        if coding is not None:
            if coding.strip().lower() != b"chunked":
                raise Malformed("only Transfer-Encoding: chunked is supported", 501)
            framing = _CHUNKED
        elif length is not None and int(length):
            framing, self._left = _LENGTH, int(length)
        self._start_body(framing, keep_alive)
        self._head_request = method == b"HEAD"
        self._upgrade = upgrade
        self.client_is_waiting_for_100_continue = expect and framing != _NONE
        return Request(method, head.url, head.headers, version.encode())

    def _response(self, status: int, head: _Head, version: str, keep_alive: bool) -> Response:
        if status < 200:
            if status == 101:
                if not self._upgrade:
                    raise Malformed("101 Switching Protocols to a request that asked for no upgrade")
                self.their_state = DONE
                self.switched = True
            return InformationalResponse(status, head.headers, head.reason, version.encode())
        framing, length, coding = _UNTIL_CLOSE, None, None
        for name, value in head.headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                coding = value if coding is None else coding + b", " + value
        if self._head_request or status in (204, 304):
            framing = _NONE
        elif coding is not None:
            # Transfer-Encoding is hop-by-hop: relayed without it, a body still gzipped would be corrupt
            if coding.strip().lower() != b"chunked":
                raise Malformed("only Transfer-Encoding: chunked is supported")
            framing = _CHUNKED
        elif length is not None:
            framing, self._left = (_LENGTH, int(length)) if int(length) else (_NONE, 0)
        self._start_body(framing, keep_alive and framing != _UNTIL_CLOSE)
        return Response(status, head.headers, head.reason, version.encode())

    def _start_body(self, framing: int, keep_alive: bool) -> None:
        self._framing = framing
        self._chunk_phase = _SIZE
        self._trailer_bytes = 0
        self.keep_alive = self.keep_alive and keep_alive
        self.their_state = BODY

    def _body(self):
        try:
            framing = self._framing
            if framing == _LENGTH:
                return self._counted()
            if framing == _CHUNKED:
                return self._chunked()
            if framing == _NONE:
                return self._end()
            if self._buffer:
                return self._take(len(self._buffer))
            return self._end() if self._eof else NEED_DATA
        except Malformed:
            self._fail()
            raise

    def _end(self) -> EndOfMessage:
        self.their_state = DONE
        self.client_is_waiting_for_100_continue = False
        return END

    def _take(self, size: int) -> Data:
        buffer = self._buffer
        data = bytes(buffer[:size]) if size < len(buffer) else bytes(buffer)
        del buffer[:size]
        self.client_is_waiting_for_100_continue = False
        return Data(data)

    def _counted(self):
        if self._left == 0:
            return self._end()
        if not self._buffer:
            if self._eof:
                raise Malformed(f"the connection closed {self._left} bytes before the end of the body")
            return NEED_DATA
        data = self._take(min(self._left, len(self._buffer)))
        self._left -= len(data.data)
        return data

    def _chunked(self):
        buffer = self._buffer
        while True:
            phase = self._chunk_phase
            if phase == _CHUNK:
                if not buffer:
                    break
                data = self._take(min(self._left, len(buffer)))
                self._left -= len(data.data)
                if self._left == 0:
                    self._chunk_phase = _CHUNK_END
                return data
            if phase == _CHUNK_END:
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise Malformed("a chunk does not end with CRLF")
                del buffer[:2]
                self._chunk_phase = _SIZE
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > _CHUNK_LINE_LIMIT:
                    raise Malformed("a chunk-size line is too long")
                break
            line = bytes(buffer[:end])
            del buffer[:end + 2]
            if phase == _TRAILER:
                self._trailer_bytes += end + 2
                if self._trailer_bytes > self.max_header_bytes:
                    raise Malformed("the trailer section is too large", 431)
                if not line:
                    return self._end()
                if b"\n" in line or b"\r" in line or b":" not in line:
                    raise Malformed("a trailer field is malformed")
                continue  # trailers are not relayed
            size = line.split(b";", 1)[0].rstrip(b" \t")
            if not _CHUNK_SIZE.fullmatch(size) or b"\n" in line or b"\r" in line:
                raise Malformed(f"bad chunk size line {line[:40]!r}")
            self._left = int(size, 16)
            if self._left > MAX_CHUNK_SIZE:
                raise Malformed(f"chunk size {self._left:x} is too large")
            self._chunk_phase = _CHUNK if self._left else _TRAILER
        if self._eof:
            raise Malformed("the connection closed inside a chunked body")
        return NEED_DATA

    # Writing.

    def send(self, event) -> bytes:
        """The bytes of `event`: a head (Request, Response, InformationalResponse: anything with those
        fields, h11's included), Data or END."""
        if isinstance(event, Data):
            return self._send_data(event.data)
        if event is END or isinstance(event, EndOfMessage):
            return self._send_end()
        if self.our_state is not IDLE:
            raise SendError("a second head in one message")
        if self.server:
            return self._send_response(event)
        return self._send_request(event)

    def _send_request(self, request) -> bytes:
        framing, headers = _NONE, request.headers
        for name, value in headers:
            if name == b"transfer-encoding":
                framing = _CHUNKED
            elif name == b"content-length" and framing == _NONE:
                framing, self._send_left = _LENGTH, int(value)
            elif name == b"upgrade":
                self._upgrade = True
        self._head_request = request.method == b"HEAD"
        self._begin_sending(framing)
        return _head(b"%s %s HTTP/1.1\r\n" % (request.method, request.target), headers)

    def _send_response(self, response) -> bytes:
        status, headers = response.status_code, list(response.headers)
        reason = response.reason or _REASONS.get(status, b"")
        self.client_is_waiting_for_100_continue = False
        if status < 200:
            if status == 101:
                self.switched = True
                self.our_state = DONE
            return _head(b"HTTP/1.1 %d %s\r\n" % (status, reason), headers)
        framing, close = None, False
        for name, value in headers:
            if name == b"content-length":
                framing, self._send_left = _LENGTH, int(value)
            elif name == b"transfer-encoding":
                framing = _CHUNKED
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if self._head_request or status in (204, 304):
            framing = _NONE
        elif framing is None:
            if self.keep_alive:
                framing = _CHUNKED
                headers.append((b"transfer-encoding", b"chunked"))
            else:
                framing = _UNTIL_CLOSE
        if close:
            self.keep_alive = False
        elif not self.keep_alive:
            headers.append((b"connection", b"close"))
        self._begin_sending(framing)
        return _head(b"HTTP/1.1 %d %s\r\n" % (status, reason), headers)

    def _begin_sending(self, framing: int) -> None:
        self._send_framing = framing
        if framing == _UNTIL_CLOSE:
            self.keep_alive = False
        self.our_state = BODY

    def _send_data(self, data: bytes) -> bytes:
        if self.our_state is not BODY:
            raise SendError("body data outside a message")
        framing = self._send_framing
        if framing == _CHUNKED:
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if framing == _LENGTH:
            if len(data) > self._send_left:
                raise SendError("more body than its Content-Length")
            self._send_left -= len(data)
        elif framing == _NONE and data:
            raise SendError("a body on a message that has none")
        return data

    def _send_end(self) -> bytes:
        if self.our_state is not BODY:
            raise SendError("the end of a message not begun")
        if self._send_framing == _LENGTH and self._send_left:
            raise SendError("a body shorter than its Content-Length")
        self.our_state = DONE
        return b"0\r\n\r\n" if self._send_framing == _CHUNKED else b""

    def send_failed(self) -> None:
        """What we were sending was abandoned: the connection can only close."""
        self.our_state = ERROR
        self.keep_alive = False

    # Cycles.

    @property
    def reusable(self) -> bool:
        """Both messages complete, nobody asked to close: another request may follow."""
        return self.our_state is DONE and self.their_state is DONE and self.keep_alive and not self.switched

    def start_next_cycle(self) -> None:
        if not self.reusable:
            raise SendError("the connection cannot carry another message")
        self.their_state = self.our_state = IDLE
        self._head_request = self._upgrade = False


def _head(start_line: bytes, headers) -> bytes:
    return b"".join([start_line, *[b"%s: %s\r\n" % field for field in headers], b"\r\n"])

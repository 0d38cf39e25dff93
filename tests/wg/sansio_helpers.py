"""A deterministic harness for the sans-IO WireGuard core.

- `FakeClock` / `FakeWallClock`: time only moves when a test says so.
- `Network`: devices attached at UDP addresses; `flush()` moves datagrams from each device's `outgoing`
  to the addressed device's `receive_datagram`, through optional loss (seeded) or a drop predicate, and
  logs every datagram; `run_until()` advances the clock timer by timer, ticking every device.
- IP packets built by hand (`ipv4`, `ipv6`).
- An independent implementation of WireGuard's Noise_IKpsk2 handshake and macs, written from the
  whitepaper, used to check the core's messages and to craft ones the core would never send
  (old timestamps, bursts, strangers).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import itertools
import random
import struct
from dataclasses import dataclass
from typing import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt

from kakuremichi.wg.device import Device

# ----------------------------------------------------------------------------------------- clocks


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeWallClock:
    """Wall-clock time that follows a FakeClock (plus an adjustable offset), for TAI64N timestamps."""

    def __init__(self, clock: FakeClock, epoch: float = 1_700_000_000.0) -> None:
        self.clock = clock
        self.epoch = epoch

    def __call__(self) -> float:
        return self.epoch + self.clock.now


# ----------------------------------------------------------------------------------------- wire formats

INITIATION, RESPONSE, COOKIE_REPLY, TRANSPORT = 1, 2, 3, 4


def kind(data: bytes) -> int:
    """The 32-bit little-endian type field (type byte plus three reserved bytes)."""
    return int.from_bytes(bytes(data[:4]), "little")


def is_keepalive(data: bytes) -> bool:
    return kind(data) == TRANSPORT and len(data) == 32


def transport_header(data: bytes) -> tuple[int, int]:
    """(receiver index, counter) of a transport message."""
    _, receiver, counter = struct.unpack_from("<IIQ", data)
    return receiver, counter


def ipv4(src: str, dst: str, payload: bytes = b"", proto: int = 17, total_length: int | None = None) -> bytes:
    """An IPv4 packet with a correct header checksum; `total_length` may lie on purpose."""
    length = 20 + len(payload) if total_length is None else total_length
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 1, 0, 64, proto, 0,
                                   ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed))
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(header) + payload


def ipv6(src: str, dst: str, payload: bytes = b"", next_header: int = 17,
         payload_length: int | None = None) -> bytes:
    length = len(payload) if payload_length is None else payload_length
    return struct.pack("!IHBB16s16s", 6 << 28, length, next_header, 64, ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + payload


# ----------------------------------------------------------------------------------------- the network


@dataclass
class Datagram:
    data: bytes
    src: tuple
    dst: tuple
    time: float
    sender: object = None  # the Device that sent it

    @property
    def kind(self) -> int:
        return kind(self.data)


class Network:
    """UDP between devices, in memory, deterministic; loss is seeded, drops can also be chosen."""

    def __init__(self, clock: FakeClock | None = None, *, loss: float = 0.0, seed: int = 1) -> None:
        self.clock = clock or FakeClock()
        self.wall_clock = FakeWallClock(self.clock)
        self.loss = loss
        self.drop: Callable[[Datagram], bool] | None = None  # True = lose this datagram
        self._loss_rng = random.Random(seed)
        self._seeds = itertools.count(seed * 1000)
        self.devices: dict[tuple, Device] = {}
        self.private_keys: dict[int, bytes] = {}
        self.log: list[Datagram] = []

    # -- topology

    def add(self, address: tuple, private_key: bytes | None = None, **device_kwargs) -> Device:
        rng = random.Random(next(self._seeds))
        private_key = private_key or _clamp(rng.randbytes(32))
        device = Device(private_key, clock=self.clock, wall_clock=self.wall_clock, rng=rng.randbytes,
                        **device_kwargs)
        self.devices[address] = device
        self.private_keys[id(device)] = private_key
        return device

    def address(self, device: Device) -> tuple:
        return next(a for a, d in self.devices.items() if d is device)

    def move(self, device: Device, new_address: tuple) -> None:
        """The device's NAT mapping changed: it now sends from, and only receives at, `new_address`."""
        del self.devices[self.address(device)]
        self.devices[new_address] = device

    def private_key(self, device: Device) -> bytes:
        return self.private_keys[id(device)]

    # -- moving datagrams

    def flush(self, max_rounds: int = 1000) -> None:
        """Deliver everything the devices have sent, and what that provokes, until all is quiet."""
        for _ in range(max_rounds):
            moved = False
            for address, device in list(self.devices.items()):
                if not device.outgoing:
                    continue
                out, device.outgoing = device.outgoing, []
                for data, dst in out:
                    moved = True
                    self._transmit(Datagram(bytes(data), address, tuple(dst), self.clock.now, device))
            if not moved:
                return
        raise AssertionError("datagrams kept flowing: a device is stuck in a loop")

    def _transmit(self, datagram: Datagram) -> None:
        self.log.append(datagram)
        if self.drop is not None and self.drop(datagram):
            return
        if self.loss and self._loss_rng.random() < self.loss:
            return
        self.deliver(datagram)

    def deliver(self, datagram: Datagram, src: tuple | None = None) -> None:
        """(Re)deliver a logged datagram, optionally as if it came from another address."""
        target = self.devices.get(datagram.dst)
        if target is None:
            return
        target.receive_datagram(datagram.data, src or datagram.src)

    # -- time

    def run_until(self, when: float) -> None:
        """Advance the clock to `when`, firing every timer on the way at its exact deadline."""
        self.flush()  # what was sent before now leaves now
        for _ in range(100_000):
            deadlines = [d for d in (dev.next_deadline() for dev in self.devices.values()) if d is not None]
            upcoming = min(deadlines, default=None)
            if upcoming is None or upcoming > when:
                break
            self.clock.now = max(self.clock.now, upcoming)
            for device in list(self.devices.values()):
                device.tick()
            self.flush()
        else:
            raise AssertionError("timers never settled")
        self.clock.now = max(self.clock.now, when)
        for device in list(self.devices.values()):
            device.tick()
        self.flush()

    def advance(self, seconds: float) -> None:
        self.run_until(self.clock.now + seconds)

    # -- looking at what was sent

    def sent(self, by: Device | None = None, kind_: int | None = None, since: float | None = None,
             keepalive: bool | None = None) -> list[Datagram]:
        out = []
        for d in self.log:
            if by is not None and d.sender is not by:
                continue
            if kind_ is not None and d.kind != kind_:
                continue
            if since is not None and d.time < since:
                continue
            if keepalive is not None and is_keepalive(d.data) != keepalive:
                continue
            out.append(d)
        return out


def _clamp(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


# ----------------------------------------------------------------------------------------- a pair of devices

A_ADDR = ("192.0.2.1", 51820)
B_ADDR = ("198.51.100.2", 51821)
A_IP, B_IP = "10.0.0.1", "10.0.0.2"
A_IP6, B_IP6 = "fd00::1", "fd00::2"


@dataclass
class Pair:
    net: Network
    a: Device
    b: Device
    t0: float = 0.0  # when `established_pair` made the session

    @property
    def clock(self) -> FakeClock:
        return self.net.clock

    @property
    def a_peer(self):
        """A's record of B."""
        return self.a.peers[self.b.public_key]

    @property
    def b_peer(self):
        """B's record of A."""
        return self.b.peers[self.a.public_key]

    def a_to_b(self, payload: bytes = b"ping") -> bytes:
        return ipv4(A_IP, B_IP, payload)

    def b_to_a(self, payload: bytes = b"pong") -> bytes:
        return ipv4(B_IP, A_IP, payload)

    def establish(self, initiator: str = "a") -> bytes:
        """Handshake by sending one packet from `initiator`; returns that packet, already checked and
        cleared from the receiver's `incoming`."""
        src, dst = (self.a, self.b) if initiator == "a" else (self.b, self.a)
        packet = self.a_to_b(b"first") if initiator == "a" else self.b_to_a(b"first")
        assert src.send_packet(packet)
        self.net.flush()
        assert [bytes(p) for p in dst.incoming] == [packet], "handshake did not complete"
        dst.incoming.clear()
        return packet


def make_pair(*, psk: bytes | None = None, a_psk: bytes | None = None, b_psk: bytes | None = None,
              a_kwargs: dict | None = None, b_kwargs: dict | None = None, b_knows_a_endpoint: bool = True,
              loss: float = 0.0, seed: int = 1) -> Pair:
    net = Network(loss=loss, seed=seed)
    a = net.add(A_ADDR, **(a_kwargs or {}))
    b = net.add(B_ADDR, **(b_kwargs or {}))
    a.add_peer(b.public_key, preshared_key=a_psk or psk, endpoint=B_ADDR, allowed_ips=[f"{B_IP}/32", f"{B_IP6}/128"])
    b.add_peer(a.public_key, preshared_key=b_psk or psk, endpoint=A_ADDR if b_knows_a_endpoint else None,
               allowed_ips=[f"{A_IP}/32", f"{A_IP6}/128"])
    return Pair(net, a, b)


def established_pair(**kwargs) -> Pair:
    """A pair whose session A started at `pair.t0` with one data packet (B's passive keepalive is
    then due at t0 + 10); the network log starts empty."""
    pair = make_pair(**kwargs)
    pair.t0 = pair.clock.now
    pair.establish()
    pair.net.log.clear()
    return pair


def total_dropped(device: Device) -> int:
    return sum(device.dropped.values())


# ----------------------------------------------------------------------------------------- independent Noise

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"


def blake2s(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def mac16(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def hkdf(chaining_key: bytes, data: bytes, n: int) -> list[bytes]:
    prk = hmac.new(chaining_key, data, hashlib.blake2s).digest()
    out, t = [], b""
    for i in range(1, n + 1):
        t = hmac.new(prk, t + bytes([i]), hashlib.blake2s).digest()
        out.append(t)
    return out


def aead_seal(key: bytes, counter: int, plaintext: bytes, ad: bytes | None) -> bytes:
    return ChaCha20Poly1305(key).encrypt(bytes(4) + counter.to_bytes(8, "little"), plaintext, ad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes | None) -> bytes:
    return ChaCha20Poly1305(key).decrypt(bytes(4) + counter.to_bytes(8, "little"), ciphertext, ad)


def x25519(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def tai64n(unix_time: float) -> bytes:
    """TAI64N as WireGuard sends it: label 2^62 + 10 + seconds, nanoseconds rounded down to 2^24."""
    seconds = int(unix_time)
    nanos = int((unix_time - seconds) * 1e9) & ~0xFFFFFF
    return struct.pack(">QI", (1 << 62) + 10 + seconds, nanos)


def mac1_key(receiver_public: bytes) -> bytes:
    return blake2s(LABEL_MAC1, receiver_public)


def stamp(msg: bytes | bytearray, receiver_public: bytes, cookie: bytes | None = None) -> bytes:
    """Recompute mac1 (and mac2 from `cookie`, else zeros) of a handshake message."""
    msg = bytearray(msg)
    n = len(msg)
    msg[n - 32:n - 16] = mac16(mac1_key(receiver_public), bytes(msg[:n - 32]))
    msg[n - 16:] = mac16(cookie, bytes(msg[:n - 16])) if cookie else bytes(16)
    return bytes(msg)


@dataclass
class InitiatorState:
    chaining_key: bytes
    hash: bytes
    ephemeral_private: bytes
    static_private: bytes
    responder_public: bytes
    sender_index: int
    message: bytes = b""


def craft_initiation(static_private: bytes, responder_public: bytes, timestamp: bytes, sender_index: int,
                     cookie: bytes | None = None, ephemeral_private: bytes | None = None) -> InitiatorState:
    """A handshake initiation built from scratch (whitepaper §5.4.2)."""
    e_priv = ephemeral_private or raw_private(X25519PrivateKey.generate())
    e_pub = public_of(e_priv)
    ck = blake2s(CONSTRUCTION)
    h = blake2s(blake2s(ck, IDENTIFIER), responder_public)
    (ck,) = hkdf(ck, e_pub, 1)
    h = blake2s(h, e_pub)
    ck, k = hkdf(ck, x25519(e_priv, responder_public), 2)
    static_enc = aead_seal(k, 0, public_of(static_private), h)
    h = blake2s(h, static_enc)
    ck, k = hkdf(ck, x25519(static_private, responder_public), 2)
    ts_enc = aead_seal(k, 0, timestamp, h)
    h = blake2s(h, ts_enc)
    body = struct.pack("<II", INITIATION, sender_index) + e_pub + static_enc + ts_enc + bytes(32)
    state = InitiatorState(ck, h, e_priv, static_private, responder_public, sender_index)
    state.message = stamp(body, responder_public, cookie)
    return state


def finish_initiator(state: InitiatorState, response: bytes, psk: bytes | None = None) -> tuple[int, bytes, bytes]:
    """Check a response to `state`'s initiation; returns (responder index, send key, receive key)."""
    type_, sender, receiver = struct.unpack_from("<III", response)
    assert (type_, receiver) == (RESPONSE, state.sender_index)
    e_r = response[12:44]
    (ck,) = hkdf(state.chaining_key, e_r, 1)
    h = blake2s(state.hash, e_r)
    (ck,) = hkdf(ck, x25519(state.ephemeral_private, e_r), 1)
    (ck,) = hkdf(ck, x25519(state.static_private, e_r), 1)
    ck, tau, k = hkdf(ck, psk or bytes(32), 3)
    h = blake2s(h, tau)
    assert aead_open(k, 0, response[44:60], h) == b""
    send, receive = hkdf(ck, b"", 2)
    return sender, send, receive


@dataclass
class OpenedInitiation:
    initiator_static: bytes
    timestamp: bytes
    sender_index: int
    chaining_key: bytes
    hash: bytes
    ephemeral_public: bytes


def open_initiation(responder_private: bytes, msg: bytes) -> OpenedInitiation:
    """Decrypt an initiation as its responder would (raises if it does not authenticate)."""
    type_, sender = struct.unpack_from("<II", msg)
    assert type_ == INITIATION
    e_pub, static_enc, ts_enc = msg[8:40], msg[40:88], msg[88:116]
    ck = blake2s(CONSTRUCTION)
    h = blake2s(blake2s(ck, IDENTIFIER), public_of(responder_private))
    (ck,) = hkdf(ck, e_pub, 1)
    h = blake2s(h, e_pub)
    ck, k = hkdf(ck, x25519(responder_private, e_pub), 2)
    static = aead_open(k, 0, static_enc, h)
    h = blake2s(h, static_enc)
    ck, k = hkdf(ck, x25519(responder_private, static), 2)
    ts = aead_open(k, 0, ts_enc, h)
    h = blake2s(h, ts_enc)
    return OpenedInitiation(static, ts, sender, ck, h, e_pub)


def open_cookie_reply(reply: bytes, replier_public: bytes, mac1_of_our_message: bytes) -> bytes:
    """The cookie inside a cookie reply (XChaCha20-Poly1305 under HASH("cookie--" || replier's key))."""
    key = blake2s(LABEL_COOKIE, replier_public)
    return crypto_aead_xchacha20poly1305_ietf_decrypt(reply[32:64], mac1_of_our_message, reply[8:32], key)


def seal_transport(send_key: bytes, receiver: int, counter: int, packet: bytes) -> bytes:
    padded = packet + bytes(-len(packet) % 16)
    return struct.pack("<IIQ", TRANSPORT, receiver, counter) + aead_seal(send_key, counter, padded, None)


def bit_flips(message: bytes, start: int = 0, stop: int | None = None) -> list[bytes]:
    """Every single-bit corruption of `message` within bytes [start, stop)."""
    out = []
    for byte in range(start, len(message) if stop is None else stop):
        for bit in range(8):
            corrupted = bytearray(message)
            corrupted[byte] ^= 1 << bit
            out.append(bytes(corrupted))
    return out

"""A transport session: one pair of symmetric keys with its counters and replay window (a "keypair").

A peer holds up to three: `current` (used to send), `previous` (still accepted while the peer switches
over) and `next` (a responder's fresh session, promoted on the first packet the initiator sends with it).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from kakuremichi.wg.replay import ReplayWindow


class Session:
    __slots__ = ("peer", "sender", "receiver", "send_counter", "replay", "created", "is_initiator",
                 "local_index", "remote_index")

    def __init__(self, peer, send_key: bytes, receive_key: bytes, created: float, is_initiator: bool,
                 local_index: int, remote_index: int) -> None:
        self.peer = peer
        self.sender = ChaCha20Poly1305(send_key)
        self.receiver = ChaCha20Poly1305(receive_key)
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.created = created
        self.is_initiator = is_initiator
        self.local_index = local_index
        self.remote_index = remote_index

"""A minimal userspace IPv4 stack (ICMP, UDP, TCP) on the decrypted side of a WireGuard device.

`stack.Stack` is the sans-IO core (with `tcp.Connection`, `ipv4`, `udp`, `icmp`); `trio_stack.NetStack`
drives it under Trio and hands out the `streams` module's `TcpStream`, `TcpListener` and `UdpSocket`.
This package's face imports none of them, so that importing a core loads no Trio.
"""

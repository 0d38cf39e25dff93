"""A minimal userspace IPv4 stack (ICMP, UDP, TCP) on the decrypted side of a WireGuard device.

`Stack` (stack.py) is the sans-IO core; `NetStack` (trio_stack.py) drives it under Trio and hands out
`TcpStream`, `TcpListener` and `UdpSocket` objects (streams.py).
"""

from kakuremichi.netstack.stack import Stack
from kakuremichi.netstack.streams import TcpListener, TcpStream, UdpSocket
from kakuremichi.netstack.tcp import Config
from kakuremichi.netstack.trio_stack import NetStack

__all__ = ["Config", "NetStack", "Stack", "TcpListener", "TcpStream", "UdpSocket"]

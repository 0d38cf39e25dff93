"""A minimal userspace IPv4 stack (ICMP, UDP, TCP) on the decrypted side of a WireGuard device."""
